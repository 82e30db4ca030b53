/**
 * A caching byte source over a range-fetch function (an HTTP range reader of a registry blob, typically).
 * It turns arbitrary reads into aligned block fetches and:
 * - coalesces: concurrent reads of the same block share one fetch; adjacent missing blocks of one read are
 *   fetched as one range (up to `maxFetchBytes`);
 * - caches: an LRU of blocks in memory (`memoryBytes`), plus an optional disk cache that survives restarts;
 * - reads ahead: a read continuing a sequential stream prefetches a window after it that doubles per read
 *   from `readahead.initial` to `readahead.max`, as the kernel's page cache readahead does;
 * - retries failed fetches a bounded number of times with exponential backoff, except for errors retrying
 *   cannot fix (digest mismatch, not found, authentication);
 * - copes with an origin that ignores ranges (`whole`; an HTTP server answering 200 to `Range`): the first
 *   range fetch runs alone and decides. After a whole answer the object is downloaded once, in order, into
 *   the cache — the disk cache, else memory when the object fits the budget, else a private temporary file
 *   — and every read is served from there, waiting for the download to pass its blocks, instead of every
 *   fetch downloading the object again up to its range;
 * - verifies the object against its digest (`digest`; see "Integrity").
 * A read resolves with exactly the bytes asked for or rejects; missing bytes are never made up.
 *
 * Integrity. Ranges cannot be checked one by one: only the whole object has a digest. The cache hashes the
 * object in order as blocks come in (a running hash over blocks 0, 1, 2, … fed from fetches, memory and the
 * disk cache) and keeps a keyed fingerprint (GMAC) of every block it has hashed. What that guarantees:
 * - once every block has been fetched at least once, no read is answered before the running hash has
 *   reached the end and matched; a read arriving meanwhile waits for the verdict. On a mismatch the memory
 *   and disk caches are dropped and every read fails with 'digest-mismatch' from then on (the NBD server
 *   answers EIO), so a client reading the whole object (nbdcopy) gets an error, never a complete copy of
 *   wrong bytes;
 * - a block fetched again after it was hashed (evicted, or damaged on disk) must equal its first copy, or
 *   its read fails with 'digest-mismatch';
 * - reads answered before every block has been fetched carry bytes not yet verified, as any lazy read must;
 * - the running hash needs each block while it is still at hand. Blocks fetched in order (sequential copies)
 *   cost one hash pass and nothing else; blocks ahead of it wait in a side table (bounded by a quarter of
 *   the memory budget, on top of it), in memory or in the disk cache. Without a disk cache, a block
 *   evicted from memory before the hash reached it goes to a private temporary file (opened at the first
 *   such eviction, unlinked from the start, closed with the verdict, at most 1 GiB), so that readers
 *   working on several regions at once (nbdcopy's threads) still get a verdict. Only a block that file
 *   cannot take (full, or not writable) stalls the verification when evicted early, until a read fetches
 *   it again (`stats().verification` says 'pending'), so random access far ahead of the hash may stay
 *   unverified. With a disk cache every block stays at hand and the verdict comes with the last block.
 *   A verified disk entry is marked so in its record and is not hashed again when reopened (its blocks
 *   keep their CRC-32C; a damaged one fetched again then has no first copy to be compared with, and
 *   clears the mark for the next opening).
 *
 * The disk cache (`cacheDir`): see src/io/block-cache/disk-cache.ts for its files.
 *
 * Where each concern lives (src/io/block-cache/): `memory-lru.ts` and `read-coverage.ts` (the memory
 * cache and its eviction order), `readahead.ts`, `range-fetcher.ts` and `fetch-slots.ts` (fetching with
 * retries, demand before readahead), `whole-download.ts`, `fetch-stage.ts` (what a fetched block becomes
 * before it is cached), `ordered-verifier.ts` and `hash-spill.ts` (integrity), `disk-cache.ts` and
 * `disk-record.ts` (the disk cache). This file ties them together: which block comes from where.
 */
