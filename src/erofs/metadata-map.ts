/**
 * Which bytes of an EROFS image are metadata: the superblock and device table, every inode slot reachable
 * from the root (with its inline xattrs, inline tail data and chunk table), shared xattrs, directory blocks
 * and the compression headers of compressed files. A lazy mount fetches these ahead of the kernel: images
 * built by other tools (erofs-utils `--tar=f` writes each inode beside its file's data) scatter them
 * through the image, and fetching them one kernel request at a time makes a cold `find` slow.
 *
 * The walk is our reader's own (superblock.ts, inode.ts, directory.ts, ...), over a byte source that
 * records what it reads: whatever the reader needs to list every directory and stat every inode is in
 * the map, at the reader's granularity (whole blocks of the metadata area, exact directory blocks).
 * It goes breadth first, one directory level at a time, and before each batch of reads it announces the
 * ranges it is about to read (`prefetch`), so that a caller can fetch them in a few coalesced, parallel
 * requests instead of one request per inode.
 *
 * Bounded: each nid is visited once (hardlinks, and directory cycles in a corrupt image, end there), the
 * walk stops at a byte or time budget or at the caller's signal, and a corrupt structure stops it with the
 * reader's error in `stopped` (the ranges found so far are still returned).
 */
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { isCompressed, mapExtents } from './data-map.ts';
import { readDirectory } from './directory.ts';
import { INODE_SLOT_SIZE, inodeExtended } from './format.ts';
import { ImageContext } from './image-context.ts';
import { type Inode, readInode } from './inode.ts';
import { readDeviceTable, readSuperblock } from './superblock.ts';
import { zInfo } from './zmap.ts';

export interface ByteRange {
  offset: number;
  length: number;
}

export interface MetadataMap {
  /** Sorted, non-overlapping, non-adjacent ranges of the image. */
  ranges: ByteRange[];
  /** Sum of the ranges' lengths. */
  bytes: number;
  /** Inodes read. */
  inodes: number;
  /** Directories listed. */
  directories: number;
  /** Every inode reachable from the root was visited. */
  complete: boolean;
  /** Why the walk stopped early (a budget, or the error a corrupt structure gave); absent when complete. */
  stopped?: string;
}

export interface MetadataMapOptions {
  /** Stop once the map holds this many bytes (default 256 MiB). */
  maxBytes?: number;
  /** Stop after this many milliseconds (default 120 s). */
  maxMs?: number;
  /** Reads in flight at once within a batch (default 64). */
  concurrency?: number;
  /** Inodes per batch (default 4096): each batch is announced, then read. */
  batchInodes?: number;
  /**
   * Called with the ranges a batch is about to read (sorted, coalesced), before it reads them; the walk
   * waits for it. A lazy source fetches them here in few requests. Errors are ignored: the reads follow.
   */
  prefetch?: (ranges: ByteRange[], options: ReadOptions) => Promise<void>;
  signal?: AbortSignal;
}

/** Sorted, coalesced copy of `ranges` (ranges that touch or overlap become one). */
export function coalesce(ranges: readonly ByteRange[], gap = 0): ByteRange[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    const last = out.at(-1);
    if (last && r.offset <= last.offset + last.length + gap) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else out.push({ offset: r.offset, length: r.length });
  }
  return out;
}

/** Whether `[offset, offset + length)` lies within the sorted, coalesced `ranges`. */
export function covers(ranges: readonly ByteRange[], offset: number, length: number): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid] as ByteRange;
    if (offset < r.offset) hi = mid - 1;
    else if (offset >= r.offset + r.length) lo = mid + 1;
    else return offset + length <= r.offset + r.length;
  }
  return false;
}

