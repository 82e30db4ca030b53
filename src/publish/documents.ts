/**
 * The JSON documents of a converted image: the config rewritten for EROFS layers (erofs-image-spec §5:
 * `rootfs.diff_ids` are the layers' uncompressed digests, `os.features` gains `erofs`, everything else —
 * history, env, entrypoint, labels — kept) and the manifest listing the layer descriptors with their
 * chunk-index annotations (§2.3, §4). Serialized deterministically, so the same input gives the same digests.
 */
import { createHash } from 'node:crypto';
import { MediaType } from '../oci/index.ts';
import type { ConvertedLayer } from './convert-layer.ts';

export interface Blob {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly bytes: Uint8Array;
}

export function jsonBlob(mediaType: string, document: unknown): Blob {
  const bytes = new TextEncoder().encode(JSON.stringify(document));
  return {
    mediaType,
    digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`,
    size: bytes.byteLength,
    bytes,
  };
}

export function addErofsFeature(features: unknown): string[] {
  const list = Array.isArray(features) ? features.filter((f): f is string => typeof f === 'string') : [];
  return list.includes('erofs') ? list : [...list, 'erofs'];
}

export function rewriteConfig(config: Record<string, unknown>, layers: readonly ConvertedLayer[]): Blob {
  const rootfs = { type: 'layers', diff_ids: layers.map((l) => l.diffId) };
  return jsonBlob(MediaType.ociConfig, {
    ...config,
    rootfs,
    'os.features': addErofsFeature(config['os.features']),
  });
}

export function layerMediaType(base: string, zstd: boolean): string {
  return zstd ? `${base}+zstd` : base;
}

export function layerDescriptor(layer: ConvertedLayer, mediaType: string) {
  return { mediaType, digest: layer.blobDigest, size: layer.blobSize, annotations: { ...layer.annotations } };
}

export function manifestBlob(config: Blob, layers: readonly ConvertedLayer[], mediaType: string): Blob {
  return jsonBlob(MediaType.ociManifest, {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: layers.map((l) => layerDescriptor(l, mediaType)),
  });
}
