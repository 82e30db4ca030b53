/**
 * Our own EROFS reader: superblock, inodes, directories, file data, symlinks and xattrs of uncompressed
 * images, as Linux `fs/erofs` and erofs-utils `lib/` read them (include/erofs_fs.h is the format). Used by
 * `inspect`, by tests as an oracle for our writer, and by anything that needs to look inside an image
 * without mounting it.
 *
 * Trust nothing: every offset, length and count read from the image is checked before use, and every
 * inconsistency is a `CorruptInputError` naming the structure (inode, directory block, chunk) and its byte
 * offset. Features we do not implement (compression, long xattr prefixes, metabox) are `unsupported`.
 *
 * Metadata (inodes, xattrs, directories, inline tails, chunk indexes) is read in whole blocks through a small
 * LRU cache, so walking an image costs about one read per metadata block even over a remote source.
 */
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { type ByteString, displayName, type Timestamp, toByteString } from '../fs-tree/tree.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { crc32c } from '../io/crc32c.ts';
import type { FieldSpec, Struct, StructValue } from '../io/struct.ts';
import {
  ALL_FEATURE_INCOMPAT,
  blockMapEntry,
  CHUNK_FORMAT_48BIT,
  CHUNK_FORMAT_ALL,
  CHUNK_FORMAT_BLKBITS_MASK,
  CHUNK_FORMAT_INDEXES,
  chunkIndex,
  DataLayout,
  decodeDev,
  deviceSlot,
  dirent,
  EROFS_NAME_LEN,
  EROFS_SUPER_MAGIC_V1,
  EROFS_SUPER_OFFSET,
  FEATURE_COMPAT_SB_CHKSUM,
  FEATURE_INCOMPAT_48BIT,
  FEATURE_INCOMPAT_DEVICE_TABLE,
  FEATURE_INCOMPAT_METABOX,
  FileType,
  I_DATALAYOUT_BIT,
  I_DATALAYOUT_MASK,
  I_DOT_OMITTED_BIT,
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
  sharedXattrId,
  superBlock,
  XATTR_LONG_PREFIX,
  XATTR_PREFIXES,
  xattrEntry,
  xattrIbodyHeader,
} from './format.ts';

/** Longest symlink target we accept (Linux PATH_MAX). */
const SYMLINK_MAX = 4096;

const FEATURE_NAMES: { compat: boolean; bit: number; name: string }[] = [
  { compat: true, bit: 0x1, name: 'sb_csum' },
  { compat: true, bit: 0x2, name: 'mtime' },
  { compat: true, bit: 0x4, name: 'xattr_filter' },
  { compat: true, bit: 0x8, name: 'shared_ea_in_metabox' },
  { compat: true, bit: 0x10, name: 'plain_xattr_pfx' },
  { compat: true, bit: 0x20, name: 'ishare_xattrs' },
  { compat: false, bit: 0x1, name: 'lz4_0padding' },
  { compat: false, bit: 0x2, name: 'compr_cfgs' },
  { compat: false, bit: 0x4, name: 'chunked_file' },
  { compat: false, bit: 0x8, name: 'device_table' },
  { compat: false, bit: 0x10, name: 'ztailpacking' },
  { compat: false, bit: 0x20, name: 'fragments' },
  { compat: false, bit: 0x40, name: 'xattr_prefixes' },
  { compat: false, bit: 0x80, name: '48bit' },
  { compat: false, bit: 0x100, name: 'metabox' },
];

export interface DeviceInfo {
  /** The slot's tag (a digest or name), NUL padding removed. */
  tag: ByteString;
  blocks: number;
  /** First block of this device in the unified address space; 0 if it has none. */
  uniaddr: number;
}

export interface SuperblockInfo {
  blockSize: number;
  blockSizeBits: number;
  /** 16 raw bytes and the usual 8-4-4-4-12 hex form. */
  uuidBytes: Uint8Array;
  uuid: string;
  volumeName: ByteString;
  /** `epoch + build_time` with `fixed_nsec`: the mkfs time. */
  buildTime: Timestamp;
  /** Base of compact inodes' mtimes. */
  epoch: number;
  fixedNsec: number;
  inodeCount: number;
  /** Blocks of the primary device (the image file itself). */
  blocks: number;
  metaBlkaddr: number;
  xattrBlkaddr: number;
  rootNid: number;
  featureCompat: number;
  featureIncompat: number;
  /** Names of the feature bits that are set, as dump.erofs prints them; unknown bits as hex. */
  features: string[];
  /** The stored checksum when the `sb_csum` feature is on (it was verified), else null. */
  checksum: number | null;
  devices: DeviceInfo[];
}

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

