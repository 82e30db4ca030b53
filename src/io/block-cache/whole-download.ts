/**
 * Origins that ignore ranges (an HTTP server answering 200 to `Range`): the first range fetch runs alone
 * and decides how the origin serves. After a whole answer the object is downloaded once, in order, into
 * the cache, and every block is had from that download, instead of every fetch downloading the object
 * again up to its range.
 */
import { ErofsOciError, isErofsOciError } from '../../errors.ts';
import type { BlockGrid } from '../block-grid.ts';
import { type Deferred, deferred } from './deferred.ts';
import { DiskCache } from './disk-cache.ts';
import type { FetchPriority, RangeFetcher } from './range-fetcher.ts';

/** For origins that may ignore ranges and answer with the whole object instead (HTTP 200 to `Range`). */
export interface WholeFetch {
  /** Whether the origin answered the range fetch that produced `bytes` with the whole object. */
  answeredWhole(bytes: Uint8Array): boolean;
  /** The whole object from its start, in order; throws when it cannot be had. */
  fetch(signal: AbortSignal): AsyncIterable<Uint8Array>;
}

/** What the download needs of the cache it fills. */
export interface WholeDownloadHost {
  grid: BlockGrid;
  name: string;
  /** Absent: the origin is taken to serve ranges. */
  whole: WholeFetch | undefined;
  /** Objects larger than this go to a temporary file when there is no disk cache. */
  memoryBudget: number;
  fetcher: RangeFetcher;
  signal: AbortSignal;
  stats: { fetches: number; wholeDownloads: number; bytesFetched: number };
  log(line: string): void;
  /** The disk cache, or null. */
  diskCache(): DiskCache | null;
  /** Makes `file`, a temporary file, where the cache keeps blocks instead of a disk cache. */
  useTemporaryFile(file: DiskCache): void;
  /** The verification failure every read fails with, if any. */
  failure(): ErofsOciError | undefined;
  closed(): boolean;
  /**
   * Takes a block the download completed into the caches and the verifier; resolves with the bytes kept
   * for it (see src/io/block-cache/fetch-stage.ts), rejects if it is refused.
   */
  accept(block: number, bytes: Uint8Array): Promise<Uint8Array>;
  /** The download itself proved the object wrong (the origin checks whole downloads). */
  enterFailure(error: ErofsOciError): void;
}

export class WholeDownload {
  readonly #host: WholeDownloadHost;
  /**
   * How the origin serves: unknown until the first range fetch answers (only with `whole`), then by ranges
   * or whole. While unknown, one fetch probes and the others wait for its answer.
   */
  #mode: 'unknown' | 'ranges' | 'whole';
  #probe: Promise<void> | null = null;
  /** Blocks readers wait for, resolved as the download passes them. */
  readonly #waiters = new Map<number, Deferred<Uint8Array>>();
  #download: Promise<void> | null = null;
  /** Without a disk cache, for an object larger than the memory budget: a private temp file. */
  #spill: Promise<void> | null = null;

  constructor(host: WholeDownloadHost) {
    this.#host = host;
    this.#mode = host.whole ? 'unknown' : 'ranges';
  }

  /** Whether the origin is known to ignore ranges: blocks come from `block`. */
  get isWhole(): boolean {
    return this.#mode === 'whole';
  }

