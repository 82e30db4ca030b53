/**
 * The byte source a lazy export or mount serves for one layer: the layer blob read with HTTP range
 * requests through a block cache, or the hybrid device `[index image][uncompressed tar]` whose tar part is
 * inflated on demand from the gzip blob through its zinfo.
 */
import { readFile } from 'node:fs/promises';
import {
  loadMetadataOverlay,
  prefetchMetadataOverlay,
  prefetchMetadataThrough,
} from '../erofs/metadata-prefetch.ts';
import { LAYOUT_HEAD_BYTES, layoutAnchors, openImage } from '../erofs/reader.ts';
import { ErofsOciError } from '../errors.ts';
import {
  decodeSpanDigests,
  decodeZinfo,
  openZinfoSource,
  SPAN_DIGESTS_SUFFIX,
  type SpanDigests,
} from '../gzip-index/index.ts';
import { type BlockCache, openBlockCache, type RangeFetch, readCachedHead } from '../io/block-cache.ts';
import type { ByteSource } from '../io/byte-source.ts';
import { concatSources } from '../io/concat-source.ts';
import { piecesPath } from '../io/range-overlay-store.ts';
import { type FileSource, openFileSource } from '../io/file-source.ts';
import type { ChunkIndexLayer } from '../mount/state.ts';
import {
  type Descriptor,
  type ImageSource,
  isRangeReader,
  type LayerDescriptor,
  type RangeReader,
} from '../oci/index.ts';
import { wasAnsweredWhole } from '../oci/registry-client.ts';
import { type IndexBlobReader, openVerifiedLayer } from '../verified/open.ts';
import { openWholeZstdLayer } from './whole-zstd.ts';

export interface DeviceOptions {
  /** Local index-mode image of the layer: export `[META][uncompressed tar]`. */
  tarIndex?: string;
  /** zinfo of the (gzip) layer, with `tarIndex`. */
  zinfo?: string;
  cacheDir?: string;
  /** Memory cache budget in bytes. */
  cacheBytes?: number;
  /** Fetch unit in bytes. */
  fetchBlockSize?: number;
  /** Where the blob cache reports what no read tells: the digest's verdict, whole downloads. */
  log?: (line: string) => void;
  signal?: AbortSignal;
}

export interface LayerDevice {
  source: ByteSource;
  /** What the device is, for logs: `blob sha256:…` or `hybrid sha256:…`. */
  description: string;
  /** The blob's block cache; absent for chunk-verified and whole-decompressed layers. */
  blobCache?: BlockCache;
  /** How the bytes served are checked, for logs and `list --json`. */
  verification: 'chunk-verified' | 'whole-blob';
  /** What the device fetched, for the log line when it stops. */
  summary(): string;
  close(): Promise<void>;
}

/** Fetches a standalone chunk-index layer whole by range read; src/verified checks it against its digest. */
export function indexBlobReader(reader: RangeReader): IndexBlobReader {
  return (descriptor, signal) =>
    descriptor.size === 0
      ? Promise.resolve(new Uint8Array(0))
      : reader.readRange(descriptor.digest, 0, descriptor.size, { signal });
}

/** A standalone chunk-index layer's descriptor as records keep it (plain JSON). */
export function chunkIndexLayer(descriptor: Descriptor): ChunkIndexLayer {
  return {
    mediaType: descriptor.mediaType,
    digest: descriptor.digest,
    size: descriptor.size,
    ...(descriptor.annotations === undefined ? {} : { annotations: { ...descriptor.annotations } }),
  };
}

/** The span digests `build --mode index --zinfo` writes beside the zinfo, when they are there. */
async function readSpanDigests(
  zinfoPath: string,
  zinfoBytes: Uint8Array,
  checkpoints: number,
): Promise<SpanDigests | undefined> {
  const path = `${zinfoPath}${SPAN_DIGESTS_SUFFIX}`;
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ErofsOciError('io', `cannot read ${path}: ${(error as Error).message}`);
  }
  return decodeSpanDigests(bytes, zinfoBytes, checkpoints, path);
}

