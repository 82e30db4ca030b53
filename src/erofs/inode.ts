/** On-disk inodes: compact and extended, their data layout and the checks on where their data lies. */
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import type { ByteString, Timestamp } from '../fs-tree/tree.ts';
import type { ReadOptions } from '../io/byte-source.ts';
import { decodeAt, hex } from './decode.ts';
import {
  CHUNK_FORMAT_ALL,
  DataLayout,
  decodeDev,
  FileType,
  I_DATALAYOUT_BIT,
  I_DATALAYOUT_MASK,
  I_FORMAT_ALL,
  I_NLINK_1_BIT,
  I_VERSION_EXTENDED,
  INODE_SLOT_SIZE,
  inodeCompact,
  inodeExtended,
  NULL_ADDR_32,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  xattrIbodyHeader,
} from './format.ts';
import type { ImageContext } from './image-context.ts';
import { readXattrs } from './xattr-reader.ts';

export type InodeType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';

export interface Inode {
  nid: number;
  /** Byte offset of the on-disk inode in the image. */
  position: number;
  /** The raw `i_format`: version, data layout and the NLINK_1 / DOT_OMITTED bit. */
  format: number;
  /** 64-byte extended inode (else 32-byte compact). */
  extended: boolean;
  layout: DataLayout;
  type: InodeType;
  /** The full `st_mode`, file type bits included. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Timestamp;
  nlink: number;
  /** `i_ino`, for 32-bit stat only. */
  ino: number;
  rdev: { major: number; minor: number } | null;
  xattrs: Map<ByteString, Uint8Array>;
  /** Flat layouts: the first data block; null when the file has no block (all inline or a hole). */
  startBlock: number | null;
  /** Chunk-based layout: `i_u.c.format`; else null. */
  chunkFormat: number | null;
  /** Bytes of the inline xattr body that follows the inode. */
  xattrSize: number;
}