  /**
   * A range fetch, or null when the object comes whole instead. While the mode is unknown the first fetch
   * probes alone and the others wait for its answer; should the probe fail, they fetch side by side (each
   * answer decides as well), so that a registry that is down costs each of them one retry budget, not a
   * queue of them.
   */
  fetchRange(
    offset: number,
    length: number,
    priority: FetchPriority,
    sink: (chunk: Uint8Array) => void,
  ): Promise<Uint8Array | null> {
    const fetcher = this.#host.fetcher;
    if (this.#mode === 'whole') return Promise.resolve(null);
    if (this.#mode === 'ranges') return fetcher.fetch(offset, length, priority, sink);
    if (this.#probe) {
      return this.#probe.then(() =>
        this.#mode === 'whole' ? null : this.#decide(fetcher.fetch(offset, length, priority, sink)),
      );
    }
    const fetched = this.#decide(fetcher.fetch(offset, length, priority, sink));
    this.#probe = fetched
      .then(
        () => {},
        () => {
          // A failed probe decides nothing: the fetches waiting for it go ahead, the next one probes again.
        },
      )
      .finally(() => {
        this.#probe = null;
      });
    return fetched;
  }

  /** The block once the download passes it (starting the download if none is running). */
  block(block: number): Promise<Uint8Array> {
    const failure = this.#host.failure();
    if (failure) return Promise.reject(failure);
    let waiter = this.#waiters.get(block);
    if (!waiter) {
      waiter = deferred();
      this.#waiters.set(block, waiter);
    }
    this.#download ??= this.#downloadWhole().finally(() => {
      this.#download = null;
    });
    return waiter.promise;
  }

  /** Fails every block still awaited (the object failed verification, or the cache closed). */
  reject(error: unknown): void {
    for (const waiter of this.#waiters.values()) waiter.reject(error);
    this.#waiters.clear();
  }

  /** Waits for the download and the temporary file to stop (after the cache's signal aborted them). */
  async stopped(): Promise<void> {
    await this.#download?.catch(() => {});
    await this.#spill?.catch(() => {});
  }

  /** The first range fetch to succeed tells how the origin serves. */
  #decide(fetched: Promise<Uint8Array>): Promise<Uint8Array> {
    return fetched.then((bytes) => {
      if (this.#mode === 'unknown') {
        if (this.#host.whole?.answeredWhole(bytes)) this.#switchToWhole();
        else this.#mode = 'ranges';
      }
      return bytes;
    });
  }

  #switchToWhole(): void {
    const host = this.#host;
    this.#mode = 'whole';
    host.log(`the origin of ${host.name} ignores ranges: downloading it once, whole, into the cache`);
    if (host.diskCache() === null && host.grid.size > host.memoryBudget) {
      this.#spill = DiskCache.openTemporary(host.grid).then((file) => {
        if (host.closed()) return file.close();
        host.useTemporaryFile(file);
      });
      this.#spill.catch(() => {
        // The download reports it: it cannot keep the blocks anywhere.
      });
    }
  }

  /** One download of the whole object, in order, into the caches; fails the waiters it leaves behind. */
  async #downloadWhole(): Promise<void> {
    const host = this.#host;
    const { grid, name, stats } = host;
    stats.fetches++;
    stats.wholeDownloads++;
    let block = 0;
    let filled = 0;
    let buffer = new Uint8Array(grid.length(0));
    try {
      if (this.#spill) await this.#spill;
      const whole = host.whole as WholeFetch;
      for await (const chunk of whole.fetch(host.signal)) {
        const failure = host.failure();
        if (failure) throw failure;
        stats.bytesFetched += chunk.byteLength;
        for (let at = 0; at < chunk.byteLength; ) {
          if (block >= grid.count)
            throw new ErofsOciError('io', `the download of ${name} is longer than ${grid.size} bytes`);
          const take = Math.min(buffer.byteLength - filled, chunk.byteLength - at);
          buffer.set(chunk.subarray(at, at + take), filled);
          filled += take;
          at += take;
          if (filled === buffer.byteLength) {
            await this.#deliver(block, buffer);
            block++;
            filled = 0;
            if (block < grid.count) buffer = new Uint8Array(grid.length(block));
          }
        }
      }
      if (block < grid.count) {
        throw new ErofsOciError(
          'io',
          `the download of ${name} ended at byte ${grid.start(block) + filled} of ${grid.size}`,
        );
      }
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      const failure = host.failure();
      const failed: ErofsOciError =
        failure !== undefined && error === failure
          ? failure
          : new ErofsOciError(
              host.closed() ? 'aborted' : isErofsOciError(error) ? error.code : 'io',
              `Cannot download ${name} whole (the origin ignores ranges): ${reason}`,
              { cause: error },
            );
      // The origin's own check of the whole download (the registry client verifies blob streams).
      if (isErofsOciError(error, 'digest-mismatch')) host.enterFailure(failed);
      this.reject(failed);
    }
  }

  /** A block the download completed goes to the caches, the verifier and its readers. */
  async #deliver(block: number, bytes: Uint8Array): Promise<void> {
    const waiter = this.#waiters.get(block);
    let kept: Uint8Array;
    try {
      kept = await this.#host.accept(block, bytes);
    } catch (error) {
      this.#waiters.delete(block);
      waiter?.reject(error);
      throw error;
    }
    if (waiter) {
      this.#waiters.delete(block);
      waiter.resolve(kept);
    }
  }
}
