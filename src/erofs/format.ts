/**
 * EROFS on-disk format, declared once. Field names follow erofs-utils `include/erofs_fs.h` (1.9), camelCased
 * only where the header uses unions (the member we use is named). See also the kernel's
 * Documentation/filesystems/erofs.rst. All integers are little-endian.
 */
import { defineStruct } from '../io/struct.ts';

export const EROFS_SUPER_MAGIC_V1 = 0xe0f5e1e2;
/** The superblock starts 1024 bytes into the image, whatever the block size. */
export const EROFS_SUPER_OFFSET = 1024;

export const FEATURE_COMPAT_SB_CHKSUM = 0x1;
/** Compact inodes carry `i_mtime` relative to `epoch` (instead of all sharing the build time). */
export const FEATURE_COMPAT_MTIME = 0x2;

export const FEATURE_INCOMPAT_CHUNKED_FILE = 0x4;
export const FEATURE_INCOMPAT_DEVICE_TABLE = 0x8;
/** `EROFS_FEATURE_INCOMPAT_48BIT`: 48-bit block addresses (root nid in `rootnid_8b`, `blocks_hi`). */
export const FEATURE_INCOMPAT_48BIT = 0x80;
/** `EROFS_FEATURE_INCOMPAT_METABOX`: metadata inside a (compressed) inode. */
export const FEATURE_INCOMPAT_METABOX = 0x100;
export const ALL_FEATURE_INCOMPAT = (FEATURE_INCOMPAT_METABOX << 1) - 1;

/** `struct erofs_super_block`: 128 bytes (sb_extslots = 0). */
export const superBlock = defineStruct(
  'erofs_super_block',
  [
    { name: 'magic', type: 'u32' },
    { name: 'checksum', type: 'u32' }, // crc32c(~0, block from offset 1024 with this field zero), no final xor
    { name: 'featureCompat', type: 'u32' },
    { name: 'blkszbits', type: 'u8' },
    { name: 'sbExtslots', type: 'u8' },
    { name: 'rootnid2b', type: 'u16' }, // union rb: rootnid_2b | blocks_hi (48BIT)
    { name: 'inos', type: 'u64' }, // total valid inode count
    { name: 'epoch', type: 'u64' }, // base seconds of compact inodes' i_mtime
    { name: 'fixedNsec', type: 'u32' }, // nanoseconds of every compact inode's mtime
    { name: 'blocksLo', type: 'u32' },
    { name: 'metaBlkaddr', type: 'u32' }, // nid 0 is at metaBlkaddr * blockSize
    { name: 'xattrBlkaddr', type: 'u32' },
    { name: 'uuid', type: { bytes: 16 } },
    { name: 'volumeName', type: { bytes: 16 } },
    { name: 'featureIncompat', type: 'u32' },
    { name: 'availableComprAlgs', type: 'u16' }, // union u1
    { name: 'extraDevices', type: 'u16' },
    { name: 'devtSlotoff', type: 'u16' }, // device table at devtSlotoff * 128 bytes
    { name: 'dirblkbits', type: 'u8' },
    { name: 'xattrPrefixCount', type: 'u8' },
    { name: 'xattrPrefixStart', type: 'u32' },
    { name: 'packedNid', type: 'u64' },
    { name: 'xattrFilterReserved', type: 'u8' },
    { name: 'ishareXattrPrefixId', type: 'u8' },
    { name: 'reserved', type: { bytes: 2 } },
    { name: 'buildTime', type: 'u32' }, // seconds added to epoch for the mkfs time
    { name: 'rootnid8b', type: 'u64' }, // (48BIT) root nid
    { name: 'reserved2', type: 'u64' },
  ],
  128,
);

/** `struct erofs_deviceslot`: one entry of the device table (128 bytes). */
export const deviceSlot = defineStruct(
  'erofs_deviceslot',
  [
    { name: 'tag', type: { bytes: 64 } }, // digest or name of the device
    { name: 'blocksLo', type: 'u32' },
    { name: 'uniaddrLo', type: 'u32' }, // unified starting block of this device
    { name: 'blocksHi', type: 'u16' },
    { name: 'uniaddrHi', type: 'u16' },
    { name: 'reserved', type: { bytes: 52 } },
  ],
  128,
);

/** Data layouts (`i_format` bits 1..3). */
export const DataLayout = {
  flatPlain: 0,
  compressedFull: 1,
  flatInline: 2,
  compressedCompact: 3,
  chunkBased: 4,
} as const;
export type DataLayout = (typeof DataLayout)[keyof typeof DataLayout];

