/**
 * The FUSE kernel protocol: the message layouts and constants this project's FUSE server uses, declared
 * once. Source of truth: the kernel's include/uapi/linux/fuse.h (protocol 7.38 here, the version Debian 12's
 * linux-libc-dev ships; newer kernels speak it too, the protocol only ever grows behind the negotiated minor
 * version). Struct and field names follow the header (camelCased) so a diff against it stays mechanical.
 * All integers are in host byte order, which is little-endian on every platform we run on.
 */
import { defineStruct } from '../io/struct.ts';

/** "FUSE_KERNEL_VERSION" / "FUSE_KERNEL_MINOR_VERSION": the protocol version we implement. */
export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
/**
 * The oldest minor version we accept: 7.28 added FUSE_MAX_PAGES (reads larger than 128 KiB); every kernel
 * since 4.20 speaks it.
 */
export const FUSE_MIN_MINOR_VERSION = 28;

/** "FUSE_ROOT_ID": the node id of the root inode, which for us is the one regular file. */
export const FUSE_ROOT_ID = 1;

/** "FUSE_MIN_READ_BUFFER": a read of /dev/fuse must offer at least this many bytes (and max_write + 80). */
export const FUSE_MIN_READ_BUFFER = 8192;

/** "enum fuse_opcode" (the ones we name; everything else is answered ENOSYS). */
export const FuseOpcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  ACCESS: 34,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  BATCH_FORGET: 42,
  LSEEK: 46,
} as const;

const opcodeNames = new Map<number, string>(Object.entries(FuseOpcode).map(([name, code]) => [code, name]));

/** A name for log lines: `READ`, or `opcode 51` for ones we do not name. */
export function opcodeName(opcode: number): string {
  return opcodeNames.get(opcode) ?? `opcode ${opcode}`;
}

/** "INIT request/reply flags" (the `flags` word of fuse_init_in/out). */
export const FuseInitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  AUTO_INVAL_DATA: 1 << 12,
  ASYNC_DIO: 1 << 15,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
} as const;

/** "Open flags" (fuse_open_out.open_flags). */
export const FuseOpenFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  // 7.34: closing a descriptor sends no FLUSH (and so never waits for the server).
  NOFLUSH: 1 << 5,
} as const;

/** "struct fuse_in_header": precedes every request; `len` covers the header and the body. */
export const fuseInHeader = defineStruct(
  'fuse_in_header',
  [
    { name: 'len', type: 'u32' },
    { name: 'opcode', type: 'u32' },
    { name: 'unique', type: 'u64' },
    { name: 'nodeid', type: 'u64' },
    { name: 'uid', type: 'u32' },
    { name: 'gid', type: 'u32' },
    { name: 'pid', type: 'u32' },
    // Length of request extensions in 8-byte units (only with FUSE_INIT_EXT features we do not ask for).
    { name: 'totalExtlen', type: 'u16' },
    { name: 'padding', type: 'u16' },
  ],
  40,
);

/**
 * "struct fuse_out_header": precedes every reply. `error` is an int32 holding 0 or a negated errno; the struct
 * codec is unsigned, so use `encodeFuseError` for it.
 */
export const fuseOutHeader = defineStruct(
  'fuse_out_header',
  [
    { name: 'len', type: 'u32' },
    { name: 'error', type: 'u32' },
    { name: 'unique', type: 'u64' },
  ],
  16,
);

/** The out-header `error` field for a positive errno: the two's complement of -errno as an unsigned int32. */
export function encodeFuseError(errno: number): number {
  return errno === 0 ? 0 : 2 ** 32 - errno;
}

/**
 * "struct fuse_init_in". Kernels before 7.36 send only the first four fields (16 bytes); decode from a
 * zero-padded copy then.
 */
export const fuseInitIn = defineStruct(
  'fuse_init_in',
  [
    { name: 'major', type: 'u32' },
    { name: 'minor', type: 'u32' },
    { name: 'maxReadahead', type: 'u32' },
    { name: 'flags', type: 'u32' },
    { name: 'flags2', type: 'u32' },
    { name: 'unused', type: { bytes: 44 } },
  ],
  64,
);

/** "struct fuse_init_out" (the 7.23+ layout; the kernel accepts it whole from any server of 7.23 or later). */
export const fuseInitOut = defineStruct(
  'fuse_init_out',
  [
    { name: 'major', type: 'u32' },
    { name: 'minor', type: 'u32' },
    { name: 'maxReadahead', type: 'u32' },
    { name: 'flags', type: 'u32' },
    // Background (asynchronous: readahead, async direct I/O) requests the kernel keeps outstanding.
    { name: 'maxBackground', type: 'u16' },
    { name: 'congestionThreshold', type: 'u16' },
    { name: 'maxWrite', type: 'u32' },
    { name: 'timeGran', type: 'u32' },
    // Largest request in pages (FUSE_MAX_PAGES); capped by /proc/sys/fs/fuse/max_pages_limit.
    { name: 'maxPages', type: 'u16' },
    { name: 'mapAlignment', type: 'u16' },
    { name: 'flags2', type: 'u32' },
    { name: 'unused', type: { bytes: 28 } },
  ],
  64,
);

