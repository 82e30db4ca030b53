/** The block cache's options, statistics and interface (see src/io/block-cache.ts). */
import type { ByteSource, Closable, Lending } from '../byte-source.ts';
import type { FetchStage } from './fetch-stage.ts';
import type { WholeFetch } from './whole-download.ts';

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
  /** What a fetched block becomes before it is cached (see src/io/block-cache/fetch-stage.ts). Default: as fetched. */
  stage?: FetchStage;
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
  /** Block buffers recycled rather than allocated (see src/io/block-cache/block-pool.ts). */
  buffersReused: number;
  verification: Verification;
}

export interface BlockCache extends ByteSource, Closable, Lending {
  stats(): BlockCacheStats;
  /** Resolves once the disk cache (if any) is open; rejects with the reason it cannot be used. */
  ready(): Promise<void>;
}
