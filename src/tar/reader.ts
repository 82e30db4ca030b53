/**
 * Streaming tar reader: ustar, pax (POSIX.1-2001), GNU (long names, base-256 numbers), star and v7
 * archives, read from a stream of chunks of any size with bounded memory. File data is handed to the
 * consumer as views of the input chunks, never copied.
 *
 * What is accepted follows GNU tar 1.34 (src/list.c) where formats leave room:
 * - the archive ends at a zero block; the block after it, whatever it holds, and the rest of the stream
 *   are read and ignored (GNU tar warns "A lone zero block" and stops too). The stream is read to its end
 *   so that digest or gzip trailer checks upstream run.
 * - the stream may end right after an entry's data and padding, without zero blocks (GNU tar accepts this
 *   silently). It must not end inside a header, data or padding: that is truncation.
 * - checksums are the unsigned sum (POSIX) or the historic signed sum.
 * - header-only types (hardlink, symlink, devices, directory, fifo) have no data whatever their size
 *   field says, as in Go's archive/tar and Python's tarfile (POSIX: "No data logical records are stored
 *   for types 1, 2, or 5").
 * - a type '\0' entry whose name ends in '/' is a directory (pre-POSIX archives).
 * Refused as `unsupported`: GNU sparse files ('S', GNU.sparse.*), multi-volume continuations ('M'), the
 * pre-1.12 GNU long name type 'N' and unknown type flags (POSIX says to extract those as regular files;
 * we prefer a clear error to silently inventing files).
 */
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { type ByteString, displayName, type Timestamp, toByteString } from '../fs-tree/tree.ts';
import { ByteCursor } from './cursor.ts';
import {
  HeaderBlock,
  headerChecksums,
  isZeroBlock,
  type NumericField,
  paddingAfter,
  STAR_PREFIX_LENGTH,
  TAR_BLOCK_SIZE,
  TypeFlag,
} from './format.ts';
import { applyPaxRecords, emptyPaxValues, type PaxValues, parsePaxRecords } from './pax.ts';

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'chardev' | 'blockdev' | 'dir' | 'fifo';

export interface TarEntry {
  /** Path as stored (pax path, GNU long name or ustar prefix/name), raw bytes, not normalised. */
  path: ByteString;
  type: TarEntryType;
  /** Target of a hardlink or symlink (pax linkpath, GNU long link or the header field); '' otherwise. */
  linkname: ByteString;
  /** Permission bits including setuid, setgid and sticky (mask 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of data: the file size for files, 0 for every other type. */
  size: number;
  mtime: Timestamp;
  /** Device numbers of character and block devices; 0 otherwise. */
  devmajor: number;
  devminor: number;
  /** From pax SCHILY.xattr.* and LIBARCHIVE.xattr.* records (after global ones). */
  xattrs: Map<ByteString, Uint8Array>;
  /** Offset in the stream of the entry's first header block, extended headers ('x', 'L', 'K') included. */
  headerOffset: number;
  /** Offset in the stream of the entry's first data byte. */
  dataOffset: number;
}

export interface TarEntryWithBody extends TarEntry {
  /**
   * The entry's data: exactly `size` bytes, as views of the input chunks (valid as long as the consumer
   * keeps them). Must be read before asking for the next entry; data not read is skipped. Once only.
   */
  body(): AsyncIterable<Uint8Array>;
}

export interface TarReadOptions {
  signal?: AbortSignal;
}

/** Extended headers bigger than this are refused rather than held in memory. */
const MAX_PAX_HEADER_SIZE = 16 * 1024 * 1024;
const MAX_LONG_NAME_SIZE = 1024 * 1024;

const ENTRY_TYPES = new Map<number, TarEntryType>([
  [TypeFlag.regular, 'file'],
  [TypeFlag.regularOld, 'file'],
  [TypeFlag.contiguous, 'file'],
  [TypeFlag.hardlink, 'hardlink'],
  [TypeFlag.symlink, 'symlink'],
  [TypeFlag.chardev, 'chardev'],
  [TypeFlag.blockdev, 'blockdev'],
  [TypeFlag.directory, 'dir'],
  [TypeFlag.fifo, 'fifo'],
  [TypeFlag.gnuDumpDir, 'dir'],
]);

function noBody(): AsyncIterable<Uint8Array> {
  throw new ErofsOciError('internal', 'tar entry body requested before the entry was read');
}

function quote(path: ByteString): string {
  return `'${displayName(path)}'`;
}

