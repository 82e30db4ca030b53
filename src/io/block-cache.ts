/**
 * A caching byte source over a range-fetch function (an HTTP range reader of a registry blob, typically).
 * It turns arbitrary reads into aligned block fetches and:
 * - coalesces: concurrent reads of the same block share one fetch; adjacent missing blocks of one read are
 *   fetched as one range (up to `maxFetchBytes`);
 * - caches: an LRU of blocks in memory (`memoryBytes`), plus an optional disk cache that survives restarts;
 * - reads ahead: a read continuing a sequential stream prefetches a window after it that doubles per read
 *   from `readahead.initial` to `readahead.max`, as the kernel's page cache readahead does;
 * - retries failed fetches a bounded number of times with exponential backoff, except for errors retrying
 *   cannot fix (digest mismatch, not found, authentication).
 * A read resolves with exactly the bytes asked for or rejects; missing bytes are never made up.
 *
 * Disk cache layout (`cacheDir`, mode 0700), per `cacheId`, under the SHA-256 of the id:
 * - `KEY.data`: a sparse file of the source's size, blocks written at their offsets (0600);
 * - `KEY.json`: which blocks the data file holds, each with its CRC-32C, rewritten atomically (0600) after
 *   the data file is synced, so a block is listed only once its bytes are durable; a block whose bytes do
 *   not match its checksum on reading is fetched again;
 * - `KEY.lock`: the pid of the process using the entry; a second live process is refused.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, type FileHandle, mkdir, open, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErofsOciError, isErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource, Closable, ReadOptions } from './byte-source.ts';
import { crc32c } from './crc32c.ts';

/** Fetches exactly `length` bytes at `offset` of the underlying object. */
export type RangeFetch = (offset: number, length: number, signal?: AbortSignal) => Promise<Uint8Array>;

export interface BlockCacheOptions {
  /** Size of the underlying object in bytes. */
  size: number;
  /** Unit of fetching and caching. Default 1 MiB. */
  blockSize?: number;
  /** Memory LRU budget in bytes. Default 64 MiB. */
  memoryBytes?: number;
  /** Directory of the disk cache (created 0700); needs `cacheId`. */
  cacheDir?: string;
  /** What the cached bytes are (e.g. the blob digest); keys the disk cache entry. */
  cacheId?: string;
  /** Sequential readahead window, in bytes, or false to disable. Default { initial: 1 MiB, max: 8 MiB }. */
  readahead?: { initial: number; max: number } | false;
  /** Fetches in progress at once. Default 4. */
  parallel?: number;
  /** Largest single range fetch. Default 8 MiB (at least one block). */
  maxFetchBytes?: number;
  /** Retries of a failed fetch (so up to retries + 1 attempts). Default 3. */
  retries?: number;
  /** Delay before the first retry; doubles each time. Default 200 ms. */
  retryDelayMs?: number;
}

export interface BlockCacheStats {
  /** Calls of the fetch function, retries included. */
  fetches: number;
  bytesFetched: number;
  /** Blocks found in memory or on disk. */
  hits: number;
  /** Of the hits, those read from the disk cache. */
  diskHits: number;
  /** Blocks a read found already being fetched (coalesced into the running fetch). */
  joined: number;
  /** Blocks a read had to fetch. */
  misses: number;
  /** Blocks fetched by readahead. */
  readaheadBlocks: number;
  retries: number;
}

export interface BlockCache extends ByteSource, Closable {
  stats(): BlockCacheStats;
  /** Resolves once the disk cache (if any) is open; rejects with the reason it cannot be used. */
  ready(): Promise<void>;
}

const MiB = 1 << 20;

/** Errors that another attempt cannot fix. */
const PERMANENT = new Set(['digest-mismatch', 'not-found', 'auth', 'aborted', 'usage', 'unsupported']);

/** Creates the cache and waits for its disk cache to be usable. */
export async function openBlockCache(fetch: RangeFetch, options: BlockCacheOptions): Promise<BlockCache> {
  const cache = createBlockCache(fetch, options);
  try {
    await cache.ready();
  } catch (error) {
    await cache.close().catch(() => {
      // The open failure is the error worth reporting; closing a half-open cache has nothing to add.
    });
    throw error;
  }
  return cache;
}

