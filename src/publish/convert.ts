/**
 * `convert`: an image with tar layers → the same image with EROFS-native layers (erofs-image-spec), written
 * to a destination. Layers are converted several at once (each a build plus a chunk-index pass, bounded by
 * the builder's own memory bound) and handed to the destination as they finish, their uploads overlapping
 * the next conversions (pipeline.ts); the config and the manifest
 * go last, so a failure never leaves the destination naming a blob it lacks.
 */
import { rm } from 'node:fs/promises';
import { MEDIA_TYPE_EROFS_LAYER_V1 } from '../chunk-index/index.ts';
import type { BlockSize } from '../erofs/writer.ts';
import { ErofsOciError } from '../errors.ts';
import { type Image, type ImageSource, readConfig } from '../oci/index.ts';
import { type ConvertedLayer, convertLayer } from './convert-layer.ts';
import { addErofsFeature, type Blob, layerMediaType, manifestBlob, rewriteConfig } from './documents.ts';
import type { Transfer } from './layout-sink.ts';
import { runPipeline } from './pipeline.ts';

/** Where a converted image goes: a layout directory or a registry repository. */
export interface ImageSink {
  workDirectory(): Promise<string>;
  putFile(
    digest: string,
    size: number,
    path: string,
    signal?: AbortSignal,
    onBytes?: (bytes: number) => void,
  ): Promise<Transfer>;
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
  /** Layers converted at once, and uploaded at once while the next ones convert (default 2). */
  concurrency?: number;
  signal?: AbortSignal;
  /** Source bytes of layer `index` read so far (compressed). */
  onLayerProgress?: (index: number, sourceBytes: number) => void;
  /** Layer `index` is converted: its blob (`size` bytes) waits for its upload. */
  onLayerConverted?: (index: number, size: number) => void;
  /** Bytes of layer `index`'s blob at DEST so far (registry: acknowledged by the registry). */
  onLayerUpload?: (index: number, bytes: number) => void;
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
    const concurrency = Math.max(1, options.concurrency ?? 2);
    await runPipeline(
      layers,
      { convert: concurrency, upload: concurrency, backlog: concurrency + 2 },
      (i, layer, signal) =>
        convertLayer(image, layer, {
          directory,
          chunkSize: options.chunkSize ?? DEFAULT_CHUNK_SIZE,
          zstdLevel: options.zstdLevel,
          blockSize: options.blockSize,
          timestamp,
          uuid: options.uuid,
          signal,
          lowers: layers.slice(0, i),
          onProgress: (bytes) => options.onLayerProgress?.(layerOffset + i, bytes),
        }),
      async (i, result, signal) => {
        converted[i] = result;
        options.onLayerConverted?.(layerOffset + i, result.blobSize);
        const onBytes =
          options.onLayerUpload && ((bytes: number) => options.onLayerUpload?.(layerOffset + i, bytes));
        const transfer = await sink.putFile(result.blobDigest, result.blobSize, result.path, signal, onBytes);
        reports[i] = {
          sourceDigest: result.source.digest,
          digest: result.blobDigest,
          size: result.blobSize,
          mediaType,
          diffId: result.diffId,
          transfer,
        };
        options.onLayerDone?.(layerOffset + i, reports[i]);
      },
      signal,
    );
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