function typeName(flag: number): string {
  return flag >= 0x21 && flag <= 0x7e
    ? `'${String.fromCharCode(flag)}'`
    : `0x${flag.toString(16).padStart(2, '0')}`;
}

/** What the headers before an entry carried. */
interface Extensions {
  /** Offset of the first 'x', 'L' or 'K' header, if any. */
  firstOffset: number | null;
  pax: PaxValues | null;
  longName: ByteString | null;
  longLink: ByteString | null;
}

/** A parsed entry plus how many data bytes follow its header (a dumpdir's data is not part of `size`). */
interface ParsedEntry {
  entry: TarEntryWithBody;
  dataSize: number;
}

/**
 * Picks a value: the entry's pax value if given (null: explicitly deleted, so the header field), else the
 * global one, else the header field.
 */
function resolve<T>(local: T | null | undefined, global: T | null | undefined, header: () => T): T {
  if (local !== undefined) return local ?? header();
  return global ?? header();
}

class HeaderParser {
  readonly #cursor: ByteCursor;
  readonly #globals: PaxValues = emptyPaxValues();
  readonly #scratch = new Uint8Array(TAR_BLOCK_SIZE);
  readonly #signal: AbortSignal | undefined;

  constructor(cursor: ByteCursor, signal: AbortSignal | undefined) {
    this.#cursor = cursor;
    this.#signal = signal;
  }

  /** Reads headers up to and including the next entry's; null at the end of the archive. */
  async next(): Promise<ParsedEntry | null> {
    const ext: Extensions = { firstOffset: null, pax: null, longName: null, longLink: null };
    for (;;) {
      throwIfAborted(this.#signal);
      const offset = this.#cursor.offset;
      // Most headers lie within one input chunk: take them without an await.
      const block =
        this.#cursor.available >= TAR_BLOCK_SIZE
          ? this.#cursor.take(TAR_BLOCK_SIZE)
          : await this.#cursor.read(TAR_BLOCK_SIZE, this.#scratch);
      if (block.byteLength === 0) {
        if (ext.firstOffset !== null) {
          throw new CorruptInputError(
            `tar archive ends after the extended header at offset ${ext.firstOffset}, before the entry it describes`,
          );
        }
        return null;
      }
      if (block.byteLength < TAR_BLOCK_SIZE) {
        throw new CorruptInputError(
          `Cannot parse tar header at offset ${offset}: the stream ends after ${block.byteLength} of its ${TAR_BLOCK_SIZE} bytes`,
        );
      }
      if (isZeroBlock(block)) {
        if (ext.firstOffset !== null) {
          throw new CorruptInputError(
            `tar archive ends at offset ${offset}, after the extended header at offset ${ext.firstOffset} and before the entry it describes`,
          );
        }
        return null;
      }
      const header = new HeaderBlock(block);
      this.#verifyChecksum(header, offset);
      const flag = header.typeflag;
      const dataOffset = offset + TAR_BLOCK_SIZE;
      switch (flag) {
        case TypeFlag.paxExtended:
        case TypeFlag.paxGlobal: {
          const data = await this.#readExtension(header, offset, MAX_PAX_HEADER_SIZE, 'pax extended header');
          const fail = (reason: string, at: number): never => {
            throw new CorruptInputError(
              `Cannot parse pax extended header at offset ${offset}: ${reason} (at offset ${dataOffset + at})`,
            );
          };
          const records = parsePaxRecords(data, fail);
          if (flag === TypeFlag.paxGlobal) {
            applyPaxRecords(records, this.#globals, 'global', fail);
          } else {
            ext.firstOffset ??= offset;
            ext.pax ??= emptyPaxValues();
            applyPaxRecords(records, ext.pax, 'entry', fail);
          }
          continue;
        }
        case TypeFlag.gnuLongName:
        case TypeFlag.gnuLongLink: {
          const what = flag === TypeFlag.gnuLongName ? 'GNU long name' : 'GNU long link name';
          const data = await this.#readExtension(header, offset, MAX_LONG_NAME_SIZE, what);
          ext.firstOffset ??= offset;
          // The data is the name and a terminating NUL.
          const nul = data.indexOf(0);
          const name = toByteString(nul < 0 ? data : data.subarray(0, nul));
          if (flag === TypeFlag.gnuLongName) ext.longName = name;
          else ext.longLink = name;
          continue;
        }
        case TypeFlag.gnuVolumeHeader: {
          // A tape label, not an entry: skip it and whatever data it claims.
          const size = this.#number(header, 'size', offset, null);
          await this.#skipData(size, offset, `volume header ${quote(header.string('name'))}`);
          continue;
        }
      }
      return this.#entry(header, offset, ext);
    }
  }

  #verifyChecksum(header: HeaderBlock, offset: number): void {
    const recorded = header.number('chksum');
    if (recorded === undefined) {
      throw new CorruptInputError(
        `Cannot parse tar header at offset ${offset}: checksum field ${JSON.stringify(header.raw('chksum'))} is not an octal number`,
      );
    }
    const sums = headerChecksums(header.bytes);
    if (recorded !== sums.unsigned && recorded !== sums.signed) {
      throw new CorruptInputError(
        `Cannot parse tar header at offset ${offset}: checksum is ${recorded}, expected ${sums.unsigned}`,
      );
    }
  }

  /** A numeric header field; `path` names the entry in the error when known. */
  #number(
    header: HeaderBlock,
    field: NumericField,
    offset: number,
    path: ByteString | null,
    allowNegative = false,
  ): number {
    const value = header.number(field);
    if (value === undefined || (value < 0 && !allowNegative)) {
      const of = path === null ? '' : ` of ${quote(path)}`;
      throw new CorruptInputError(
        `Cannot parse tar header${of} at offset ${offset}: ${field} field ${JSON.stringify(header.raw(field))} is not a valid number`,
      );
    }
    return value;
  }