/**
 * Creates the cache. The disk cache opens in the background: reads wait for it, and `ready()` reports
 * whether it could be opened (`openBlockCache` does both).
 */
export function createBlockCache(fetch: RangeFetch, options: BlockCacheOptions): BlockCache {
  const size = options.size;
  const blockSize = options.blockSize ?? MiB;
  const memoryBudget = options.memoryBytes ?? 64 * MiB;
  const readahead = options.readahead === undefined ? { initial: MiB, max: 8 * MiB } : options.readahead;
  const parallel = options.parallel ?? 4;
  const maxFetchBlocks = Math.max(1, Math.floor((options.maxFetchBytes ?? 8 * MiB) / blockSize));
  const retries = options.retries ?? 3;
  const retryDelayMs = options.retryDelayMs ?? 200;
  if (!Number.isSafeInteger(size) || size < 0)
    throw new ErofsOciError('usage', `Cannot create block cache: invalid size ${size}`);
  if (!Number.isSafeInteger(blockSize) || blockSize < 512) {
    throw new ErofsOciError('usage', `Cannot create block cache: block size ${blockSize} is below 512 bytes`);
  }
  if (!Number.isInteger(parallel) || parallel < 1)
    throw new ErofsOciError('usage', `Cannot create block cache: parallel must be at least 1`);
  if (readahead && !(readahead.initial > 0 && readahead.max >= readahead.initial)) {
    throw new ErofsOciError('usage', 'Cannot create block cache: readahead needs 0 < initial <= max');
  }
  const blockCount = Math.ceil(size / blockSize);
  const blockLength = (block: number) => Math.min(blockSize, size - block * blockSize);

  const stats: BlockCacheStats = {
    fetches: 0,
    bytesFetched: 0,
    hits: 0,
    diskHits: 0,
    joined: 0,
    misses: 0,
    readaheadBlocks: 0,
    retries: 0,
  };
  /** Blocks in memory, least recently used first (Map keeps insertion order). */
  const memory = new Map<number, Uint8Array>();
  let memoryBytes = 0;
  /** Blocks being fetched or loaded from disk. */
  const pending = new Map<number, Promise<Uint8Array>>();
  const slots = new FetchSlots(parallel);
  const lifetime = new AbortController();
  const streams = new ReadaheadStreams();
  let closed = false;

  const disk: Promise<DiskCache | null> =
    options.cacheDir === undefined
      ? Promise.resolve(null)
      : options.cacheId === undefined || options.cacheId === ''
        ? Promise.reject(
            new ErofsOciError(
              'usage',
              'Cannot open the disk cache: a cache id is needed with a cache directory',
            ),
          )
        : DiskCache.open(options.cacheDir, options.cacheId, size, blockSize);
  // Reads and `ready()` observe the failure; this handler only keeps it from being reported as unhandled.
  disk.catch(() => {});
  let diskCache: DiskCache | null = null;
  const diskReady = disk.then((d) => {
    diskCache = d;
  });
  diskReady.catch(() => {});

  function remember(block: number, bytes: Uint8Array): void {
    if (bytes.byteLength > memoryBudget) return;
    const old = memory.get(block);
    if (old) {
      memory.delete(block);
      memoryBytes -= old.byteLength;
    }
    memory.set(block, bytes);
    memoryBytes += bytes.byteLength;
    for (const [victim, victimBytes] of memory) {
      if (memoryBytes <= memoryBudget) break;
      memory.delete(victim);
      memoryBytes -= victimBytes.byteLength;
    }
  }

  function fromMemory(block: number): Uint8Array | undefined {
    const bytes = memory.get(block);
    if (bytes) {
      // Move to the most recently used end.
      memory.delete(block);
      memory.set(block, bytes);
    }
    return bytes;
  }

  /** Registers `promise` as the way to get `block` until it settles; successful bytes go to the caches. */
  function track(block: number, promise: Promise<Uint8Array>, store: boolean): Promise<Uint8Array> {
    pending.set(block, promise);
    promise.then(
      (bytes) => {
        if (pending.get(block) === promise) pending.delete(block);
        if (closed) return;
        remember(block, bytes);
        if (store) diskCache?.store(block, bytes);
      },
      () => {
        // The readers awaiting `promise` get the error; the block is simply no longer pending.
        if (pending.get(block) === promise) pending.delete(block);
      },
    );
    return promise;
  }

  /** One range fetch with retries, inside a fetch slot. */
  async function fetchRange(
    offset: number,
    length: number,
    priority: 'demand' | 'readahead',
  ): Promise<Uint8Array> {
    await slots.acquire(priority);
    try {
      for (let attempt = 0; ; attempt++) {
        if (closed) throw new ErofsOciError('aborted', 'the block cache is closed');
        stats.fetches++;
        try {
          const bytes = await fetch(offset, length, lifetime.signal);
          if (bytes.byteLength !== length) {
            throw new ErofsOciError(
              'io',
              `the fetch returned ${bytes.byteLength} bytes instead of ${length}`,
            );
          }
          stats.bytesFetched += length;
          return bytes;
        } catch (error) {
          const permanent = isErofsOciError(error) && PERMANENT.has(error.code);
          if (permanent || attempt >= retries || closed) {
            if (isErofsOciError(error) && (permanent || closed)) throw error;
            const reason = error instanceof Error ? error.message : String(error);
            const code = isErofsOciError(error) ? error.code : 'io';
            throw new ErofsOciError(
              code,
              `Cannot fetch ${length} bytes at offset ${offset} after ${attempt + 1} attempts: ${reason}`,
              {
                cause: error,
              },
            );
          }
          stats.retries++;
          await delay(retryDelayMs * 2 ** attempt * (0.5 + Math.random() / 2), lifetime.signal);
        }
      }
    } finally {
      slots.release();
    }
  }

  /** Starts fetching the consecutive blocks `first..first+count-1` as one range; returns their promises. */
  function fetchBlocks(
    first: number,
    count: number,
    priority: 'demand' | 'readahead',
  ): Promise<Uint8Array>[] {
    const offset = first * blockSize;
    const length = Math.min(size, (first + count) * blockSize) - offset;
    const whole = fetchRange(offset, length, priority);
    const promises: Promise<Uint8Array>[] = [];
    for (let i = 0; i < count; i++) {
      const block = first + i;
      // Copies, so that the cache keeps block-sized buffers rather than views pinning the whole range.
      const part = whole.then((bytes) => bytes.slice(i * blockSize, i * blockSize + blockLength(block)));
      promises.push(track(block, part, true));
    }
    return promises;
  }

  /** Starts getting `blocks` (sorted, none cached or pending): from disk where present, else fetched. */
  function startLoads(blocks: number[], priority: 'demand' | 'readahead'): Map<number, Promise<Uint8Array>> {
    const started = new Map<number, Promise<Uint8Array>>();
    const toFetch: number[] = [];
    for (const block of blocks) {
      if (diskCache?.has(block)) {
        const cache = diskCache;
        const load = (async () => {
          const bytes = await cache.load(block, blockLength(block));
          if (bytes) {
            stats.diskHits++;
            return bytes;
          }
          // The disk copy is damaged or unreadable: fetch the block again.
          const [fetched] = fetchBlocks(block, 1, priority);
          return fetched as Promise<Uint8Array>;
        })();
        started.set(block, track(block, load, false));
      } else {
        toFetch.push(block);
      }
    }
    // Adjacent blocks become one range, bounded in length.
    let runStart = 0;
    for (let i = 1; i <= toFetch.length; i++) {
      const runFirst = toFetch[runStart] as number;
      const contiguous =
        i < toFetch.length && toFetch[i] === runFirst + (i - runStart) && i - runStart < maxFetchBlocks;
      if (contiguous) continue;
      if (runStart < toFetch.length) {
        const promises = fetchBlocks(runFirst, i - runStart, priority);
        for (const [j, promise] of promises.entries()) started.set(runFirst + j, promise);
      }
      runStart = i;
    }
    return started;
  }

  function isAvailable(block: number): boolean {
    return memory.has(block) || pending.has(block) || diskCache?.has(block) === true;
  }

  /** Sequential detection and prefetch after a read of blocks `first..last`. */
  function readAhead(first: number, last: number): void {
    if (!readahead) return;
    const window = streams.advance(first, last, readahead, blockSize);
    if (window === 0) return;
    const windowBlocks = Math.ceil(window / blockSize);
    const end = Math.min(blockCount - 1, last + windowBlocks);
    const missing: number[] = [];
    for (let block = last + 1; block <= end; block++) if (!isAvailable(block)) missing.push(block);
    // As the kernel's async readahead: refill when at least half the window is missing, in one go, rather
    // than a block at a time as the stream advances.
    if (missing.length === 0 || missing.length < Math.max(1, Math.floor(windowBlocks / 2))) return;
    stats.readaheadBlocks += missing.length;
    for (const promise of startLoads(missing, 'readahead').values()) {
      promise.catch(() => {
        // A failed prefetch is not an error of any read; a read of these blocks fetches them again.
      });
    }
  }

  async function read(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Uint8Array> {
    throwIfAborted(readOptions.signal);
    if (closed) throw new ErofsOciError('internal', 'Cannot read: the block cache is closed');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ErofsOciError(
        'internal',
        `Cannot read block cache: invalid range offset ${offset} length ${length}`,
      );
    }
    if (offset + length > size) {
      throw new ErofsOciError(
        'corrupt',
        `Cannot read ${length} bytes at offset ${offset} of a ${size}-byte object`,
      );
    }
    if (length === 0) return new Uint8Array(0);
    if (diskCache === null && options.cacheDir !== undefined) await raceAbort(diskReady, readOptions.signal);

    const first = Math.floor(offset / blockSize);
    const last = Math.floor((offset + length - 1) / blockSize);
    // Everything up to `startLoads` runs without awaiting, so a concurrent read sees our pending blocks.
    const parts: (Uint8Array | Promise<Uint8Array>)[] = [];
    const missing: number[] = [];
    for (let block = first; block <= last; block++) {
      const cached = fromMemory(block);
      const running = cached ? undefined : pending.get(block);
      if (cached) stats.hits++;
      else if (running) stats.joined++;
      else missing.push(block);
      parts.push(cached ?? running ?? NOT_YET);
    }
    if (missing.length > 0) {
      for (const block of missing) if (!diskCache?.has(block)) stats.misses++;
      for (const block of missing) if (diskCache?.has(block)) stats.hits++;
      const started = startLoads(missing, 'demand');
      for (const [block, promise] of started) parts[block - first] = promise;
    }
    readAhead(first, last);

    const blocks = await raceAbort(Promise.all(parts), readOptions.signal);
    const out = new Uint8Array(length);
    let at = 0;
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i] as Uint8Array;
      const blockStart = (first + i) * blockSize;
      const from = Math.max(offset, blockStart) - blockStart;
      const to = Math.min(offset + length, blockStart + block.byteLength) - blockStart;
      out.set(block.subarray(from, to), at);
      at += to - from;
    }
    return out;
  }

  return {
    size,
    read,
    stats: () => ({ ...stats }),
    ready: () => diskReady,
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      lifetime.abort(new ErofsOciError('aborted', 'the block cache is closed'));
      memory.clear();
      memoryBytes = 0;
      const d = await disk.catch(() => null);
      await d?.close();
    },
  };
}