export interface DirEntry {
  name: ByteString;
  nid: number;
  /** `EROFS_FT_*` of the dirent. */
  fileType: number;
}

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

/**
 * The head of an image a lazy reader fetches first and alone: the superblock and what a mount's first
 * read covers (the kernel reads the superblock's page with readahead: 16 KiB through nbdfuse, up to the
 * 128 KiB default readahead window).
 */
export const LAYOUT_HEAD_BYTES = 128 * 1024;

/**
 * Where a lazy reader's blocks should start, from the first bytes of an EROFS image (at least its first
 * 1152 bytes): after the head (`LAYOUT_HEAD_BYTES`), which a mount reads first, and at the metadata area
 * (`meta_blkaddr`), where the inodes and, in our images, the directories a `find` walks begin, so that they
 * start a block rather than straddle two. Empty when `head` holds no EROFS superblock: nothing is known
 * about the layout.
 */
export function layoutAnchors(head: Uint8Array): number[] {
  if (head.byteLength < EROFS_SUPER_OFFSET + superBlock.size) return [];
  const sb = superBlock.decode(head, EROFS_SUPER_OFFSET);
  if (sb.magic !== EROFS_SUPER_MAGIC_V1 || sb.blkszbits < 9 || sb.blkszbits > 16) return [];
  return [LAYOUT_HEAD_BYTES, sb.metaBlkaddr * 2 ** sb.blkszbits];
}

