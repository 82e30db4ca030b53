/**
 * A standalone chunk index (erofs-image-spec §3.4.3): a `application/vnd.erofs.chunk-index.v1` entry of
 * `manifest.layers[]` whose blob is the bare chunk-index payload (header and entries, no frame) for the
 * layer right before it. Its descriptor digest, which the manifest covers, pins it; `org.erofs.chunk-index.
 * target` names the layer it indexes and must match that layer's digest (§2.3, §8.2 item 4). With no
 * section inside the indexed blob, its chunks run to the end of that blob.
 */
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import { checkAgainstBlob, decodeChunkIndex } from './codec.ts';
import { checkDigest, type EmbeddedChunkIndex } from './embedded.ts';
import {
  ANNOTATION_CHUNK_INDEX_DIGEST,
  ANNOTATION_CHUNK_INDEX_TARGET,
  MEDIA_TYPE_CHUNK_INDEX,
  ZSTD_SUFFIX,
} from './format.ts';

/** Largest standalone index we fetch: 48 MiB indexes 1 TiB in 1 MiB chunks with SHA-256. */
export const MAX_STANDALONE_INDEX_BYTES = 64 * 1024 * 1024;

export interface IndexedLayer {
  readonly digest: string;
  readonly mediaType: string;
  readonly size: number;
}

export interface StandaloneIndexDescriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly annotations?: Readonly<Record<string, string>> | undefined;
}

export function isStandaloneChunkIndex(descriptor: { readonly mediaType: string }): boolean {
  return descriptor.mediaType === MEDIA_TYPE_CHUNK_INDEX;
}

/**
 * Checks that `index` may apply to `layer` by its descriptors alone (the target annotation, the size
 * limit): a `corrupt` error, a malformed manifest, when not.
 */
export function checkStandaloneTarget(layer: IndexedLayer, index: StandaloneIndexDescriptor): void {
  const target = index.annotations?.[ANNOTATION_CHUNK_INDEX_TARGET];
  if (target !== undefined && target !== layer.digest) {
    throw new CorruptInputError(
      `chunk-index layer ${index.digest} targets ${target}, but the layer before it is ${layer.digest}`,
    );
  }
  if (!Number.isSafeInteger(index.size) || index.size < 0 || index.size > MAX_STANDALONE_INDEX_BYTES) {
    throw new ErofsOciError(
      'unsupported',
      `chunk-index layer ${index.digest}: ${index.size} bytes is more than the ${MAX_STANDALONE_INDEX_BYTES} we read`,
    );
  }
}

/**
 * Checks a standalone index's fetched bytes against its descriptor digest (and `org.erofs.chunk-index.
 * digest` when given too) before decoding them, then against the layer it indexes.
 */
export function decodeStandaloneChunkIndex(
  payload: Uint8Array,
  layer: IndexedLayer,
  descriptor: StandaloneIndexDescriptor,
): EmbeddedChunkIndex {
  checkStandaloneTarget(layer, descriptor);
  if (payload.byteLength !== descriptor.size) {
    throw new CorruptInputError(
      `chunk-index layer ${descriptor.digest} has ${payload.byteLength} bytes, its descriptor says ${descriptor.size}`,
    );
  }
  checkDigest(payload, descriptor.digest, `chunk-index layer ${descriptor.digest}`);
  const pinned = descriptor.annotations?.[ANNOTATION_CHUNK_INDEX_DIGEST];
  if (pinned !== undefined) checkDigest(payload, pinned, `chunk-index layer ${descriptor.digest}`);
  const index = decodeChunkIndex(payload);
  if ((index.compression === 'zstd') !== layer.mediaType.endsWith(ZSTD_SUFFIX)) {
    throw new CorruptInputError(
      `chunk-index layer ${descriptor.digest}: compression ${index.compression} for a ${layer.mediaType} layer`,
    );
  }
  checkAgainstBlob(index, layer.size);
  return { index, sectionOffset: layer.size, payload };
}
