/**
 * `convert` progress on a terminal: one line per layer with its two stages shown apart, since they overlap
 * (a layer uploads while the next ones convert): how much of the source layer has been converted and how
 * much of the EROFS blob the destination has, each with its rate, and how the blob reached DEST once done.
 * Redrawn in place at most five times a second; `formatLayerLine` is the pure part.
 */
import type { LayerReport } from '../publish/convert.ts';
import { formatBytes } from './progress.ts';

export interface LayerProgress {
  name: string;
  /** The source layer's (compressed) size. */
  sourceSize: number;
  sourceBytes: number;
  /** When the conversion started and ended (ms, `performance.now()`); undefined until then. */
  convertStarted?: number;
  converted?: number;
  /** The blob's size, known once converted. */
  blobSize?: number;
  uploadedBytes: number;
  uploadStarted?: number;
  /** Set when the blob is at DEST. */
  done?: { at: number; transfer: LayerReport['transfer'] };
}

function rate(bytes: number, from: number | undefined, to: number): string {
  if (from === undefined || to <= from || bytes === 0) return '';
  return `, ${formatBytes((bytes * 1000) / (to - from))}/s`;
}

/** One layer's line at time `now` (ms). */
export function formatLayerLine(layer: LayerProgress, now: number): string {
  let convert: string;
  if (layer.convertStarted === undefined) convert = 'waiting';
  else {
    const end = layer.converted ?? now;
    const verb = layer.converted === undefined ? 'converting' : 'converted';
    convert = `${verb} ${formatBytes(layer.sourceBytes)} / ${formatBytes(layer.sourceSize)}${rate(layer.sourceBytes, layer.convertStarted, end)}`;
  }
  let upload = '';
  if (layer.done && layer.done.transfer !== 'uploaded') {
    upload =
      layer.done.transfer === 'exists' ? '; already at destination' : '; mounted from the source repository';
  } else if (layer.blobSize !== undefined) {
    const end = layer.done?.at ?? now;
    const verb = layer.done ? 'uploaded' : layer.uploadStarted === undefined ? 'to upload' : 'uploading';
    const bytes = layer.done ? layer.blobSize : layer.uploadedBytes;
    upload = `; ${verb} ${formatBytes(bytes)} / ${formatBytes(layer.blobSize)}${rate(bytes, layer.uploadStarted, end)}`;
  }
  return `${layer.name}: ${convert}${upload}`;
}

export class ConvertProgress {
  readonly #out: NodeJS.WritableStream;
  readonly #layers: LayerProgress[];
  readonly #now: () => number;
  #lastDraw = 0;
  #drawn = false;

  constructor(
    out: NodeJS.WritableStream,
    layers: { name: string; size: number }[],
    now: () => number = () => performance.now(),
  ) {
    this.#out = out;
    this.#now = now;
    this.#layers = layers.map((l) => ({
      name: l.name,
      sourceSize: l.size,
      sourceBytes: 0,
      uploadedBytes: 0,
    }));
  }

  converting(index: number, sourceBytes: number): void {
    const layer = this.#layers[index];
    if (!layer) return;
    layer.convertStarted ??= this.#now();
    layer.sourceBytes = sourceBytes;
    this.#maybeDraw();
  }

  converted(index: number, blobSize: number): void {
    const layer = this.#layers[index];
    if (!layer) return;
    const now = this.#now();
    layer.convertStarted ??= now;
    layer.converted = now;
    layer.sourceBytes = layer.sourceSize;
    layer.blobSize = blobSize;
    this.#maybeDraw();
  }

  uploading(index: number, bytes: number): void {
    const layer = this.#layers[index];
    if (!layer) return;
    layer.uploadStarted ??= this.#now();
    layer.uploadedBytes = bytes;
    this.#maybeDraw();
  }

  done(index: number, report: LayerReport): void {
    const layer = this.#layers[index];
    if (!layer) return;
    layer.blobSize = report.size;
    layer.done = { at: this.#now(), transfer: report.transfer };
    this.#draw();
  }

  /** The final state (when anything was drawn). */
  finish(): void {
    if (this.#drawn) this.#draw();
  }

  #maybeDraw(): void {
    const now = this.#now();
    if (now - this.#lastDraw < 200) return;
    this.#lastDraw = now;
    this.#draw();
  }

  #draw(): void {
    const now = this.#now();
    const lines = this.#layers.map((layer) => formatLayerLine(layer, now));
    const up = this.#drawn ? `\x1b[${lines.length}A` : '';
    this.#out.write(`${up}${lines.map((l) => `\x1b[2K${l}\n`).join('')}`);
    this.#drawn = true;
  }
}
