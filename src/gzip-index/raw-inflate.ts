/**
 * A native raw-deflate decoder (node:zlib InflateRaw) driven chunk by chunk, that tells where the deflate
 * stream ended. Decoding runs in the libuv thread pool, so inflating a span does not block the event loop.
 */
import { once } from 'node:events';
import { createInflateRaw, type InflateRaw } from 'node:zlib';

const CHUNK_SIZE = 256 * 1024;

export interface RawInflateStep {
  /** Uncompressed bytes produced by this step. */
  output: Uint8Array[];
  /** When the deflate stream's final block ended inside the chunk: how many of its bytes it used. */
  consumed: number | undefined;
}

export class RawInflateSession {
  readonly #z: InflateRaw;
  #output: Uint8Array[] = [];
  #fed = 0;
  #ended = false;
  readonly #failed: Promise<never>;

  /** `dictionary`: the window to start from (zlib inflateSetDictionary); at most 32 KiB. */
  constructor(dictionary: Uint8Array | undefined) {
    this.#z = createInflateRaw(
      dictionary ? { chunkSize: CHUNK_SIZE, dictionary } : { chunkSize: CHUNK_SIZE },
    );
    this.#z.on('data', (chunk: Uint8Array) => this.#output.push(chunk));
    this.#z.on('end', () => {
      this.#ended = true;
    });
    // zlib reports corrupt data with an 'error' event and never calls the pending write's callback.
    this.#failed = once(this.#z, 'error').then(([error]) => {
      throw error;
    });
    this.#failed.catch(() => {});
  }

  /** Decodes `chunk`. Rejects with zlib's error (`code` Z_DATA_ERROR, ...) for corrupt data. */
  async write(chunk: Uint8Array): Promise<RawInflateStep> {
    const before = this.#fed;
    this.#fed += chunk.byteLength;
    const written = new Promise<void>((resolve) => this.#z.write(chunk, () => resolve()));
    await Promise.race([written, this.#failed]);
    // Every byte is consumed unless the stream ended; node:zlib counts consumed bytes in bytesWritten.
    const total = this.#z.bytesWritten;
    let consumed: number | undefined;
    if (total < this.#fed) {
      consumed = total - before;
      // The readable side ends once the last output has been emitted; wait for it so none is missed.
      if (!this.#ended) await Promise.race([once(this.#z, 'end'), this.#failed]);
    }
    const output = this.#output;
    this.#output = [];
    return { output, consumed };
  }

  close(): void {
    this.#z.destroy();
  }
}
