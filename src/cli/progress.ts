/**
 * Progress on a terminal: one line per source with bytes done / total, rate, ETA and state, redrawn in
 * place at most five times a second.
 */
export interface ProgressItem {
  name: string;
  /** Total bytes, when known (registry layers: the compressed blob size). */
  total?: number;
}

export class Progress {
  readonly #out: NodeJS.WritableStream;
  readonly #items: ProgressItem[];
  readonly #bytes: number[];
  readonly #started: number[];
  #lastDraw = 0;
  #drawn = false;

  constructor(out: NodeJS.WritableStream, items: ProgressItem[]) {
    this.#out = out;
    this.#items = items;
    this.#bytes = items.map(() => 0);
    this.#started = items.map(() => 0);
  }

  update(index: number, bytes: number): void {
    if (this.#started[index] === 0) this.#started[index] = performance.now();
    this.#bytes[index] = bytes;
    const now = performance.now();
    if (now - this.#lastDraw < 200) return;
    this.#lastDraw = now;
    this.#draw();
  }

  done(): void {
    if (this.#drawn) this.#draw(true);
  }

  #draw(final = false): void {
    const now = performance.now();
    const lines = this.#items.map((item, i) => {
      const bytes = this.#bytes[i] ?? 0;
      const started = this.#started[i] ?? 0;
      const seconds = started === 0 ? 0 : (now - started) / 1000;
      const rate = seconds > 0 ? bytes / seconds : 0;
      const total = item.total;
      const complete = final || (total !== undefined && bytes >= total);
      const state = complete ? 'done' : started === 0 ? 'waiting' : 'reading';
      const amount =
        total === undefined ? formatBytes(bytes) : `${formatBytes(bytes)} / ${formatBytes(total)}`;
      const eta =
        !complete && total !== undefined && rate > 0 ? `, ${Math.ceil((total - bytes) / rate)} s left` : '';
      return `${item.name}: ${state} ${amount}${rate > 0 ? `, ${formatBytes(rate)}/s` : ''}${eta}`;
    });
    const up = this.#drawn ? `\x1b[${lines.length}A` : '';
    this.#out.write(`${up}${lines.map((l) => `\x1b[2K${l}\n`).join('')}`);
    this.#drawn = true;
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}
