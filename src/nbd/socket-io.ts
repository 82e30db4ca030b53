/**
 * Exact-length reads and whole-message writes on a socket, with backpressure in both directions: the reader
 * pauses the socket when it holds more than `highWater` unread bytes, and `writeMessage` resolves only when
 * the kernel has taken the bytes, so callers that await it (or count it against a budget) never queue
 * unbounded replies for a slow client.
 */
import type { Socket } from 'node:net';
import { ErofsOciError } from '../errors.ts';

export class SocketReader {
  readonly #socket: Socket;
  readonly #highWater: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #ended = false;
  #cancelled = false;
  #wake: (() => void) | null = null;

  constructor(socket: Socket, highWater = 1 << 20) {
    this.#socket = socket;
    this.#highWater = highWater;
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.byteLength;
      if (this.#buffered >= this.#highWater) socket.pause();
      this.#notify();
    });
    const end = () => {
      this.#ended = true;
      this.#notify();
    };
    socket.on('end', end);
    socket.on('close', end);
  }

  /** Bytes received and not yet consumed. */
  get buffered(): number {
    return this.#buffered;
  }

  /**
   * Resolves with exactly `length` bytes, or null when the stream ended (or `cancel` was called) before the
   * first of them. A stream that ends in the middle of the message is an error: the peer broke the protocol.
   */
  async read(length: number, what: string): Promise<Uint8Array | null> {
    while (this.#buffered < length) {
      if (this.#ended || this.#cancelled) return this.#endedEarly(what, length);
      await this.#more();
    }
    if (this.#cancelled) return null;
    return this.#take(length);
  }

  /** Consumes `length` bytes without keeping them (a write payload we refuse). False when the stream ended. */
  async skip(length: number, what: string): Promise<boolean> {
    let left = length;
    while (left > 0) {
      if (this.#buffered === 0) {
        if (this.#ended || this.#cancelled) {
          if (this.#ended) throw truncated(what, length, length - left);
          return false;
        }
        await this.#more();
        continue;
      }
      const chunk = this.#chunks[0] as Buffer;
      const take = Math.min(left, chunk.byteLength);
      this.#consume(take);
      left -= take;
    }
    return true;
  }

  /** Makes pending and future reads resolve as if the stream had ended cleanly (used on server shutdown). */
  cancel(): void {
    this.#cancelled = true;
    this.#notify();
  }

  #endedEarly(what: string, length: number): null {
    if (this.#buffered === 0 || this.#cancelled) return null;
    throw truncated(what, length, this.#buffered);
  }

  #more(): Promise<void> {
    if (this.#socket.isPaused()) this.#socket.resume();
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #take(length: number): Uint8Array {
    const first = this.#chunks[0];
    let out: Uint8Array;
    if (first !== undefined && first.byteLength >= length) {
      out = first.subarray(0, length);
      this.#consume(length);
    } else {
      out = new Uint8Array(length);
      let at = 0;
      while (at < length) {
        const chunk = this.#chunks[0] as Buffer;
        const take = Math.min(length - at, chunk.byteLength);
        out.set(chunk.subarray(0, take), at);
        this.#consume(take);
        at += take;
      }
    }
    return out;
  }

  #consume(length: number): void {
    const first = this.#chunks[0] as Buffer;
    if (length === first.byteLength) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(length);
    this.#buffered -= length;
    if (this.#buffered < this.#highWater && this.#socket.isPaused() && !this.#ended) this.#socket.resume();
  }
}

function truncated(what: string, wanted: number, got: number): ErofsOciError {
  return new ErofsOciError(
    'corrupt',
    `Cannot read ${what}: the client closed the connection after ${got} of ${wanted} bytes`,
  );
}

/**
 * Writes the parts of one message back to back (corked, so they go out as one `writev`), which also makes
 * the message atomic with respect to other replies: nothing else can be queued between the parts. Resolves
 * when the last part has been handed to the kernel; rejects when the connection is gone.
 */
export function writeMessage(socket: Socket, parts: readonly Uint8Array[]): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed || !socket.writable) {
      reject(new ErofsOciError('io', 'Cannot send reply: the connection is closed'));
      return;
    }
    const done = (error?: Error | null) => {
      if (error) reject(new ErofsOciError('io', `Cannot send reply: ${error.message}`, { cause: error }));
      else resolve();
    };
    socket.cork();
    parts.forEach((part, i) => {
      socket.write(part, i === parts.length - 1 ? done : undefined);
    });
    socket.uncork();
  });
}