export async function openImage(source: ByteSource, options: OpenImageOptions = {}): Promise<ErofsImage> {
  throwIfAborted(options.signal);
  const need = EROFS_SUPER_OFFSET + superBlock.size;
  if (source.size < need) {
    throw new CorruptInputError(
      `Cannot open EROFS image: ${source.size} bytes is too small to hold a superblock (${need} bytes)`,
    );
  }
  const head = await source.read(0, need, { signal: options.signal });
  const sb = decodeAt(superBlock, head, EROFS_SUPER_OFFSET, 'Cannot read EROFS superblock', 0);
  if (sb.magic !== EROFS_SUPER_MAGIC_V1) {
    throw new CorruptInputError(
      `Cannot open EROFS image: no EROFS superblock (magic is ${hex(sb.magic)}, expected ${hex(EROFS_SUPER_MAGIC_V1)})`,
      EROFS_SUPER_OFFSET,
    );
  }
  // Linux accepts 512 bytes up to the page size; erofs-utils up to 64 KiB.
  if (sb.blkszbits < 9 || sb.blkszbits > 16) {
    throw new CorruptInputError(
      `Cannot open EROFS image: block size 2^${sb.blkszbits} is not between 512 and 65536`,
      EROFS_SUPER_OFFSET + superBlock.offsetOf('blkszbits'),
    );
  }
  const blockSize = 2 ** sb.blkszbits;
  if (sb.featureIncompat & ~ALL_FEATURE_INCOMPAT) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot open EROFS image: unknown incompatible features ${hex(sb.featureIncompat & ~ALL_FEATURE_INCOMPAT)}`,
    );
  }
  if (sb.featureIncompat & FEATURE_INCOMPAT_METABOX) {
    throw new ErofsOciError(
      'unsupported',
      'Cannot open EROFS image: metadata compression (metabox) is not supported',
    );
  }
  if (sb.dirblkbits !== 0) {
    // Reserved: Linux refuses directory blocks that differ from the block size, so do we.
    throw new ErofsOciError(
      'unsupported',
      `Cannot open EROFS image: directory block bits ${sb.dirblkbits} is not 0`,
    );
  }

  let checksum: number | null = null;
  if (sb.featureCompat & FEATURE_COMPAT_SB_CHKSUM) {
    // The checksum covers the superblock's block from offset 1024 (the whole block if it is 1 KiB or less),
    // with the checksum field zeroed: erofs-utils lib/super.c erofs_superblock_csum_verify.
    const len = blockSize > EROFS_SUPER_OFFSET ? blockSize - EROFS_SUPER_OFFSET : blockSize;
    if (source.size < EROFS_SUPER_OFFSET + len) {
      throw new CorruptInputError(
        `Cannot verify EROFS superblock checksum: the image ends at ${source.size}, before the superblock block`,
      );
    }
    const block = (await source.read(EROFS_SUPER_OFFSET, len, { signal: options.signal })).slice();
    const checksumAt = superBlock.offsetOf('checksum');
    block.fill(0, checksumAt, checksumAt + 4);
    const computed = crc32c(block);
    if (computed !== sb.checksum) {
      throw new CorruptInputError(
        `Cannot open EROFS image: superblock checksum is ${hex(sb.checksum)}, computed ${hex(computed)}`,
        EROFS_SUPER_OFFSET + superBlock.offsetOf('checksum'),
      );
    }
    checksum = sb.checksum;
  }

  const is48bit = (sb.featureIncompat & FEATURE_INCOMPAT_48BIT) !== 0;
  // As erofs-utils: with 48-bit addresses and a non-zero rootnid_8b, rootnid_2b holds blocks_hi instead.
  let rootNid = sb.rootnid2b;
  let blocks = sb.blocksLo;
  if (is48bit && sb.rootnid8b !== 0) {
    rootNid = sb.rootnid8b;
    blocks += sb.rootnid2b * 2 ** 32;
  }

  const features = FEATURE_NAMES.filter(
    (f) => ((f.compat ? sb.featureCompat : sb.featureIncompat) & f.bit) !== 0,
  ).map((f) => f.name);
  const knownCompat = FEATURE_NAMES.filter((f) => f.compat).reduce((m, f) => m | f.bit, 0);
  if (sb.featureCompat & ~knownCompat) features.push(`compat:${hex(sb.featureCompat & ~knownCompat)}`);

  const info: SuperblockInfo = {
    blockSize,
    blockSizeBits: sb.blkszbits,
    uuidBytes: Uint8Array.from(sb.uuid),
    uuid: formatUuid(sb.uuid),
    volumeName: cString(sb.volumeName),
    buildTime: { sec: sb.epoch + sb.buildTime, nsec: sb.fixedNsec },
    epoch: sb.epoch,
    fixedNsec: sb.fixedNsec,
    inodeCount: sb.inos,
    blocks,
    metaBlkaddr: sb.metaBlkaddr,
    xattrBlkaddr: sb.xattrBlkaddr,
    rootNid,
    featureCompat: sb.featureCompat,
    featureIncompat: sb.featureIncompat,
    features,
    checksum,
    devices: [],
  };
  const reader = new Reader(source, info, options);
  if (sb.featureIncompat & FEATURE_INCOMPAT_DEVICE_TABLE && sb.extraDevices > 0) {
    const at = sb.devtSlotoff * deviceSlot.size;
    const table = await reader.readMeta(
      at,
      sb.extraDevices * deviceSlot.size,
      'Cannot read the device table',
      options,
    );
    for (let i = 0; i < sb.extraDevices; i++) {
      const slot = decodeAt(deviceSlot, table, i * deviceSlot.size, `Cannot read device slot ${i + 1}`, at);
      info.devices.push({
        tag: cString(slot.tag),
        blocks: slot.blocksLo + (is48bit ? slot.blocksHi * 2 ** 32 : 0),
        uniaddr: slot.uniaddrLo + (is48bit ? slot.uniaddrHi * 2 ** 32 : 0),
      });
    }
  }
  if (options.devices && options.devices.length !== info.devices.length) {
    throw new ErofsOciError(
      'usage',
      `Cannot open EROFS image: it has ${info.devices.length} extra device(s), ${options.devices.length} given`,
    );
  }
  // The root must be a readable directory; reading it now turns a bad root nid into an error at open time.
  const root = await reader.readInode(rootNid, options);
  if (root.type !== 'dir') {
    throw new CorruptInputError(
      `Cannot open EROFS image: root inode ${rootNid} is a ${root.type}, not a directory`,
      root.position,
    );
  }
  return reader;
}

/** Where a stretch of file data lives. */
type Extent =
  | { kind: 'hole'; logical: number; length: number }
  | { kind: 'meta'; logical: number; length: number; position: number }
  | { kind: 'data'; logical: number; length: number; source: ByteSource; device: string; position: number };

class Reader implements ErofsImage {
  readonly superblock: SuperblockInfo;
  readonly rootNid: number;
  readonly #source: ByteSource;
  readonly #devices: ByteSource[] | undefined;
  readonly #bs: number;
  readonly #bits: number;
  /** Metadata may only be read below this byte offset: the primary device's blocks, if within the source. */
  readonly #metaLimit: number;
  readonly #cache = new Map<number, Promise<Uint8Array>>();
  readonly #cacheBlocks: number;

  constructor(source: ByteSource, sb: SuperblockInfo, options: OpenImageOptions) {
    this.superblock = sb;
    this.rootNid = sb.rootNid;
    this.#source = source;
    this.#devices = options.devices ? [...options.devices] : undefined;
    this.#bs = sb.blockSize;
    this.#bits = sb.blockSizeBits;
    this.#metaLimit = sb.blocks > 0 ? Math.min(source.size, sb.blocks * sb.blockSize) : source.size;
    this.#cacheBlocks = Math.max(4, options.cacheBlocks ?? 256);
  }

  /** Device ids are masked as in erofs-utils erofs_init_devices: roundup_pow_of_two(devices + 1) - 1. */
  #mask(): number {
    const n = this.superblock.devices.length;
    return 2 ** Math.ceil(Math.log2(n + 1)) - 1;
  }

  /** `length` bytes of metadata at `position` of the primary image, through the block cache. */
  async readMeta(
    position: number,
    length: number,
    what: string,
    options: ReadOptions = {},
  ): Promise<Uint8Array> {
    throwIfAborted(options.signal);
    if (position < 0 || length < 0 || position + length > this.#metaLimit) {
      throw new CorruptInputError(
        `${what}: ${length} bytes at offset ${position} extend beyond the image (${this.#metaLimit} bytes)`,
        position,
      );
    }
    if (length === 0) return new Uint8Array(0);
    const first = Math.floor(position / this.#bs);
    const last = Math.floor((position + length - 1) / this.#bs);
    if (first === last) {
      const block = await this.#block(first);
      const at = position - first * this.#bs;
      return block.subarray(at, at + length);
    }
    const out = new Uint8Array(length);
    const blocks = [];
    for (let b = first; b <= last; b++) blocks.push(this.#block(b));
    let done = 0;
    for (const [i, pending] of blocks.entries()) {
      const block = await pending;
      const from = i === 0 ? position - first * this.#bs : 0;
      const take = Math.min(block.byteLength - from, length - done);
      out.set(block.subarray(from, from + take), done);
      done += take;
    }
    return out;
  }

  #block(index: number): Promise<Uint8Array> {
    const cached = this.#cache.get(index);
    if (cached) {
      // Re-insert to mark it most recently used.
      this.#cache.delete(index);
      this.#cache.set(index, cached);
      return cached;
    }
    const start = index * this.#bs;
    const length = Math.min(this.#bs, this.#metaLimit - start);
    // No signal: the read is shared by every caller that wants this block; callers check their own signal.
    const pending = this.#source.read(start, length);
    this.#cache.set(index, pending);
    pending.catch(() => this.#cache.delete(index));
    while (this.#cache.size > this.#cacheBlocks) {
      const oldest = this.#cache.keys().next().value as number;
      this.#cache.delete(oldest);
    }
    return pending;
  }

  async readInode(nid: number, options: ReadOptions = {}): Promise<Inode> {
    if (!Number.isSafeInteger(nid) || nid < 0) {
      throw new CorruptInputError(`Cannot read inode ${nid}: not a valid nid`);
    }
    const sb = this.superblock;
    const position = sb.metaBlkaddr * this.#bs + nid * INODE_SLOT_SIZE;
    const what = `Cannot read inode ${nid}`;
    if (position + inodeCompact.size > this.#metaLimit) {
      throw new CorruptInputError(`${what}: it lies beyond the image (${this.#metaLimit} bytes)`, position);
    }
    const compactBytes = await this.readMeta(position, inodeCompact.size, what, options);
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
      throw new ErofsOciError(
        'unsupported',
        `${what}: unknown data layout ${layout} (at offset ${position})`,
      );
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
      const bytes = (await this.readMeta(position, inodeExtended.size, what, options)).slice();
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
        const blocks = Math.ceil(size / this.#bs);
        const blocksInArea = layout === DataLayout.flatInline ? Math.max(0, blocks - 1) : blocks;
        if (!(layout === DataLayout.flatPlain && isNull) && blocksInArea > 0) {
          startBlock = u + startblkHi * 2 ** 32;
          if ((startBlock + blocksInArea) * this.#bs > this.#metaLimit) {
            throw new CorruptInputError(
              `${what}: ${size} bytes of data from block ${startBlock} extend beyond the image (${this.#metaLimit / this.#bs} blocks)`,
              position,
            );
          }
        }
        if (layout === DataLayout.flatInline && size > 0) {
          const tail = size - blocksInArea * this.#bs;
          const offsetInBlock = bodyEnd % this.#bs;
          if (offsetInBlock + tail > this.#bs) {
            throw new CorruptInputError(
              `${what}: inline data of ${tail} bytes at offset ${bodyEnd} crosses a block boundary`,
              bodyEnd,
            );
          }
          if (bodyEnd + tail > this.#metaLimit) {
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
    if (xattrSize > 0) inode.xattrs = await this.#readXattrs(inode, options);
    return inode;
  }

  async #inode(node: number | Inode, options: ReadOptions): Promise<Inode> {
    return typeof node === 'number' ? this.readInode(node, options) : node;
  }

  async xattrs(node: number | Inode, options: ReadOptions = {}): Promise<Map<ByteString, Uint8Array>> {
    return (await this.#inode(node, options)).xattrs;
  }

  /** Inline xattr body: header, shared ids, then entries (include/erofs_fs.h "inline xattrs"). */
  async #readXattrs(inode: Inode, options: ReadOptions): Promise<Map<ByteString, Uint8Array>> {
    const what = `Cannot read xattrs of inode ${inode.nid}`;
    const start = inode.position + (inode.extended ? inodeExtended.size : inodeCompact.size);
    const body = await this.readMeta(start, inode.xattrSize, what, options);
    const header = decodeAt(xattrIbodyHeader, body, 0, what, start);
    const out = new Map<ByteString, Uint8Array>();
    const add = (name: ByteString, value: Uint8Array, at: number) => {
      if (out.has(name)) throw new CorruptInputError(`${what}: xattr ${displayName(name)} appears twice`, at);
      out.set(name, Uint8Array.from(value));
    };
    let p = xattrIbodyHeader.size;
    if (p + header.sharedCount * sharedXattrId.size > body.byteLength) {
      throw new CorruptInputError(
        `${what}: ${header.sharedCount} shared xattr ids do not fit in the ${body.byteLength}-byte xattr body`,
        start + xattrIbodyHeader.offsetOf('sharedCount'),
      );
    }
    for (let i = 0; i < header.sharedCount; i++) {
      const { id } = decodeAt(sharedXattrId, body, p, what, start);
      const at = this.superblock.xattrBlkaddr * this.#bs + id * 4;
      const entryHead = await this.readMeta(at, xattrEntry.size, `${what}: shared xattr ${id}`, options);
      const entry = decodeAt(xattrEntry, entryHead, 0, what, at);
      const rest = await this.readMeta(
        at + xattrEntry.size,
        entry.nameLen + entry.valueSize,
        `${what}: shared xattr ${id}`,
        options,
      );
      const name = xattrName(entry.nameIndex, rest.subarray(0, entry.nameLen), what, at);
      add(name, rest.subarray(entry.nameLen), at);
      p += sharedXattrId.size;
    }
    while (p < body.byteLength) {
      const at = start + p;
      if (p + xattrEntry.size > body.byteLength) {
        throw new CorruptInputError(`${what}: truncated xattr entry`, at);
      }
      const entry = decodeAt(xattrEntry, body, p, what, start);
      const end = p + xattrEntry.size + entry.nameLen + entry.valueSize;
      if (end > body.byteLength) {
        throw new CorruptInputError(
          `${what}: entry of ${entry.nameLen}+${entry.valueSize} bytes runs past the ${body.byteLength}-byte xattr body`,
          at,
        );
      }
      const nameStart = p + xattrEntry.size;
      const name = xattrName(entry.nameIndex, body.subarray(nameStart, nameStart + entry.nameLen), what, at);
      add(name, body.subarray(nameStart + entry.nameLen, end), at);
      p = align4(end);
    }
    return out;
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
    return toByteString(await this.#readData(inode, 0, inode.size, options));
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
    return this.#readData(inode, from, take, options);
  }

  /** Reads `[offset, offset + length)` of an inode's data; the range lies within its size. */
  async #readData(inode: Inode, offset: number, length: number, options: ReadOptions): Promise<Uint8Array> {
    throwIfAborted(options.signal);
    if (inode.layout === DataLayout.compressedFull || inode.layout === DataLayout.compressedCompact) {
      throw new ErofsOciError(
        'unsupported',
        `Cannot read inode ${inode.nid}: compressed data (layout ${inode.layout}) is not supported`,
      );
    }
    const out = new Uint8Array(length);
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const extents = await this.#map(inode, at, end, options);
      for (const extent of extents) {
        const from = Math.max(at, extent.logical);
        const to = Math.min(end, extent.logical + extent.length);
        if (to <= from) continue;
        const skip = from - extent.logical;
        if (extent.kind === 'meta') {
          const what = `Cannot read inline data of inode ${inode.nid}`;
          out.set(await this.readMeta(extent.position + skip, to - from, what, options), from - offset);
        } else if (extent.kind === 'data') {
          const position = extent.position + skip;
          if (position + (to - from) > extent.source.size) {
            throw new CorruptInputError(
              `Cannot read data of inode ${inode.nid}: ${to - from} bytes at offset ${position} of ${extent.device} extend beyond its end (${extent.source.size} bytes)`,
              position,
            );
          }
          out.set(await extent.source.read(position, to - from, options), from - offset);
        }
        // Holes stay zero.
        at = to;
      }
    }
    return out;
  }

  /** Extents covering `[from, ...)` — at least the one holding `from`, at most up to `end`. */
  async #map(inode: Inode, from: number, end: number, options: ReadOptions): Promise<Extent[]> {
    const bs = this.#bs;
    if (inode.layout === DataLayout.chunkBased) return this.#mapChunks(inode, from, end, options);
    const blocks = Math.ceil(inode.size / bs);
    const inline = inode.layout === DataLayout.flatInline;
    const areaEnd = (inline ? blocks - 1 : blocks) * bs;
    if (from < areaEnd) {
      const length = Math.min(areaEnd, inode.size) - from;
      if (inode.startBlock === null) return [{ kind: 'hole', logical: from, length }];
      return [
        {
          kind: 'data',
          logical: from,
          length,
          source: this.#source,
          device: 'the image',
          position: inode.startBlock * bs + from,
        },
      ];
    }
    // The tail after the inode and its xattrs (checked in readInode not to cross a block).
    const tailStart =
      inode.position + (inode.extended ? inodeExtended.size : inodeCompact.size) + inode.xattrSize;
    return [{ kind: 'meta', logical: areaEnd, length: inode.size - areaEnd, position: tailStart }];
  }

  /**
   * Chunk-based data: an array of 8-byte chunk indexes (or 4-byte block addresses) after the xattrs, aligned
   * to its entry size (erofs-utils lib/data.c __erofs_map_blocks). Contiguous chunks are merged so a large
   * read becomes few source reads.
   */
  async #mapChunks(inode: Inode, from: number, end: number, options: ReadOptions): Promise<Extent[]> {
    const bs = this.#bs;
    const format = inode.chunkFormat ?? 0;
    const indexed = (format & CHUNK_FORMAT_INDEXES) !== 0;
    const unit = indexed ? chunkIndex.size : blockMapEntry.size;
    const chunkBits = this.#bits + (format & CHUNK_FORMAT_BLKBITS_MASK);
    const chunkSize = 2 ** chunkBits;
    const inodeEnd =
      inode.position + (inode.extended ? inodeExtended.size : inodeCompact.size) + inode.xattrSize;
    const base = Math.ceil(inodeEnd / unit) * unit;
    const first = Math.floor(from / chunkSize);
    // Bound the index bytes read at once; the caller loops for the rest.
    const last = Math.min(Math.floor((end - 1) / chunkSize), first + 4095);
    const what = `Cannot read chunk indexes of inode ${inode.nid}`;
    const table = await this.readMeta(base + first * unit, (last - first + 1) * unit, what, options);
    const mask = this.#mask();
    const extents: Extent[] = [];
    for (let c = first; c <= last; c++) {
      const at = (c - first) * unit;
      const logical = c * chunkSize;
      const length = Math.min(chunkSize, inode.size - logical);
      let block: number | null;
      let deviceId = 0;
      if (indexed) {
        const idx = decodeAt(chunkIndex, table, at, what, base + first * unit);
        const hi = format & CHUNK_FORMAT_48BIT ? idx.startblkHi : 0;
        const isNull = idx.startblkLo === NULL_ADDR_32 && (!(format & CHUNK_FORMAT_48BIT) || hi === 0xffff);
        block = isNull ? null : idx.startblkLo + hi * 2 ** 32;
        deviceId = idx.deviceId & mask;
      } else {
        const { startblk } = decodeAt(blockMapEntry, table, at, what, base + first * unit);
        block = startblk === NULL_ADDR_32 ? null : startblk;
      }
      const extent: Extent =
        block === null
          ? { kind: 'hole', logical, length }
          : {
              kind: 'data',
              logical,
              length,
              ...this.#resolve(inode, c, deviceId, block * bs, base + c * unit),
            };
      const prev = extents.at(-1);
      if (
        prev &&
        prev.logical + prev.length === logical &&
        prev.length % bs === 0 &&
        canMerge(prev, extent)
      ) {
        prev.length += length;
      } else {
        extents.push(extent);
      }
    }
    return extents;
  }

  /** Finds the device and offset of a chunk (erofs-utils lib/data.c erofs_map_dev; Linux erofs_map_dev). */
  #resolve(
    inode: Inode,
    chunk: number,
    deviceId: number,
    address: number,
    indexAt: number,
  ): { source: ByteSource; device: string; position: number } {
    const devices = this.superblock.devices;
    if (deviceId > 0) {
      const device = devices[deviceId - 1];
      if (device === undefined) {
        throw new CorruptInputError(
          `Cannot read data of inode ${inode.nid}: chunk ${chunk} is on device ${deviceId}, the image has ${devices.length} extra device(s)`,
          indexAt,
        );
      }
      const given = this.#devices?.[deviceId - 1];
      if (given) return { source: given, device: `device ${deviceId}`, position: address };
      if (device.uniaddr === 0) {
        throw new ErofsOciError(
          'not-found',
          `Cannot read data of inode ${inode.nid}: it is on device ${deviceId} (${displayName(device.tag) || 'no tag'}), which was not given and has no unified address`,
        );
      }
      // Flat address space: the extra device follows the image at its unified address.
      return { source: this.#source, device: 'the image', position: device.uniaddr * this.#bs + address };
    }
    if (this.#devices) {
      for (const [i, device] of devices.entries()) {
        if (device.uniaddr === 0) continue;
        const start = device.uniaddr * this.#bs;
        if (address >= start && address < start + device.blocks * this.#bs) {
          return {
            source: this.#devices[i] as ByteSource,
            device: `device ${i + 1}`,
            position: address - start,
          };
        }
      }
    }
    return { source: this.#source, device: 'the image', position: address };
  }

  /** Byte offset in its device of an inode's data at `logical` (for error messages); 0 in a hole. */
  async #positionOf(inode: Inode, logical: number, options: ReadOptions): Promise<number> {
    const [extent] = await this.#map(inode, logical, logical + 1, options);
    if (extent === undefined || extent.kind === 'hole') return 0;
    return extent.position + (logical - extent.logical);
  }

  async readdir(dir: number | Inode, options: ReadOptions = {}): Promise<DirEntry[]> {
    return (await this.#readDirectory(await this.#inode(dir, options), options)).entries;
  }

  /** All dirents of a directory, checked (erofs_fs.h `struct erofs_dirent`; Linux fs/erofs/dir.c). */
  async #readDirectory(inode: Inode, options: ReadOptions): Promise<{ entries: DirEntry[]; parent: number }> {
    const nid = inode.nid;
    if (inode.type !== 'dir') {
      throw new ErofsOciError('usage', `Cannot list inode ${nid}: it is a ${inode.type}, not a directory`);
    }
    if (inode.layout !== DataLayout.flatPlain && inode.layout !== DataLayout.flatInline) {
      throw new ErofsOciError(
        'unsupported',
        `Cannot list directory inode ${nid}: data layout ${inode.layout} is not supported`,
      );
    }
    const bs = this.#bs;
    const entries: DirEntry[] = [];
    let dot: number | undefined;
    let parent: number | undefined;
    let previous: Uint8Array | undefined;
    for (let blockStart = 0; blockStart < inode.size; blockStart += bs) {
      const length = Math.min(bs, inode.size - blockStart);
      const block = await this.#readData(inode, blockStart, length, options);
      const what = `Cannot read directory inode ${nid} block ${blockStart / bs}`;
      const blockAt = await this.#positionOf(inode, blockStart, options);
      const at = (p: number) => blockAt + p;
      if (length < dirent.size) {
        throw new CorruptInputError(`${what}: ${length} bytes cannot hold a dirent`, at(0));
      }
      const firstNameoff = decodeAt(dirent, block, 0, what, at(0)).nameoff;
      if (firstNameoff < dirent.size || firstNameoff % dirent.size !== 0 || firstNameoff >= length) {
        throw new CorruptInputError(
          `${what}: first name offset ${firstNameoff} is out of range`,
          at(dirent.offsetOf('nameoff')),
        );
      }
      const count = firstNameoff / dirent.size;
      for (let i = 0; i < count; i++) {
        const de = decodeAt(dirent, block, i * dirent.size, what, at(0));
        const nameoff = de.nameoff;
        let nameEnd: number;
        if (i + 1 < count) {
          nameEnd = decodeAt(dirent, block, (i + 1) * dirent.size, what, at(0)).nameoff;
        } else {
          // The last name runs to the first NUL or the end of the block.
          const nul = block.indexOf(0, nameoff);
          nameEnd = nul === -1 || nul > length ? length : nul;
        }
        if (nameoff < firstNameoff || nameEnd > length || nameEnd <= nameoff) {
          throw new CorruptInputError(
            `${what}: dirent ${i} name offset ${nameoff} (next ${nameEnd}) is out of range`,
            at(i * dirent.size + dirent.offsetOf('nameoff')),
          );
        }
        const nameBytes = block.subarray(nameoff, nameEnd);
        if (nameBytes.byteLength > EROFS_NAME_LEN || nameBytes.includes(0x2f) || nameBytes.includes(0)) {
          throw new CorruptInputError(`${what}: dirent ${i} has an invalid name`, at(nameoff));
        }
        if (previous && Buffer.compare(previous, nameBytes) >= 0) {
          throw new CorruptInputError(
            `${what}: names are not sorted (${JSON.stringify(displayName(toByteString(nameBytes)))} after ${JSON.stringify(displayName(toByteString(previous)))})`,
            at(nameoff),
          );
        }
        previous = nameBytes;
        if (de.fileType > FileType.symlink) {
          throw new CorruptInputError(
            `${what}: dirent ${i} has unknown file type ${de.fileType}`,
            at(i * dirent.size),
          );
        }
        const name = toByteString(nameBytes);
        if (name === '.') dot = de.nid;
        else if (name === '..') parent = de.nid;
        else entries.push({ name, nid: de.nid, fileType: de.fileType });
      }
    }
    const where = await this.#positionOf(inode, 0, options);
    const dotOmitted = ((inode.format >> I_DOT_OMITTED_BIT) & 1) === 1;
    if (dot === undefined && !dotOmitted) {
      throw new CorruptInputError(`Cannot read directory inode ${nid}: it has no . entry`, where);
    }
    if (dot !== undefined && dot !== nid) {
      throw new CorruptInputError(
        `Cannot read directory inode ${nid}: its . entry points at inode ${dot}`,
        where,
      );
    }
    if (parent === undefined) {
      throw new CorruptInputError(`Cannot read directory inode ${nid}: it has no .. entry`, where);
    }
    return { entries, parent };
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
      const { entries, parent } = await this.#readDirectory(inode, options);
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
        ? (await this.#readDirectory(start, options)).parent
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
    const { entries, parent } = await this.#readDirectory(dir, options);
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

const FILE_TYPES: Record<InodeType, number> = {
  file: FileType.regFile,
  dir: FileType.dir,
  chardev: FileType.chrdev,
  blockdev: FileType.blkdev,
  fifo: FileType.fifo,
  socket: FileType.sock,
  symlink: FileType.symlink,
};

function canMerge(a: Extent, b: Extent): boolean {
  if (a.kind === 'hole') return b.kind === 'hole';
  if (a.kind === 'data' && b.kind === 'data') {
    return a.source === b.source && a.position + a.length === b.position;
  }
  return false;
}

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

const PREFIXES = new Map(XATTR_PREFIXES.map((p) => [p.index, p.prefix]));

function xattrName(index: number, suffix: Uint8Array, what: string, at: number): ByteString {
  if (index & XATTR_LONG_PREFIX) {
    throw new ErofsOciError(
      'unsupported',
      `${what}: long xattr name prefixes (index ${hex(index)}) are not supported (at offset ${at})`,
    );
  }
  // Index 0: the whole name is stored (erofs-utils lib/xattr.c xattr_types[0] is the empty prefix).
  const prefix = index === 0 ? '' : PREFIXES.get(index);
  if (prefix === undefined) {
    throw new ErofsOciError('unsupported', `${what}: unknown xattr name index ${index} (at offset ${at})`);
  }
  const name = prefix + toByteString(suffix);
  if (name.length === 0) throw new CorruptInputError(`${what}: empty xattr name`, at);
  return name;
}

/** Decodes `struct` at `offset` of `bytes`, reporting failures at `base + offset` of the image. */
function decodeAt<F extends readonly FieldSpec[]>(
  struct: Struct<F>,
  bytes: Uint8Array,
  offset: number,
  what: string,
  base: number,
): StructValue<F> {
  try {
    return struct.decode(bytes, offset);
  } catch (error) {
    if (error instanceof CorruptInputError) {
      const reason = error.message.replace(/ \(at offset \d+\)$/, '');
      throw new CorruptInputError(`${what}: ${reason}`, base + (error.offset ?? offset), { cause: error });
    }
    throw error;
  }
}

function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

function cString(bytes: Uint8Array): ByteString {
  const nul = bytes.indexOf(0);
  return toByteString(nul === -1 ? bytes : bytes.subarray(0, nul));
}

function formatUuid(bytes: Uint8Array): string {
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
