import type { BlockGrid } from '../block-grid.ts';

/**
 * Cuts the bytes of one range fetch, arriving in chunks of any size, into its blocks: each is handed on
 * as soon as the range has passed it, so that a reader of the first block of a large readahead fetch
 * does not wait for the last.
 */
export class BlockCutter {
  readonly #grid: BlockGrid;
  readonly #first: number;
  readonly #count: number;
  readonly #complete: (index: number, bytes: Uint8Array) => void;
  readonly #alloc: (length: number) => Uint8Array;
  #filling = 0;
  #buffer: Uint8Array | null = null;
  #filled = 0;

  /**
   * Blocks `first..first+count-1` of `grid`; `complete` gets each one's index in the range and bytes, in
   * a buffer from `alloc` (or the chunk itself, when it is exactly the block in a buffer of its own).
   */
  constructor(
    grid: BlockGrid,
    first: number,
    count: number,
    complete: (index: number, bytes: Uint8Array) => void,
    alloc: (length: number) => Uint8Array = (length) => new Uint8Array(length),
  ) {
    this.#alloc = alloc;
    this.#grid = grid;
    this.#first = first;
    this.#count = count;
    this.#complete = complete;
  }

  /** How many blocks have been handed on (the rest are still to come). */
  get completed(): number {
    return this.#filling;
  }

  /** Takes the next bytes of the range (bytes beyond its last block are ignored). */
  push(chunk: Uint8Array): void {
    for (let at = 0; at < chunk.byteLength && this.#filling < this.#count; ) {
      const want = this.#grid.length(this.#first + this.#filling);
      if (at === 0 && this.#filled === 0 && chunk.byteLength === want && chunk.buffer.byteLength === want) {
        // A fetch that returned exactly one block in a buffer of its own (a demand miss): keep it as it
        // is. A view into a larger buffer (a network read) is copied, so as not to pin the rest.
        this.#complete(this.#filling++, chunk);
        return;
      }
      this.#buffer ??= this.#alloc(want);
      const n = Math.min(want - this.#filled, chunk.byteLength - at);
      this.#buffer.set(chunk.subarray(at, at + n), this.#filled);
      this.#filled += n;
      at += n;
      if (this.#filled === want) {
        this.#complete(this.#filling++, this.#buffer);
        this.#buffer = null;
        this.#filled = 0;
      }
    }
  }
}
