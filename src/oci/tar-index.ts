/**
 * A table of contents of a tar archive (an `oci-archive:` or `docker-archive:` file): member names with the
 * offset and size of their data, read from the headers alone, so blobs are served straight from the
 * archive without extracting it. Understands ustar/GNU/v7 headers, PAX `path`/`size`/`linkpath` records,
 * GNU long names (`L`, `K`) and base-256 sizes. https://pubs.opengroup.org/onlinepubs/9699919799/utilities/pax.html
 */
import type { FileHandle } from 'node:fs/promises';
import { posix } from 'node:path';
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { readFully } from '../io/files.ts';
import { TAR_BLOCK_SIZE, tarHeader } from '../tar/format.ts';

// The header layout is declared once, in src/tar/format.ts; this index only seeks from header to header.
const BLOCK = TAR_BLOCK_SIZE;
const TarHeader = tarHeader;

export type TarMemberKind = 'file' | 'hardlink' | 'symlink' | 'directory' | 'other';

export interface TarMember {
  readonly name: string;
  readonly kind: TarMemberKind;
  /** Offset of the member's data in the archive. */
  readonly offset: number;
  readonly size: number;
  readonly linkname: string;
}

/** PAX and GNU long-name records are small; a huge one means a corrupt archive. */
const MAX_EXTENDED_HEADER = 1024 * 1024;

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return Buffer.from(end < 0 ? bytes : bytes.subarray(0, end)).toString('utf8');
}

function parseNumber(field: Uint8Array, what: string, at: number): number {
  if ((field[0] ?? 0) & 0x80) {
    // GNU base-256: big-endian two's complement with the top bit as the marker.
    let value = (field[0] ?? 0) & 0x7f;
    for (let i = 1; i < field.byteLength; i++) value = value * 256 + (field[i] ?? 0);
    if (!Number.isSafeInteger(value))
      throw new CorruptInputError(`Cannot parse tar header: ${what} is too large`, at);
    return value;
  }
  const text = cString(field).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text))
    throw new CorruptInputError(`Cannot parse tar header: ${what} ${JSON.stringify(text)} is not octal`, at);
  return Number.parseInt(text, 8);
}

function checksumOf(block: Uint8Array): { unsigned: number; signed: number } {
  const start = TarHeader.offsetOf('chksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= start && i < start + 8 ? 0x20 : (block[i] ?? 0);
    unsigned += byte;
    signed += byte >= 0x80 ? byte - 0x100 : byte;
  }
  return { unsigned, signed };
}

/** `name=value` records of a PAX extended header: `LENGTH key=value\n`. */
function parsePax(data: Uint8Array, at: number): Map<string, string> {
  const records = new Map<string, string>();
  let pos = 0;
  while (pos < data.byteLength) {
    const space = data.indexOf(0x20, pos);
    if (space < 0) break;
    const length = Number.parseInt(Buffer.from(data.subarray(pos, space)).toString('latin1'), 10);
    if (!Number.isSafeInteger(length) || length <= space - pos || pos + length > data.byteLength) {
      throw new CorruptInputError('Cannot parse PAX header: a record length is invalid', at);
    }
    const record = Buffer.from(data.subarray(space + 1, pos + length - 1)).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) records.set(record.slice(0, eq), record.slice(eq + 1));
    pos += length;
  }
  return records;
}

async function readExactly(
  handle: FileHandle,
  length: number,
  position: number,
  what: string,
): Promise<Uint8Array> {
  const buffer = Buffer.alloc(length);
  const done = await readFully(handle, buffer, position);
  if (done < length)
    throw new CorruptInputError(`Cannot read ${what}: the archive ends early`, position + done);
  return buffer;
}

function kindOf(typeflag: number): TarMemberKind {
  switch (String.fromCharCode(typeflag)) {
    case '0':
    case '\0':
    case '7':
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '5':
      return 'directory';
    default:
      return 'other';
  }
}

export function normalizeMemberName(name: string): string {
  const normalized = posix.normalize(`/${name}`).slice(1);
  return normalized.endsWith('/') ? normalized.slice(0, -1) : normalized;
}

