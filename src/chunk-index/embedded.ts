/**
 * A chunk index embedded at the end of a layer blob (erofs-image-spec §3.4.3): located by the
 * `org.erofs.chunk-index.range` annotation, pinned by `org.erofs.chunk-index.digest`, wrapped in a zstd
 * skippable frame in `+zstd` layers and bare in raw ones. Also reading one chunk with its checksum checked.
 */
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { zstdDecompress } from 'node:zlib';
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import {
  type ChunkIndex,
  type ChunkLocation,
  checkAgainstBlob,
  decodeChunkIndex,
  hashAlgorithm,
} from './codec.ts';
import {
  ANNOTATION_CHUNK_INDEX_DIGEST,
  ANNOTATION_CHUNK_INDEX_MEDIA_TYPE,
  ANNOTATION_CHUNK_INDEX_RANGE,
  MEDIA_TYPE_CHUNK_INDEX,
  SKIPPABLE_MAGIC_MAX,
  SKIPPABLE_MAGIC_MIN,
  ZSTD_SUFFIX,
  skippableFrameHeader,
} from './format.ts';

const unzstd = promisify(zstdDecompress);

export interface ByteRange {
  readonly offset: number;
  /** Exclusive; absent means the end of the blob. */
  readonly end?: number | undefined;
}

const RANGE = /^(\d+)(?::(\d+))?$/;

/** Parses a `range` annotation value: `offset[:end]` in decimal (§2.3). */
export function parseRange(value: string): ByteRange {
  const m = RANGE.exec(value);
  const offset = m ? Number(m[1]) : Number.NaN;
  const end = m?.[2] === undefined ? undefined : Number(m[2]);
  if (!Number.isSafeInteger(offset) || (end !== undefined && (!Number.isSafeInteger(end) || end < offset))) {
    throw new CorruptInputError(`bad ${ANNOTATION_CHUNK_INDEX_RANGE} annotation ${JSON.stringify(value)}`);
  }
  return { offset, end };
}

export function formatRange(range: ByteRange): string {
  return range.end === undefined ? `${range.offset}` : `${range.offset}:${range.end}`;
}

/** Wraps `payload` in a zstd skippable frame. */
export function skippableFrame(payload: Uint8Array, magic = SKIPPABLE_MAGIC_MIN): Uint8Array {
  const out = new Uint8Array(skippableFrameHeader.size + payload.byteLength);
  skippableFrameHeader.encode({ magic, frameSize: payload.byteLength }, out);
  out.set(payload, skippableFrameHeader.size);
  return out;
}

/** The payload length announced by the skippable frame header at the start of `head`. */
export function decodeSkippableHeader(head: Uint8Array, at = 0): number {
  const { magic, frameSize } = skippableFrameHeader.decode(head);
  if (magic < SKIPPABLE_MAGIC_MIN || magic > SKIPPABLE_MAGIC_MAX) {
    throw new CorruptInputError(`chunk index: no zstd skippable frame (magic 0x${magic.toString(16)})`, at);
  }
  return frameSize;
}

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** What of a layer descriptor locates its embedded chunk index. */
export interface LayerDescriptor {
  readonly mediaType: string;
  readonly size: number;
  readonly annotations?: Readonly<Record<string, string>> | undefined;
}

export interface EmbeddedChunkIndex {
  readonly index: ChunkIndex;
  /** First byte of the chunk-index section (of its skippable frame for `+zstd`): where chunk data ends. */
  readonly sectionOffset: number;
  /** The payload bytes (header and entries) the digest annotation covers. */
  readonly payload: Uint8Array;
}

/**
 * Reads and checks the chunk index a layer descriptor announces, or returns undefined when it announces
 * none (or one in a format other than ours, which §2.2 says to ignore). The payload is checked against
 * `org.erofs.chunk-index.digest` when present, before any entry is believed.
 */
