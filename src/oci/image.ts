/**
 * The image model every source implements (go-containerregistry's `v1.Image`, SPEC §1): small methods that
 * may all fail, so any source — registry, OCI layout, archive — can be lazy. Optional abilities are separate
 * small interfaces found by a type guard (`isRangeReader`).
 */

import { ErofsOciError } from '../errors.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import type { Descriptor } from './manifest.ts';
import type { LayerFormat } from './media-types.ts';
import type { Platform } from './platform.ts';

export type { Descriptor } from './manifest.ts';

export interface SignalOptions {
  signal?: AbortSignal | undefined;
}

export interface RangeReadOptions extends SignalOptions {
  /**
   * Streams the range, where the reader can: its bytes are handed over in order as they arrive (a chunk
   * only for the duration of the call) and the read resolves with an empty array; a retry after a broken
   * transfer continues where it stopped, so every byte is handed over once. Readers that cannot stream
   * ignore it and resolve with the bytes.
   */
  onData?: ((chunk: Uint8Array) => void) | undefined;
}

/** A layer descriptor with what its media type means for us. */
export interface LayerDescriptor extends Descriptor {
  readonly format: LayerFormat;
  /**
   * The standalone chunk-index layer (`application/vnd.erofs.chunk-index.v1`, erofs-image-spec §3.4.3)
   * that follows this layer in the manifest. Such entries are not filesystem layers: `layers()` folds each
   * into the layer before it, so layer numbers (`--layer N`) count filesystem layers only.
   */
  readonly chunkIndex?: Descriptor | undefined;
  /** Position in `manifest.layers[]` (and `rootfs.diff_ids`), which counts chunk-index entries too. */
  readonly manifestIndex?: number | undefined;
}

/** A manifest descriptor of the selected image, with the platform it was chosen for. */
export interface ManifestDescriptor extends Descriptor {
  /** The index the image was chosen from, when there was one. */
  readonly index?: Descriptor | undefined;
}

export interface Image {
  /** The selected image manifest (after platform selection). */
  manifest(options?: SignalOptions): Promise<ManifestDescriptor>;
  config(options?: SignalOptions): Promise<Descriptor>;
  /** Layers bottom first. A layer type we cannot use is an 'unsupported' error naming it. */
  layers(options?: SignalOptions): Promise<LayerDescriptor[]>;
  /**
   * The blob's bytes as they arrive, verified against `descriptor.digest` and `descriptor.size`: the
   * iterator throws 'digest-mismatch' at the end when they are wrong, so consumers must treat the content
   * as untrusted until iteration completes.
   */
  openBlob(descriptor: Descriptor, options?: SignalOptions): AsyncIterable<Uint8Array>;
}

/** What `openImageSource` returns: an image with a name for messages, holding resources until closed. */
export interface ImageSource extends Image {
  /** The source as a person would write it, e.g. `docker.io/library/alpine:3.20` or `oci:/tmp/x:v1`. */
  readonly name: string;
  /** The platform asked for (the host's by default); single-manifest images ignore it. */
  readonly platform: Platform;
  close(): Promise<void>;
}

/** Optional ability: the document a reference names and the images an index lists (convert --all-platforms). */
export interface RootReader {
  /** The index or manifest the reference names, its bytes verified. */
  root(options?: SignalOptions): Promise<{ descriptor: Descriptor; bytes: Uint8Array; isIndex: boolean }>;
  /** The bytes of a manifest the root index lists, verified against the descriptor. */
  manifestBytes(descriptor: Descriptor, options?: SignalOptions): Promise<Uint8Array>;
  /** The image one manifest of the root index describes (no platform selection). */
  imageOf(descriptor: Descriptor): Image;
}

export function isRootReader(value: unknown): value is RootReader {
  return typeof (value as Partial<RootReader>)?.imageOf === 'function';
}

/** Optional ability: random access to blobs, for lazy mounting (SPEC §2 `serve`, `mount`). */
export interface RangeReader {
  /**
   * Returns exactly `length` bytes at `offset` of the blob `digest`, or throws. Partial reads cannot be
   * checked against the digest.
   */
  readRange(digest: string, offset: number, length: number, options?: RangeReadOptions): Promise<Uint8Array>;
}

export function isRangeReader(value: unknown): value is RangeReader {
  return typeof (value as Partial<RangeReader>)?.readRange === 'function';
}

/** A `ByteSource` over one blob of a range reader. */
export function blobByteSource(reader: RangeReader, descriptor: Descriptor): ByteSource {
  return {
    size: descriptor.size,
    read(offset: number, length: number, options: ReadOptions = {}) {
      if (offset < 0 || length < 0 || offset + length > descriptor.size) {
        return Promise.reject(
          new ErofsOciError(
            'internal',
            `Cannot read ${length} bytes at offset ${offset} of blob ${descriptor.digest}: it has ${descriptor.size} bytes`,
          ),
        );
      }
      return reader.readRange(descriptor.digest, offset, length, options);
    },
  };
}

/** Small blobs (configs) read whole and verified; more than `limit` bytes is refused. */
export async function readBlob(
  image: Image,
  descriptor: Descriptor,
  options: SignalOptions & { limit?: number } = {},
): Promise<Uint8Array> {
  const limit = options.limit ?? 16 * 1024 * 1024;
  if (descriptor.size > limit) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot read blob ${descriptor.digest} into memory: ${descriptor.size} bytes is more than ${limit}`,
    );
  }
  const chunks: Uint8Array[] = [];
  for await (const chunk of image.openBlob(descriptor, options)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** The image configuration (https://github.com/opencontainers/image-spec/blob/main/config.md), parsed. */
export async function readConfig(
  image: Image,
  options: SignalOptions = {},
): Promise<Record<string, unknown>> {
  const descriptor = await image.config(options);
  const bytes = await readBlob(image, descriptor, options);
  let document: unknown;
  try {
    document = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (error) {
    throw new ErofsOciError('corrupt', `Cannot parse image config ${descriptor.digest}: not valid JSON`, {
      cause: error,
    });
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new ErofsOciError('corrupt', `Cannot parse image config ${descriptor.digest}: not a JSON object`);
  }
  return document as Record<string, unknown>;
}
