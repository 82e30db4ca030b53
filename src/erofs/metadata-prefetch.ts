/**
 * Fetching an EROFS layer's metadata ahead of the kernel when it is mounted lazily: the image is walked
 * (metadata-map.ts) in the background from the moment the device is opened, and each batch of inodes and
 * directory blocks the walk is about to read is fetched in a few coalesced, parallel requests, so that
 * the kernel's `find` finds it at hand instead of fetching it one page per request.
 *
 * Two ways to fetch: through a range overlay (src/io/range-overlay.ts) that holds the exact metadata
 * pieces in front of the blob's block cache (an unverified blob: the pieces are a few hundred KiB, while
 * whole cache blocks around them would be most of an image built by erofs-utils), or by reading through
 * a verified source (src/verified), whose chunks are its unit of checking and caching anyway.
 * Kernel demand comes first: the overlay's fetches leave fetch slots free and the walk never holds a
 * read of the kernel back; a failed or corrupt walk only ends the prefetch.
 */
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { createRangeOverlay, type OverlayFetch, type RangeOverlay } from '../io/range-overlay.ts';
import { loadPieces, savePieces } from '../io/range-overlay-store.ts';
import { type ByteRange, type MetadataMap, mapMetadata } from './metadata-map.ts';

export interface MetadataPrefetch {
  /** What the kernel reads. */
  source: ByteSource;
  /** Resolves with the map once the walk has ended (undefined if it could not start). */
  done: Promise<MetadataMap | undefined>;
  summary(): string;
  close(): Promise<void>;
}

export interface MetadataPrefetchOptions {
  name: string;
  log?: (line: string) => void;
  /** Held metadata at most (overlay only; default 64 MiB). */
  memoryBytes?: number;
  /** Where the overlay's pieces are kept once the walk is complete (range-overlay-store.ts). */
  piecesFile?: string;
  /** Bytes from offset 0 fetched already (the head the mount read): held from the start, not fetched again. */
  head?: Uint8Array;
}

/** An unverified blob: metadata pieces held in an overlay in front of `behind`, fetched by `fetch`. */
export function prefetchMetadataOverlay(
  behind: ByteSource,
  fetch: OverlayFetch,
  options: MetadataPrefetchOptions,
): MetadataPrefetch {
  const overlay: RangeOverlay = createRangeOverlay(behind, fetch, {
    ...(options.memoryBytes === undefined ? {} : { memoryBytes: options.memoryBytes }),
  });
  overlay.direct = true;
  if (options.head !== undefined) overlay.hold([{ offset: 0, bytes: options.head }]);
  const walk = new AbortController();
  const done = run(overlay, (ranges, o) => overlay.fill(ranges, o), walk.signal, options).then(
    async (map) => {
      overlay.direct = false;
      if (map?.complete && options.piecesFile !== undefined && !walk.signal.aborted) {
        await savePieces(options.piecesFile, overlay.pieces()).catch((error: Error) => {
          options.log?.(`${options.name}: could not keep the metadata on disk: ${error.message}`);
        });
      }
      return map;
    },
  );
  return {
    source: overlay,
    done,
    summary: () =>
      `metadata prefetch: ${overlay.stats.bytesFetched} bytes in ${overlay.stats.requests} requests, ${overlay.stats.hits} reads answered`,
    async close() {
      walk.abort();
      await overlay.close();
      await done;
    },
  };
}

/**
 * The pieces an earlier run kept (`piecesFile`) in an overlay in front of `behind`, without walking again;
 * undefined when there are none. For a server restarted with its disk cache, perhaps without the origin.
 */
export async function loadMetadataOverlay(
  behind: ByteSource,
  fetch: OverlayFetch,
  options: MetadataPrefetchOptions & { piecesFile: string },
): Promise<MetadataPrefetch | undefined> {
  const pieces = await loadPieces(options.piecesFile, behind.size);
  if (pieces === undefined) return undefined;
  const overlay = createRangeOverlay(behind, fetch, {
    ...(options.memoryBytes === undefined ? {} : { memoryBytes: options.memoryBytes }),
  });
  overlay.hold(pieces);
  options.log?.(`${options.name}: ${pieces.length} metadata pieces loaded from the disk cache`);
  return {
    source: overlay,
    done: Promise.resolve(undefined),
    summary: () => `metadata from the disk cache: ${overlay.stats.hits} reads answered`,
    close: () => overlay.close(),
  };
}

/** A verified source: the metadata read through it ahead of the kernel, `parallel` reads at once. */
export function prefetchMetadataThrough(
  source: ByteSource,
  options: MetadataPrefetchOptions & { parallel?: number },
): MetadataPrefetch {
  const parallel = options.parallel ?? 3;
  const walk = new AbortController();
  const fill = async (ranges: ByteRange[], o: ReadOptions): Promise<void> => {
    let next = 0;
    const worker = async () => {
      while (next < ranges.length && !walk.signal.aborted) {
        const r = ranges[next++] as ByteRange;
        await source.read(r.offset, Math.min(r.length, source.size - r.offset), o).catch(() => {});
      }
    };
    await Promise.all(Array.from({ length: Math.min(parallel, ranges.length) }, worker));
  };
  const done = run(source, fill, walk.signal, options);
  return {
    source,
    done,
    summary: () => 'metadata read ahead through the verified source',
    async close() {
      walk.abort();
      await done;
    },
  };
}

async function run(
  source: ByteSource,
  fill: (ranges: ByteRange[], options: ReadOptions) => Promise<void>,
  signal: AbortSignal,
  options: MetadataPrefetchOptions,
): Promise<MetadataMap | undefined> {
  const started = performance.now();
  try {
    const map = await mapMetadata(source, { prefetch: fill, signal });
    const ms = Math.round(performance.now() - started);
    options.log?.(
      `${options.name}: metadata walked in ${ms} ms: ${map.inodes} inodes, ${map.directories} directories, ${map.bytes} bytes in ${map.ranges.length} ranges${map.complete ? '' : ` (stopped: ${map.stopped})`}`,
    );
    return map;
  } catch (error) {
    if (!signal.aborted) {
      options.log?.(`${options.name}: no metadata prefetch: ${(error as Error).message}`);
    }
    return undefined;
  }
}