export async function readInode(ctx: ImageContext, nid: number, options: ReadOptions = {}): Promise<Inode> {
  if (!Number.isSafeInteger(nid) || nid < 0) {
    throw new CorruptInputError(`Cannot read inode ${nid}: not a valid nid`);
  }
  const sb = ctx.sb;
  const position = sb.metaBlkaddr * ctx.blockSize + nid * INODE_SLOT_SIZE;
  const what = `Cannot read inode ${nid}`;
  if (position + inodeCompact.size > ctx.metaLimit) {
    throw new CorruptInputError(`${what}: it lies beyond the image (${ctx.metaLimit} bytes)`, position);
  }
  const compactBytes = await ctx.readMeta(position, inodeCompact.size, what, options);
  const compact = decodeAt(inodeCompact, compactBytes, 0, what, position);
  const format = compact.format;
  if (format & ~I_FORMAT_ALL) {
    throw new ErofsOciError(
      'unsupported',
      `${what}: unknown i_format bits ${hex(format)} (at offset ${position})`,
    );
  }
  const layout = ((format >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK) as DataLayout;
  if (layout > DataLayout.chunkBased) {
    throw new ErofsOciError('unsupported', `${what}: unknown data layout ${layout} (at offset ${position})`);
  }
  const extended = (format & I_VERSION_EXTENDED) !== 0;
  const mode = compact.mode;
  const type = inodeType(mode);
  if (type === undefined) {
    throw new CorruptInputError(
      `${what}: bogus mode 0o${mode.toString(8)}`,
      position + inodeCompact.offsetOf('mode'),
    );
  }

  let size: number;
  let uid: number;
  let gid: number;
  let nlink: number;
  let mtime: Timestamp;
  let u: number;
  let ino: number;
  let startblkHi: number;
  let wideAddress: boolean;
  if (extended) {
    // A copy, even of a Buffer (whose slice() is a view): it is patched below.
    const bytes = Uint8Array.from(await ctx.readMeta(position, inodeExtended.size, what, options));
    // i_mtime is a signed 64-bit count of seconds; the struct codec only knows unsigned fields.
    const mtimeAt = inodeExtended.offsetOf('mtime');
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const sec = Number(view.getBigInt64(mtimeAt, true));
    bytes.fill(0, mtimeAt, mtimeAt + 8);
    const ext = decodeAt(inodeExtended, bytes, 0, what, position);
    if (!Number.isSafeInteger(sec)) {
      throw new CorruptInputError(`${what}: mtime ${sec} is out of range`, position + mtimeAt);
    }
    if (ext.mtimeNsec >= 1e9) {
      throw new CorruptInputError(
        `${what}: mtime nanoseconds ${ext.mtimeNsec} is not below 10^9`,
        position + inodeExtended.offsetOf('mtimeNsec'),
      );
    }
    size = ext.size;
    uid = ext.uid;
    gid = ext.gid;
    nlink = ext.nlink;
    mtime = { sec, nsec: ext.mtimeNsec };
    u = ext.u;
    ino = ext.ino;
    startblkHi = ext.nb;
    wideAddress = true;
  } else {
    size = compact.size;
    uid = compact.uid;
    gid = compact.gid;
    // Compact inodes share the superblock's epoch and nanoseconds (images from before the `mtime` feature
    // leave i_mtime zero, which gives the build time, as in Linux and erofs-utils lib/namei.c).
    mtime = { sec: sb.epoch + compact.mtime, nsec: sb.fixedNsec };
    u = compact.u;
    ino = compact.ino;
    if (type !== 'dir' && (format >> I_NLINK_1_BIT) & 1) {
      nlink = 1;
      startblkHi = compact.nlink;
      wideAddress = true;
    } else {
      nlink = compact.nlink;
      startblkHi = 0;
      wideAddress = false;
    }
  }

  const xattrIcount = compact.xattrIcount;
  const xattrSize = xattrIcount === 0 ? 0 : xattrIbodyHeader.size + 4 * (xattrIcount - 1);
  const inodeSize = extended ? inodeExtended.size : inodeCompact.size;
  const bodyEnd = position + inodeSize + xattrSize;

  let startBlock: number | null = null;
  let chunkFormat: number | null = null;
  let rdev: Inode['rdev'] = null;
  if (type === 'chardev' || type === 'blockdev') {
    rdev = decodeDev(u);
  } else if (type === 'file' || type === 'dir' || type === 'symlink') {
    if (layout === DataLayout.chunkBased) {
      chunkFormat = u & 0xffff;
      if (chunkFormat & ~CHUNK_FORMAT_ALL) {
        throw new ErofsOciError(
          'unsupported',
          `${what}: unknown chunk format ${hex(chunkFormat)} (at offset ${position})`,
        );
      }
    } else if (layout === DataLayout.flatPlain || layout === DataLayout.flatInline) {
      const isNull = u === NULL_ADDR_32 && (!wideAddress || startblkHi === 0xffff);
      const blocks = Math.ceil(size / ctx.blockSize);
      const blocksInArea = layout === DataLayout.flatInline ? Math.max(0, blocks - 1) : blocks;
      if (!(layout === DataLayout.flatPlain && isNull) && blocksInArea > 0) {
        startBlock = u + startblkHi * 2 ** 32;
        if ((startBlock + blocksInArea) * ctx.blockSize > ctx.metaLimit) {
          throw new CorruptInputError(
            `${what}: ${size} bytes of data from block ${startBlock} extend beyond the image (${ctx.metaLimit / ctx.blockSize} blocks)`,
            position,
          );
        }
      }
      if (layout === DataLayout.flatInline && size > 0) {
        const tail = size - blocksInArea * ctx.blockSize;
        const offsetInBlock = bodyEnd % ctx.blockSize;
        if (offsetInBlock + tail > ctx.blockSize) {
          throw new CorruptInputError(
            `${what}: inline data of ${tail} bytes at offset ${bodyEnd} crosses a block boundary`,
            bodyEnd,
          );
        }
        if (bodyEnd + tail > ctx.metaLimit) {
          throw new CorruptInputError(`${what}: inline data extends beyond the image`, bodyEnd);
        }
      }
    }
    if (type === 'dir' && size === 0) {
      throw new CorruptInputError(`${what}: directory of size 0 has no . and .. entries`, position);
    }
  }

  const inode: Inode = {
    nid,
    position,
    format,
    extended,
    layout,
    type,
    mode,
    uid,
    gid,
    size,
    mtime,
    nlink,
    ino,
    rdev,
    xattrs: new Map(),
    startBlock,
    chunkFormat,
    xattrSize,
  };
  if (xattrSize > 0) inode.xattrs = await readXattrs(ctx, inode, options);
  return inode;
}

/** Byte offset in the image of the first byte after an inode and its inline xattrs. */
export function inodeBodyEnd(inode: Inode): number {
  return inode.position + (inode.extended ? inodeExtended.size : inodeCompact.size) + inode.xattrSize;
}

export const FILE_TYPES: Record<InodeType, number> = {
  file: FileType.regFile,
  dir: FileType.dir,
  chardev: FileType.chrdev,
  blockdev: FileType.blkdev,
  fifo: FileType.fifo,
  socket: FileType.sock,
  symlink: FileType.symlink,
};

function inodeType(mode: number): InodeType | undefined {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return 'file';
    case S_IFDIR:
      return 'dir';
    case S_IFLNK:
      return 'symlink';
    case S_IFCHR:
      return 'chardev';
    case S_IFBLK:
      return 'blockdev';
    case S_IFIFO:
      return 'fifo';
    case S_IFSOCK:
      return 'socket';
    default:
      return undefined;
  }
}
