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
 * Disk cache layout (`cacheDir`, mode 0700), per `cacheId`, under the SHA-256 of the id:
 * - `KEY.data`: a sparse file of the source's size, blocks written at their offsets (0600);
 * - `KEY.json`: which blocks the data file holds, each with its CRC-32C, and whether the whole object was
 *   verified against its digest, rewritten atomically (0600) after the data file is synced, so a block is
 *   listed only once its bytes are durable; a block whose bytes do not match its checksum on reading is
 *   fetched again;
 * - `KEY.lock`: the pid of the process using the entry; a second live process is refused.
 */
import { createCipheriv, createHash, type Hash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import {
  chmod,
  type FileHandle,
  mkdir,
  mkdtemp,
  open,
  readFile,
  rename,
  rmdir,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErofsOciError, isErofsOciError, raceAbort, throwIfAborted } from '../errors.ts';
import { BlockGrid } from './block-grid.ts';
import type { ByteSource, Closable, ReadOptions } from './byte-source.ts';
import { crc32c } from './crc32c.ts';
import { readFully } from './files.ts';
import { isProcessAlive as isAlive } from './process.ts';

/**
 * Fetches exactly `length` bytes at `offset` of the underlying object and resolves with them; or, when it
 * can stream, hands them to `sink` in order as they arrive and resolves with an empty array (so that a
 * multi-block fetch delivers each block as soon as its bytes are in, rather than when the whole range is).
 */
export type RangeFetch = (
  offset: number,
  length: number,
  signal?: AbortSignal,
  sink?: (chunk: Uint8Array) => void,
) => Promise<Uint8Array>;

/** For origins that may ignore ranges and answer with the whole object instead (HTTP 200 to `Range`). */
export interface WholeFetch {
  /** Whether the origin answered the range fetch that produced `bytes` with the whole object. */
  answeredWhole(bytes: Uint8Array): boolean;
  /** The whole object from its start, in order; throws when it cannot be had. */
  fetch(signal: AbortSignal): AsyncIterable<Uint8Array>;
}

export interface BlockCacheOptions {
  /** Size of the underlying object in bytes. */
  size: number;
  /** Unit of fetching and caching. Default 1 MiB. */
  blockSize?: number;
  /**
   * Offsets that start a block (see src/io/block-grid.ts): where the object's layout says reads begin, e.g.
   * the end of a filesystem's superblock and the start of its metadata.
   */
  anchors?: readonly number[];
  /**
   * The object's first bytes, fetched already (e.g. to learn its layout): the blocks they cover start out
   * cached, and count as one fetch.
   */
  prefetched?: Uint8Array;
  /** Memory LRU budget in bytes. Default 64 MiB. */
  memoryBytes?: number;
  /** Directory of the disk cache (created 0700); needs `cacheId`. */
  cacheDir?: string;
  /** What the cached bytes are (e.g. the blob digest); keys the disk cache entry. */
  cacheId?: string;
  /** Sequential readahead window, in bytes, or false to disable. Default { initial: 1 MiB, max: 16 MiB }. */
  readahead?: { initial: number; max: number } | false;
  /** Fetches in progress at once. Default 4. */
  parallel?: number;
  /** Largest single range fetch. Default 16 MiB (at least one block). */
  maxFetchBytes?: number;
  /** Retries of a failed fetch (so up to retries + 1 attempts). Default 3. */
  retries?: number;
  /** Delay before the first retry; doubles each time. Default 200 ms. */
  retryDelayMs?: number;
  /** Digest of the object (`sha256:HEX` or `sha512:HEX`) to verify it against (see "Integrity"). */
  digest?: string;
  /** Download the object whole when the origin ignores ranges. */
  whole?: WholeFetch;
  /** What the object is, for messages (default: its digest or cache id). */
  name?: string;
  /** Reports what no read would tell: a verdict on the digest, a switch to whole downloads. */
  log?: (line: string) => void;
}

/** 'off' without a digest; 'pending' until every block has been hashed in order. */
export type Verification = 'off' | 'pending' | 'verified' | 'failed';

export interface BlockCacheStats {
  /** Calls of the fetch function, retries included, plus whole downloads started. */
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
  /** Downloads of the whole object (the origin ignores ranges). */
  wholeDownloads: number;
  verification: Verification;
}

export interface BlockCache extends ByteSource, Closable {
  stats(): BlockCacheStats;
  /** Resolves once the disk cache (if any) is open; rejects with the reason it cannot be used. */
  ready(): Promise<void>;
}

const MiB = 1 << 20;
/**
 * Most bytes kept in a temporary file for the running hash when there is no disk cache (see `keepForHash`):
 * enough for a copy by nbdcopy's threads, which work 128 MiB apart.
 */
const HASH_SPILL_BYTES = 1024 * MiB;

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
  const readahead = options.readahead === undefined ? { initial: MiB, max: 16 * MiB } : options.readahead;
  const parallel = options.parallel ?? 4;
  const maxFetchBlocks = Math.max(1, Math.floor((options.maxFetchBytes ?? 16 * MiB) / blockSize));
  const retries = options.retries ?? 3;
  const retryDelayMs = options.retryDelayMs ?? 200;
  const name = options.name ?? options.digest ?? options.cacheId ?? 'the cached object';
  const log = options.log ?? (() => {});
  if (!Number.isInteger(parallel) || parallel < 1)
    throw new ErofsOciError('usage', `Cannot create block cache: parallel must be at least 1`);
  if (readahead && !(readahead.initial > 0 && readahead.max >= readahead.initial)) {
    throw new ErofsOciError('usage', 'Cannot create block cache: readahead needs 0 < initial <= max');
  }
  const grid = new BlockGrid(size, blockSize, options.anchors);
  const blockCount = grid.count;
  const blockLength = (block: number) => grid.length(block);

  const stats: Omit<BlockCacheStats, 'verification'> = {
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
  /** Blocks in memory, least recently used first (Map keeps insertion order). */
  const memory = new Map<number, Uint8Array>();
  let memoryBytes = 0;
  /** Blocks being fetched or loaded from disk. */
  const pending = new Map<number, Promise<Uint8Array>>();
  /** Which parts of the blocks in memory reads have asked for (for eviction: see `remember`). */
  const coverage = new ReadCoverage(grid, (block) => memory.has(block));
  /**
   * Blocks readahead started that no read has asked for since. Bounded by half the memory budget, so
   * that reading ahead (of several streams, of readers slower than the origin) never evicts the blocks it
   * fetched before they are read, or before the running hash takes them.
   */
  const aheadUnread = new Set<number>();
  const aheadLimit = Math.max(1, Math.floor(memoryBudget / 2 / blockSize));
  /**
   * A bit per block: read through, then evicted. Readahead stops at such a block: its reader has it (in
   * the kernel's page cache above), so a stream that runs into another stream's region (nbdcopy's threads
   * copy neighbouring regions) would only fetch it again for nothing. A read of such a block shows that
   * its reader no longer has it (a page cache dropped): the run of such blocks it starts is cleared.
   */
  const consumed = new Uint8Array(Math.ceil(blockCount / 8));
  const isConsumed = (block: number) => ((consumed[block >> 3] as number) & (1 << (block & 7))) !== 0;
  const setConsumed = (block: number, on: boolean) => {
    const byte = consumed[block >> 3] as number;
    const bit = 1 << (block & 7);
    consumed[block >> 3] = on ? byte | bit : byte & ~bit;
  };
  const slots = new FetchSlots(parallel);
  const lifetime = new AbortController();
  const streams = new ReadaheadStreams();
  let closed = false;
  /** Set once the object failed verification: every read fails with it. */
  let failure: ErofsOciError | undefined;

  /**
   * How the origin serves: unknown until the first range fetch answers (only with `whole`), then by ranges
   * or whole. While unknown, one fetch probes and the others wait for its answer.
   */
  let mode: 'unknown' | 'ranges' | 'whole' = options.whole ? 'unknown' : 'ranges';
  let probe: Promise<void> | null = null;
  /** Whole mode: blocks readers wait for, resolved as the download passes them. */
  const wholeWaiters = new Map<number, Deferred<Uint8Array>>();
  let download: Promise<void> | null = null;
  /** Whole mode without a disk cache, for an object larger than the memory budget: a private temp file. */
  let spill: Promise<void> | null = null;

  const verifier =
    options.digest === undefined
      ? null
      : new OrderedVerifier({
          digest: options.digest,
          name,
          size,
          grid,
          aheadBudget: Math.max(4 * blockSize, Math.floor(memoryBudget / 4)),
          lookup: (block) => {
            const bytes = memory.get(block);
            if (bytes) return bytes;
            if (diskCache?.has(block)) return diskCache.load(block, blockLength(block));
            if (hashSpill)
              return hashSpill.then((file) =>
                file?.has(block) ? file.load(block, blockLength(block)) : null,
              );
            return undefined;
          },
          verified: () => {
            log(`verified ${name}: its ${size} bytes match the digest`);
            diskCache?.markVerified();
            void closeHashSpill();
          },
          failed: (error) => {
            void closeHashSpill();
            enterFailure(error);
          },
        });

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
  /** The disk cache, or the temporary file of a whole download; null while neither exists. */
  let diskCache: DiskCache | null = null;
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
    aheadUnread.clear();
    coverage.clear();
    memoryBytes = 0;
    for (const waiter of wholeWaiters.values()) waiter.reject(error);
    wholeWaiters.clear();
    void diskCache?.discard();
  }

  /**
   * Without a disk cache: a private temporary file (see `DiskCache.openTemporary`) for blocks evicted from
   * memory before the running hash took them, so that the hash finds them when it gets there. Without it,
   * a copy of the whole object by readers working on several regions at once (nbdcopy's threads) evicts
   * the later regions' blocks while the hash is still in the first, and ends unverified. Opened at the
   * first such eviction, closed once the verdict is in, and bounded (`HASH_SPILL_BYTES`): random reads
   * far ahead of the hash must not fill the temporary directory (often memory, on tmpfs) with the object.
   */
  let hashSpill: Promise<DiskCache | null> | null = null;
  let hashSpillBytes = 0;

  function keepForHash(block: number, bytes: Uint8Array): void {
    if (verifier?.needs(block) !== true || diskCache !== null) return;
    if (hashSpillBytes + bytes.byteLength > HASH_SPILL_BYTES) return;
    hashSpillBytes += bytes.byteLength;
    hashSpill ??= DiskCache.openTemporary(grid).catch((error: unknown) => {
      log(
        `cannot keep blocks for the digest check in a temporary file (${(error as Error).message}): the check waits for them to be fetched again`,
      );
      return null;
    });
    void hashSpill.then((file) => {
      if (file && !closed && verifier.needs(block)) file.store(block, bytes);
    });
  }

  function closeHashSpill(): Promise<void> {
    const file = hashSpill;
    hashSpill = null;
    return (file ?? Promise.resolve(null))
      .then((f) => f?.close())
      .catch(() => {
        // Nothing outlives the process: the file is unlinked already.
      });
  }

  function remember(block: number, bytes: Uint8Array): void {
    if (failure) return;
    if (bytes.byteLength > memoryBudget) {
      keepForHash(block, bytes);
      return;
    }
    const old = memory.get(block);
    if (old) {
      memory.delete(block);
      memoryBytes -= old.byteLength;
    }
    memory.set(block, bytes);
    memoryBytes += bytes.byteLength;
    if (memoryBytes <= memoryBudget) return;
    // Blocks every byte of which has been read go first, least recently used first: the reader (the
    // kernel's page cache, above an NBD or FUSE device) keeps what it read, while a block read in part
    // still holds what it will ask for next (other files that share the block). Then plain LRU.
    for (const pass of ['read', 'any'] as const) {
      for (const [victim, victimBytes] of memory) {
        if (memoryBytes <= memoryBudget) return;
        if (pass === 'read' && !coverage.isComplete(victim)) continue;
        keepForHash(victim, victimBytes);
        if (coverage.isComplete(victim)) setConsumed(victim, true);
        memory.delete(victim);
        aheadUnread.delete(victim);
        coverage.forget(victim);
        memoryBytes -= victimBytes.byteLength;
      }
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
        if (closed || failure) return;
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

  /**
   * One range fetch with retries, inside a fetch slot: its bytes go to `sink` in order (a retry continues
   * where the broken attempt stopped). Resolves with what the fetch function returned (for `whole`).
   */
  async function fetchRange(
    offset: number,
    length: number,
    priority: 'demand' | 'readahead',
    sink: (chunk: Uint8Array) => void,
  ): Promise<Uint8Array> {
    await slots.acquire(priority);
    let delivered = 0;
    const take = (chunk: Uint8Array) => {
      const room = length - delivered;
      const part = chunk.byteLength > room ? chunk.subarray(0, room) : chunk;
      delivered += part.byteLength;
      stats.bytesFetched += part.byteLength;
      if (part.byteLength > 0) sink(part);
    };
    try {
      for (let attempt = 0; ; attempt++) {
        if (closed) throw new ErofsOciError('aborted', 'the block cache is closed');
        if (failure) throw failure;
        stats.fetches++;
        try {
          const from = delivered;
          const result = await fetch(offset + from, length - from, lifetime.signal, take);
          if (result.byteLength > 0 && delivered === from && result.byteLength === length - from)
            take(result);
          if (delivered !== length || (result.byteLength > 0 && delivered - from !== result.byteLength)) {
            throw new ErofsOciError(
              'io',
              `the fetch returned ${result.byteLength || delivered - from} bytes instead of ${length - from}`,
            );
          }
          return result;
        } catch (error) {
          const permanent = isErofsOciError(error) && PERMANENT.has(error.code);
          if (permanent || attempt >= retries || closed) {
            // Not retried (or not at all): the error as it is says enough.
            if (isErofsOciError(error) && (permanent || closed || attempt === 0)) throw error;
            const reason = error instanceof Error ? error.message : String(error);
            const code = isErofsOciError(error) ? error.code : 'io';
            throw new ErofsOciError(
              code,
              `Cannot fetch ${length - delivered} bytes at offset ${offset + delivered} after ${attempt + 1} attempts: ${reason}`,
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

  /**
   * A range fetch, or null when the object comes whole instead. While the mode is unknown the first fetch
   * probes alone and the others wait for its answer; should the probe fail, they fetch side by side (each
   * answer decides as well), so that a registry that is down costs each of them one retry budget, not a
   * queue of them.
   */
  function fetchRangeOrWhole(
    offset: number,
    length: number,
    priority: 'demand' | 'readahead',
    sink: (chunk: Uint8Array) => void,
  ): Promise<Uint8Array | null> {
    if (mode === 'whole') return Promise.resolve(null);
    if (mode === 'ranges') return fetchRange(offset, length, priority, sink);
    if (probe) {
      return probe.then(() => (mode === 'whole' ? null : decide(fetchRange(offset, length, priority, sink))));
    }
    const fetched = decide(fetchRange(offset, length, priority, sink));
    probe = fetched
      .then(
        () => {},
        () => {
          // A failed probe decides nothing: the fetches waiting for it go ahead, the next one probes again.
        },
      )
      .finally(() => {
        probe = null;
      });
    return fetched;
  }

  /** The first range fetch to succeed tells how the origin serves. */
  function decide(fetched: Promise<Uint8Array>): Promise<Uint8Array> {
    return fetched.then((bytes) => {
      if (mode === 'unknown') {
        if (options.whole?.answeredWhole(bytes)) switchToWhole();
        else mode = 'ranges';
      }
      return bytes;
    });
  }

  function switchToWhole(): void {
    mode = 'whole';
    log(`the origin of ${name} ignores ranges: downloading it once, whole, into the cache`);
    if (diskCache === null && size > memoryBudget) {
      spill = DiskCache.openTemporary(grid).then((file) => {
        if (closed) return file.close();
        diskCache = file;
      });
      spill.catch(() => {
        // The download reports it: it cannot keep the blocks anywhere.
      });
    }
  }

  /** Whole mode: the block once the download passes it (starting the download if none is running). */
  function wholeBlock(block: number): Promise<Uint8Array> {
    if (failure) return Promise.reject(failure);
    let waiter = wholeWaiters.get(block);
    if (!waiter) {
      waiter = deferred();
      wholeWaiters.set(block, waiter);
    }
    download ??= downloadWhole().finally(() => {
      download = null;
    });
    return waiter.promise;
  }

  /** One download of the whole object, in order, into the caches; fails the waiters it leaves behind. */
  async function downloadWhole(): Promise<void> {
    stats.fetches++;
    stats.wholeDownloads++;
    let block = 0;
    let filled = 0;
    let buffer = new Uint8Array(blockLength(0));
    try {
      if (spill) await spill;
      const whole = options.whole as WholeFetch;
      for await (const chunk of whole.fetch(lifetime.signal)) {
        if (failure) throw failure;
        stats.bytesFetched += chunk.byteLength;
        for (let at = 0; at < chunk.byteLength; ) {
          if (block >= blockCount)
            throw new ErofsOciError('io', `the download of ${name} is longer than ${size} bytes`);
          const take = Math.min(buffer.byteLength - filled, chunk.byteLength - at);
          buffer.set(chunk.subarray(at, at + take), filled);
          filled += take;
          at += take;
          if (filled === buffer.byteLength) {
            await deliver(block, buffer);
            block++;
            filled = 0;
            if (block < blockCount) buffer = new Uint8Array(blockLength(block));
          }
        }
      }
      if (block < blockCount) {
        throw new ErofsOciError(
          'io',
          `the download of ${name} ended at byte ${grid.start(block) + filled} of ${size}`,
        );
      }
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      const failed: ErofsOciError =
        failure !== undefined && error === failure
          ? failure
          : new ErofsOciError(
              closed ? 'aborted' : isErofsOciError(error) ? error.code : 'io',
              `Cannot download ${name} whole (the origin ignores ranges): ${reason}`,
              { cause: error },
            );
      // The origin's own check of the whole download (the registry client verifies blob streams).
      if (isErofsOciError(error, 'digest-mismatch')) enterFailure(failed);
      for (const waiter of wholeWaiters.values()) waiter.reject(failed);
      wholeWaiters.clear();
    }
  }

  /**
   * A block fetched from the origin: checked against its first copy when that was hashed, kept in memory
   * and on disk, then handed to the running hash. Kept first, so that the hash finds at hand every block it
   * was handed (see "Integrity"); a reader that takes it from memory meanwhile still waits for the verdict.
   */
  async function accept(block: number, bytes: Uint8Array): Promise<void> {
    verifier?.check(block, bytes);
    if (closed) throw new ErofsOciError('aborted', 'the block cache is closed');
    remember(block, bytes);
    if (!failure) diskCache?.store(block, bytes);
    await verifier?.offer(block, bytes);
  }

  /** Whole mode: a block the download completed goes to the caches, the verifier and its readers. */
  async function deliver(block: number, bytes: Uint8Array): Promise<void> {
    const waiter = wholeWaiters.get(block);
    try {
      await accept(block, bytes);
    } catch (error) {
      wholeWaiters.delete(block);
      waiter?.reject(error);
      throw error;
    }
    if (waiter) {
      wholeWaiters.delete(block);
      waiter.resolve(bytes);
    }
  }

  /** Starts getting the consecutive blocks `first..first+count-1` (one range fetch); returns their promises. */
  function fetchBlocks(
    first: number,
    count: number,
    priority: 'demand' | 'readahead',
  ): Promise<Uint8Array>[] {
    const promises: Promise<Uint8Array>[] = [];
    if (mode === 'whole') {
      for (let i = 0; i < count; i++) promises.push(track(first + i, wholeBlock(first + i), false));
      return promises;
    }
    const offset = grid.start(first);
    const length = grid.end(first + count - 1) - offset;
    const waiters: Deferred<Uint8Array>[] = [];
    for (let i = 0; i < count; i++) waiters.push(deferred());
    // Each block is handed over as soon as the range has passed it: a reader of the first block of a
    // large readahead fetch does not wait for the last.
    let filling = 0;
    let buffer: Uint8Array | null = null;
    let filled = 0;
    const complete = (i: number, bytes: Uint8Array) => {
      const waiter = waiters[i] as Deferred<Uint8Array>;
      accept(first + i, bytes).then(
        () => waiter.resolve(bytes),
        (error) => waiter.reject(error),
      );
    };
    const sink = (chunk: Uint8Array) => {
      for (let at = 0; at < chunk.byteLength && filling < count; ) {
        const want = blockLength(first + filling);
        if (at === 0 && filled === 0 && chunk.byteLength === want && chunk.buffer.byteLength === want) {
          // A fetch that returned exactly one block in a buffer of its own (a demand miss): keep it as
          // it is. A view into a larger buffer (a network read) is copied, so as not to pin the rest.
          complete(filling++, chunk);
          return;
        }
        buffer ??= new Uint8Array(want);
        const n = Math.min(want - filled, chunk.byteLength - at);
        buffer.set(chunk.subarray(at, at + n), filled);
        filled += n;
        at += n;
        if (filled === want) {
          complete(filling++, buffer);
          buffer = null;
          filled = 0;
        }
      }
    };
    fetchRangeOrWhole(offset, length, priority, sink).then(
      (result) => {
        // Whole mode decided before this fetch ran: the download brings the blocks.
        for (let i = filling; i < count; i++) {
          const waiter = waiters[i] as Deferred<Uint8Array>;
          if (result === null) wholeBlock(first + i).then(waiter.resolve, waiter.reject);
          else waiter.reject(new ErofsOciError('internal', `block ${first + i} was not delivered`));
        }
      },
      (error) => {
        for (let i = filling; i < count; i++) (waiters[i] as Deferred<Uint8Array>).reject(error);
      },
    );
    for (let i = 0; i < count; i++)
      promises.push(track(first + i, (waiters[i] as Deferred<Uint8Array>).promise, false));
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
            // Checked by their CRC already; handed over so that the running hash need not read them again.
            await verifier?.offer(block, bytes);
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

  /** Sequential detection and prefetch after a read of bytes [offset, end) in blocks `first..last`. */
  function readAhead(offset: number, end: number, first: number, last: number): void {
    if (!readahead) return;
    const window = streams.advance(offset, end, last, readahead);
    // No wider than the readahead the memory budget allows, so that refills stay whole (see aheadLimit).
    const windowBlocks = Math.min(aheadLimit, Math.ceil(window / blockSize));
    const until = Math.min(blockCount - 1, last + windowBlocks);
    let reread = false;
    for (let block = first; block <= last; block++) reread ||= isConsumed(block);
    for (let block = first; reread && block < blockCount && (block <= last || isConsumed(block)); block++)
      setConsumed(block, false);
    if (window === 0) return;
    const missing: number[] = [];
    for (let block = last + 1; block <= until; block++) {
      if (isConsumed(block)) break;
      if (!isAvailable(block)) missing.push(block);
    }
    // As the kernel's async readahead: refill when at least half the window is missing, in one go, rather
    // than a block at a time as the stream advances.
    if (missing.length === 0 || missing.length < Math.max(1, Math.floor(windowBlocks / 2))) return;
    const allowed = aheadLimit - aheadUnread.size;
    if (allowed <= 0) return;
    if (missing.length > allowed) missing.length = allowed;
    stats.readaheadBlocks += missing.length;
    for (const [block, promise] of startLoads(missing, 'readahead')) {
      aheadUnread.add(block);
      promise.catch(() => {
        // A failed prefetch is not an error of any read; a read of these blocks fetches them again.
        aheadUnread.delete(block);
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
    if (failure) throw failure;
    if (length === 0) return new Uint8Array(0);
    if (diskCache === null && options.cacheDir !== undefined) await raceAbort(diskReady, readOptions.signal);

    const first = grid.blockOf(offset);
    const last = grid.blockOf(offset + length - 1);
    // Everything up to `startLoads` runs without awaiting, so a concurrent read sees our pending blocks.
    const parts: (Uint8Array | Promise<Uint8Array>)[] = [];
    const missing: number[] = [];
    for (let block = first; block <= last; block++) {
      aheadUnread.delete(block);
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
    readAhead(offset, offset + length, first, last);

    const blocks = await raceAbort(Promise.all(parts), readOptions.signal);
    // Every block has been fetched once: nothing is answered before the digest's verdict (module comment).
    if (verifier?.awaitingVerdict) await raceAbort(verifier.settled(), readOptions.signal);
    if (failure) throw failure;
    coverage.mark(offset, length);
    // Cached blocks are never modified: a read within one block gets a view of it, not a copy.
    if (first === last) {
      const from = offset - grid.start(first);
      return (blocks[0] as Uint8Array).subarray(from, from + length);
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
    }
    return out;
  }

  if (options.prefetched !== undefined && options.prefetched.byteLength > 0) {
    const head = options.prefetched;
    stats.fetches++;
    stats.bytesFetched += head.byteLength;
    for (let block = 0; block < blockCount && grid.end(block) <= head.byteLength; block++) {
      const bytes = head.slice(grid.start(block), grid.end(block));
      remember(block, bytes);
      void diskReady
        .then(() => accept(block, bytes))
        .catch(() => {
          // Kept in memory already; a disk cache or verifier that cannot take it fetches it again later.
        });
    }
  }

  return {
    size,
    read,
    stats: () => ({ ...stats, verification: verifier?.state ?? 'off' }),
    ready: () => diskReady,
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      const reason = new ErofsOciError('aborted', 'the block cache is closed');
      lifetime.abort(reason);
      for (const waiter of wholeWaiters.values()) waiter.reject(reason);
      wholeWaiters.clear();
      memory.clear();
      aheadUnread.clear();
      coverage.clear();
      memoryBytes = 0;
      await closeHashSpill();
      await download?.catch(() => {});
      await spill?.catch(() => {});
      const d = await disk.catch(() => null);
      await d?.close();
      if (diskCache !== d) await diskCache?.close();
    },
  };
}

/**
 * Which 4 KiB pages of each block reads have covered, to tell blocks read through (the reader keeps
 * them in its own cache) from blocks still partly unread.
 */
class ReadCoverage {
  static readonly PAGE = 4096;
  readonly #grid: BlockGrid;
  /** Whether a block is kept (in memory): only those are tracked, the others have nothing to evict. */
  readonly #kept: (block: number) => boolean;
  /** Per block: a bit per page, and how many pages are still unread. */
  readonly #blocks = new Map<number, { bits: Uint8Array; unread: number }>();

  constructor(grid: BlockGrid, kept: (block: number) => boolean) {
    this.#grid = grid;
    this.#kept = kept;
  }

  /** Records a read of the kept blocks it covers. */
  mark(offset: number, length: number): void {
    if (length === 0) return;
    const end = offset + length;
    for (let block = this.#grid.blockOf(offset); block <= this.#grid.blockOf(end - 1); block++) {
      if (!this.#kept(block)) continue;
      const start = this.#grid.start(block);
      const pages = Math.ceil(this.#grid.length(block) / ReadCoverage.PAGE);
      let entry = this.#blocks.get(block);
      if (!entry) {
        entry = { bits: new Uint8Array(Math.ceil(pages / 8)), unread: pages };
        this.#blocks.set(block, entry);
      }
      const firstPage = Math.floor((Math.max(offset, start) - start) / ReadCoverage.PAGE);
      const lastPage = Math.floor(
        (Math.min(end, start + this.#grid.length(block)) - 1 - start) / ReadCoverage.PAGE,
      );
      for (let page = firstPage; page <= lastPage && entry.unread > 0; page++) {
        const bit = 1 << (page & 7);
        const byte = page >> 3;
        if ((entry.bits[byte] as number) & bit) continue;
        entry.bits[byte] = (entry.bits[byte] as number) | bit;
        entry.unread--;
      }
    }
  }

  isComplete(block: number): boolean {
    return this.#blocks.get(block)?.unread === 0;
  }

  forget(block: number): void {
    this.#blocks.delete(block);
  }

  clear(): void {
    this.#blocks.clear();
  }
}

/** Placeholder replaced before anything awaits it. */
const NOT_YET: Promise<Uint8Array> = Promise.resolve(new Uint8Array(0));

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Waiters may be rejected (close, failure) after the reads that wanted them gave up.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

interface VerifierOptions {
  digest: string;
  name: string;
  size: number;
  grid: BlockGrid;
  /** Bytes of blocks ahead of the running hash it may hold on to. */
  aheadBudget: number;
  /** A block's bytes from memory or disk, when they are still at hand. */
  lookup(block: number): Uint8Array | Promise<Uint8Array | null> | undefined;
  verified(): void;
  failed(error: ErofsOciError): void;
}

/**
 * The running digest of an object whose blocks arrive in any order (see "Integrity" in the module
 * comment): blocks are hashed strictly in order, each as soon as it and all before it are at hand.
 */
class OrderedVerifier {
  readonly #options: VerifierOptions;
  readonly #algorithm: string;
  readonly #expected: string;
  readonly #hash: Hash;
  /** The next block the running hash needs. */
  #next = 0;
  /**
   * The fingerprint (`#fingerprint`) of every block hashed so far (blocks before `#next`), to check copies
   * fetched again: 16 bytes per block, 0.4% of the object at 4 KiB blocks.
   */
  readonly #blockHashes: Uint8Array;
  readonly #fetched: Uint8Array;
  #fetchedCount = 0;
  /** Blocks that arrived ahead of the running hash, kept within the budget. */
  readonly #ahead = new Map<number, Uint8Array>();
  #aheadBytes = 0;
  /** The hashing in progress: one at a time, in order. */
  #chain: Promise<void> = Promise.resolve();
  #failure: ErofsOciError | undefined;
  /** Key of the block fingerprints: random, and never leaves this object. */
  readonly #fingerprintKey = randomBytes(16);
  state: 'pending' | 'verified' | 'failed' = 'pending';

  constructor(options: VerifierOptions) {
    const match = /^(sha256|sha512):([0-9a-f]+)$/.exec(options.digest);
    if (!match || (match[2] as string).length !== (match[1] === 'sha256' ? 64 : 128)) {
      throw new ErofsOciError(
        'usage',
        `Cannot create block cache: cannot verify digest ${options.digest} (sha256:HEX or sha512:HEX)`,
      );
    }
    this.#options = options;
    this.#algorithm = match[1] as string;
    this.#expected = match[2] as string;
    this.#hash = createHash(this.#algorithm);
    this.#fetched = new Uint8Array(options.grid.count);
    this.#blockHashes = new Uint8Array(options.grid.count * BLOCK_HASH_BYTES);
    if (options.grid.count === 0) void this.#pump().catch(() => {});
  }

  /** Every block has been fetched once and the verdict is still out: reads wait for it. */
  get awaitingVerdict(): boolean {
    return this.state === 'pending' && this.#fetchedCount === this.#options.grid.count;
  }

  /** Whether the running hash has yet to take `block` (it is pending and the block lies ahead of it). */
  needs(block: number): boolean {
    return this.state === 'pending' && block >= this.#next;
  }

  /** Resolves when the hashing started so far is done (it may stop short of the end: see the module comment). */
  settled(): Promise<void> {
    return this.#chain;
  }

  /** Blocks a disk cache kept from an earlier run. */
  markFetched(blocks: Iterable<number>): void {
    for (const block of blocks) this.#mark(block);
    if (this.awaitingVerdict) void this.#pump().catch(() => {});
  }

  /** The disk cache holds every block and verified them in an earlier run. */
  trust(): void {
    if (this.state === 'pending') this.state = 'verified';
  }

  /** Throws when a block fetched again differs from its first copy, which the running hash has taken. */
  check(block: number, bytes: Uint8Array): void {
    if (this.#failure) throw this.#failure;
    if (block >= this.#next) return;
    const known = this.#blockHashes.subarray(block * BLOCK_HASH_BYTES, (block + 1) * BLOCK_HASH_BYTES);
    if (!this.#fingerprint(block, bytes).equals(known)) {
      const start = this.#options.grid.start(block);
      throw new ErofsOciError(
        'digest-mismatch',
        `Cannot verify block ${block} (bytes ${start}-${start + bytes.byteLength - 1}) of ${this.#options.name}: fetched again, it differs from the copy hashed before`,
      );
    }
  }

  /**
   * Takes a block just fetched (after `check`) or loaded from the disk cache, which the caller has kept in
   * memory or on disk where it could. Rejects, when it is the last block missing, with the verdict.
   */
  async offer(block: number, bytes: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.state !== 'pending' || block < this.#next) return;
    this.#mark(block);
    const completing = this.awaitingVerdict;
    // The block the hash needs next and the one completing the object are held whatever the budget: the
    // caches may not have kept them (no disk cache, a small memory budget).
    if (
      !this.#ahead.has(block) &&
      (block === this.#next || completing || this.#aheadBytes + bytes.byteLength <= this.#options.aheadBudget)
    ) {
      this.#ahead.set(block, bytes);
      this.#aheadBytes += bytes.byteLength;
    }
    if (block !== this.#next && !completing) return;
    const run = this.#pump();
    if (completing) await run;
    else run.catch(() => {});
  }

  #mark(block: number): void {
    if (block < this.#options.grid.count && this.#fetched[block] === 0) {
      this.#fetched[block] = 1;
      this.#fetchedCount++;
    }
  }

  #pump(): Promise<void> {
    const run = this.#chain.then(() => this.#advance());
    this.#chain = run.catch(() => {
      // The reader whose block completed the hash gets the verdict; later hashing still runs.
    });
    return run;
  }

  /**
   * A block's fingerprint, to recognise a different copy fetched later: its GMAC (the AES-128-GCM tag of
   * the block as additional data, nonce = the block index) under a random key no one outside this process
   * knows, so an origin cannot make a different block match (forgery chance about 2^-112 for 1 MiB
   * blocks). A keyed universal hash rather than SHA-256: the running hash already costs one SHA-256 pass
   * over the object, and this costs a tenth of another.
   */
  #fingerprint(block: number, bytes: Uint8Array): Buffer {
    const nonce = Buffer.alloc(12);
    nonce.writeUIntBE(block, 6, 6);
    const gmac = createCipheriv('aes-128-gcm', this.#fingerprintKey, nonce);
    gmac.setAAD(bytes);
    gmac.final();
    return gmac.getAuthTag();
  }

  async #advance(): Promise<void> {
    const count = this.#options.grid.count;
    while (this.state === 'pending' && this.#next < count) {
      const block = this.#next;
      let bytes = this.#ahead.get(block) ?? null;
      if (!bytes) {
        const found = this.#options.lookup(block);
        bytes = (found instanceof Promise ? await found : found) ?? null;
        if (this.state !== 'pending' || this.#next !== block) continue;
      }
      // Not at hand (never fetched, or evicted): a later fetch of it resumes the hashing.
      if (!bytes) break;
      this.#hash.update(bytes);
      this.#blockHashes.set(this.#fingerprint(block, bytes), block * BLOCK_HASH_BYTES);
      const held = this.#ahead.get(block);
      if (held) {
        this.#ahead.delete(block);
        this.#aheadBytes -= held.byteLength;
      }
      this.#next++;
    }
    // Blocks held beyond the budget (see `offer`) are let go once this pass is over.
    if (this.#aheadBytes > this.#options.aheadBudget) {
      for (const held of [...this.#ahead.keys()].sort((a, b) => b - a)) {
        if (this.#aheadBytes <= this.#options.aheadBudget) break;
        this.#aheadBytes -= (this.#ahead.get(held) as Uint8Array).byteLength;
        this.#ahead.delete(held);
      }
    }
    if (this.state === 'pending' && this.#next === count) {
      const actual = this.#hash.digest('hex');
      this.#ahead.clear();
      this.#aheadBytes = 0;
      if (actual === this.#expected) {
        this.state = 'verified';
        this.#options.verified();
      } else {
        this.state = 'failed';
        this.#failure = new ErofsOciError(
          'digest-mismatch',
          `Cannot verify ${this.#options.name}: its ${this.#options.size} bytes have digest ${this.#algorithm}:${actual}, expected ${this.#options.digest}`,
        );
        this.#options.failed(this.#failure);
      }
    }
    if (this.#failure) throw this.#failure;
  }
}

const BLOCK_HASH_BYTES = 16;

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
 * different region). A read continues a stream when it starts near the stream's end, in bytes: within
 * `GAP` of it, or within the stream's window once it has one (readers with several requests in flight
 * arrive slightly out of order). Crossing into a further block grows the window. Any other read starts a
 * new stream, without readahead until a second read continues it. Nearness is in bytes, not blocks: reads
 * that hop through an object in steps smaller than a block (one small file of each of many directories,
 * when a layer's files are not stored in the order they are read) touch consecutive blocks without being
 * a stream, and reading ahead of them fills the memory cache with blocks evicted before they are used.
 */
class ReadaheadStreams {
  /** How far from a stream's end a read may start and still continue it, window or not. */
  static readonly GAP = 128 * 1024;
  #streams: { end: number; block: number; window: number }[] = [];

  /** Records a read of bytes [offset, end), whose last block is `last`; returns the stream's window in bytes. */
  advance(offset: number, end: number, last: number, limits: { initial: number; max: number }): number {
    const index = this.#streams.findIndex((s) => {
      const reach = Math.max(s.window, ReadaheadStreams.GAP);
      return offset >= s.end - reach && offset <= s.end + reach;
    });
    let stream: { end: number; block: number; window: number };
    if (index >= 0) {
      stream = this.#streams[index] as { end: number; block: number; window: number };
      this.#streams.splice(index, 1);
      // Grow once per block boundary crossed, not per small read within one block.
      if (last > stream.block)
        stream.window = stream.window === 0 ? limits.initial : Math.min(limits.max, stream.window * 2);
      stream.end = Math.max(stream.end, end);
      stream.block = Math.max(stream.block, last);
    } else {
      // A lone read (even at offset 0, where filesystems keep their superblock) is no stream yet.
      stream = { end, block: last, window: 0 };
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
  /** Offsets that start a block besides multiples of the block size (absent in older records: none). */
  anchors?: number[];
  /** [block index, CRC-32C of its bytes] for every block the data file holds durably. */
  blocks: [number, number][];
  /** The data file holds every block and they matched the object's digest (absent in older records). */
  verified?: boolean;
}

interface CachePaths {
  data: string;
  record: string;
  lock: string;
}

/**
 * The on-disk half of the cache (see the module comment for the layout), or, without paths, a private
 * temporary file (unlinked as soon as it is open, so nothing outlives the process) that holds a whole
 * download too large for memory.
 */
class DiskCache {
  readonly #data: FileHandle;
  readonly #paths: CachePaths | null;
  readonly #base: Omit<CacheRecord, 'blocks'>;
  readonly #grid: BlockGrid;
  /** Blocks whose bytes are in the data file (written, maybe not yet synced), with their checksums. */
  readonly #present = new Map<number, number>();
  /** Blocks being written: they count as present, and loading one waits for its write. */
  readonly #writing = new Map<number, Promise<void>>();
  #verified = false;
  #dirty = false;
  #flushTimer: NodeJS.Timeout | null = null;
  #flushing: Promise<void> = Promise.resolve();
  #closed = false;
  #discarded = false;

  private constructor(
    data: FileHandle,
    paths: CachePaths | null,
    base: Omit<CacheRecord, 'blocks'>,
    grid: BlockGrid,
  ) {
    this.#data = data;
    this.#paths = paths;
    this.#base = base;
    this.#grid = grid;
  }

  static async open(dir: string, cacheId: string, grid: BlockGrid): Promise<DiskCache> {
    const { size, blockSize } = grid;
    const action = `Cannot open the disk cache in ${dir}`;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
    } catch (error) {
      throw fsError(action, error);
    }
    const paths = cachePaths(dir, cacheId);
    await takeLock(paths.lock, `${action} for ${cacheId}`);
    const anchors = [...grid.anchors];
    const base = { format: 'erofs-oci-block-cache', version: 1, cacheId, size, blockSize, anchors } as const;
    let data: FileHandle | undefined;
    try {
      const record = await readRecord(paths.record);
      const reusable =
        record !== null &&
        record.cacheId === cacheId &&
        record.size === size &&
        record.blockSize === blockSize &&
        JSON.stringify(record.anchors ?? []) === JSON.stringify(anchors) &&
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
      const cache = new DiskCache(data, paths, base, grid);
      if (reusable && record) {
        for (const entry of record.blocks) {
          if (Array.isArray(entry) && Number.isInteger(entry[0]) && Number.isInteger(entry[1])) {
            cache.#present.set(entry[0], entry[1]);
          }
        }
        cache.#verified = record.verified === true;
      }
      return cache;
    } catch (error) {
      await data?.close().catch(() => {});
      await unlink(paths.lock).catch(() => {});
      throw isErofsOciError(error) ? error : fsError(action, error);
    }
  }

  /** A private file in the system's temporary directory, gone when closed (or when the process dies). */
  static async openTemporary(grid: BlockGrid): Promise<DiskCache> {
    const { size, blockSize } = grid;
    const action = `Cannot create a temporary file in ${tmpdir()} for a ${size}-byte download`;
    let dir: string | undefined;
    try {
      dir = await mkdtemp(join(tmpdir(), 'erofs-oci-blob-'));
      const path = join(dir, 'data');
      const data = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
      await unlink(path);
      await rmdir(dir);
      dir = undefined;
      try {
        await data.truncate(size);
      } catch (error) {
        await data.close();
        throw error;
      }
      const base = { format: 'erofs-oci-block-cache', version: 1, cacheId: '', size, blockSize } as const;
      return new DiskCache(data, null, base, grid);
    } catch (error) {
      if (dir !== undefined) await rmdir(dir).catch(() => {});
      throw fsError(action, error);
    }
  }

  /** Whether the entry holds every block and verified them in an earlier run. */
  get verified(): boolean {
    return this.#verified;
  }

  get count(): number {
    return this.#present.size;
  }

  blocks(): Iterable<number> {
    return this.#present.keys();
  }

  has(block: number): boolean {
    return this.#present.has(block) || this.#writing.has(block);
  }

  /** The block's bytes, or null when they are unreadable or do not match their checksum. */
  async load(block: number, length: number): Promise<Uint8Array | null> {
    await this.#writing.get(block);
    const expected = this.#present.get(block);
    if (expected === undefined || this.#closed || this.#discarded) return null;
    const bytes = new Uint8Array(length);
    try {
      const done = await readFully(this.#data, bytes, this.#grid.start(block));
      // A temporary file lives as long as this process: no checksums needed for its blocks.
      if (done === length && (this.#paths === null || crc32c(bytes) === expected)) return bytes;
    } catch {
      // An unreadable cache block is a cache miss: the caller fetches the bytes again.
    }
    this.#present.delete(block);
    // Its replacement is fetched again: the entry is no longer known to match the digest as a whole.
    this.#verified = false;
    this.#dirty = true;
    return null;
  }

  /** Writes a fetched block in the background; the record lists it after the next sync. */
  store(block: number, bytes: Uint8Array): void {
    if (this.#closed || this.#discarded || this.has(block)) return;
    const write = this.#write(block, bytes);
    this.#writing.set(block, write);
    void write.finally(() => {
      if (this.#writing.get(block) === write) this.#writing.delete(block);
    });
  }

  async #write(block: number, bytes: Uint8Array): Promise<void> {
    try {
      let done = 0;
      while (done < bytes.byteLength) {
        const { bytesWritten } = await this.#data.write(
          bytes,
          done,
          bytes.byteLength - done,
          this.#grid.start(block) + done,
        );
        done += bytesWritten;
      }
      if (!this.#closed && !this.#discarded) {
        this.#present.set(block, this.#paths === null ? 0 : crc32c(bytes));
        this.#dirty = true;
        this.#scheduleFlush();
      }
    } catch {
      // A block that cannot be written (disk full) stays uncached; reads fetch it again.
    }
  }

  /** Records that every block matched the object's digest, so a reopened entry is not hashed again. */
  markVerified(): void {
    if (this.#verified || this.#closed || this.#discarded) return;
    this.#verified = true;
    this.#dirty = true;
    this.#scheduleFlush();
  }

  /** Forgets every block and removes the entry's files (its bytes failed verification); keeps the lock. */
  async discard(): Promise<void> {
    if (this.#discarded) return;
    this.#discarded = true;
    this.#present.clear();
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    await Promise.allSettled(this.#writing.values());
    await this.#flushing;
    if (this.#paths === null) {
      await this.#data.truncate(0).catch(() => {
        // The file is already unlinked: its space comes back when it is closed.
      });
      return;
    }
    for (const path of [this.#paths.record, this.#paths.data]) {
      await unlink(path).catch(() => {
        // Already gone, or not ours to remove: either way no reader can use it any more.
      });
    }
  }

  #scheduleFlush(): void {
    if (this.#flushTimer || this.#paths === null) return;
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
    if (!this.#dirty || this.#paths === null || this.#discarded) return;
    this.#dirty = false;
    const blocks: [number, number][] = [...this.#present].sort((a, b) => a[0] - b[0]);
    await this.#data.datasync();
    if (this.#discarded) return;
    const record: CacheRecord = { ...this.#base, blocks, verified: this.#verified };
    const temporary = `${this.#paths.record}.${process.pid}.tmp`;
    await writeFile(temporary, JSON.stringify(record), { mode: 0o600 });
    await rename(temporary, this.#paths.record);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await Promise.allSettled(this.#writing.values());
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    this.#closed = true;
    await this.#flushing;
    await this.#flush().catch(() => {
      // Unlisted blocks are fetched again next time; closing must still release the file and the lock.
    });
    await this.#data.close();
    if (this.#paths) await unlink(this.#paths.lock).catch(() => {});
  }
}

function cachePaths(dir: string, cacheId: string): CachePaths {
  const key = createHash('sha256').update(cacheId).digest('hex').slice(0, 40);
  return { data: join(dir, `${key}.data`), record: join(dir, `${key}.json`), lock: join(dir, `${key}.lock`) };
}

/**
 * The first `length` bytes of the object, read from its disk cache entry when the entry holds all of them
 * intact (every block listed, every checksum right), else null. For learning an object's layout before the
 * cache is opened (the layout decides where blocks are cut), without asking the origin: a server restarted
 * while the origin is unreachable still starts. Takes no lock: the record is replaced atomically and only
 * blocks it lists, which are durable, are read.
 */
export async function readCachedHead(
  cacheDir: string,
  cacheId: string,
  size: number,
  length: number,
): Promise<Uint8Array | null> {
  const paths = cachePaths(cacheDir, cacheId);
  const record = await readRecord(paths.record);
  if (record === null || record.cacheId !== cacheId || record.size !== size || !Array.isArray(record.blocks))
    return null;
  let grid: BlockGrid;
  try {
    grid = new BlockGrid(size, record.blockSize, record.anchors ?? []);
  } catch {
    // A record no cache of ours would have written: not one to read from.
    return null;
  }
  const end = Math.min(length, size);
  const checksums = new Map(record.blocks.filter(Array.isArray).map(([block, crc]) => [block, crc]));
  const last = end === 0 ? -1 : grid.blockOf(end - 1);
  const span = last < 0 ? 0 : grid.end(last);
  for (let block = 0; block <= last; block++) if (!checksums.has(block)) return null;
  let data: FileHandle | undefined;
  try {
    data = await open(paths.data, 'r');
    const bytes = new Uint8Array(span);
    if ((await readFully(data, bytes, 0)) < span) return null;
    for (let block = 0; block <= last; block++) {
      if (crc32c(bytes.subarray(grid.start(block), grid.end(block))) !== checksums.get(block)) return null;
    }
    return bytes.subarray(0, end);
  } catch {
    // Unreadable: the caller asks the origin instead.
    return null;
  } finally {
    await data?.close();
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