/** Placeholder replaced before anything awaits it. */
const NOT_YET: Promise<Uint8Array> = Promise.resolve(new Uint8Array(0));

/**
 * A counting semaphore for range fetches where demand reads overtake queued readahead: prefetching must
 * not delay what a reader is waiting for.
 */
class FetchSlots {
  readonly #max: number;
  #used = 0;
  readonly #demand: (() => void)[] = [];
  readonly #readahead: (() => void)[] = [];

  constructor(max: number) {
    this.#max = max;
  }

  acquire(priority: 'demand' | 'readahead'): Promise<void> {
    if (this.#used < this.#max) {
      this.#used++;
      return Promise.resolve();
    }
    return new Promise((resolve) => (priority === 'demand' ? this.#demand : this.#readahead).push(resolve));
  }

  release(): void {
    const next = this.#demand.shift() ?? this.#readahead.shift();
    if (next) next();
    else this.#used--;
  }
}

/**
 * Recently seen sequential streams (several readers, e.g. NBD connections, may each stream through a
 * different region). A read starting in or just after a stream's last block continues it and grows its
 * window (or lands within that window); any other read starts a new stream, with readahead only when it starts at offset 0.
 */
class ReadaheadStreams {
  #streams: { next: number; window: number }[] = [];

  advance(first: number, last: number, limits: { initial: number; max: number }, blockSize: number): number {
    // Concurrent readers of one stream (requests in flight on an NBD connection) arrive slightly out of
    // order: a read that lands inside the stream's current window still continues it.
    const index = this.#streams.findIndex(
      (s) => first >= s.next - 1 && first <= s.next + Math.ceil(s.window / blockSize),
    );
    let stream: { next: number; window: number };
    if (index >= 0) {
      stream = this.#streams[index] as { next: number; window: number };
      this.#streams.splice(index, 1);
      // Grow once per block boundary crossed, not per small read within one block.
      if (first >= stream.next)
        stream.window = stream.window === 0 ? limits.initial : Math.min(limits.max, stream.window * 2);
      stream.next = Math.max(stream.next, last + 1);
    } else {
      stream = { next: last + 1, window: first === 0 ? limits.initial : 0 };
    }
    this.#streams.unshift(stream);
    if (this.#streams.length > 16) this.#streams.pop();
    return stream.window;
  }
}

interface CacheRecord {
  format: 'erofs-oci-block-cache';
  version: 1;
  cacheId: string;
  size: number;
  blockSize: number;
  /** [block index, CRC-32C of its bytes] for every block the data file holds durably. */
  blocks: [number, number][];
}

interface CachePaths {
  data: string;
  record: string;
  lock: string;
}

/** The on-disk half of the cache (see the module comment for the layout). */
class DiskCache {
  readonly #data: FileHandle;
  readonly #paths: CachePaths;
  readonly #base: Omit<CacheRecord, 'blocks'>;
  readonly #blockSize: number;
  /** Blocks whose bytes are in the data file (written, maybe not yet synced), with their checksums. */
  readonly #present = new Map<number, number>();
  #writes = new Set<Promise<void>>();
  #dirty = false;
  #flushTimer: NodeJS.Timeout | null = null;
  #flushing: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(
    data: FileHandle,
    paths: CachePaths,
    base: Omit<CacheRecord, 'blocks'>,
    blockSize: number,
  ) {
    this.#data = data;
    this.#paths = paths;
    this.#base = base;
    this.#blockSize = blockSize;
  }

  static async open(dir: string, cacheId: string, size: number, blockSize: number): Promise<DiskCache> {
    const action = `Cannot open the disk cache in ${dir}`;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
    } catch (error) {
      throw fsError(action, error);
    }
    const key = createHash('sha256').update(cacheId).digest('hex').slice(0, 40);
    const paths = {
      data: join(dir, `${key}.data`),
      record: join(dir, `${key}.json`),
      lock: join(dir, `${key}.lock`),
    };
    await takeLock(paths.lock, `${action} for ${cacheId}`);
    const base = { format: 'erofs-oci-block-cache', version: 1, cacheId, size, blockSize } as const;
    let data: FileHandle | undefined;
    try {
      const record = await readRecord(paths.record);
      const reusable =
        record !== null &&
        record.cacheId === cacheId &&
        record.size === size &&
        record.blockSize === blockSize &&
        Array.isArray(record.blocks);
      data = await open(paths.data, constants.O_RDWR | constants.O_CREAT, 0o600);
      await data.chmod(0o600);
      if (!reusable) {
        await data.truncate(0);
        await unlink(paths.record).catch(() => {
          // No record (or an unreadable one we are replacing): nothing to remove.
        });
      }
      await data.truncate(size);
      const cache = new DiskCache(data, paths, base, blockSize);
      if (reusable && record) {
        for (const entry of record.blocks) {
          if (Array.isArray(entry) && Number.isInteger(entry[0]) && Number.isInteger(entry[1])) {
            cache.#present.set(entry[0], entry[1]);
          }
        }
      }
      return cache;
    } catch (error) {
      await data?.close().catch(() => {});
      await unlink(paths.lock).catch(() => {});
      throw isErofsOciError(error) ? error : fsError(action, error);
    }
  }

