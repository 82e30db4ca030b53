/**
 * Encoding and decoding of the chunk index (erofs-image-spec §3.4). Decoding checks everything the spec asks
 * a reader to check (magic, version, reserved bytes, exact payload length) and the structure a reader relies
 * on (chunks start at 0, ascend, and cover `UncompressedSize`), so later arithmetic on entries cannot go
 * wrong. Formats this reader does not know (compression types, flag bits, hash families) are `unsupported`,
 * which the spec says means "fall back to sequential reads"; everything else wrong is `corrupt`.
 */
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import {
  CHUNK_INDEX_MAGIC,
  CHUNK_INDEX_VERSION,
  COMPRESSION_NONE,
  COMPRESSION_ZSTD,
  HASH_NONE,
  HASH_SHA2,
  chunkEntryHead,
  chunkIndexHeader,
} from './format.ts';

export type ChunkCompression = 'none' | 'zstd';
/** Per-chunk checksum length: 0 (none), 32 (SHA-256) or 64 (SHA-512). */
export type ChunkHashSize = 0 | 32 | 64;

export interface ChunkEntry {
  /** First on-blob byte of the chunk (of its zstd frame when compressed). */
  readonly blockOffset: number;
  /** Offset of the chunk in the logical (uncompressed) image data. */
  readonly uncompressedOffset: number;
  /** `hashSize` bytes over the chunk's on-blob bytes; empty when the index has no checksums. */
  readonly checksum: Uint8Array;
}

export interface ChunkIndex {
  readonly compression: ChunkCompression;
  readonly uncompressedSize: number;
  readonly hashSize: ChunkHashSize;
  readonly entries: readonly ChunkEntry[];
}

/** Where one chunk lives, on the blob and in the image data. */
export interface ChunkLocation {
  readonly index: number;
  readonly blockOffset: number;
  readonly blockLength: number;
  readonly uncompressedOffset: number;
  readonly uncompressedLength: number;
  readonly checksum: Uint8Array;
}

export function entrySize(hashSize: ChunkHashSize): number {
  return chunkEntryHead.size + hashSize;
}

export function payloadSize(numChunks: number, hashSize: ChunkHashSize): number {
  return chunkIndexHeader.size + numChunks * entrySize(hashSize);
}

/** The checksum algorithm of an index, as node:crypto names it, or undefined without checksums. */
export function hashAlgorithm(index: Pick<ChunkIndex, 'hashSize'>): 'sha256' | 'sha512' | undefined {
  return index.hashSize === 32 ? 'sha256' : index.hashSize === 64 ? 'sha512' : undefined;
}

function corrupt(message: string, offset?: number): CorruptInputError {
  return new CorruptInputError(`chunk index: ${message}`, offset);
}

/** Checks the structure every reader relies on; throws `corrupt` naming the first entry that breaks it. */
function checkStructure(index: ChunkIndex): void {
  const { entries, uncompressedSize } = index;
  if (!Number.isSafeInteger(uncompressedSize) || uncompressedSize < 0) {
    throw corrupt(`bad uncompressed size ${uncompressedSize}`);
  }
  if ((entries.length === 0) !== (uncompressedSize === 0)) {
    throw corrupt(`${entries.length} chunks for ${uncompressedSize} bytes of image data`);
  }
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const at = payloadSize(i, index.hashSize);
    if (!Number.isSafeInteger(e.blockOffset) || e.blockOffset < 0)
      throw corrupt(`entry ${i}: bad block offset`, at);
    if (e.checksum.byteLength !== index.hashSize) {
      throw corrupt(`entry ${i}: ${e.checksum.byteLength}-byte checksum, expected ${index.hashSize}`, at);
    }
    if (i === 0) {
      if (e.uncompressedOffset !== 0)
        throw corrupt(`first chunk starts at ${e.uncompressedOffset}, not 0`, at);
      continue;
    }
    const prev = entries[i - 1]!;
    if (!(e.uncompressedOffset > prev.uncompressedOffset && e.uncompressedOffset < uncompressedSize)) {
      throw corrupt(`entry ${i}: uncompressed offset ${e.uncompressedOffset} out of order`, at);
    }
    if (index.compression === 'zstd' && e.blockOffset <= prev.blockOffset) {
      throw corrupt(`entry ${i}: zstd frame offset ${e.blockOffset} out of order`, at);
    }
  }
}

export function encodeChunkIndex(index: ChunkIndex): Uint8Array {
  checkStructure(index);
  const out = new Uint8Array(payloadSize(index.entries.length, index.hashSize));
  chunkIndexHeader.encode(
    {
      magic: CHUNK_INDEX_MAGIC,
      version: CHUNK_INDEX_VERSION,
      compressionType: index.compression === 'zstd' ? COMPRESSION_ZSTD : COMPRESSION_NONE,
      flags: 0,
      uncompressedSize: index.uncompressedSize,
      numChunks: index.entries.length,
      hashAlgo: index.hashSize === 0 ? HASH_NONE : HASH_SHA2,
      hashSize: index.hashSize,
    },
    out,
  );
  const size = entrySize(index.hashSize);
  index.entries.forEach((e, i) => {
    const at = chunkIndexHeader.size + i * size;
    chunkEntryHead.encode(e, out, at);
    out.set(e.checksum, at + chunkEntryHead.size);
  });
  return out;
}