  /** Reads the data of an extension header ('x', 'g', 'L', 'K') and its padding. */
  async #readExtension(
    header: HeaderBlock,
    offset: number,
    limit: number,
    what: string,
  ): Promise<Uint8Array> {
    const size = this.#number(header, 'size', offset, null);
    if (size > limit) {
      throw new ErofsOciError(
        'unsupported',
        `tar ${what} at offset ${offset} is ${size} bytes, more than the supported ${limit} bytes`,
      );
    }
    const data = this.#cursor.available >= size ? this.#cursor.take(size) : await this.#cursor.read(size);
    if (data.byteLength < size) {
      throw new CorruptInputError(
        `tar ${what} at offset ${offset} claims ${size} bytes of data but the stream ends after ${data.byteLength}`,
      );
    }
    // The data may be a view of an input chunk; what is kept of it is copied (strings, xattr values).
    await this.skipPadding(size, offset, `${what}`);
    return data;
  }

  async #skipData(size: number, offset: number, what: string): Promise<void> {
    const skipped = await this.#cursor.skip(size);
    if (skipped < size) {
      throw new CorruptInputError(
        `tar ${what} at offset ${offset} claims ${size} bytes of data but the stream ends after ${skipped}`,
      );
    }
    await this.skipPadding(size, offset, what);
  }

  /** Skips the padding after `size` bytes of data; a stream ending inside it is truncated. */
  async skipPadding(size: number, offset: number, what: string): Promise<void> {
    const padding = paddingAfter(size);
    if (padding <= this.#cursor.available) {
      this.#cursor.take(padding);
      return;
    }
    if ((await this.#cursor.skip(padding)) < padding) {
      throw new CorruptInputError(
        `tar ${what} at offset ${offset} is truncated: the stream ends inside the padding after its data, at offset ${this.#cursor.offset}`,
      );
    }
  }

  #entry(header: HeaderBlock, offset: number, ext: Extensions): ParsedEntry {
    const pax = ext.pax ?? emptyPaxValues();
    const globals = this.#globals;
    const path = resolve(pax.path, undefined, () => ext.longName ?? this.#headerPath(header));
    const flag = header.typeflag;
    let type = ENTRY_TYPES.get(flag);
    if (type === undefined) {
      const known =
        flag === TypeFlag.gnuSparse
          ? 'GNU sparse files are'
          : flag === TypeFlag.gnuMultiVolume
            ? 'GNU multi-volume continuations are'
            : flag === TypeFlag.gnuOldLongName
              ? 'old GNU long names (type N) are'
              : `entries of type ${typeName(flag)} are`;
      throw new ErofsOciError(
        'unsupported',
        `tar entry ${quote(path)} at offset ${offset}: ${known} not supported`,
      );
    }
    if (flag === TypeFlag.regularOld && path.endsWith('/')) type = 'dir';

    const mode = this.#number(header, 'mode', offset, path) & 0o7777;
    const uid = resolve(pax.uid, globals.uid, () => this.#number(header, 'uid', offset, path));
    const gid = resolve(pax.gid, globals.gid, () => this.#number(header, 'gid', offset, path));
    const mtime = resolve(pax.mtime, globals.mtime, () => ({
      sec: this.#number(header, 'mtime', offset, path, true),
      nsec: 0,
    }));
    // Header-only types carry no data whatever their size field says (see the module comment).
    const hasData = type === 'file' || flag === TypeFlag.gnuDumpDir;
    const dataSize = hasData
      ? resolve(pax.size, undefined, () => this.#number(header, 'size', offset, path))
      : 0;
    const isDevice = type === 'chardev' || type === 'blockdev';
    const isLink = type === 'hardlink' || type === 'symlink';
    const linkname = isLink
      ? resolve(pax.linkpath, undefined, () => ext.longLink ?? header.string('linkname'))
      : '';
    const xattrs = new Map(globals.xattrs);
    for (const [name, value] of pax.xattrs) xattrs.set(name, value);
    const entry: TarEntryWithBody = {
      path,
      type,
      linkname,
      mode,
      uid,
      gid,
      size: type === 'file' ? dataSize : 0,
      mtime,
      devmajor: isDevice
        ? resolve(pax.devmajor, undefined, () => this.#number(header, 'devmajor', offset, path))
        : 0,
      devminor: isDevice
        ? resolve(pax.devminor, undefined, () => this.#number(header, 'devminor', offset, path))
        : 0,
      xattrs,
      headerOffset: ext.firstOffset ?? offset,
      dataOffset: offset + TAR_BLOCK_SIZE,
      body: noBody, // replaced by readTar
    };
    return { entry, dataSize };
  }

  /** The name from the header block: ustar joins prefix and name with '/'; GNU and v7 have no prefix. */
  #headerPath(header: HeaderBlock): ByteString {
    const name = header.string('name');
    const format = header.format;
    if (format !== 'ustar' && format !== 'star') return name;
    const prefix = header.string('prefix', format === 'star' ? STAR_PREFIX_LENGTH : undefined);
    return prefix === '' ? name : `${prefix}/${name}`;
  }
}

/**
 * Reads a tar stream entry by entry. Each entry's `body()` yields its data; data the consumer does not read
 * is skipped when it asks for the next entry. Corrupt or truncated input fails with a `CorruptInputError`
 * naming the offset (and the entry when known); unsupported features with an `unsupported` error.
 */
export async function* readTar(
  input: AsyncIterable<Uint8Array>,
  options: TarReadOptions = {},
): AsyncGenerator<TarEntryWithBody> {
  const cursor = new ByteCursor(input, options.signal);
  const parser = new HeaderParser(cursor, options.signal);
  try {
    for (;;) {
      const parsed = await parser.next();
      if (parsed === null) break;
      const { entry, dataSize } = parsed;
      let remaining = dataSize;
      let current = true; // false once the consumer has moved on to the next entry
      let reading = false; // a body read is waiting for input
      let bodyTaken = false;
      const what = (): string => `entry ${quote(entry.path)}`;
      const truncated = (): CorruptInputError =>
        new CorruptInputError(
          `tar ${what()} at offset ${entry.headerOffset} claims ${dataSize} bytes of data but the stream ends after ${dataSize - remaining}`,
        );
      const moved = (): ErofsOciError =>
        new ErofsOciError('internal', `body of tar ${what()} read after moving on to the next entry`);
      async function* body(): AsyncGenerator<Uint8Array> {
        // Only a file's data is its body; a dumpdir's listing is skipped.
        let left = entry.size;
        while (left > 0) {
          if (!current) throw moved();
          if (cursor.available === 0) {
            reading = true;
            const more = await cursor.fill();
            reading = false;
            if (!current) throw moved();
            if (!more) throw truncated();
          }
          const piece = cursor.take(left);
          left -= piece.byteLength;
          remaining -= piece.byteLength;
          yield piece;
        }
      }
      entry.body = () => {
        if (bodyTaken) throw new ErofsOciError('internal', `body of tar ${what()} requested twice`);
        if (!current) throw moved();
        bodyTaken = true;
        return body();
      };
      yield entry;
      current = false;
      if (reading) {
        throw new ErofsOciError(
          'internal',
          `next tar entry requested while the body of ${what()} is being read`,
        );
      }
      if (remaining > 0) {
        remaining -= await cursor.skip(remaining);
        if (remaining > 0) throw truncated();
      }
      await parser.skipPadding(dataSize, entry.headerOffset, what());
    }
    await cursor.drain();
  } finally {
    await cursor.close();
  }
}
