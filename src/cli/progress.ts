/** One line per source on a terminal: bytes done, rate. Redrawn at most a few times a second. */
export class Progress {
  readonly #out: NodeJS.WritableStream;
  readonly #names: string[];
  readonly #bytes: number[];
  readonly #started = performance.now();
  #lastDraw = 0;
  #drawn = false;

  constructor(out: NodeJS.WritableStream, names: string[]) {
    this.#out = out;
    this.#names = names;
    this.#bytes = names.map(() => 0);
  }

  update(index: number, bytes: number): void {
    this.#bytes[index] = bytes;
    const now = performance.now();
    if (now - this.#lastDraw < 200) return;
    this.#lastDraw = now;
    this.#draw();
  }

  done(): void {
    if (this.#drawn) this.#draw();
  }

  #draw(): void {
    const seconds = (performance.now() - this.#started) / 1000;
    const lines = this.#names.map((name, i) => {
      const bytes = this.#bytes[i] ?? 0;
      return `${name}: ${formatBytes(bytes)} read, ${formatBytes(bytes / Math.max(seconds, 0.001))}/s`;
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