export const I_VERSION_EXTENDED = 1;
export const I_DATALAYOUT_BIT = 1;
export const I_DATALAYOUT_MASK = 0x7;
/** Non-directory compact inodes: nlink is 1 and `i_nb` holds startblk_hi/blocks_hi instead. */
export const I_NLINK_1_BIT = 4;
/** `EROFS_I_DOT_OMITTED_BIT` (directories): the `.` dirent may be missing. Same bit as NLINK_1. */
export const I_DOT_OMITTED_BIT = 4;
/** `EROFS_I_ALL`: the defined bits of `i_format`. */
export const I_FORMAT_ALL = (1 << (I_NLINK_1_BIT + 1)) - 1;

/** `struct erofs_inode_compact` (32 bytes). */
export const inodeCompact = defineStruct(
  'erofs_inode_compact',
  [
    { name: 'format', type: 'u16' },
    { name: 'xattrIcount', type: 'u16' },
    { name: 'mode', type: 'u16' },
    { name: 'nlink', type: 'u16' }, // union i_nb
    { name: 'size', type: 'u32' },
    { name: 'mtime', type: 'u32' }, // seconds after sb.epoch; nanoseconds are sb.fixedNsec
    { name: 'u', type: 'u32' }, // union i_u: startblk_lo | rdev | chunk info (format u16 + reserved u16)
    { name: 'ino', type: 'u32' }, // for 32-bit stat only
    { name: 'uid', type: 'u16' },
    { name: 'gid', type: 'u16' },
    { name: 'reserved', type: 'u32' },
  ],
  32,
);

/** `struct erofs_inode_extended` (64 bytes). */
export const inodeExtended = defineStruct(
  'erofs_inode_extended',
  [
    { name: 'format', type: 'u16' },
    { name: 'xattrIcount', type: 'u16' },
    { name: 'mode', type: 'u16' },
    { name: 'nb', type: 'u16' }, // union i_nb: startblk_hi | blocks_hi (48BIT); 0 otherwise
    { name: 'size', type: 'u64' },
    { name: 'u', type: 'u32' }, // union i_u: startblk_lo | rdev | chunk info
    { name: 'ino', type: 'u32' },
    { name: 'uid', type: 'u32' },
    { name: 'gid', type: 'u32' },
    { name: 'mtime', type: 'u64' },
    { name: 'mtimeNsec', type: 'u32' },
    { name: 'nlink', type: 'u32' },
    { name: 'reserved2', type: { bytes: 16 } },
  ],
  64,
);

/** Size of an on-disk inode slot unit: nids count 32-byte slots from metaBlkaddr. */
export const INODE_SLOT_SIZE = 32;

/** `struct erofs_inode_chunk_info`, the `i_u` of chunk-based inodes, as one u32: format | reserved << 16. */
export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;
export const CHUNK_FORMAT_INDEXES = 0x20;
/** `EROFS_CHUNK_FORMAT_48BIT` and `EROFS_CHUNK_FORMAT_ALL`. */
export const CHUNK_FORMAT_48BIT = 0x40;
export const CHUNK_FORMAT_ALL = (CHUNK_FORMAT_48BIT << 1) - 1;

/** One entry of the 4-byte block map of chunk-based inodes without CHUNK_FORMAT_INDEXES. */
export const blockMapEntry = defineStruct('erofs_block_map_entry', [{ name: 'startblk', type: 'u32' }], 4);

/** `struct erofs_inode_chunk_index` (8 bytes). */
export const chunkIndex = defineStruct(
  'erofs_inode_chunk_index',
  [
    { name: 'startblkHi', type: 'u16' },
    { name: 'deviceId', type: 'u16' },
    { name: 'startblkLo', type: 'u32' },
  ],
  8,
);

/** A hole in a chunk-based file (`EROFS_NULL_ADDR`), in the 32-bit block field. */
export const NULL_ADDR_32 = 0xffffffff;

/** `struct erofs_xattr_ibody_header` (12 bytes), followed by shared ids and then entries. */
export const xattrIbodyHeader = defineStruct(
  'erofs_xattr_ibody_header',
  [
    { name: 'nameFilter', type: 'u32' }, // bit set = name not present (0 with the filter feature off)
    { name: 'sharedCount', type: 'u8' },
    { name: 'reserved2', type: { bytes: 7 } },
  ],
  12,
);