export async function readEmbeddedChunkIndex(
  blob: ByteSource,
  descriptor: LayerDescriptor,
  options: ReadOptions = {},
): Promise<EmbeddedChunkIndex | undefined> {
  const annotations = descriptor.annotations ?? {};
  const rangeValue = annotations[ANNOTATION_CHUNK_INDEX_RANGE];
  if (rangeValue === undefined) return undefined;
  if ((annotations[ANNOTATION_CHUNK_INDEX_MEDIA_TYPE] ?? MEDIA_TYPE_CHUNK_INDEX) !== MEDIA_TYPE_CHUNK_INDEX) {
    return undefined;
  }
  if (blob.size !== descriptor.size) {
    throw new CorruptInputError(`layer blob has ${blob.size} bytes, its descriptor says ${descriptor.size}`);
  }
  const range = parseRange(rangeValue);
  const end = range.end ?? blob.size;
  if (end > blob.size)
    throw new CorruptInputError(`chunk index range ${rangeValue} beyond ${blob.size}-byte blob`);
  let payloadOffset = range.offset;
  if (descriptor.mediaType.endsWith(ZSTD_SUFFIX)) {
    if (end - range.offset < skippableFrameHeader.size) {
      throw new CorruptInputError(`chunk index range ${rangeValue} too short for a skippable frame`);
    }
    const frameSize = decodeSkippableHeader(
      await blob.read(range.offset, skippableFrameHeader.size, options),
    );
    payloadOffset += skippableFrameHeader.size;
    if (payloadOffset + frameSize !== end) {
      throw new CorruptInputError(
        `chunk index frame of ${frameSize} bytes does not end at ${end}`,
        range.offset,
      );
    }
  }
  const payload = (await blob.read(payloadOffset, end - payloadOffset, options)).slice();
  const pinned = annotations[ANNOTATION_CHUNK_INDEX_DIGEST];
  if (pinned !== undefined) checkDigest(payload, pinned, 'chunk index');
  const index = decodeChunkIndex(payload);
  const zstdLayer = descriptor.mediaType.endsWith(ZSTD_SUFFIX);
  if ((index.compression === 'zstd') !== zstdLayer) {
    throw new CorruptInputError(
      `chunk index compression ${index.compression} on a ${descriptor.mediaType} layer`,
    );
  }
  checkAgainstBlob(index, range.offset);
  return { index, sectionOffset: range.offset, payload };
}

/** Checks `bytes` against an OCI digest string (sha256 or sha512); `digest-mismatch` when they differ. */
export function checkDigest(bytes: Uint8Array, digest: string, what: string): void {
  const [algorithm, hex] = digest.split(':');
  if ((algorithm !== 'sha256' && algorithm !== 'sha512') || hex === undefined) {
    throw new ErofsOciError('unsupported', `${what}: digest ${digest} is not sha256 or sha512`);
  }
  const actual = createHash(algorithm).update(bytes).digest('hex');
  if (actual !== hex) {
    throw new ErofsOciError(
      'digest-mismatch',
      `${what} does not match its digest ${digest} (got ${algorithm}:${actual})`,
    );
  }
}

/**
 * Reads chunk `chunk` from the blob, checks its checksum over the on-blob bytes and returns its image data
 * (decompressed for zstd, exactly `uncompressedLength` bytes).
 */
export async function readChunk(
  blob: ByteSource,
  index: ChunkIndex,
  chunk: ChunkLocation,
  options: ReadOptions = {},
): Promise<Uint8Array> {
  const stored = await blob.read(chunk.blockOffset, chunk.blockLength, options);
  const algorithm = hashAlgorithm(index);
  if (algorithm !== undefined) {
    const sum = createHash(algorithm).update(stored).digest();
    if (!sum.equals(chunk.checksum)) {
      throw new ErofsOciError(
        'digest-mismatch',
        `chunk ${chunk.index} at ${chunk.blockOffset} fails its checksum`,
      );
    }
  }
  if (index.compression === 'none') return stored;
  let data: Uint8Array;
  try {
    data = await unzstd(stored, { maxOutputLength: Math.max(1, chunk.uncompressedLength) });
  } catch (cause) {
    throw new CorruptInputError(`chunk ${chunk.index}: bad zstd frame`, chunk.blockOffset, { cause });
  }
  if (data.byteLength !== chunk.uncompressedLength) {
    throw new CorruptInputError(
      `chunk ${chunk.index} decompresses to ${data.byteLength} bytes, expected ${chunk.uncompressedLength}`,
      chunk.blockOffset,
    );
  }
  return data;
}
