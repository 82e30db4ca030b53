/**
 * Recycled block buffers, so that a stream of fetched blocks through the memory cache does not make the
 * garbage collector free and zero a buffer for every block (issue 11 §4: collecting 1 MiB blocks and
 * socket chunks took 40% of `serve`'s time).
 *
 * The rules, which a buffer handed out twice at once would break (its second owner overwriting bytes the
 * first still serves):
 * - `take` hands out a buffer of `blockSize` bytes with one reference, its taker's;
 * - every holder that keeps the bytes beyond the current synchronous step `retain`s them and `release`s
 *   them once done; the buffer returns to the pool when the last reference is released;
 * - bytes that leave for a holder that cannot say when it is done (a plain `read()` answered with a view)
 *   `escape`: that buffer never returns to the pool, the garbage collector frees it as any other;
 * - bytes the pool did not hand out (or that escaped) are ignored by `retain` and `release`.
 */
export class BlockPool {
  readonly blockSize: number;
  readonly #maxFree: number;
  /** References per buffer handed out and not yet returned (escaped ones are not here). */
  readonly #refs = new Map<ArrayBufferLike, number>();
  readonly #free: ArrayBuffer[] = [];
  /** Buffers taken from the free list rather than allocated (for the pool's tests and stats). */
  reused = 0;

  /** Keeps at most `maxFree` buffers for reuse (the rest go to the garbage collector). */
  constructor(blockSize: number, maxFree: number) {
    this.blockSize = blockSize;
    this.#maxFree = maxFree;
  }

  /** A buffer for a block of `length` bytes (at most `blockSize`); its contents are whatever it held. */
  take(length: number): Uint8Array {
    const buffer = this.#free.pop();
    if (buffer) this.reused++;
    const bytes = buffer
      ? new Uint8Array(buffer, 0, length)
      : new Uint8Array(new ArrayBuffer(this.blockSize), 0, length);
    this.#refs.set(bytes.buffer, 1);
    return bytes;
  }

  retain(bytes: Uint8Array): void {
    const count = this.#refs.get(bytes.buffer);
    if (count !== undefined) this.#refs.set(bytes.buffer, count + 1);
  }

  release(bytes: Uint8Array): void {
    const count = this.#refs.get(bytes.buffer);
    if (count === undefined) return;
    if (count > 1) {
      this.#refs.set(bytes.buffer, count - 1);
      return;
    }
    this.#refs.delete(bytes.buffer);
    if (this.#free.length < this.#maxFree) this.#free.push(bytes.buffer as ArrayBuffer);
  }

  /** The bytes are out of the pool's hands for good. */
  escape(bytes: Uint8Array): void {
    this.#refs.delete(bytes.buffer);
  }

  /** References held on the buffer of `bytes` (0 once returned or escaped, or when not from the pool). */
  references(bytes: Uint8Array): number {
    return this.#refs.get(bytes.buffer) ?? 0;
  }

  /** Buffers waiting to be reused. */
  get free(): number {
    return this.#free.length;
  }
}