  has(block: number): boolean {
    return this.#present.has(block);
  }

  /** The block's bytes, or null when they are unreadable or do not match their checksum. */
  async load(block: number, length: number): Promise<Uint8Array | null> {
    const expected = this.#present.get(block);
    if (expected === undefined || this.#closed) return null;
    const bytes = new Uint8Array(length);
    try {
      let done = 0;
      while (done < length) {
        const { bytesRead } = await this.#data.read(
          bytes,
          done,
          length - done,
          block * this.#blockSize + done,
        );
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      if (done === length && crc32c(bytes) === expected) return bytes;
    } catch {
      // An unreadable cache block is a cache miss: the caller fetches the bytes again.
    }
    this.#present.delete(block);
    this.#dirty = true;
    return null;
  }

  /** Writes a fetched block in the background; the record lists it after the next sync. */
  store(block: number, bytes: Uint8Array): void {
    if (this.#closed || this.#present.has(block)) return;
    const write = (async () => {
      try {
        await this.#data.write(bytes, 0, bytes.byteLength, block * this.#blockSize);
        if (!this.#closed) {
          this.#present.set(block, crc32c(bytes));
          this.#dirty = true;
          this.#scheduleFlush();
        }
      } catch {
        // A block that cannot be written (disk full) stays uncached; reads fetch it again.
      }
    })();
    this.#writes.add(write);
    void write.finally(() => this.#writes.delete(write));
  }

  #scheduleFlush(): void {
    if (this.#flushTimer) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = null;
      this.#flushing = this.#flushing
        .then(() => this.#flush())
        .catch(() => {
          // The record stays as it was; the blocks are listed at the next successful flush.
        });
    }, 500);
  }

  /** Syncs the data file, then atomically replaces the record with what the data file now holds. */
  async #flush(): Promise<void> {
    if (!this.#dirty) return;
    this.#dirty = false;
    const blocks: [number, number][] = [...this.#present].sort((a, b) => a[0] - b[0]);
    await this.#data.datasync();
    const record: CacheRecord = { ...this.#base, blocks };
    const temporary = `${this.#paths.record}.${process.pid}.tmp`;
    await writeFile(temporary, JSON.stringify(record), { mode: 0o600 });
    await rename(temporary, this.#paths.record);
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.#writes);
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    this.#closed = true;
    await this.#flushing;
    await this.#flush().catch(() => {
      // Unlisted blocks are fetched again next time; closing must still release the file and the lock.
    });
    await this.#data.close();
    await unlink(this.#paths.lock).catch(() => {});
  }
}

async function readRecord(path: string): Promise<CacheRecord | null> {
  try {
    const record = JSON.parse(await readFile(path, 'utf8')) as CacheRecord;
    return record?.format === 'erofs-oci-block-cache' && record.version === 1 ? record : null;
  } catch {
    // Missing or unparsable (e.g. written by a crashed process): start the entry afresh.
    return null;
  }
}

/** Creates `path` holding our pid; takes over a lock whose process is gone. */
async function takeLock(path: string, action: string): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(action, error);
    }
    const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
      throw new ErofsOciError('usage', `${action}: it is in use by process ${pid}`, {
        hint: 'give each server its own --cache-dir, or stop the other one',
      });
    }
    if (pid === process.pid)
      throw new ErofsOciError('usage', `${action}: it is already open in this process`);
    await unlink(path).catch(() => {});
  }
  throw new ErofsOciError('io', `${action}: cannot take the lock ${path}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function fsError(action: string, error: unknown): ErofsOciError {
  const code = (error as NodeJS.ErrnoException)?.code;
  const reason = (error as Error)?.message ?? String(error);
  if (code === 'EACCES' || code === 'EPERM')
    return new ErofsOciError('auth', `${action}: permission denied`, { cause: error });
  return new ErofsOciError('io', `${action}: ${reason}`, { cause: error });
}

function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new ErofsOciError('aborted', 'the block cache is closed', { cause: signal.reason }));
      return;
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new ErofsOciError('aborted', 'the block cache is closed', { cause: signal.reason }));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Waits for `promise`, or rejects as soon as `signal` fires (the work behind `promise` goes on for others). */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted)
    return Promise.reject(new ErofsOciError('aborted', 'operation aborted', { cause: signal.reason }));
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(new ErofsOciError('aborted', 'operation aborted', { cause: signal.reason }));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
