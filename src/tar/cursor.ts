/**
 * A forward-only position in a stream of chunks of any size. Data is handed out as views of the input
 * chunks where possible; bytes are copied only to assemble a header (or an extended header) that spans
 * chunks.
 */
import { throwIfAborted } from '../errors.ts';

const EMPTY = new Uint8Array(0);

export class ByteCursor {
  readonly #iterator: AsyncIterator<Uint8Array>;
  readonly #signal: AbortSignal | undefined;
  #chunk: Uint8Array = EMPTY;
  #pos = 0;
  #done = false;
  /** Offset in the stream of the next unread byte. */
  offset = 0;

  constructor(input: AsyncIterable<Uint8Array>, signal: AbortSignal | undefined) {
    this.#iterator = input[Symbol.asyncIterator]();
    this.#signal = signal;
  }

  /** Makes at least one unread byte available; false at the end of the stream. */
  async fill(): Promise<boolean> {
    while (this.#pos >= this.#chunk.byteLength) {
      if (this.#done) return false;
      throwIfAborted(this.#signal);
      const result = await this.#iterator.next();
      if (result.done) {
        this.#done = true;
        this.#chunk = EMPTY;
        this.#pos = 0;
        return false;
      }
      this.#chunk = result.value;
      this.#pos = 0;
    }
    return true;
  }

  /** Bytes available without waiting for input. */
  get available(): number {
    return this.#chunk.byteLength - this.#pos;
  }

  /** Up to `max` available bytes as a view of the current chunk (empty when nothing is available). */
  take(max: number): Uint8Array {
    const end = Math.min(this.#chunk.byteLength, this.#pos + max);
    const bytes = this.#chunk.subarray(this.#pos, end);
    this.offset += end - this.#pos;
    this.#pos = end;
    return bytes;
  }

  /**
   * Reads `n` bytes: a view when they lie in one chunk, otherwise a copy into `scratch` (if it is big
   * enough) or a new buffer. Fewer than `n` bytes are returned only at the end of the stream.
   */
  async read(n: number, scratch?: Uint8Array): Promise<Uint8Array> {
    if (!(await this.fill())) return EMPTY;
    if (this.#pos + n <= this.#chunk.byteLength) return this.take(n);
    const target =
      scratch !== undefined && scratch.byteLength >= n ? scratch.subarray(0, n) : new Uint8Array(n);
    let got = 0;
    while (got < n && (await this.fill())) {
      const piece = this.take(n - got);
      target.set(piece, got);
      got += piece.byteLength;
    }
    return target.subarray(0, got);
  }

  /** Skips `n` bytes without looking at them; returns how many were skipped (fewer only at the end). */
  async skip(n: number): Promise<number> {
    if (n <= this.available) return this.take(n).byteLength;
    let skipped = 0;
    while (skipped < n && (await this.fill())) skipped += this.take(n - skipped).byteLength;
    return skipped;
  }

  /** Reads and discards the rest of the stream, so that whoever produces it sees it to its end. */
  async drain(): Promise<void> {
    while (await this.fill()) this.take(Number.MAX_SAFE_INTEGER);
  }

  /** Stops the input early, unless it has ended already. */
  async close(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#iterator.return?.();
  }
}