/** Walks the image on `source` and returns its metadata map (see the module comment). */
export async function mapMetadata(
  source: ByteSource,
  options: MetadataMapOptions = {},
): Promise<MetadataMap> {
  const maxBytes = options.maxBytes ?? 256 * 1024 * 1024;
  const maxMs = options.maxMs ?? 120_000;
  const concurrency = Math.max(1, options.concurrency ?? 64);
  const batchInodes = Math.max(1, options.batchInodes ?? 4096);
  const started = performance.now();
  const readOptions: ReadOptions = options.signal ? { signal: options.signal } : {};
  const recorded: ByteRange[] = [];
  let recordedBytes = 0;
  const recording: ByteSource = {
    size: source.size,
    read(offset, length, readOpts) {
      recorded.push({ offset, length });
      recordedBytes += length;
      return source.read(offset, length, readOpts);
    },
  };
  const result = (complete: boolean, stopped?: string): MetadataMap => {
    const ranges = coalesce(recorded);
    const map: MetadataMap = {
      ranges,
      bytes: ranges.reduce((sum, r) => sum + r.length, 0),
      inodes,
      directories,
      complete,
    };
    if (stopped !== undefined) map.stopped = stopped;
    return map;
  };
  let inodes = 0;
  let directories = 0;

  const { info, deviceTable } = await readSuperblock(recording, options.signal);
  // A large block cache: the walk reads each metadata block once, however the inodes fall in it.
  const ctx = new ImageContext(recording, info, { cacheBlocks: 16_384 });
  await readDeviceTable(ctx, deviceTable, readOptions);
  const bs = ctx.blockSize;
  const slotAt = (nid: number) => info.metaBlkaddr * bs + nid * INODE_SLOT_SIZE;
  const announce = async (ranges: ByteRange[]): Promise<void> => {
    if (!options.prefetch || ranges.length === 0) return;
    await options.prefetch(coalesce(ranges), readOptions).catch(() => {
      // A failed prefetch costs only time: the reads that follow fetch what they need themselves.
    });
  };
  const overBudget = (): string | undefined => {
    if (recordedBytes > maxBytes && result(false).bytes > maxBytes)
      return `byte budget of ${maxBytes} reached`;
    if (performance.now() - started > maxMs) return `time budget of ${maxMs} ms reached`;
    return undefined;
  };

  const seen = new Set<number>([info.rootNid]);
  let level: number[] = [info.rootNid];
  try {
    while (level.length > 0) {
      const next: number[] = [];
      for (let b = 0; b < level.length; b += batchInodes) {
        throwIfAborted(options.signal);
        const why = overBudget();
        if (why !== undefined) return result(false, why);
        const batch = level.slice(b, b + batchInodes);
        // The inode slots (an extended inode's 64 bytes; xattrs and inline data follow in the same block
        // or the next, which the block-granular fetch of the caller takes along).
        await announce(
          batch.map((nid) => {
            const at = slotAt(nid);
            const start = Math.floor(at / bs) * bs;
            return { offset: start, length: Math.min(ctx.metaLimit, at + inodeExtended.size) - start };
          }),
        );
        const read = await inParallel(batch, concurrency, (nid) => readInode(ctx, nid, readOptions));
        inodes += read.length;
        const dirs = read.filter((inode) => inode.type === 'dir');
        await announce(await dirRanges(ctx, dirs, readOptions));
        const compressed = read.filter((inode) => inode.type !== 'dir' && isCompressed(inode));
        await inParallel(compressed, concurrency, (inode) => zInfo(ctx, inode, readOptions));
        const listed = await inParallel(dirs, concurrency, (dir) => readDirectory(ctx, dir, readOptions));
        directories += listed.length;
        for (const { entries } of listed) {
          for (const entry of entries) {
            if (seen.has(entry.nid)) continue;
            seen.add(entry.nid);
            next.push(entry.nid);
          }
        }
      }
      // Inodes in slot order: neighbours in the image are read (and fetched) together.
      level = next.sort((a, b) => a - b);
    }
  } catch (error) {
    if (error instanceof ErofsOciError && error.code === 'aborted') throw error;
    if (options.signal?.aborted) throw error;
    return result(false, error instanceof Error ? error.message : String(error));
  }
  return result(true);
}

/** Where the blocks of these directories lie (flat layouts; compressed ones are read as they come). */
async function dirRanges(ctx: ImageContext, dirs: Inode[], options: ReadOptions): Promise<ByteRange[]> {
  const ranges: ByteRange[] = [];
  for (const dir of dirs) {
    if (isCompressed(dir) || dir.size === 0) continue;
    try {
      for (const extent of await mapExtents(ctx, dir, 0, dir.size, options)) {
        if (extent.kind === 'data' && extent.source === ctx.source) {
          ranges.push({ offset: extent.position, length: extent.length });
        }
      }
    } catch {
      // readDirectory reports what is wrong with it.
    }
  }
  return ranges;
}

/** `fn` over `items`, at most `limit` at once, results in order; the first failure rejects. */
async function inParallel<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let nextIndex = 0;
  const worker = async () => {
    while (nextIndex < items.length) {
      const i = nextIndex++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
