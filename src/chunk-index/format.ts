/**
 * The chunk index of erofs/erofs-image-spec (`spec.md` §3.4), declared once: a 32-byte header followed by
 * `NumChunks` entries of `16 + HashSize` bytes, all little-endian. Also the media types and descriptor
 * annotations of §2 that locate and pin it, and the zstd skippable frame (RFC 8878 §3.1.2) that carries it
 * at the end of a `+zstd` layer.
 */
import { defineStruct } from '../io/struct.ts';

/** Bytes `CD E4 EC 67` read as a little-endian u32. */
export const CHUNK_INDEX_MAGIC = 0x67ece4cd;
export const CHUNK_INDEX_VERSION = 1;

/** `CompressionType`: how each chunk's on-blob bytes are stored. */
export const COMPRESSION_NONE = 0;
export const COMPRESSION_ZSTD = 1;

/** `HashAlgo`: 0 = no per-chunk checksums, 1 = SHA-2 (`HashSize` 32 = SHA-256, 64 = SHA-512). */
export const HASH_NONE = 0;
export const HASH_SHA2 = 1;

export const chunkIndexHeader = defineStruct(
  'chunk_index_header',
  [
    { name: 'magic', type: 'u32' },
    { name: 'version', type: 'u8' },
    { name: 'compressionType', type: 'u8' },
    { name: 'flags', type: 'u16' }, // reserved, all zero in version 1
    { name: 'uncompressedSize', type: 'u64' },
    { name: 'numChunks', type: 'u32' },
    { name: 'hashAlgo', type: 'u8' },
    { name: 'hashSize', type: 'u8' },
    { name: 'reserved', type: { bytes: 10 } }, // all zero in version 1
  ],
  32,
);

/** The fixed part of a chunk entry; `HashSize` checksum bytes follow it. */
export const chunkEntryHead = defineStruct(
  'chunk_index_entry',
  [
    { name: 'blockOffset', type: 'u64' }, // first on-blob byte of the chunk (its zstd frame for +zstd)
    { name: 'uncompressedOffset', type: 'u64' }, // offset in the logical image data
  ],
  16,
);

/**
 * A zstd skippable frame's header: a magic in 0x184D2A50..0x184D2A5F, then the payload length. Standard
 * decoders pass over the frame, so the chunk index rides at the end of a `+zstd` blob unseen.
 */
export const skippableFrameHeader = defineStruct(
  'zstd_skippable_frame_header',
  [
    { name: 'magic', type: 'u32' },
    { name: 'frameSize', type: 'u32' },
  ],
  8,
);
export const SKIPPABLE_MAGIC_MIN = 0x184d2a50;
export const SKIPPABLE_MAGIC_MAX = 0x184d2a5f;
/** The skippable magic we write around a chunk index (any in the range is accepted on read). */
export const CHUNK_INDEX_SKIPPABLE_MAGIC = SKIPPABLE_MAGIC_MIN;

export const MEDIA_TYPE_CHUNK_INDEX = 'application/vnd.erofs.chunk-index.v1';
/** What containerd 2.3+ takes. */
export const MEDIA_TYPE_EROFS_LAYER_V1 = 'application/vnd.erofs.layer.v1';
/** The draft spec's media type (containerd 2.1/2.2). */
export const MEDIA_TYPE_EROFS = 'application/vnd.erofs';
export const ZSTD_SUFFIX = '+zstd';

export const ANNOTATION_CHUNK_INDEX_RANGE = 'org.erofs.chunk-index.range';
export const ANNOTATION_CHUNK_INDEX_DIGEST = 'org.erofs.chunk-index.digest';
export const ANNOTATION_CHUNK_INDEX_MEDIA_TYPE = 'org.erofs.chunk-index.mediaType';
export const ANNOTATION_CHUNK_INDEX_TARGET = 'org.erofs.chunk-index.target';
export const ANNOTATION_UNCOMPRESSED_DIGEST = 'org.erofs.uncompressed-digest';
