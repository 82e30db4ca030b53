/**
 * `convert`: an image with tar layers → the same image with EROFS-native layers (erofs-image-spec), written
 * to a destination. Layers are converted several at once (each a build plus a chunk-index pass, bounded by
 * the builder's own memory bound) and handed to the destination as they finish; the config and the manifest
 * go last, so a failure never leaves the destination naming a blob it lacks.
 */
import { rm } from 'node:fs/promises';
import { MEDIA_TYPE_EROFS_LAYER_V1 } from '../chunk-index/index.ts';
import type { BlockSize } from '../erofs/writer.ts';
import { ErofsOciError } from '../errors.ts';
import { type Image, type ImageSource, type LayerDescriptor, readConfig } from '../oci/index.ts';
import { type ConvertedLayer, convertLayer } from './convert-layer.ts';
import { addErofsFeature, type Blob, layerMediaType, manifestBlob, rewriteConfig } from './documents.ts';
import type { Transfer } from './layout-sink.ts';

/** Where a converted image goes: a layout directory or a registry repository. */
export interface ImageSink {
  workDirectory(): Promise<string>;
  putFile(digest: string, size: number, path: string, signal?: AbortSignal): Promise<Transfer>;
  putBlob(blob: Blob, signal?: AbortSignal): Promise<Transfer>;
  /** A blob of the source copied as it is (`open` verifies it): skipped when DEST has it. */
  copyBlob(
    descriptor: { digest: string; size: number },
    open: (signal?: AbortSignal) => AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<Transfer>;
  /** A manifest an index will name, stored by digest (before the index). */
  putManifest(manifest: Blob, signal?: AbortSignal): Promise<void>;
  /** The manifest or index DEST names: the last step. */
  putRoot(root: Blob, platform?: unknown, signal?: AbortSignal): Promise<void>;
}

export interface ConvertOptions {
  chunkSize?: number;
  zstdLevel?: number | undefined;
  /** `application/vnd.erofs.layer.v1` (default) or `application/vnd.erofs`. */
  mediaType?: string;
  blockSize?: BlockSize;
  /** Build time of every layer; default: the source config's `created`, else 0. */
  timestamp?: number | undefined;
  uuid?: Uint8Array | undefined;
  /** Layers converted at once (default 2). */
  concurrency?: number;
  signal?: AbortSignal;
  onLayerProgress?: (index: number, sourceBytes: number) => void;
  onLayerDone?: (index: number, layer: LayerReport) => void;
}

export interface LayerReport {
  sourceDigest: string;
  digest: string;
  size: number;
  mediaType: string;
  diffId: string;
  transfer: Transfer;
}

export interface ConvertSummary {
  /** What DEST names: the manifest, or the index with `--all-platforms` / `--with-source`. */
  manifest: { mediaType: string; digest: string; size: number };
  /** The layers of every converted image, in order. */
  layers: LayerReport[];
  /** Index output: each converted image with its platform. */
  images?: ConvertedImageReport[];
  seconds: number;
}

export interface ConvertedImageReport {
  platform: Record<string, unknown> | undefined;
  manifest: string;
  layers: LayerReport[];
}

/** One image converted and its blobs stored; the manifest not yet named by anything. */
export interface ConvertedImage {
  manifest: Blob;
  /** The platform for an index entry (from the config), `os.features` with `erofs`. */
  platform: Record<string, unknown> | undefined;
  layers: LayerReport[];
}

export const DEFAULT_CHUNK_SIZE = 1 << 20;

/** Seconds of the config's `created` (RFC 3339), or 0 when it has none. */
export function createdSeconds(config: Record<string, unknown>): number {
  const created = typeof config.created === 'string' ? Date.parse(config.created) : Number.NaN;
  return Number.isFinite(created) && created > 0 ? Math.floor(created / 1000) : 0;
}

export async function convertImage(
  image: ImageSource,
  sink: ImageSink,
  options: ConvertOptions = {},
): Promise<ConvertSummary> {
  const started = performance.now();
  const converted = await convertManifest(image, sink, options);
  await sink.putRoot(converted.manifest, converted.platform, options.signal);
  const { manifest } = converted;
  return {
    manifest: { mediaType: manifest.mediaType, digest: manifest.digest, size: manifest.size },
    layers: converted.layers,
    seconds: (performance.now() - started) / 1000,
  };
}

/** Converts the layers of one image and stores them and the config; returns the manifest, unstored. */
export async function convertManifest(
  image: Image,
  sink: ImageSink,
  options: ConvertOptions = {},
  layerOffset = 0,
): Promise<ConvertedImage> {
  const signal = options.signal;
  const layers = await image.layers({ signal });
  for (const layer of layers) {
    if (layer.format.kind !== 'tar') {
      throw new ErofsOciError('unsupported', `layer ${layer.digest} (${layer.mediaType}) is not a tar layer`);
    }
  }
  const config = await readConfig(image, { signal });
  const timestamp = options.timestamp ?? createdSeconds(config);
  const mediaType = layerMediaType(
    options.mediaType ?? MEDIA_TYPE_EROFS_LAYER_V1,
    options.zstdLevel !== undefined,
  );
  const directory = await sink.workDirectory();
  try {
    const converted: ConvertedLayer[] = new Array(layers.length);
    const reports: LayerReport[] = new Array(layers.length);
    const one = async (i: number, layer: LayerDescriptor) => {
      const result = await convertLayer(image, layer, {
        directory,
        chunkSize: options.chunkSize ?? DEFAULT_CHUNK_SIZE,
        zstdLevel: options.zstdLevel,
        blockSize: options.blockSize,
        timestamp,
        uuid: options.uuid,
        signal,
        lowers: layers.slice(0, i),
        onProgress: (bytes) => options.onLayerProgress?.(layerOffset + i, bytes),
      });
      converted[i] = result;
      const transfer = await sink.putFile(result.blobDigest, result.blobSize, result.path, signal);
      reports[i] = {
        sourceDigest: layer.digest,
        digest: result.blobDigest,
        size: result.blobSize,
        mediaType,
        diffId: result.diffId,
        transfer,
      };
      options.onLayerDone?.(layerOffset + i, reports[i]);
    };
    await pool(layers, Math.max(1, options.concurrency ?? 2), one, signal);
    const configBlob = rewriteConfig(config, converted);
    await sink.putBlob(configBlob, signal);
    return {
      manifest: manifestBlob(configBlob, converted, mediaType),
      platform: platformOf(config),
      layers: reports,
    };
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}

function platformOf(config: Record<string, unknown>): Record<string, unknown> | undefined {
  if (typeof config.os !== 'string' || typeof config.architecture !== 'string') return undefined;
  return {
    architecture: config.architecture,
    os: config.os,
    ...(typeof config.variant === 'string' ? { variant: config.variant } : {}),
    'os.features': addErofsFeature(config['os.features']),
  };
}

/** Runs `work` over `items`, `limit` at once; the first failure aborts the rest and is thrown. */
async function pool<T>(
  items: readonly T[],
  limit: number,
  work: (index: number, item: T) => Promise<void>,
  signal: AbortSignal | undefined,
): Promise<void> {
  let next = 0;
  let failed: unknown;
  const runner = async () => {
    while (failed === undefined && next < items.length) {
      const i = next++;
      signal?.throwIfAborted();
      try {
        await work(i, items[i] as T);
      } catch (error) {
        failed ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, runner));
  if (failed !== undefined) throw failed;
}