/** Reads every header of the tar archive open in `handle` (of `fileSize` bytes). */
export async function readTarIndex(
  handle: FileHandle,
  fileSize: number,
  what: string,
  options: { signal?: AbortSignal } = {},
): Promise<Map<string, TarMember>> {
  const members = new Map<string, TarMember>();
  let position = 0;
  let pax = new Map<string, string>();
  let longName: string | undefined;
  let longLink: string | undefined;
  while (position + BLOCK <= fileSize) {
    throwIfAborted(options.signal);
    const block = await readExactly(handle, BLOCK, position, `the header at offset ${position} of ${what}`);
    if (block.every((byte) => byte === 0)) break; // end-of-archive marker
    const header = TarHeader.decode(block);
    const stored = parseNumber(header.chksum, 'checksum', position);
    const { unsigned, signed } = checksumOf(block);
    if (stored !== unsigned && stored !== signed) {
      throw new CorruptInputError(
        `Cannot parse tar header of ${what}: checksum is ${unsigned}, expected ${stored}`,
        position,
      );
    }
    const sizeField = parseNumber(header.size, 'size', position);
    const size = pax.has('size') ? Number(pax.get('size')) : sizeField;
    if (!Number.isSafeInteger(size) || size < 0)
      throw new CorruptInputError(`Cannot parse tar header of ${what}: invalid size`, position);
    const dataOffset = position + BLOCK;
    if (dataOffset + size > fileSize) {
      throw new CorruptInputError(
        `Cannot read ${what}: member data runs past the end of the archive`,
        position,
      );
    }
    const type = String.fromCharCode(header.typeflag);
    const extended = type === 'x' || type === 'g' || type === 'L' || type === 'K';
    if (extended && size > MAX_EXTENDED_HEADER) {
      throw new CorruptInputError(
        `Cannot parse tar header of ${what}: extended header of ${size} bytes`,
        position,
      );
    }
    if (type === 'x') {
      pax = parsePax(await readExactly(handle, size, dataOffset, `PAX header of ${what}`), position);
    } else if (type === 'g') {
      // Global PAX records would apply to all later members; none that matter here (path, size) are global in practice.
    } else if (type === 'L') {
      longName = cString(await readExactly(handle, size, dataOffset, `long name of ${what}`));
    } else if (type === 'K') {
      longLink = cString(await readExactly(handle, size, dataOffset, `long link name of ${what}`));
    } else {
      const magic = Buffer.from(header.magic).toString('latin1');
      const prefix = magic.startsWith('ustar') ? cString(header.prefix) : '';
      const rawName =
        pax.get('path') ?? longName ?? (prefix ? `${prefix}/${cString(header.name)}` : cString(header.name));
      const linkname = pax.get('linkpath') ?? longLink ?? cString(header.linkname);
      const name = normalizeMemberName(rawName);
      const kind = kindOf(header.typeflag);
      // Later entries replace earlier ones, as when the archive is extracted.
      members.set(name, { name, kind, offset: dataOffset, size: kind === 'file' ? size : 0, linkname });
      pax = new Map();
      longName = undefined;
      longLink = undefined;
    }
    position = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
  }
  return members;
}

/** Follows symlinks and hardlinks to the regular file a name stands for. */
export function resolveMember(
  members: ReadonlyMap<string, TarMember>,
  name: string,
  what: string,
): TarMember | undefined {
  let current = members.get(normalizeMemberName(name));
  for (let hops = 0; current !== undefined && current.kind !== 'file'; hops++) {
    if (hops > 16) throw new ErofsOciError('corrupt', `Cannot read ${name} in ${what}: too many links`);
    if (current.kind === 'symlink') {
      current = members.get(normalizeMemberName(posix.join(posix.dirname(current.name), current.linkname)));
    } else if (current.kind === 'hardlink') {
      current = members.get(normalizeMemberName(current.linkname));
    } else {
      return undefined;
    }
  }
  return current;
}
