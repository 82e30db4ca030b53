/**
 * Our own EROFS reader: superblock, inodes, directories, file data, symlinks and xattrs, as Linux `fs/erofs`
 * and erofs-utils `lib/` read them (include/erofs_fs.h is the format). Used by `inspect`, by tests as an
 * oracle for our writer, and by anything that needs to look inside an image without mounting it.
 *
 * Trust nothing: every offset, length and count read from the image is checked before use, and every
 * inconsistency is a `CorruptInputError` naming the structure (inode, directory block, chunk) and its byte
 * offset. Features we do not implement (long xattr prefixes, metabox, lzma pclusters) are `unsupported`.
 *
 * This module is the facade; each concern has its own file: superblock.ts (superblock, features, device
 * table), image-context.ts (the source and its metadata block cache), inode.ts, xattr-reader.ts,
 * data-map.ts (where data lives, reading it), zmap.ts + compressed-data.ts + decompress.ts (compressed files),
 * directory.ts (dirents).
 */
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { type ByteString, displayName, toByteString } from '../fs-tree/tree.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { readData } from './data-map.ts';
import { type DirEntry, readDirectory } from './directory.ts';
import { FileType } from './format.ts';
import { ImageContext } from './image-context.ts';
import { FILE_TYPES, type Inode, readInode } from './inode.ts';
import { readDeviceTable, readSuperblock, type SuperblockInfo } from './superblock.ts';

export type { Extent } from './data-map.ts';
export type { DirEntry } from './directory.ts';
export type { ImageContext } from './image-context.ts';
export type { Inode, InodeType } from './inode.ts';
export { type DeviceInfo, LAYOUT_HEAD_BYTES, layoutAnchors, type SuperblockInfo } from './superblock.ts';

/** Longest symlink target we accept (Linux PATH_MAX). */
const SYMLINK_MAX = 4096;

export interface WalkEntry {
  /** `/` for the root, `/a/b` below it. */
  path: ByteString;
  name: ByteString;
  inode: Inode;
  /** nid of the directory holding the entry (the root's own nid for the root). */
  parentNid: number;
}

export interface ErofsImage {
  readonly superblock: SuperblockInfo;
  readonly rootNid: number;
  readInode(nid: number, options?: ReadOptions): Promise<Inode>;
  /** Resolves an absolute or root-relative path without following symlinks (like `lstat`). */
  lookup(path: ByteString, options?: ReadOptions): Promise<Inode>;
  /** The entries of a directory in on-disk (byte) order, without `.` and `..`. */
  readdir(dir: number | Inode, options?: ReadOptions): Promise<DirEntry[]>;
  /** Up to `length` bytes (default: to the end) from `offset`; fewer at the end of the file. */
  readFile(
    file: number | Inode,
    offset?: number,
    length?: number,
    options?: ReadOptions,
  ): Promise<Uint8Array>;
  readlink(link: number | Inode, options?: ReadOptions): Promise<ByteString>;
  xattrs(node: number | Inode, options?: ReadOptions): Promise<Map<ByteString, Uint8Array>>;
  /** Every path below `from` (default `/`), depth first in directory order, starting with `from` itself. */
  walk(options?: { from?: ByteString; signal?: AbortSignal }): AsyncGenerator<WalkEntry>;
}

export interface OpenImageOptions {
  /**
   * The extra devices of the device table, in table order. Without them, chunks on an extra device are read
   * from the primary source at the device's unified address (`uniaddr`): that is the `[image][blob]`
   * concatenation that index-mode images mount as.
   */
  devices?: ByteSource[];
  /** Metadata blocks kept in memory (default 256). */
  cacheBlocks?: number;
  signal?: AbortSignal;
}

export async function openImage(source: ByteSource, options: OpenImageOptions = {}): Promise<ErofsImage> {
  const { info, deviceTable } = await readSuperblock(source, options.signal);
  const ctx = new ImageContext(source, info, options);
  await readDeviceTable(ctx, deviceTable, options);
  if (options.devices && options.devices.length !== info.devices.length) {
    throw new ErofsOciError(
      'usage',
      `Cannot open EROFS image: it has ${info.devices.length} extra device(s), ${options.devices.length} given`,
    );
  }
  // The root must be a readable directory; reading it now turns a bad root nid into an error at open time.
  const root = await readInode(ctx, info.rootNid, options);
  if (root.type !== 'dir') {
    throw new CorruptInputError(
      `Cannot open EROFS image: root inode ${info.rootNid} is a ${root.type}, not a directory`,
      root.position,
    );
  }
  return new Reader(ctx);
}

class Reader implements ErofsImage {
  readonly superblock: SuperblockInfo;
  readonly rootNid: number;
  readonly #ctx: ImageContext;

  constructor(ctx: ImageContext) {
    this.#ctx = ctx;
    this.superblock = ctx.sb;
    this.rootNid = ctx.sb.rootNid;
  }

  readInode(nid: number, options: ReadOptions = {}): Promise<Inode> {
    return readInode(this.#ctx, nid, options);
  }

  async #inode(node: number | Inode, options: ReadOptions): Promise<Inode> {
    return typeof node === 'number' ? this.readInode(node, options) : node;
  }

