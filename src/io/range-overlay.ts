/**
 * A byte source in front of another that holds a set of exact byte ranges fetched ahead (an image's
 * metadata, found by walking it): a read inside a held range is answered from memory, a read inside a
 * range being fetched waits for that fetch, anything else goes to the source behind.
 *
 * Why not the block cache: its unit is a large block (1 MiB) that suits file data read in order; the
 * metadata of images built by other tools is a few hundred 4 KiB pieces scattered among file data, and
 * fetching whole blocks around each would fetch most of the image. The overlay fetches the pieces as
 * they are (neighbours closer than `mergeGap` in one request, several requests at once), and, while
 * `direct` is on (the walk is still running), fetches a lone small read (`directMax`, a kernel page of
 * metadata) exactly instead of the whole block around it.
 */
import { ErofsOciError, raceAbort } from '../errors.ts';
import type { ByteSource, Lending, Loan, ReadOptions } from './byte-source.ts';
import { isLending } from './byte-source.ts';

export interface ByteRange {
  offset: number;
  length: number;
}

export type OverlayFetch = (offset: number, length: number, signal: AbortSignal) => Promise<Uint8Array>;

export interface RangeOverlayOptions {
  /** Ranges closer than this are fetched in one request (default 32 KiB). */
  mergeGap?: number;
  /** Largest request (default 4 MiB). */
  maxRequestBytes?: number;
  /** Requests of one `fill` in flight at once (default 3, leaving the source behind room for demand). */
  parallel?: number;
  /** Held bytes at most (default 64 MiB); `fill` stops holding more beyond it. */
  memoryBytes?: number;
  /** Reads of at most this many bytes are fetched exactly while `direct` is on (default 256 KiB: while the walk runs, the kernel reads metadata with readahead around it). */
  directMax?: number;
  /**
   * Each filled range is widened to whole pages and this many bytes after it (default 16 KiB): the
   * kernel reads the page cache of the file it mounts with readahead, and a read the overlay holds only
   * in part goes to the source behind.
   */
  extendBytes?: number;
  /** A read of at most this many bytes that the held pieces cover in part gets the rest fetched exactly (default 256 KiB). */
  partialMax?: number;
}

export interface OverlayStats {
  requests: number;
  bytesFetched: number;
  /** Reads answered from held or pending ranges. */
  hits: number;
  /** Reads passed to the source behind. */
  passed: number;
}

export interface RangeOverlay extends ByteSource, Lending {
  /** Fetches the ranges not yet held; resolves once they are (failures are dropped: reads retry). */
  fill(ranges: readonly ByteRange[], options?: ReadOptions): Promise<void>;
  /** Whether lone small reads are fetched exactly (on while the metadata is still being found). */
  direct: boolean;
  readonly stats: OverlayStats;
  /** The pieces held, in order (to keep them on disk: range-overlay-store.ts). */
  pieces(): { offset: number; bytes: Uint8Array }[];
  /** Holds pieces found elsewhere (loaded from disk). */
  hold(pieces: readonly { offset: number; bytes: Uint8Array }[]): void;
  /** Stops fetching; held bytes stay readable. */
  close(): Promise<void>;
}

interface Piece {
  offset: number;
  bytes: Uint8Array;
}

interface PendingPiece {
  offset: number;
  length: number;
  promise: Promise<Uint8Array>;
}