import { ErofsOciError, raceAbort, throwIfAborted } from '../errors.ts';
import { BlockGrid } from './block-grid.ts';
import type { Loan, ReadOptions } from './byte-source.ts';
import { BlockPool } from './block-cache/block-pool.ts';
import { BlockCutter } from './block-cache/block-cutter.ts';
import { type Deferred, deferred } from './block-cache/deferred.ts';
import { DiskCache } from './block-cache/disk-cache.ts';
import { asFetched } from './block-cache/fetch-stage.ts';
import { HashSpill } from './block-cache/hash-spill.ts';
import { MemoryLru } from './block-cache/memory-lru.ts';
import { OrderedVerifier } from './block-cache/ordered-verifier.ts';
import { type FetchPriority, type RangeFetch, RangeFetcher } from './block-cache/range-fetcher.ts';
import { Readahead } from './block-cache/readahead.ts';
import type { BlockCache, BlockCacheOptions, BlockCacheStats } from './block-cache/types.ts';
import { WholeDownload } from './block-cache/whole-download.ts';

export { isCacheVerified, readCachedHead } from './block-cache/disk-record.ts';
export type { FetchStage } from './block-cache/fetch-stage.ts';
export type { RangeFetch } from './block-cache/range-fetcher.ts';
export type { BlockCache, BlockCacheOptions, BlockCacheStats, Verification } from './block-cache/types.ts';
export type { WholeFetch } from './block-cache/whole-download.ts';