/** `struct erofs_xattr_entry` (4 bytes), followed by the name suffix and the value, padded to 4. */
export const xattrEntry = defineStruct(
  'erofs_xattr_entry',
  [
    { name: 'nameLen', type: 'u8' },
    { name: 'nameIndex', type: 'u8' },
    { name: 'valueSize', type: 'u16' },
  ],
  4,
);

/** Short xattr name prefixes (`EROFS_XATTR_INDEX_*`). Index 0 means the whole name is stored. */
/** A shared xattr id in the inline xattr body (`h_shared_xattrs[]`): units of 4 bytes from xattr_blkaddr. */
export const sharedXattrId = defineStruct('erofs_xattr_shared_id', [{ name: 'id', type: 'u32' }], 4);

/** `EROFS_XATTR_LONG_PREFIX`: bit 7 of `e_name_index` selects a long prefix from the packed inode. */
export const XATTR_LONG_PREFIX = 0x80;

export const XATTR_PREFIXES: readonly { index: number; prefix: string }[] = [
  { index: 1, prefix: 'user.' },
  { index: 2, prefix: 'system.posix_acl_access' },
  { index: 3, prefix: 'system.posix_acl_default' },
  { index: 4, prefix: 'trusted.' },
  { index: 6, prefix: 'security.' },
];

/** `struct erofs_dirent` (12 bytes). */
export const dirent = defineStruct(
  'erofs_dirent',
  [
    { name: 'nid', type: 'u64' },
    { name: 'nameoff', type: 'u16' }, // offset of the name from the start of its directory block
    { name: 'fileType', type: 'u8' },
    { name: 'reserved', type: 'u8' },
  ],
  12,
);

export const FileType = {
  unknown: 0,
  regFile: 1,
  dir: 2,
  chrdev: 3,
  blkdev: 4,
  fifo: 5,
  sock: 6,
  symlink: 7,
} as const;

export const EROFS_NAME_LEN = 255;

/** POSIX file type bits of `i_mode`. */
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

/** Linux `new_encode_dev`: how `rdev` is stored in `i_u`. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export function decodeDev(rdev: number): { major: number; minor: number } {
  return { major: (rdev & 0xfff00) >>> 8, minor: (rdev & 0xff) | ((rdev >>> 12) & 0xfff00) };
}

// --- Compressed files (include/erofs_fs.h "z_erofs"; Linux Documentation/filesystems/erofs.rst) ---

/** `EROFS_FEATURE_INCOMPAT_LZ4_0PADDING`: compressed data is right-aligned in its pcluster, zeros first. */
export const FEATURE_INCOMPAT_ZERO_PADDING = 0x1;
/** `EROFS_FEATURE_INCOMPAT_COMPR_CFGS`: `availableComprAlgs` holds a bitmap, configs follow the superblock. */
export const FEATURE_INCOMPAT_COMPR_CFGS = 0x2;
export const FEATURE_INCOMPAT_ZTAILPACKING = 0x10;
export const FEATURE_INCOMPAT_FRAGMENTS = 0x20;

/** `Z_EROFS_COMPRESSION_*` (h_algorithmtype). */
export const CompressionAlg = { lz4: 0, lzma: 1, deflate: 2, zstd: 3 } as const;
export type CompressionAlg = (typeof CompressionAlg)[keyof typeof CompressionAlg];
/** `Z_EROFS_PCLUSTER_MAX_SIZE` and `Z_EROFS_PCLUSTER_MAX_DSIZE`. */
export const PCLUSTER_MAX_SIZE = 1024 * 1024;
export const PCLUSTER_MAX_DSIZE = 12 * 1024 * 1024;

/** `Z_EROFS_ADVISE_*` bits of `h_advise`. */
export const Z_ADVISE_COMPACTED_2B = 0x1;
/** The same bit as COMPACTED_2B, for COMPRESSED_FULL inodes: extent records instead of lcluster indexes. */
export const Z_ADVISE_EXTENTS = 0x1;
export const Z_ADVISE_BIG_PCLUSTER_1 = 0x2;
export const Z_ADVISE_BIG_PCLUSTER_2 = 0x4;
export const Z_ADVISE_INLINE_PCLUSTER = 0x8;
export const Z_ADVISE_INTERLACED_PCLUSTER = 0x10;
export const Z_ADVISE_FRAGMENT_PCLUSTER = 0x20;
export const Z_ADVISE_EXTRECSZ_BIT = 1;
export const Z_ADVISE_EXTRECSZ_MASK = 0x3;
/** Bit 7 of `h_clusterbits`: the whole file is a fragment of the packed inode. */
export const Z_FRAGMENT_INODE_BIT = 7;

