/**
 * The tar header block, declared once: POSIX ustar (pax(1), "ustar Interchange Format",
 * https://pubs.opengroup.org/onlinepubs/9799919799/utilities/pax.html#tag_20_94_13_06) and the GNU and
 * v7 variants that share its first 345 bytes. Also the numeric field encodings (octal, GNU base-256) and
 * the header checksum rules.
 */
import type { ByteString } from '../fs-tree/tree.ts';
import { defineStruct } from '../io/struct.ts';

export const TAR_BLOCK_SIZE = 512;

/**
 * `struct posix_header` (GNU tar's tar.h). Every field is a byte field: numbers are ASCII octal or GNU
 * base-256, strings are NUL-terminated unless they fill the field.
 *
 * - v7 (no magic): only name … linkname exist; the rest of the block is zero.
 * - Old GNU (`magic` "ustar " + `version` " \0"): from offset 345 the block holds atime, ctime, multi-volume
 *   offset and the sparse map instead of `prefix`, so `prefix` must not be read.
 * - star: `prefix` is 131 bytes followed by atime and ctime, and the block ends with "tar\0".
 */
export const tarHeader = defineStruct(
  'tar_header',
  [
    { name: 'name', type: { bytes: 100 } },
    { name: 'mode', type: { bytes: 8 } },
    { name: 'uid', type: { bytes: 8 } },
    { name: 'gid', type: { bytes: 8 } },
    { name: 'size', type: { bytes: 12 } },
    { name: 'mtime', type: { bytes: 12 } },
    { name: 'chksum', type: { bytes: 8 } },
    { name: 'typeflag', type: 'u8' },
    { name: 'linkname', type: { bytes: 100 } },
    { name: 'magic', type: { bytes: 6 } },
    { name: 'version', type: { bytes: 2 } },
    { name: 'uname', type: { bytes: 32 } },
    { name: 'gname', type: { bytes: 32 } },
    { name: 'devmajor', type: { bytes: 8 } },
    { name: 'devminor', type: { bytes: 8 } },
    { name: 'prefix', type: { bytes: 155 } },
    { name: 'padding', type: { bytes: 12 } }, // star: bytes 508..511 are the trailer "tar\0"
  ],
  TAR_BLOCK_SIZE,
);

/** Length of star's prefix field (the rest of the POSIX prefix holds atime and ctime). */
export const STAR_PREFIX_LENGTH = 131;

export type HeaderFormat = 'ustar' | 'gnu' | 'star' | 'v7';

const USTAR_MAGIC = [0x75, 0x73, 0x74, 0x61, 0x72, 0x00]; // "ustar\0"
const GNU_MAGIC = [0x75, 0x73, 0x74, 0x61, 0x72, 0x20]; // "ustar "
const GNU_VERSION = [0x20, 0x00]; // " \0"
const STAR_TRAILER = [0x74, 0x61, 0x72, 0x00]; // "tar\0" at the end of the block

/** Type flags (the `typeflag` byte). */
export const TypeFlag = {
  regular: 0x30, // '0'
  regularOld: 0x00, // '\0': regular file in pre-POSIX archives
  hardlink: 0x31, // '1'
  symlink: 0x32, // '2'
  chardev: 0x33, // '3'
  blockdev: 0x34, // '4'
  directory: 0x35, // '5'
  fifo: 0x36, // '6'
  contiguous: 0x37, // '7': contiguous file, a regular file everywhere that matters
  paxExtended: 0x78, // 'x': pax extended header for the next entry
  paxGlobal: 0x67, // 'g': pax global extended header
  gnuLongName: 0x4c, // 'L': data is the next entry's name
  gnuLongLink: 0x4b, // 'K': data is the next entry's link target
  gnuDumpDir: 0x44, // 'D': directory with a list of its contents as data
  gnuMultiVolume: 0x4d, // 'M': continuation of a file from the previous volume
  gnuSparse: 0x53, // 'S': old GNU sparse file
  gnuVolumeHeader: 0x56, // 'V': tape/volume label
  gnuOldLongName: 0x4e, // 'N': obsolete GNU long names (written by tar before 1.12)
} as const;

function isBlank(byte: number): boolean {
  return byte === 0x20 || byte === 0 || (byte >= 0x09 && byte <= 0x0d);
}

const TWO_53 = 2n ** 53n;

/**
 * GNU base-256 (first byte has its top bit set): the remaining 7 bits and the following bytes form a
 * big-endian two's complement number, bit 6 of the first byte being the sign.
 */
function parseBase256(bytes: Uint8Array, start: number, end: number): number | undefined {
  const first = bytes[start]!;
  let value = BigInt(first & 0x3f) - BigInt(first & 0x40);
  for (let i = start + 1; i < end; i++) value = (value << 8n) | BigInt(bytes[i]!);
  if (value >= TWO_53 || value <= -TWO_53) return undefined;
  return Number(value);
}

/**
 * Parses a numeric header field (`bytes[start..end)`): octal digits, optionally preceded by blanks and
 * followed by NULs or blanks (as GNU tar accepts: from_header in src/list.c), or GNU base-256. An empty
 * field is 0. Returns `undefined` for anything else; the caller names the field and the offset.
 */
