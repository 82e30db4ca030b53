/**
 * Ordered streams with look-ahead: layers must be applied in order, but downloading them one after the other
 * wastes the network while the writer works. The stream whose turn it is is read directly; the next few are
 * downloaded meanwhile into spill files (private temporary directory, removed at the end), and read from
 * there when their turn comes. Nothing is held in memory.
 *
 * With `decode`, every stream is decoded on its way: the look-ahead ones are spilled decoded, so that their
 * decompression (node:zlib, on the thread pool) runs on the other core while the current stream is applied,
 * instead of after it. The spill then holds uncompressed bytes: at most `concurrency - 1` layers of them.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ErofsOciError } from '../errors.ts';

export interface LazyStream {
  name: string;
  open(signal: AbortSignal): AsyncIterable<Uint8Array>;
}

export interface PrefetchOptions {
  /** How many streams may be transferring at once, the current one included. */
  concurrency: number;
  /** Where the spill directory is created. */
  directory: string;
  signal?: AbortSignal;
  /** Bytes received so far for stream `index`, direct or spilled (before `decode`). */
  onBytes?: (index: number, bytes: number) => void;
  /** Applied to every stream's received bytes (e.g. decompression); what `stream()` yields is its output. */
  decode?: (input: AsyncIterable<Uint8Array>, signal: AbortSignal) => AsyncIterable<Uint8Array>;
}

export class Prefetcher {
  readonly #streams: (LazyStream | null)[];
  readonly #options: PrefetchOptions;
  readonly #controller = new AbortController();
  readonly #downloads = new Map<number, Promise<string>>();
  #spillDir: Promise<string> | undefined;

  /** `streams[i]` null: not a lazy stream (never prefetched, never asked for). */
  constructor(streams: (LazyStream | null)[], options: PrefetchOptions) {
    this.#streams = streams;
    this.#options = options;
    options.signal?.addEventListener('abort', () => this.#controller.abort(options.signal?.reason), {
      once: true,
    });
  }

  /** The bytes of stream `index`; starts the look-ahead downloads of the following ones. */
  async *stream(index: number): AsyncGenerator<Uint8Array> {
    const last = Math.min(this.#streams.length, index + Math.max(1, this.#options.concurrency));
    for (let next = index + 1; next < last; next++) this.#startDownload(next);
    const download = this.#downloads.get(index);
    if (download === undefined) {
      yield* this.#received(index);
      return;
    }
    const path = await download;
    yield* createReadStream(path, {
      highWaterMark: 1 << 20,
      signal: this.#controller.signal,
    }) as AsyncIterable<Buffer>;
    await rm(path, { force: true });
  }

  /** Stops downloads and removes spill files. */
  async close(): Promise<void> {
    this.#controller.abort(new ErofsOciError('aborted', 'build finished'));
    await Promise.allSettled(this.#downloads.values());
    if (this.#spillDir) await rm(await this.#spillDir, { recursive: true, force: true });
  }

  #startDownload(index: number): void {
    if (this.#downloads.has(index) || this.#streams[index] === null) return;
    const download = (async () => {
      this.#spillDir ??= mkdtemp(join(this.#options.directory, '.erofs-oci-layers-'));
      const path = join(await this.#spillDir, `${index}`);
      // pipeline, not hand-written writes: a failure while a write is on its way to the disk must not turn
      // into an unhandled 'error' event of the destroyed file stream.
      await pipeline(this.#received(index), createWriteStream(path, { mode: 0o600 }));
      return path;
    })();
    // Failures surface when the stream's turn comes; until then they must not count as unhandled.
    download.catch(() => {});
    this.#downloads.set(index, download);
  }

  /** Stream `index` as received, counted, then decoded when a decoder is set. */
  #received(index: number): AsyncIterable<Uint8Array> {
    const signal = this.#controller.signal;
    const counted = this.#counted(index, (this.#streams[index] as LazyStream).open(signal));
    return this.#options.decode ? this.#options.decode(counted, signal) : counted;
  }

  async *#counted(index: number, input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    let bytes = 0;
    for await (const chunk of input) {
      bytes += chunk.byteLength;
      this.#options.onBytes?.(index, bytes);
      yield chunk;
    }
  }
}
