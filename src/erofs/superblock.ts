/**
 * The superblock (checked, with its CRC32C when `sb_csum` is on), the feature names dump.erofs prints, and
 * the device table of multi-device images (include/erofs_fs.h; erofs-utils lib/super.c).
 */
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteString, Timestamp } from '../fs-tree/tree.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { crc32c } from '../io/crc32c.ts';
import { cString, decodeAt, formatUuid, hex } from './decode.ts';
import {
  ALL_FEATURE_INCOMPAT,
  deviceSlot,
  EROFS_SUPER_MAGIC_V1,
  EROFS_SUPER_OFFSET,
  FEATURE_COMPAT_SB_CHKSUM,
  FEATURE_INCOMPAT_COMPR_CFGS,
  FEATURE_INCOMPAT_FRAGMENTS,
  FEATURE_INCOMPAT_ZERO_PADDING,
  FEATURE_INCOMPAT_48BIT,
  FEATURE_INCOMPAT_DEVICE_TABLE,
  FEATURE_INCOMPAT_METABOX,
  superBlock,
} from './format.ts';
import type { ImageContext } from './image-context.ts';

export const FEATURE_NAMES: { compat: boolean; bit: number; name: string }[] = [
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
  /** Bitmap of the compression algorithms files may use (`1 << CompressionAlg`); 0 in uncompressed images. */
  comprAlgs: number;
  /** nid of the packed inode that holds fragments (FEATURE_INCOMPAT_FRAGMENTS), else null. */
  packedNid: number | null;
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

/** Where the device table lies, for `readDeviceTable` once the image context exists. */
export interface DeviceTableRef {
  extraDevices: number;
  devtSlotoff: number;
}

/** Reads and checks the superblock; `devices` is left empty for `readDeviceTable`. */
export async function readSuperblock(
  source: ByteSource,
  signal?: AbortSignal,
): Promise<{ info: SuperblockInfo; deviceTable: DeviceTableRef }> {
  throwIfAborted(signal);
  const need = EROFS_SUPER_OFFSET + superBlock.size;
  if (source.size < need) {
    throw new CorruptInputError(
      `Cannot open EROFS image: ${source.size} bytes is too small to hold a superblock (${need} bytes)`,
    );
  }
  const head = await source.read(0, need, { signal: signal });
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
    // A copy, even of a Buffer (whose slice() is a view): the source may hand out its cached bytes.
    const block = Uint8Array.from(await source.read(EROFS_SUPER_OFFSET, len, { signal: signal }));
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
    // Without COMPR_CFGS the field is lz4_max_distance and LZ4 is the only algorithm (erofs-utils
    // z_erofs_load_lz4_config).
    comprAlgs:
      sb.featureIncompat & FEATURE_INCOMPAT_COMPR_CFGS
        ? sb.availableComprAlgs
        : sb.featureIncompat & FEATURE_INCOMPAT_ZERO_PADDING || sb.availableComprAlgs !== 0
          ? 1
          : 0,
    packedNid: sb.featureIncompat & FEATURE_INCOMPAT_FRAGMENTS ? sb.packedNid : null,
  };
  if (info.comprAlgs & ~0xf) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot open EROFS image: unknown compression algorithms ${hex(info.comprAlgs & ~0xf)}`,
    );
  }
  return { info, deviceTable: { extraDevices: sb.extraDevices, devtSlotoff: sb.devtSlotoff } };
}

/** Fills `ctx.sb.devices` from the device table (include/erofs_fs.h `struct erofs_deviceslot`). */
export async function readDeviceTable(
  ctx: ImageContext,
  sb: DeviceTableRef,
  options: ReadOptions,
): Promise<void> {
  const is48bit = (ctx.sb.featureIncompat & FEATURE_INCOMPAT_48BIT) !== 0;
  if (ctx.sb.featureIncompat & FEATURE_INCOMPAT_DEVICE_TABLE && sb.extraDevices > 0) {
    const at = sb.devtSlotoff * deviceSlot.size;
    const table = await ctx.readMeta(
      at,
      sb.extraDevices * deviceSlot.size,
      'Cannot read the device table',
      options,
    );
    for (let i = 0; i < sb.extraDevices; i++) {
      const slot = decodeAt(deviceSlot, table, i * deviceSlot.size, `Cannot read device slot ${i + 1}`, at);
      ctx.sb.devices.push({
        tag: cString(slot.tag),
        blocks: slot.blocksLo + (is48bit ? slot.blocksHi * 2 ** 32 : 0),
        uniaddr: slot.uniaddrLo + (is48bit ? slot.uniaddrHi * 2 ** 32 : 0),
      });
    }
  }
}