export function parseNumber(bytes: Uint8Array, start = 0, end = bytes.byteLength): number | undefined {
  if (start >= end) return undefined;
  const first = bytes[start]!;
  if (first & 0x80) return parseBase256(bytes, start, end);
  let i = start;
  // Some old writers put a NUL at the start of a field when the previous field overflowed.
  if (first === 0) i++;
  while (i < end && bytes[i] === 0x20) i++;
  let value = 0;
  for (; i < end; i++) {
    const digit = bytes[i]! - 0x30;
    if (digit < 0 || digit > 7) break;
    value = value * 8 + digit; // at most 12 digits: 2^36, exact
  }
  for (; i < end; i++) if (!isBlank(bytes[i]!)) return undefined;
  return value;
}

export type TarHeaderFieldName = Parameters<typeof tarHeader.offsetOf>[0];
export type NumericField = 'mode' | 'uid' | 'gid' | 'size' | 'mtime' | 'chksum' | 'devmajor' | 'devminor';
export type StringField = 'name' | 'linkname' | 'uname' | 'gname' | 'prefix';

const FIELDS = new Map(tarHeader.fields.map((field) => [field.name, field]));

function field(name: TarHeaderFieldName): { offset: number; size: number } {
  return FIELDS.get(name)!;
}

/**
 * One header block, read field by field from the `tarHeader` table. Fields are read in place, not decoded
 * all at once: the reader sees a header for every entry of multi-gigabyte archives and most fields of
 * most headers are never looked at.
 */
export class HeaderBlock {
  readonly bytes: Uint8Array;
  readonly #text: Buffer;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.#text = Buffer.from(bytes.buffer, bytes.byteOffset, TAR_BLOCK_SIZE);
  }

  get typeflag(): number {
    return this.bytes[field('typeflag').offset]!;
  }

  /** A numeric field, or `undefined` if it is not a valid number. */
  number(name: NumericField): number | undefined {
    const { offset, size } = field(name);
    return parseNumber(this.bytes, offset, offset + size);
  }

  /**
   * A NUL-terminated string field (the whole field when it has no NUL) as a byte string, limited to its
   * first `limit` bytes.
   */
  string(name: StringField, limit = Number.POSITIVE_INFINITY): ByteString {
    const { offset, size } = field(name);
    const fieldEnd = offset + Math.min(size, limit);
    const nul = this.bytes.indexOf(0, offset);
    return this.#text.toString('latin1', offset, nul < 0 || nul > fieldEnd ? fieldEnd : nul);
  }

  /** A field's raw bytes, to show in an error message. */
  raw(name: TarHeaderFieldName): ByteString {
    const { offset, size } = field(name);
    return this.#text.toString('latin1', offset, offset + size);
  }

  #has(name: TarHeaderFieldName, bytes: readonly number[], skip = 0): boolean {
    const offset = field(name).offset + skip;
    for (let i = 0; i < bytes.length; i++) if (this.bytes[offset + i] !== bytes[i]) return false;
    return true;
  }

  get format(): HeaderFormat {
    if (this.#has('magic', USTAR_MAGIC)) return this.#has('padding', STAR_TRAILER, 8) ? 'star' : 'ustar';
    if (this.#has('magic', GNU_MAGIC) && this.#has('version', GNU_VERSION)) return 'gnu';
    return 'v7';
  }
}

/** True when every byte of the block except the checksum field is zero (GNU tar's test for an end block). */
export function isZeroBlock(block: Uint8Array): boolean {
  const chksum = field('chksum');
  for (let i = 0; i < TAR_BLOCK_SIZE; i++) {
    if (block[i] !== 0 && (i < chksum.offset || i >= chksum.offset + chksum.size)) return false;
  }
  return true;
}

export interface HeaderChecksums {
  /** The POSIX checksum: sum of all bytes as unsigned, the checksum field counted as eight spaces. */
  unsigned: number;
  /** The same with bytes summed as signed chars, as some historic tars (Sun, early GNU) computed it. */
  signed: number;
}

export function headerChecksums(block: Uint8Array): HeaderChecksums {
  const chksum = field('chksum');
  const chksumEnd = chksum.offset + chksum.size;
  let unsigned = chksum.size * 0x20;
  let high = 0; // bytes >= 0x80, which count 256 less when summed as signed chars
  for (let i = 0; i < chksum.offset; i++) {
    const b = block[i]!;
    unsigned += b;
    high += b >> 7;
  }
  for (let i = chksumEnd; i < TAR_BLOCK_SIZE; i++) {
    const b = block[i]!;
    unsigned += b;
    high += b >> 7;
  }
  return { unsigned, signed: unsigned - 256 * high };
}

/** Bytes of padding after `size` bytes of data, to the next block boundary. */
export function paddingAfter(size: number): number {
  const rest = size % TAR_BLOCK_SIZE;
  return rest === 0 ? 0 : TAR_BLOCK_SIZE - rest;
}
