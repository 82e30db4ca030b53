/**
 * Sequential writer over a file descriptor. Bytes are copied into one of a few 1 MiB buffers; a full buffer
 * is written in the background (`fs.write` runs on the thread pool, i.e. on the other core) while the next
 * one fills, so the producer's thread never waits for the page cache. Memory stays bounded by the buffers:
 * when all are in flight, `write()` falls back to writing the current one synchronously; a producer that
 * can wait calls `relieve()` instead. Positions are explicit (pwrite), so the order in which background
 * writes complete does not matter.
 *
 * `settle()` waits for every write and reports the first failure; `close()` closes the descriptor only once
 * the writes in flight are done, so a late write never lands in a file that reused the descriptor.
 */
import { closeSync, write as fsWrite, fsyncSync, writeSync } from 'node:fs';
import { ErofsOciError } from '../errors.ts';

const BUFFER_SIZE = 1 << 20;
const BUFFERS = 4;

export class FileWriter {
  readonly #fd: number;
  readonly #free: Buffer[] = [];
  #buffer: Buffer;
  #buffered = 0;
  /** File offset where the buffer's first byte goes. */
  #flushedTo: number;
  #inFlight = 0;
  #failure: unknown = null;
  #waiters: (() => void)[] = [];
  #closeWhenIdle = false;
  #closed = false;

  constructor(fd: number, position = 0) {
    this.#fd = fd;
    this.#flushedTo = position;
    this.#buffer = Buffer.allocUnsafe(BUFFER_SIZE);
  }

  get fd(): number {
    return this.#fd;
  }

  /** Offset of the next byte written. */
  get position(): number {
    return this.#flushedTo + this.#buffered;
  }

  /** True when every buffer is being written: a producer that can wait should `await relieve()`. */
  get backlogged(): boolean {
    return this.#inFlight >= BUFFERS - 1 && this.#free.length === 0;
  }

  /** Resolves once a buffer is free again (at once when one is). */
  async relieve(): Promise<void> {
    while (this.backlogged) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    this.#throwIfFailed();
  }

  write(chunk: Uint8Array): void {
    this.#throwIfFailed();
    let at = 0;
    while (at < chunk.byteLength) {
      if (this.#buffered === BUFFER_SIZE) this.flush();
      const n = Math.min(chunk.byteLength - at, BUFFER_SIZE - this.#buffered);
      this.#buffer.set(n === chunk.byteLength ? chunk : chunk.subarray(at, at + n), this.#buffered);
      this.#buffered += n;
      at += n;
    }
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

  /**
   * Moves the write position back to `position`: what was written after it will be written over. Only
   * after `settle()` (a background write of the old bytes must not race the new ones).
   */
  rewind(position: number): void {
    if (position > this.position) throw new RangeError(`cannot rewind forwards to ${position}`);
    if (this.#inFlight > 0) throw new ErofsOciError('internal', 'FileWriter.rewind() needs settle() first');
    this.flush();
    if (this.#inFlight > 0) throw new ErofsOciError('internal', 'FileWriter.rewind() needs settle() first');
    this.#flushedTo = position;
  }

  /** Starts writing what is buffered (in the background when a spare buffer is free). */
  flush(): void {
    this.#throwIfFailed();
    if (this.#buffered === 0) return;
    const full = this.#buffer;
    const length = this.#buffered;
    const position = this.#flushedTo;
    this.#flushedTo += length;
    this.#buffered = 0;
    const spare = this.#free.pop() ?? (this.#inFlight < BUFFERS - 1 ? Buffer.allocUnsafe(BUFFER_SIZE) : null);
    if (spare === null) {
      writeAllSync(this.#fd, full.subarray(0, length), position);
      return;
    }
    this.#buffer = spare;
    this.#inFlight++;
    this.#writeInBackground(full, 0, length, position);
  }

  /** Everything written so far is in the file (or the first failure is thrown). */
  async settle(): Promise<void> {
    this.flush();
    while (this.#inFlight > 0) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    this.#throwIfFailed();
  }

  /** Writes at an absolute offset, bypassing the buffer (which must not overlap it). */
  pwrite(chunk: Uint8Array, position: number): void {
    writeAllSync(this.#fd, chunk, position);
  }

  /** Everything written so far is on stable storage. */
  async sync(): Promise<void> {
    await this.settle();
    fsyncSync(this.#fd);
  }

  /** Closes the descriptor, at once or when the writes in flight are done (their results are dropped). */
  close(): void {
    if (this.#closed || this.#closeWhenIdle) return;
    this.#buffered = 0;
    if (this.#inFlight > 0) {
      this.#closeWhenIdle = true;
      return;
    }
    this.#closed = true;
    closeSync(this.#fd);
  }

  #writeInBackground(buffer: Buffer, offset: number, length: number, position: number): void {
    fsWrite(this.#fd, buffer, offset, length, position, (error, written) => {
      if (error === null && written < length && !this.#closeWhenIdle) {
        this.#writeInBackground(buffer, offset + written, length - written, position + written);
        return;
      }
      if (error !== null) this.#failure ??= error;
      this.#inFlight--;
      this.#free.push(buffer);
      if (this.#inFlight === 0 && this.#closeWhenIdle && !this.#closed) {
        this.#closed = true;
        closeSync(this.#fd);
      }
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const wake of waiters) wake();
    });
  }

  #throwIfFailed(): void {
    if (this.#failure === null) return;
    const error = this.#failure as NodeJS.ErrnoException;
    throw new ErofsOciError('io', `cannot write: ${error.message}`, { cause: error });
  }
}

function writeAllSync(fd: number, chunk: Uint8Array, position: number): void {
  let done = 0;
  while (done < chunk.byteLength) {
    done += writeSync(fd, chunk, done, chunk.byteLength - done, position + done);
  }
}
