/**
 * Sequential writer over a file descriptor with a write buffer. Writes are synchronous on purpose: the data
 * goes to the page cache, a thread-pool round trip per chunk would cost more than the copy itself, and the
 * decompression feeding us runs in zlib's own threads.
 */
import { closeSync, fsyncSync, writeSync } from 'node:fs';

const BUFFER_SIZE = 1 << 20;

export class FileWriter {
  readonly #fd: number;
  readonly #buffer = Buffer.allocUnsafe(BUFFER_SIZE);
  #buffered = 0;
  /** File offset where the buffer's first byte goes. */
  #flushedTo: number;

  constructor(fd: number, position = 0) {
    this.#fd = fd;
    this.#flushedTo = position;
  }

  get fd(): number {
    return this.#fd;
  }

  /** Offset of the next byte written. */
  get position(): number {
    return this.#flushedTo + this.#buffered;
  }

  write(chunk: Uint8Array): void {
    if (chunk.byteLength >= BUFFER_SIZE) {
      this.flush();
      this.#writeAll(chunk, this.#flushedTo);
      this.#flushedTo += chunk.byteLength;
      return;
    }
    if (this.#buffered + chunk.byteLength > BUFFER_SIZE) this.flush();
    this.#buffer.set(chunk, this.#buffered);
    this.#buffered += chunk.byteLength;
  }

  /** Appends `count` zero bytes. */
  writeZeros(count: number): void {
    while (count > 0) {
      if (this.#buffered === BUFFER_SIZE) this.flush();
      const n = Math.min(count, BUFFER_SIZE - this.#buffered);
      this.#buffer.fill(0, this.#buffered, this.#buffered + n);
      this.#buffered += n;
      count -= n;
    }
  }

  /** Moves the write position forward to `position` (zero bytes in between). */
  padTo(position: number): void {
    if (position < this.position) throw new RangeError(`cannot pad backwards to ${position}`);
    this.writeZeros(position - this.position);
  }

  flush(): void {
    if (this.#buffered === 0) return;
    this.#writeAll(this.#buffer.subarray(0, this.#buffered), this.#flushedTo);
    this.#flushedTo += this.#buffered;
    this.#buffered = 0;
  }

  /** Writes at an absolute offset, bypassing the buffer (which must not overlap it). */
  pwrite(chunk: Uint8Array, position: number): void {
    this.#writeAll(chunk, position);
  }

  sync(): void {
    this.flush();
    fsyncSync(this.#fd);
  }

  close(): void {
    closeSync(this.#fd);
  }

  #writeAll(chunk: Uint8Array, position: number): void {
    let done = 0;
    while (done < chunk.byteLength) {
      done += writeSync(this.#fd, chunk, done, chunk.byteLength - done, position + done);
    }
  }
}