export function createRangeOverlay(
  behind: ByteSource,
  fetch: OverlayFetch,
  options: RangeOverlayOptions = {},
): RangeOverlay {
  const mergeGap = options.mergeGap ?? 32 * 1024;
  const maxRequest = options.maxRequestBytes ?? 4 * 1024 * 1024;
  const parallel = Math.max(1, options.parallel ?? 3);
  const memoryBytes = options.memoryBytes ?? 64 * 1024 * 1024;
  const directMax = options.directMax ?? 256 * 1024;
  const extendBytes = options.extendBytes ?? 16 * 1024;
  const partialMax = options.partialMax ?? 256 * 1024;
  const PAGE = 4096;
  const lifetime = new AbortController();
  /** Held pieces sorted by offset, not overlapping. */
  const pieces: Piece[] = [];
  let held = 0;
  const pending: PendingPiece[] = [];
  const stats: OverlayStats = { requests: 0, bytesFetched: 0, hits: 0, passed: 0 };

  /** Index of the last piece starting at or before `offset`, or -1. */
  const pieceBefore = (offset: number): number => {
    let lo = 0;
    let hi = pieces.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if ((pieces[mid] as Piece).offset <= offset) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  };
  const heldAt = (offset: number, length: number): Uint8Array | undefined => {
    const i = pieceBefore(offset);
    if (i < 0) return undefined;
    const piece = pieces[i] as Piece;
    const from = offset - piece.offset;
    if (from + length > piece.bytes.byteLength) return undefined;
    return piece.bytes.subarray(from, from + length);
  };
  const keep = (offset: number, bytes: Uint8Array): void => {
    if (held + bytes.byteLength > memoryBytes) return;
    // Pieces may overlap what is held already (a direct read inside a range fetched meanwhile): keep
    // the new one only where it adds something, trimmed of nothing; readers find the first that fits.
    const i = pieceBefore(offset);
    const before = pieces[i];
    if (before && offset + bytes.byteLength <= before.offset + before.bytes.byteLength) return;
    pieces.splice(i + 1, 0, { offset, bytes });
    held += bytes.byteLength;
  };
  /** The held stretches within [offset, offset + length), as views, in order. */
  const coveredIn = (offset: number, length: number): Piece[] => {
    const end = offset + length;
    const out: Piece[] = [];
    let i = Math.max(0, pieceBefore(offset));
    for (; i < pieces.length; i++) {
      const p = pieces[i] as Piece;
      if (p.offset >= end) break;
      const from = Math.max(offset, p.offset);
      const to = Math.min(end, p.offset + p.bytes.byteLength);
      if (to > from) out.push({ offset: from, bytes: p.bytes.subarray(from - p.offset, to - p.offset) });
    }
    return out;
  };
  /** The stretches of [offset, offset + length) not held; undefined when none of it is held. */
  const missingIn = (offset: number, length: number): ByteRange[] | undefined => {
    const covered = coveredIn(offset, length);
    if (covered.length === 0) return undefined;
    const gaps: ByteRange[] = [];
    let at = offset;
    for (const p of covered) {
      if (p.offset > at) gaps.push({ offset: at, length: p.offset - at });
      at = Math.max(at, p.offset + p.bytes.byteLength);
    }
    if (at < offset + length) gaps.push({ offset: at, length: offset + length - at });
    return gaps;
  };
  /** The stretches of [offset, offset + length) neither held nor being fetched. */
  const uncovered = (offset: number, length: number): ByteRange[] => {
    const end = offset + length;
    const taken: [number, number][] = coveredIn(offset, length).map((p) => [
      p.offset,
      p.offset + p.bytes.byteLength,
    ]);
    for (const p of pending)
      if (p.offset < end && p.offset + p.length > offset) taken.push([p.offset, p.offset + p.length]);
    taken.sort((a, b) => a[0] - b[0]);
    const gaps: ByteRange[] = [];
    let at = offset;
    for (const [from, to] of taken) {
      if (from > at) gaps.push({ offset: at, length: Math.min(from, end) - at });
      at = Math.max(at, to);
      if (at >= end) break;
    }
    if (at < end) gaps.push({ offset: at, length: end - at });
    return gaps;
  };
  const pendingFor = (offset: number, length: number): Promise<Uint8Array> | undefined => {
    for (const p of pending) {
      if (offset >= p.offset && offset + length <= p.offset + p.length) {
        return p.promise.then((bytes) => bytes.subarray(offset - p.offset, offset - p.offset + length));
      }
    }
    return undefined;
  };
  const request = (offset: number, length: number): Promise<Uint8Array> => {
    stats.requests++;
    stats.bytesFetched += length;
    const promise = fetch(offset, length, lifetime.signal).then((bytes) => {
      if (bytes.byteLength !== length) {
        throw new ErofsOciError('io', `asked for ${length} bytes at ${offset}, got ${bytes.byteLength}`);
      }
      keep(offset, bytes);
      return bytes;
    });
    const entry = { offset, length, promise };
    pending.push(entry);
    const done = () => {
      const i = pending.indexOf(entry);
      if (i >= 0) pending.splice(i, 1);
    };
    promise.then(done, done);
    return promise;
  };

  const overlay: RangeOverlay = {
    size: behind.size,
    direct: false,
    stats,
    async fill(ranges, fillOptions = {}) {
      // What is neither held nor on its way, merged across small gaps, cut to the request size.
      const wanted = ranges
        .filter((r) => r.length > 0 && r.offset + r.length <= behind.size)
        .map((r) => {
          const offset = Math.floor(r.offset / PAGE) * PAGE;
          const end = Math.min(behind.size, Math.ceil((r.offset + r.length + extendBytes) / PAGE) * PAGE);
          return { offset, length: end - offset };
        })
        .flatMap((r) => uncovered(r.offset, r.length))
        .sort((a, b) => a.offset - b.offset);
      const runs: ByteRange[] = [];
      for (const r of wanted) {
        const last = runs.at(-1);
        if (
          last &&
          r.offset <= last.offset + last.length + mergeGap &&
          r.offset + r.length - last.offset <= maxRequest
        ) {
          last.length = Math.max(last.length, r.offset + r.length - last.offset);
        } else runs.push({ offset: r.offset, length: Math.min(r.length, behind.size - r.offset) });
      }
      let next = 0;
      const worker = async () => {
        while (next < runs.length && !lifetime.signal.aborted && held < memoryBytes) {
          const run = runs[next++] as ByteRange;
          await request(run.offset, run.length).catch(() => {
            // The reads that need these bytes fetch them through the source behind.
          });
        }
      };
      await raceAbort(
        Promise.all(Array.from({ length: Math.min(parallel, runs.length) }, worker)),
        fillOptions.signal,
      );
    },
    pieces: () => pieces.map((p) => ({ offset: p.offset, bytes: p.bytes })),
    hold(found) {
      for (const p of found) if (p.offset + p.bytes.byteLength <= behind.size) keep(p.offset, p.bytes);
    },
    read: async (offset, length, readOptions) => (await overlay.lend(offset, length, readOptions)).bytes,
    async lend(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Loan> {
      const now = length > 0 ? heldAt(offset, length) : undefined;
      if (now) {
        stats.hits++;
        return { bytes: now, release: () => {} };
      }
      const waiting = length > 0 ? pendingFor(offset, length) : undefined;
      if (waiting) {
        try {
          const bytes = await raceAbort(waiting, readOptions.signal);
          stats.hits++;
          return { bytes, release: () => {} };
        } catch (error) {
          if (readOptions.signal?.aborted) throw error;
          // The prefetch failed: the source behind answers.
        }
      }
      // Pieces on their way that this read overlaps: wait for them, then see what is held.
      const overlapping = pending.filter((p) => p.offset < offset + length && p.offset + p.length > offset);
      if (overlapping.length > 0) {
        await raceAbort(Promise.allSettled(overlapping.map((p) => p.promise)), readOptions.signal);
        const held = heldAt(offset, length);
        if (held) {
          stats.hits++;
          return { bytes: held, release: () => {} };
        }
      }
      // A read that the held pieces cover in part or across pieces (the kernel's readahead around metadata): only the
      // missing stretches are fetched, exactly, instead of whole blocks behind of the same metadata.
      if (length > 0 && length <= partialMax && !lifetime.signal.aborted) {
        const gaps = missingIn(offset, length);
        if (gaps !== undefined) {
          try {
            const out = new Uint8Array(length);
            await raceAbort(
              Promise.all(
                gaps.map(async (g) => {
                  const bytes = (await pendingFor(g.offset, g.length)) ?? (await request(g.offset, g.length));
                  out.set(bytes, g.offset - offset);
                }),
              ),
              readOptions.signal,
            );
            for (const p of coveredIn(offset, length)) {
              out.set(p.bytes, p.offset - offset);
            }
            stats.hits++;
            return { bytes: out, release: () => {} };
          } catch (error) {
            if (readOptions.signal?.aborted) throw error;
          }
        }
      }
      if (overlay.direct && length > 0 && length <= directMax && !lifetime.signal.aborted) {
        try {
          const bytes = await raceAbort(request(offset, length), readOptions.signal);
          stats.hits++;
          return { bytes, release: () => {} };
        } catch (error) {
          if (readOptions.signal?.aborted) throw error;
        }
      }
      stats.passed++;
      if (isLending(behind)) return behind.lend(offset, length, readOptions);
      return { bytes: await behind.read(offset, length, readOptions), release: () => {} };
    },
    async close() {
      lifetime.abort(new ErofsOciError('aborted', 'the range overlay is closed'));
    },
  };
  return overlay;
}