  async xattrs(node: number | Inode, options: ReadOptions = {}): Promise<Map<ByteString, Uint8Array>> {
    return (await this.#inode(node, options)).xattrs;
  }

  async readlink(link: number | Inode, options: ReadOptions = {}): Promise<ByteString> {
    const inode = await this.#inode(link, options);
    if (inode.type !== 'symlink') {
      throw new ErofsOciError(
        'usage',
        `Cannot read link of inode ${inode.nid}: it is a ${inode.type}, not a symlink`,
      );
    }
    if (inode.size > SYMLINK_MAX) {
      throw new CorruptInputError(
        `Cannot read link of inode ${inode.nid}: target of ${inode.size} bytes is longer than ${SYMLINK_MAX}`,
        inode.position,
      );
    }
    return toByteString(await readData(this.#ctx, inode, 0, inode.size, options));
  }

  async readFile(
    file: number | Inode,
    offset = 0,
    length?: number,
    options: ReadOptions = {},
  ): Promise<Uint8Array> {
    const inode = await this.#inode(file, options);
    if (inode.type !== 'file' && inode.type !== 'symlink' && inode.type !== 'dir') {
      throw new ErofsOciError('usage', `Cannot read inode ${inode.nid}: a ${inode.type} has no data`);
    }
    if (
      !Number.isSafeInteger(offset) ||
      offset < 0 ||
      (length !== undefined && (!Number.isSafeInteger(length) || length < 0))
    ) {
      throw new ErofsOciError(
        'usage',
        `Cannot read inode ${inode.nid}: invalid range offset ${offset} length ${length}`,
      );
    }
    const from = Math.min(offset, inode.size);
    const take = Math.min(length ?? inode.size - from, inode.size - from);
    return readData(this.#ctx, inode, from, take, options);
  }

  async readdir(dir: number | Inode, options: ReadOptions = {}): Promise<DirEntry[]> {
    return (await readDirectory(this.#ctx, await this.#inode(dir, options), options)).entries;
  }

  async lookup(path: ByteString, options: ReadOptions = {}): Promise<Inode> {
    let inode = await this.readInode(this.rootNid, options);
    let walked = '';
    for (const component of path.split('/')) {
      if (component === '' || component === '.') continue;
      if (inode.type !== 'dir') {
        throw new ErofsOciError(
          'not-found',
          `Cannot find ${displayName(path)} in the image: ${displayName(walked || '/')} is not a directory`,
        );
      }
      const { entries, parent } = await readDirectory(this.#ctx, inode, options);
      let next: number | undefined;
      if (component === '..') next = parent;
      else next = entries.find((e) => e.name === component)?.nid;
      if (next === undefined) {
        throw new ErofsOciError(
          'not-found',
          `Cannot find ${displayName(path)} in the image: ${displayName(walked || '/')} has no entry ${displayName(component)}`,
        );
      }
      walked = `${walked}/${component}`;
      inode = await this.readInode(next, options);
    }
    return inode;
  }

  async *walk(options: { from?: ByteString; signal?: AbortSignal } = {}): AsyncGenerator<WalkEntry> {
    const components = (options.from ?? '/').split('/').filter((c) => c !== '' && c !== '.');
    const path = `/${components.join('/')}`;
    const start = await this.lookup(path, options);
    // The start's parent: a directory's own `..`; for anything else, the directory its path names.
    const parentNid =
      start.type === 'dir'
        ? (await readDirectory(this.#ctx, start, options)).parent
        : (await this.lookup(components.slice(0, -1).join('/'), options)).nid;
    yield { path, name: components.at(-1) ?? '/', inode: start, parentNid };
    if (start.type !== 'dir') return;
    // Directories cannot be hardlinked, so meeting one twice means the image loops.
    yield* this.#walkDir(
      start,
      components.length === 0 ? '' : path,
      parentNid,
      new Set([start.nid]),
      options,
    );
  }

  async *#walkDir(
    dir: Inode,
    prefix: string,
    parentNid: number,
    seen: Set<number>,
    options: ReadOptions,
  ): AsyncGenerator<WalkEntry> {
    const { entries, parent } = await readDirectory(this.#ctx, dir, options);
    if (parent !== parentNid) {
      throw new CorruptInputError(
        `Cannot walk the image: the .. entry of ${displayName(prefix || '/')} (inode ${dir.nid}) points at inode ${parent}, not ${parentNid}`,
        dir.position,
      );
    }
    for (const entry of entries) {
      throwIfAborted(options.signal);
      const inode = await this.readInode(entry.nid, options);
      if (entry.fileType !== FileType.unknown && entry.fileType !== FILE_TYPES[inode.type]) {
        throw new CorruptInputError(
          `Cannot read directory inode ${dir.nid}: entry ${JSON.stringify(displayName(entry.name))} has file type ${entry.fileType} but inode ${inode.nid} is a ${inode.type}`,
          inode.position,
        );
      }
      const path = `${prefix}/${entry.name}`;
      yield { path, name: entry.name, inode, parentNid: dir.nid };
      if (inode.type === 'dir') {
        if (seen.has(inode.nid)) {
          throw new CorruptInputError(
            `Cannot walk the image: directory inode ${inode.nid} appears twice (at ${displayName(path)}), the tree loops`,
            inode.position,
          );
        }
        seen.add(inode.nid);
        yield* this.#walkDir(inode, path, dir.nid, seen, options);
      }
    }
  }
}