export async function openLayerDevice(
  image: ImageSource,
  layer: LayerDescriptor,
  options: DeviceOptions = {},
): Promise<LayerDevice> {
  if (!isRangeReader(image)) {
    throw new ErofsOciError('unsupported', `${image.name} cannot be read lazily (no range reads)`);
  }
  const reader = image;
  if (options.tarIndex === undefined && layer.format.kind === 'erofs') {
    // A layer with a chunk index: every chunk checked before it goes further (src/verified/).
    const name = `layer ${layer.digest} of ${image.name}`;
    const blob: ByteSource = {
      size: layer.size,
      read: (offset, length, readOptions) =>
        reader.readRange(layer.digest, offset, length, { signal: readOptions?.signal ?? options.signal }),
    };
    const verified = await openVerifiedLayer(blob, layer, {
      name,
      ...(options.cacheDir === undefined ? {} : { cacheDir: options.cacheDir }),
      ...(options.cacheBytes === undefined ? {} : { memoryBytes: options.cacheBytes }),
      ...(options.log === undefined ? {} : { log: options.log }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      readIndexBlob: indexBlobReader(reader),
    });
    if (verified !== undefined) {
      options.log?.(
        `${name}: chunk index verified (${verified.index.entries.length} chunks, ${verified.index.compression}); every chunk is checked before it is served`,
      );
      // The image's metadata read ahead of the kernel, chunk-verified like every other read.
      const ahead = prefetchMetadataThrough(verified, { name, ...logOption(options) });
      return {
        source: verified,
        description: `chunk-verified ${layer.digest}`,
        verification: 'chunk-verified',
        summary: () => {
          const s = verified.stats;
          return `fetched ${s.fetchedBytes} bytes in ${s.requests} requests, ${s.verifiedChunks} chunks verified (${s.storeHits} from disk), ${s.failedChunks} checksum failures`;
        },
        close: async () => {
          await ahead.close();
          await verified.close();
        },
      };
    }
    if (layer.format.compression === 'zstd') {
      const whole = await openWholeZstdLayer(image, layer, options);
      return {
        source: whole.source,
        description: `decompressed ${layer.digest}`,
        verification: 'whole-blob',
        summary: () => `fetched ${layer.size} bytes once, decompressed and verified`,
        close: () => whole.close(),
      };
    }
  }
  let head: Uint8Array | undefined;
  let anchors: number[] = [];
  if (
    layer.format.kind === 'erofs' &&
    layer.format.compression === 'none' &&
    options.tarIndex === undefined
  ) {
    // An EROFS layer: its superblock says where reads will go, so blocks are cut to fit (a small first
    // fetch for the mount, the metadata area starting a block). A disk cache that holds the head answers
    // without the registry (a server restarted by reattach starts while the registry is unreachable);
    // otherwise the head fetched is what the mount reads first, and the cache starts with it.
    const headLength = Math.min(LAYOUT_HEAD_BYTES, layer.size);
    let known =
      options.cacheDir === undefined
        ? null
        : await readCachedHead(options.cacheDir, layer.digest, layer.size, headLength);
    if (known === null) {
      head = await reader.readRange(layer.digest, 0, headLength, { signal: options.signal });
      known = head;
    }
    anchors = layoutAnchors(known);
  }
  const fetch: RangeFetch = (offset, length, signal, sink) =>
    reader.readRange(layer.digest, offset, length, { signal, onData: sink });
  const blobCache = await openBlockCache(fetch, {
    size: layer.size,
    anchors,
    ...(head === undefined ? {} : { prefetched: head }),
    name: `blob ${layer.digest} of ${image.name}`,
    // Range reads are checked as a whole, once every block has been fetched (src/io/block-cache.ts).
    ...(/^sha(256|512):/.test(layer.digest) ? { digest: layer.digest } : {}),
    // A registry that ignores Range gets the blob downloaded once (a verified stream) instead of once per
    // read; the registry client marks the range reads it answered whole.
    whole: { answeredWhole: wasAnsweredWhole, fetch: (signal) => image.openBlob(layer, { signal }) },
    // The registry client already retries transient failures with backoff within its time budget
    // (--timeout); retrying its final answer would multiply the time a read takes to fail (EIO).
    retries: 0,
    ...(options.log === undefined ? {} : { log: options.log }),
    ...(options.cacheDir === undefined ? {} : { cacheDir: options.cacheDir, cacheId: layer.digest }),
    ...(options.cacheBytes === undefined ? {} : { memoryBytes: options.cacheBytes }),
    ...(options.fetchBlockSize === undefined ? {} : { blockSize: options.fetchBlockSize }),
  });
  if (options.tarIndex === undefined) {
    if (options.zinfo !== undefined) throw new ErofsOciError('usage', '--zinfo goes with --tarindex');
    // An EROFS layer: its metadata pieces fetched ahead of the kernel, in front of the block cache, and
    // kept beside the disk cache. When the disk cache answered the head (a reattach, perhaps with the
    // registry down), the pieces kept answer instead: nothing waits for requests that may time out.
    const overlayFetch = (offset: number, length: number, signal: AbortSignal) =>
      reader.readRange(layer.digest, offset, length, { signal });
    const piecesFile =
      options.cacheDir === undefined ? undefined : piecesPath(options.cacheDir, layer.digest);
    const aheadOptions = {
      name: `blob ${layer.digest}`,
      ...logOption(options),
      ...(piecesFile === undefined ? {} : { piecesFile }),
    };
    const ahead =
      head !== undefined
        ? prefetchMetadataOverlay(blobCache, overlayFetch, { ...aheadOptions, head })
        : anchors.length > 0 && piecesFile !== undefined
          ? await loadMetadataOverlay(blobCache, overlayFetch, { ...aheadOptions, piecesFile })
          : undefined;
    if (ahead !== undefined) {
      return {
        source: ahead.source,
        description: `blob ${layer.digest}`,
        blobCache,
        verification: 'whole-blob',
        summary: () => `${cacheSummary(blobCache)}; ${ahead.summary()}`,
        close: async () => {
          await ahead.close();
          await blobCache.close();
        },
      };
    }
    return {
      source: blobCache,
      description: `blob ${layer.digest}`,
      blobCache,
      verification: 'whole-blob',
      summary: () => cacheSummary(blobCache),
      close: () => blobCache.close(),
    };
  }
  let meta: FileSource | undefined;
  try {
    meta = await openFileSource(options.tarIndex);
    const index = await openImage(meta, { signal: options.signal });
    const device = index.superblock.devices[0];
    if (!device || device.uniaddr * index.superblock.blockSize !== meta.size) {
      throw new ErofsOciError(
        'corrupt',
        `${options.tarIndex} is not an index-mode image (no device table slot starting right after it)`,
        { hint: 'build one with: erofs-oci build --mode index --zinfo FILE SOURCE --layer N META' },
      );
    }
    const tarSize = device.blocks * index.superblock.blockSize;
    let tar: ByteSource;
    if (layer.format.kind !== 'tar')
      throw new ErofsOciError('usage', `layer ${layer.digest} is not a tar layer`);
    if (layer.format.compression === 'gzip') {
      if (options.zinfo === undefined) {
        throw new ErofsOciError(
          'usage',
          `layer ${layer.digest} is gzip-compressed: --zinfo is needed with --tarindex`,
          {
            hint: 'build both with: erofs-oci build --mode index --zinfo FILE SOURCE --layer N META',
          },
        );
      }
      const zinfoBytes = await readFile(options.zinfo).catch((error: NodeJS.ErrnoException) => {
        throw new ErofsOciError(
          error.code === 'ENOENT' ? 'not-found' : 'io',
          `cannot read ${options.zinfo}: ${error.message}`,
        );
      });
      const zinfo = decodeZinfo(zinfoBytes);
      const spans = await readSpanDigests(options.zinfo, zinfoBytes, zinfo.checkpoints.length);
      options.log?.(
        spans === undefined
          ? `hybrid ${layer.digest}: no ${options.zinfo}${SPAN_DIGESTS_SUFFIX}: tar spans are not checked one by one, the blob is verified as a whole once complete`
          : `hybrid ${layer.digest}: every span inflated is checked against ${options.zinfo}${SPAN_DIGESTS_SUFFIX}`,
      );
      tar = await openZinfoSource(blobCache, zinfo, {
        uncompressedSize: tarSize,
        signal: options.signal,
        ...(spans === undefined ? {} : { spanDigests: spans.spans }),
      });
    } else if (layer.format.compression === 'none') {
      tar = blobCache;
    } else {
      throw new ErofsOciError(
        'unsupported',
        `lazy reads of ${layer.format.compression} layers are not supported`,
      );
    }
    if (tar.size < tarSize) {
      throw new ErofsOciError(
        'corrupt',
        `${options.tarIndex} addresses ${tarSize} bytes of tar, the layer has ${tar.size}`,
      );
    }
    const opened = meta;
    return {
      source: concatSources([opened, tar]),
      description: `hybrid ${layer.digest}`,
      blobCache,
      verification: 'whole-blob',
      summary: () => cacheSummary(blobCache),
      close: async () => {
        await opened.close();
        await blobCache.close();
      },
    };
  } catch (error) {
    await meta?.close();
    await blobCache.close();
    throw error;
  }
}

function logOption(options: DeviceOptions): { log?: (line: string) => void } {
  return options.log === undefined ? {} : { log: options.log };
}

function cacheSummary(blobCache: BlockCache): string {
  const stats = blobCache.stats();
  return `fetched ${stats.bytesFetched} bytes in ${stats.fetches} requests, ${stats.hits} cache hits, digest ${stats.verification}`;
}
