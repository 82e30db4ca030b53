/**
 * Gzip member header and trailer (RFC 1952 §2.3). Shared by the index builder, which scans whole streams,
 * and the zinfo reader, which checks that member headers sit where the zinfo says deflate data starts.
 */
import { CorruptInputError } from '../errors.ts';
import { defineStruct } from '../io/struct.ts';

/** The fixed part of a member header (RFC 1952 §2.3). */
export const gzipFixedHeader = defineStruct(
  'gzip header',
  [
    { name: 'id1', type: 'u8' },
    { name: 'id2', type: 'u8' },
    { name: 'cm', type: 'u8' },
    { name: 'flg', type: 'u8' },
    { name: 'mtime', type: 'u32' },
    { name: 'xfl', type: 'u8' },
    { name: 'os', type: 'u8' },
  ],
  10,
);

/** The member trailer: CRC-32 and size modulo 2^32 of the member's uncompressed data. */
export const gzipTrailer = defineStruct(
  'gzip trailer',
  [
    { name: 'crc32', type: 'u32' },
    { name: 'isize', type: 'u32' },
  ],
  8,
);

const ID1 = 0x1f;
const ID2 = 0x8b;
const CM_DEFLATE = 8;
const FHCRC = 0x02;
const FEXTRA = 0x04;
const FNAME = 0x08;
const FCOMMENT = 0x10;
/** zlib refuses headers with these flag bits ("unknown header flags set"); so do we. */
const FRESERVED = 0xe0;

/** Headers longer than this are refused rather than buffered without bound (names are NUL-terminated). */
export const MAX_GZIP_HEADER_BYTES = 16 * 1024 * 1024;

/**
 * Parses the member header that starts at `bytes[start]`. Returns the index just past the header, or -1
 * when `bytes` ends before the header does. `absoluteOffset` is the stream offset of `bytes[start]`, for
 * messages. `what` describes the position for the magic-number error ("gzip stream", "member after ...").
 */
export function parseGzipHeader(
  bytes: Uint8Array,
  start: number,
  absoluteOffset: number,
  what: string,
): number {
  const end = bytes.byteLength;
  if (end - start >= 2 && (bytes[start] !== ID1 || bytes[start + 1] !== ID2)) {
    const magic = `${hex(bytes[start]!)} ${hex(bytes[start + 1]!)}`;
    throw new CorruptInputError(`Cannot parse ${what}: magic is ${magic}, expected 1f 8b`, absoluteOffset);
  }
  if (end - start < gzipFixedHeader.size) return -1;
  const header = gzipFixedHeader.decode(bytes, start);
  if (header.cm !== CM_DEFLATE) {
    throw new CorruptInputError(
      `Cannot parse ${what}: compression method is ${header.cm}, expected 8 (deflate)`,
      absoluteOffset,
    );
  }
  if (header.flg & FRESERVED) {
    throw new CorruptInputError(
      `Cannot parse ${what}: reserved flag bits are set (flags 0x${hex(header.flg)})`,
      absoluteOffset,
    );
  }
  let p = start + gzipFixedHeader.size;
  if (header.flg & FEXTRA) {
    if (end - p < 2) return -1;
    const xlen = bytes[p]! | (bytes[p + 1]! << 8);
    p += 2 + xlen;
    if (p > end) return -1;
  }
  for (const flag of [FNAME, FCOMMENT]) {
    if (!(header.flg & flag)) continue;
    const nul = bytes.indexOf(0, p);
    if (nul < 0) return -1;
    p = nul + 1;
  }
  if (header.flg & FHCRC) {
    p += 2;
    if (p > end) return -1;
  }
  return p;
}

/** Throws when a header has been buffered beyond `MAX_GZIP_HEADER_BYTES` without ending. */
export function checkHeaderLength(buffered: number, absoluteOffset: number): void {
  if (buffered > MAX_GZIP_HEADER_BYTES) {
    throw new CorruptInputError(
      `Cannot parse gzip header: it is longer than ${MAX_GZIP_HEADER_BYTES} bytes (unterminated name or comment?)`,
      absoluteOffset,
    );
  }
}

function hex(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}