/** "struct fuse_attr". */
export const fuseAttr = defineStruct(
  'fuse_attr',
  [
    { name: 'ino', type: 'u64' },
    { name: 'size', type: 'u64' },
    { name: 'blocks', type: 'u64' },
    { name: 'atime', type: 'u64' },
    { name: 'mtime', type: 'u64' },
    { name: 'ctime', type: 'u64' },
    { name: 'atimensec', type: 'u32' },
    { name: 'mtimensec', type: 'u32' },
    { name: 'ctimensec', type: 'u32' },
    { name: 'mode', type: 'u32' },
    { name: 'nlink', type: 'u32' },
    { name: 'uid', type: 'u32' },
    { name: 'gid', type: 'u32' },
    { name: 'rdev', type: 'u32' },
    { name: 'blksize', type: 'u32' },
    { name: 'flags', type: 'u32' },
  ],
  88,
);

/** "struct fuse_attr_out" up to its embedded `struct fuse_attr attr`, which follows it (88 bytes). */
export const fuseAttrOut = defineStruct(
  'fuse_attr_out',
  [
    { name: 'attrValid', type: 'u64' },
    { name: 'attrValidNsec', type: 'u32' },
    { name: 'dummy', type: 'u32' },
  ],
  16,
);

/** "struct fuse_getattr_in". */
export const fuseGetattrIn = defineStruct(
  'fuse_getattr_in',
  [
    { name: 'getattrFlags', type: 'u32' },
    { name: 'dummy', type: 'u32' },
    { name: 'fh', type: 'u64' },
  ],
  16,
);

/** "struct fuse_open_in". */
export const fuseOpenIn = defineStruct(
  'fuse_open_in',
  [
    { name: 'flags', type: 'u32' },
    { name: 'openFlags', type: 'u32' },
  ],
  8,
);

/** "struct fuse_open_out". */
export const fuseOpenOut = defineStruct(
  'fuse_open_out',
  [
    { name: 'fh', type: 'u64' },
    { name: 'openFlags', type: 'u32' },
    { name: 'padding', type: 'u32' },
  ],
  16,
);

/** "struct fuse_read_in". */
export const fuseReadIn = defineStruct(
  'fuse_read_in',
  [
    { name: 'fh', type: 'u64' },
    { name: 'offset', type: 'u64' },
    { name: 'size', type: 'u32' },
    { name: 'readFlags', type: 'u32' },
    // An opaque 64-bit owner id, not a number we compute with.
    { name: 'lockOwner', type: { bytes: 8 } },
    { name: 'flags', type: 'u32' },
    { name: 'padding', type: 'u32' },
  ],
  40,
);

/** "struct fuse_release_in". */
export const fuseReleaseIn = defineStruct(
  'fuse_release_in',
  [
    { name: 'fh', type: 'u64' },
    { name: 'flags', type: 'u32' },
    { name: 'releaseFlags', type: 'u32' },
    // An opaque 64-bit owner id, not a number we compute with.
    { name: 'lockOwner', type: { bytes: 8 } },
  ],
  24,
);

/** "struct fuse_access_in". */
export const fuseAccessIn = defineStruct(
  'fuse_access_in',
  [
    { name: 'mask', type: 'u32' },
    { name: 'padding', type: 'u32' },
  ],
  8,
);

/** "struct fuse_getxattr_in" (also the LISTXATTR request). */
export const fuseGetxattrIn = defineStruct(
  'fuse_getxattr_in',
  [
    { name: 'size', type: 'u32' },
    { name: 'padding', type: 'u32' },
  ],
  8,
);

/** "struct fuse_getxattr_out": the reply to a size query (request size 0). */
export const fuseGetxattrOut = defineStruct(
  'fuse_getxattr_out',
  [
    { name: 'size', type: 'u32' },
    { name: 'padding', type: 'u32' },
  ],
  8,
);

/** "struct fuse_statfs_out" (its one member, `struct fuse_kstatfs st`, flattened). */
export const fuseStatfsOut = defineStruct(
  'fuse_statfs_out',
  [
    { name: 'blocks', type: 'u64' },
    { name: 'bfree', type: 'u64' },
    { name: 'bavail', type: 'u64' },
    { name: 'files', type: 'u64' },
    { name: 'ffree', type: 'u64' },
    { name: 'bsize', type: 'u32' },
    { name: 'namelen', type: 'u32' },
    { name: 'frsize', type: 'u32' },
    { name: 'padding', type: 'u32' },
    { name: 'spare', type: { bytes: 24 } },
  ],
  80,
);

/** "struct fuse_interrupt_in": names the request (by `unique`) whose caller got a signal. */
export const fuseInterruptIn = defineStruct('fuse_interrupt_in', [{ name: 'unique', type: 'u64' }], 8);

/** "struct fuse_forget_in". FORGET and BATCH_FORGET get no reply. */
export const fuseForgetIn = defineStruct('fuse_forget_in', [{ name: 'nlookup', type: 'u64' }], 8);

/** File type and permission bits for `fuse_attr.mode` (<sys/stat.h>). */
export const S_IFREG = 0o100000;
