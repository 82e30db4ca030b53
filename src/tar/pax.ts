/**
 * pax extended header records (pax(1), "pax Extended Header",
 * https://pubs.opengroup.org/onlinepubs/9799919799/utilities/pax.html#tag_20_94_13_03): the records of
 * one 'x' or 'g' header and the values we take from them.
 */
import { ErofsOciError } from '../errors.ts';
import type { ByteString, Timestamp } from '../fs-tree/tree.ts';

export interface PaxRecord {
  /** Keyword, as a byte string. */
  key: ByteString;
  /** Value, as a byte string (raw bytes, whatever `hdrcharset` says). */
  value: ByteString;
  /** Offset of the record in the header's data. */
  at: number;
}

/** Reports a malformed record: what is wrong and at which byte of the header's data. */
export type PaxFailure = (reason: string, at: number) => never;

/**
 * Splits the data of an extended header into records `"%d %s=%s\n"`, where the decimal length counts the
 * whole record including itself and the newline. NUL bytes after the last record (padding some writers
 * leave inside the declared size) are ignored.
 */
export function parsePaxRecords(data: Uint8Array, fail: PaxFailure): PaxRecord[] {
  const text = Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('latin1');
  const records: PaxRecord[] = [];
  let pos = 0;
  while (pos < text.length) {
    if (text.charCodeAt(pos) === 0 && /^\0+$/.test(text.slice(pos))) break;
    const space = text.indexOf(' ', pos);
    const digits = space < 0 ? text.slice(pos, pos + 20) : text.slice(pos, space);
    if (space < 0 || !/^[0-9]{1,15}$/.test(digits)) {
      fail(`record length ${JSON.stringify(digits.slice(0, 20))} is not a decimal number`, pos);
    }
    const length = Number(digits);
    const end = pos + length;
    if (end > text.length) fail(`record length ${length} runs past the end of the header`, pos);
    if (end <= space + 1) fail(`record length ${length} is too short`, pos);
    if (text.charCodeAt(end - 1) !== 0x0a)
      fail(`record of length ${length} does not end with a newline`, pos);
    const keyValue = text.slice(space + 1, end - 1);
    const eq = keyValue.indexOf('=');
    if (eq < 0) fail(`record ${JSON.stringify(keyValue.slice(0, 40))} has no '='`, pos);
    if (eq === 0) fail('record has an empty keyword', pos);
    records.push({ key: keyValue.slice(0, eq), value: keyValue.slice(eq + 1), at: pos });
    pos = end;
  }
  return records;
}

/**
 * Values taken from extended headers. `undefined`: not given; `null`: given with an empty value, which pax
 * defines as deleting the value (an 'x' header thereby overrides a global value with the ustar field).
 */
export interface PaxValues {
  path?: ByteString | null;
  linkpath?: ByteString | null;
  size?: number | null;
  uid?: number | null;
  gid?: number | null;
  mtime?: Timestamp | null;
  devmajor?: number | null;
  devminor?: number | null;
  /** Extended attributes; an empty value is an attribute with an empty value, not a deletion. */
  xattrs: Map<ByteString, Uint8Array>;
}

export function emptyPaxValues(): PaxValues {
  return { xattrs: new Map() };
}

/** Keywords a global ('g') header may set; see `applyPaxRecords`. */
const GLOBAL_KEYS = new Set(['uid', 'gid', 'mtime']);

function parseDecimal({ key, value, at }: PaxRecord, fail: PaxFailure): number {
  const n = /^[0-9]{1,16}$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n)) fail(`${key} ${JSON.stringify(value.slice(0, 40))} is not a number`, at);
  return n;
}

/** `mtime` is decimal seconds with an optional fraction, possibly negative: "-1.25" is sec -2, nsec 75e7. */
export function parsePaxTime(value: string): Timestamp | undefined {
  const match = /^(-?)([0-9]{1,16})(?:\.([0-9]*))?$/.exec(value);
  if (match === null) return undefined;
  const whole = Number(match[2]);
  if (!Number.isSafeInteger(whole)) return undefined;
  // Digits beyond nanoseconds are truncated, as GNU tar and erofs-utils do.
  const nsec = Number((match[3] ?? '').slice(0, 9).padEnd(9, '0'));
  if (match[1] !== '-') return { sec: whole, nsec };
  if (nsec === 0) return { sec: whole === 0 ? 0 : -whole, nsec: 0 };
  return { sec: -whole - 1, nsec: 1e9 - nsec };
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** libarchive writes xattr names %-encoded (bytes outside 33..126, '%' and '='), values base64. */
function decodeLibarchiveName(name: string): ByteString {
  return name.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) =>
    String.fromCharCode(Number.parseInt(hex, 16)),
  );
}

/**
 * Applies the records of one header to `into`. `scope` 'entry' is an 'x' header, 'global' a 'g' header.
 *
 * Global headers: we apply uid, gid, mtime and xattrs to every following entry, and ignore path,
 * linkpath, size and device numbers there. pax says every keyword applies, but a global path or size
 * would give every entry of the archive the same name or framing; libarchive and Go's archive/tar (which
 * Docker and containerd use to unpack layers) ignore global headers altogether.
 *
 * GNU sparse files (GNU.sparse.*) are refused: their data is a map plus fragments, not the file's bytes.
 * Other keywords (atime, ctime, uname, gname, charset, hdrcharset, comment, SCHILY.acl.*, …) are ignored.
 */
export function applyPaxRecords(
  records: readonly PaxRecord[],
  into: PaxValues,
  scope: 'entry' | 'global',
  fail: PaxFailure,
): void {
  for (const record of records) {
    const { key, value, at } = record;
    if (key.startsWith('SCHILY.xattr.')) {
      into.xattrs.set(key.slice('SCHILY.xattr.'.length), Buffer.from(value, 'latin1'));
      continue;
    }
    if (key.startsWith('LIBARCHIVE.xattr.')) {
      if (!BASE64.test(value)) fail(`${key} value is not base64`, at);
      into.xattrs.set(
        decodeLibarchiveName(key.slice('LIBARCHIVE.xattr.'.length)),
        Buffer.from(value, 'base64'),
      );
      continue;
    }
    if (key.startsWith('GNU.sparse.')) {
      throw new ErofsOciError('unsupported', `GNU sparse files are not supported (pax keyword ${key})`, {
        hint: 'recreate the archive without --sparse',
      });
    }
    if (scope === 'global' && !GLOBAL_KEYS.has(key)) continue;
    const cleared = value === '' ? (scope === 'entry' ? null : undefined) : undefined;
    switch (key) {
      case 'path':
        into.path = value === '' ? cleared : value;
        break;
      case 'linkpath':
        into.linkpath = value === '' ? cleared : value;
        break;
      case 'size':
        into.size = value === '' ? cleared : parseDecimal(record, fail);
        break;
      case 'uid':
        into.uid = value === '' ? cleared : parseDecimal(record, fail);
        break;
      case 'gid':
        into.gid = value === '' ? cleared : parseDecimal(record, fail);
        break;
      case 'SCHILY.devmajor':
        into.devmajor = value === '' ? cleared : parseDecimal(record, fail);
        break;
      case 'SCHILY.devminor':
        into.devminor = value === '' ? cleared : parseDecimal(record, fail);
        break;
      case 'mtime': {
        if (value === '') {
          into.mtime = cleared;
          break;
        }
        const time = parsePaxTime(value);
        if (time === undefined) fail(`mtime ${JSON.stringify(value.slice(0, 40))} is not a number`, at);
        into.mtime = time;
        break;
      }
    }
  }
}