const MiB = 1 << 20;

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
  const readaheadLimits =
    options.readahead === undefined ? { initial: MiB, max: 16 * MiB } : options.readahead;
  const parallel = options.parallel ?? 4;
  const maxFetchBlocks = Math.max(1, Math.floor((options.maxFetchBytes ?? 16 * MiB) / blockSize));
  const name = options.name ?? options.digest ?? options.cacheId ?? 'the cached object';
  const log = options.log ?? (() => {});
  const stage = options.stage ?? asFetched;
  if (!Number.isInteger(parallel) || parallel < 1)
    throw new ErofsOciError('usage', `Cannot create block cache: parallel must be at least 1`);
  if (readaheadLimits && !(readaheadLimits.initial > 0 && readaheadLimits.max >= readaheadLimits.initial)) {
    throw new ErofsOciError('usage', 'Cannot create block cache: readahead needs 0 < initial <= max');
  }
  const grid = new BlockGrid(size, blockSize, options.anchors);
  const blockCount = grid.count;

  const stats: Omit<BlockCacheStats, 'verification' | 'buffersReused'> = {
    fetches: 0,
    bytesFetched: 0,
    hits: 0,
    diskHits: 0,
    joined: 0,
    misses: 0,
    readaheadBlocks: 0,
    retries: 0,
    wholeDownloads: 0,
  };
  const readahead = new Readahead(grid, readaheadLimits, memoryBudget);
  /** Buffers of fetched blocks, recycled once nothing holds them (see block-cache/block-pool.ts). */
  const pool = new BlockPool(blockSize, Math.max(2, Math.floor(memoryBudget / blockSize / 8)));
  const memory = new MemoryLru(
    grid,
    memoryBudget,
    (block, bytes, readThrough) => {
      keepForHash(block, bytes);
      readahead.evicted(block, readThrough);
    },
    pool,
  );
  /** Blocks being fetched or loaded from disk. */
  const pending = new Map<number, Promise<Uint8Array>>();
  const lifetime = new AbortController();
  let closed = false;
  /** Set once the object failed verification: every read fails with it. */
  let failure: ErofsOciError | undefined;
  /** The disk cache, or the temporary file of a whole download; null while neither exists. */
  let diskCache: DiskCache | null = null;

  const fetcher = new RangeFetcher(fetch, {
    parallel,
    retries: options.retries ?? 3,
    retryDelayMs: options.retryDelayMs ?? 200,
    signal: lifetime.signal,
    stats,
    throwIfStopped() {
      if (closed) throw new ErofsOciError('aborted', 'the block cache is closed');
      if (failure) throw failure;
    },
  });
  const origin = new WholeDownload({
    grid,
    name,
    whole: options.whole,
    memoryBudget,
    fetcher,
    signal: lifetime.signal,
    stats,
    log,
    diskCache: () => diskCache,
    useTemporaryFile: (file) => {
      diskCache = file;
    },
    failure: () => failure,
    closed: () => closed,
    accept,
    enterFailure,
  });

  const verifier: OrderedVerifier | null =
    options.digest === undefined
      ? null
      : new OrderedVerifier({
          digest: options.digest,
          name,
          size,
          grid,
          aheadBudget: Math.max(4 * blockSize, Math.floor(memoryBudget / 4)),
          lookup: (block): Uint8Array | Promise<Uint8Array | null> | undefined => {
            const bytes = memory.peek(block);
            if (bytes) return bytes;
            if (diskCache?.has(block)) return diskCache.load(block, grid.length(block));
            return hashSpill?.lookup(block);
          },
          verified: () => {
            log(`verified ${name}: its ${size} bytes match the digest`);
            diskCache?.markVerified();
            void hashSpill?.close();
          },
          failed: (error) => {
            void hashSpill?.close();
            enterFailure(error);
          },
          hold: (bytes) => pool.retain(bytes),
          drop: (bytes) => pool.release(bytes),
        });
  /** Blocks evicted before the running hash took them, when there is no disk cache to find them in. */
  const hashSpill: HashSpill | null =
    verifier === null ? null : new HashSpill({ grid, log, needs: (block) => verifier.needs(block) });

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
        : DiskCache.open(options.cacheDir, options.cacheId, grid);
  // Reads and `ready()` observe the failure; this handler only keeps it from being reported as unhandled.
  disk.catch(() => {});
  const diskReady = disk.then((d) => {
    diskCache = d;
    if (d && verifier && !closed) {
      // Blocks kept from an earlier run were fetched then; a complete, verified entry needs no hashing.
      if (d.verified && d.count === blockCount) verifier.trust();
      else verifier.markFetched(d.blocks());
    }
  });
  diskReady.catch(() => {});

  function enterFailure(error: ErofsOciError): void {
    if (failure || closed) return;
    failure = error;
    log(`${error.message}: dropping the cached bytes; every read fails from now on`);
    memory.clear();
    readahead.clear();
    origin.reject(error);
    void diskCache?.discard();
  }

  /** A block leaving memory that the running hash has yet to take goes where the hash will find it. */
  function keepForHash(block: number, bytes: Uint8Array): void {
    if (verifier?.needs(block) !== true || diskCache !== null) return;
    if (!hashSpill) return;
    pool.retain(bytes);
    void hashSpill.keep(block, bytes).then(() => pool.release(bytes));
  }

  function remember(block: number, bytes: Uint8Array): void {
    if (failure) return;
    if (!memory.put(block, bytes)) keepForHash(block, bytes);
  }

  /**
   * A block fetched from the origin, through the stage: checked against its first copy when that was
   * hashed, kept in memory and on disk, then handed to the running hash. Kept first, so that the hash
   * finds at hand every block it was handed (see "Integrity"); a reader that takes it from memory
   * meanwhile still waits for the verdict. Resolves with the bytes kept.
   */
  async function accept(block: number, fetched: Uint8Array): Promise<Uint8Array> {
    const staged = stage(block, fetched);
    const bytes = staged instanceof Promise ? await staged : staged;
    verifier?.check(block, bytes);
    if (closed) throw new ErofsOciError('aborted', 'the block cache is closed');
    remember(block, bytes);
    if (!failure && diskCache) {
      pool.retain(bytes);
      void diskCache.store(block, bytes).then(() => pool.release(bytes));
    }
    await verifier?.offer(block, bytes);
    return bytes;
  }

  /** Registers `promise` as the way to get `block` until it settles. */
  function track(block: number, promise: Promise<Uint8Array>): Promise<Uint8Array> {
    pending.set(block, promise);
    promise.then(
      (bytes) => {
        if (pending.get(block) === promise) pending.delete(block);
        if (closed || failure) return;
        remember(block, bytes);
      },
      () => {
        // The readers awaiting `promise` get the error; the block is simply no longer pending.
        if (pending.get(block) === promise) pending.delete(block);
      },
    );
    return promise;
  }

  /** Starts getting the consecutive blocks `first..first+count-1` (one range fetch); returns their promises. */
  function fetchBlocks(first: number, count: number, priority: FetchPriority): Promise<Uint8Array>[] {
    const promises: Promise<Uint8Array>[] = [];
    if (origin.isWhole) {
      for (let i = 0; i < count; i++) promises.push(track(first + i, origin.block(first + i)));
      return promises;
    }
    const offset = grid.start(first);
    const length = grid.end(first + count - 1) - offset;
    const waiters: Deferred<Uint8Array>[] = [];
    for (let i = 0; i < count; i++) waiters.push(deferred());
    const cutter = new BlockCutter(
      grid,
      first,
      count,
      (i, bytes) => {
        const waiter = waiters[i] as Deferred<Uint8Array>;
        accept(first + i, bytes).then(
          (kept) => {
            waiter.resolve(kept);
            // The fetch's own reference goes once the readers it woke have taken theirs: they take them
            // in the promise jobs that follow, all of which run before the next macrotask.
            setImmediate(() => pool.release(bytes));
          },
          (error) => {
            waiter.reject(error);
            pool.release(bytes);
          },
        );
      },
      (length) => pool.take(length),
    );
    origin
      .fetchRange(offset, length, priority, (chunk) => cutter.push(chunk))
      .then(
        (result) => {
          // Whole mode decided before this fetch ran: the download brings the blocks.
          for (let i = cutter.completed; i < count; i++) {
            const waiter = waiters[i] as Deferred<Uint8Array>;
            if (result === null) origin.block(first + i).then(waiter.resolve, waiter.reject);
            else waiter.reject(new ErofsOciError('internal', `block ${first + i} was not delivered`));
          }
        },
        (error) => {
          for (let i = cutter.completed; i < count; i++) (waiters[i] as Deferred<Uint8Array>).reject(error);
        },
      );
    for (let i = 0; i < count; i++)
      promises.push(track(first + i, (waiters[i] as Deferred<Uint8Array>).promise));
    return promises;
  }

  /** Starts getting `blocks` (sorted, none cached or pending): from disk where present, else fetched. */
  function startLoads(blocks: number[], priority: FetchPriority): Map<number, Promise<Uint8Array>> {
    const started = new Map<number, Promise<Uint8Array>>();
    const toFetch: number[] = [];
    for (const block of blocks) {
      if (diskCache?.has(block)) {
        const cache = diskCache;
        const load = (async () => {
          const bytes = await cache.load(block, grid.length(block));
          if (bytes) {
            stats.diskHits++;
            // Checked by their CRC already; handed over so that the running hash need not read them again.
            await verifier?.offer(block, bytes);
            return bytes;
          }
          // The disk copy is damaged or unreadable: fetch the block again.
          const [fetched] = fetchBlocks(block, 1, priority);
          return fetched as Promise<Uint8Array>;
        })();
        started.set(block, track(block, load));
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

  /** Sequential detection and prefetch after a read of bytes [offset, end) in blocks `first..last`. */
  function readAhead(offset: number, end: number, first: number, last: number): void {
    const ahead = readahead.plan(offset, end, first, last, isAvailable);
    if (ahead.length === 0) return;
    stats.readaheadBlocks += ahead.length;
    for (const [block, promise] of startLoads(ahead, 'readahead')) readahead.started(block, promise);
  }

  /**
   * A read whose bytes stay valid until released: a view of the cached block when the range lies in one
   * (that block's buffer is not recycled before), else a copy.
   */
  async function lend(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Loan> {
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
    if (failure) throw failure;
    if (length === 0) return { bytes: new Uint8Array(0), release: () => {} };
    if (diskCache === null && options.cacheDir !== undefined) await raceAbort(diskReady, readOptions.signal);

    const first = grid.blockOf(offset);
    const last = grid.blockOf(offset + length - 1);
    // Everything up to `startLoads` runs without awaiting, so a concurrent read sees our pending blocks.
    // Each block is held (a reference to its buffer) from the moment this read has it until it is done.
    const held = (promise: Promise<Uint8Array>) =>
      promise.then((bytes) => {
        pool.retain(bytes);
        return bytes;
      });
    const parts: (Uint8Array | Promise<Uint8Array>)[] = [];
    const missing: number[] = [];
    for (let block = first; block <= last; block++) {
      readahead.asked(block);
      const cached = memory.get(block);
      const running = cached ? undefined : pending.get(block);
      if (cached) {
        stats.hits++;
        pool.retain(cached);
      } else if (running) stats.joined++;
      else missing.push(block);
      parts.push(cached ?? (running ? held(running) : NOT_YET));
    }
    if (missing.length > 0) {
      for (const block of missing) if (!diskCache?.has(block)) stats.misses++;
      for (const block of missing) if (diskCache?.has(block)) stats.hits++;
      const started = startLoads(missing, 'demand');
      for (const [block, promise] of started) parts[block - first] = held(promise);
    }
    readAhead(offset, offset + length, first, last);

    let blocks: Uint8Array[];
    try {
      blocks = await raceAbort(Promise.all(parts), readOptions.signal);
      // Every block has been fetched once: nothing is answered before the digest's verdict (module comment).
      if (verifier?.awaitingVerdict) await raceAbort(verifier.settled(), readOptions.signal);
      if (failure) throw failure;
    } catch (error) {
      // The blocks this read holds, or will once they arrive, are let go.
      for (const part of parts) Promise.resolve(part).then((bytes) => pool.release(bytes), ignore);
      throw error;
    }
    memory.markRead(offset, length);
    // Cached blocks are never modified: a read within one block gets a view of it, not a copy.
    if (first === last) {
      const from = offset - grid.start(first);
      const block = blocks[0] as Uint8Array;
      let lent = true;
      const release = () => {
        if (lent) pool.release(block);
        lent = false;
      };
      return { bytes: block.subarray(from, from + length), release };
    }
    const out = new Uint8Array(length);
    let at = 0;
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i] as Uint8Array;
      const blockStart = grid.start(first + i);
      const from = Math.max(offset, blockStart) - blockStart;
      const to = Math.min(offset + length, blockStart + block.byteLength) - blockStart;
      out.set(block.subarray(from, to), at);
      at += to - from;
      pool.release(block);
    }
    return { bytes: out, release: () => {} };
  }

  async function read(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Uint8Array> {
    const loan = await lend(offset, length, readOptions);
    // Given away with no word of when it is done with: its buffer is never recycled.
    pool.escape(loan.bytes);
    return loan.bytes;
  }

  if (options.prefetched !== undefined && options.prefetched.byteLength > 0) {
    const head = options.prefetched;
    stats.fetches++;
    stats.bytesFetched += head.byteLength;
    for (let block = 0; block < blockCount && grid.end(block) <= head.byteLength; block++) {
      const bytes = head.slice(grid.start(block), grid.end(block));
      // As fetched: kept at once only when the stage keeps bytes as they are.
      if (options.stage === undefined) remember(block, bytes);
      void diskReady
        .then(() => accept(block, bytes))
        .catch(() => {
          // A disk cache or verifier that cannot take it (or a stage that refuses it) fetches it again later.
        });
    }
  }

  return {
    size,
    read,
    lend,
    stats: () => ({ ...stats, buffersReused: pool.reused, verification: verifier?.state ?? 'off' }),
    ready: () => diskReady,
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      const reason = new ErofsOciError('aborted', 'the block cache is closed');
      lifetime.abort(reason);
      origin.reject(reason);
      memory.clear();
      readahead.clear();
      await hashSpill?.close();
      await origin.stopped();
      const d = await disk.catch(() => null);
      await d?.close();
      if (diskCache !== d) await diskCache?.close();
    },
  };
}

const ignore = () => {
  // A block this read gave up on failed: there is no reference to let go.
};

/** Placeholder replaced before anything awaits it. */
const NOT_YET: Promise<Uint8Array> = Promise.resolve(new Uint8Array(0));