/**
 * Decodes a chunk-index payload (header and entries, no frame around it). The whole of `payload` must be the
 * index: a length other than the header announces is corrupt (§3.4.4 step 3). Checksums are copies.
 */
export function decodeChunkIndex(payload: Uint8Array): ChunkIndex {
  const header = chunkIndexHeader.decode(payload);
  if (header.magic !== CHUNK_INDEX_MAGIC) throw corrupt(`bad magic 0x${header.magic.toString(16)}`, 0);
  if (header.version !== CHUNK_INDEX_VERSION) {
    throw new ErofsOciError('unsupported', `chunk index: version ${header.version} is not supported`);
  }
  if (header.reserved.some((b) => b !== 0)) throw corrupt('reserved header bytes are not zero', 22);
  if (header.flags !== 0) {
    throw new ErofsOciError('unsupported', `chunk index: unknown flags 0x${header.flags.toString(16)}`);
  }
  let compression: ChunkCompression;
  if (header.compressionType === COMPRESSION_NONE) compression = 'none';
  else if (header.compressionType === COMPRESSION_ZSTD) compression = 'zstd';
  else
    throw new ErofsOciError('unsupported', `chunk index: unknown compression type ${header.compressionType}`);
  let hashSize: ChunkHashSize;
  if (header.hashAlgo === HASH_NONE) {
    if (header.hashSize !== 0) throw corrupt(`hash size ${header.hashSize} without a hash algorithm`, 21);
    hashSize = 0;
  } else if (header.hashAlgo === HASH_SHA2 && (header.hashSize === 32 || header.hashSize === 64)) {
    hashSize = header.hashSize;
  } else {
    throw new ErofsOciError(
      'unsupported',
      `chunk index: hash algorithm ${header.hashAlgo} with ${header.hashSize}-byte checksums is not supported`,
    );
  }
  const expected = payloadSize(header.numChunks, hashSize);
  if (payload.byteLength !== expected) {
    throw corrupt(`${header.numChunks} chunks need ${expected} bytes, the index has ${payload.byteLength}`);
  }
  const size = entrySize(hashSize);
  const entries: ChunkEntry[] = [];
  for (let i = 0; i < header.numChunks; i++) {
    const at = chunkIndexHeader.size + i * size;
    const head = chunkEntryHead.decode(payload, at);
    const sumAt = at + chunkEntryHead.size;
    entries.push({ ...head, checksum: payload.slice(sumAt, sumAt + hashSize) });
  }
  const index: ChunkIndex = { compression, uncompressedSize: header.uncompressedSize, hashSize, entries };
  checkStructure(index);
  return index;
}

/**
 * Checks the index against the blob that carries it: every chunk's bytes lie before `indexStart` (the first
 * byte of the chunk-index section, or the blob size for a standalone index) and raw chunks do not overlap.
 */
export function checkAgainstBlob(index: ChunkIndex, indexStart: number): void {
  for (let i = 0; i < index.entries.length; i++) {
    const c = locateChunk(index, i, indexStart);
    if (c.blockLength <= 0 || c.blockOffset + c.blockLength > indexStart) {
      throw corrupt(
        `chunk ${i} [${c.blockOffset}, +${c.blockLength}) is outside the data before ${indexStart}`,
      );
    }
  }
}

/** Where chunk `i` lives (§3.4.2). `indexStart` is the first byte of the chunk-index section in the blob. */
export function locateChunk(index: ChunkIndex, i: number, indexStart: number): ChunkLocation {
  const entries = index.entries;
  const e = entries[i];
  if (e === undefined) throw new RangeError(`chunk ${i} of ${entries.length}`);
  const next = entries[i + 1];
  const uncompressedLength = (next?.uncompressedOffset ?? index.uncompressedSize) - e.uncompressedOffset;
  const blockLength =
    index.compression === 'none' ? uncompressedLength : (next?.blockOffset ?? indexStart) - e.blockOffset;
  return {
    index: i,
    blockOffset: e.blockOffset,
    blockLength,
    uncompressedOffset: e.uncompressedOffset,
    uncompressedLength,
    checksum: e.checksum,
  };
}

/** The chunk holding image-data byte `offset` (binary search); `offset` must be below `uncompressedSize`. */
export function findChunk(index: ChunkIndex, offset: number): number {
  if (!(offset >= 0 && offset < index.uncompressedSize)) {
    throw new RangeError(`offset ${offset} outside ${index.uncompressedSize} bytes of image data`);
  }
  let lo = 0;
  let hi = index.entries.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (index.entries[mid]!.uncompressedOffset <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