/**
 * `struct z_erofs_map_header` (8 bytes) at `round_up(inode end + xattrs, 8)`. The first word is a union:
 * `h_fragmentoff` (FRAGMENT_PCLUSTER), `{h_reserved1, h_idata_size}` (INLINE_PCLUSTER), `h_extents_lo`.
 */
export const zMapHeader = defineStruct(
  'z_erofs_map_header',
  [
    { name: 'reserved1', type: 'u16' }, // low half of h_fragmentoff / h_extents_lo
    { name: 'idataSize', type: 'u16' }, // encoded size of the tail-packed pcluster; high half of the above
    { name: 'advise', type: 'u16' },
    { name: 'algorithmtype', type: 'u8' }, // bits 0-3: HEAD1, 4-7: HEAD2 (union h_extents_hi)
    { name: 'clusterbits', type: 'u8' }, // bits 0-3: lcluster bits - block bits; bit 7: whole-file fragment
  ],
  8,
);

/** `Z_EROFS_LCLUSTER_TYPE_*`. */
export const LclusterType = { plain: 0, head1: 1, nonhead: 2, head2: 3 } as const;
/** `Z_EROFS_LI_PARTIAL_REF`: (full indexes, HEAD) the pcluster decodes to more than this extent uses. */
export const LI_PARTIAL_REF = 1 << 15;
/** `Z_EROFS_LI_D0_CBLKCNT`: on the first NONHEAD lcluster, delta[0] holds the pcluster's block count. */
export const LI_D0_CBLKCNT = 1 << 11;

/** `struct z_erofs_lcluster_index` (8 bytes): one lcluster of a COMPRESSED_FULL inode. */
export const lclusterIndex = defineStruct(
  'z_erofs_lcluster_index',
  [
    { name: 'advise', type: 'u16' }, // bits 0-1: type; bit 15: PARTIAL_REF
    { name: 'clusterofs', type: 'u16' }, // where the HEAD's extent starts in this lcluster
    { name: 'delta0', type: 'u16' }, // union di_u: blkaddr (HEAD) | delta[2] (NONHEAD)
    { name: 'delta1', type: 'u16' },
  ],
  8,
);

/** `Z_EROFS_EXTENT_PLEN_*` of `z_erofs_extent.plen`. */
export const EXTENT_PLEN_PARTIAL = 1 << 27;
export const EXTENT_PLEN_FMT_BIT = 28;
export const EXTENT_PLEN_MASK = (PCLUSTER_MAX_SIZE << 1) - 1;

/** `struct z_erofs_extent` (32 bytes; records may be cut to 4, 8 or 16 bytes, `Z_ADVISE_EXTRECSZ`). */
export const zExtent = defineStruct(
  'z_erofs_extent',
  [
    { name: 'plen', type: 'u32' },
    { name: 'pstartLo', type: 'u32' },
    { name: 'pstartHi', type: 'u32' },
    { name: 'lstartLo', type: 'u32' },
    { name: 'lstartHi', type: 'u32' },
    { name: 'reserved', type: { bytes: 12 } },
  ],
  32,
);

/** `EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER`: the same bit as COMPR_CFGS (pclusters of several blocks). */
export const FEATURE_INCOMPAT_BIG_PCLUSTER = 0x2;

/**
 * Per-algorithm configurations after the superblock (COMPR_CFGS): for each bit of `availableComprAlgs`,
 * lowest first, a `__le16` size and the algorithm's struct.
 */
export const lz4Cfgs = defineStruct(
  'z_erofs_lz4_cfgs',
  [
    { name: 'maxDistance', type: 'u16' },
    { name: 'maxPclusterblks', type: 'u16' },
    { name: 'reserved', type: { bytes: 10 } },
  ],
  14,
);

export const deflateCfgs = defineStruct(
  'z_erofs_deflate_cfgs',
  [
    { name: 'windowbits', type: 'u8' }, // 8..15
    { name: 'reserved', type: { bytes: 5 } },
  ],
  6,
);

export const zstdCfgs = defineStruct(
  'z_erofs_zstd_cfgs',
  [
    { name: 'format', type: 'u8' },
    { name: 'windowlog', type: 'u8' }, // window log - 10 (ZSTD_WINDOWLOG_ABSOLUTEMIN)
    { name: 'reserved', type: { bytes: 4 } },
  ],
  6,
);
