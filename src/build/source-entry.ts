import type { ByteString, Timestamp } from '../fs-tree/tree.ts';

/**
 * One entry of a build source, whatever the source: tar entries have this shape, and so do the entries a
 * directory walk produces (which can also be sockets, something a tar cannot carry).
 */
export interface SourceEntry {
  path: ByteString;
  type: 'file' | 'hardlink' | 'symlink' | 'chardev' | 'blockdev' | 'dir' | 'fifo' | 'socket';
  linkname: ByteString;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Timestamp;
  devmajor: number;
  devminor: number;
  xattrs: Map<ByteString, Uint8Array>;
  /** Where the entry's header starts in the (uncompressed) source, for error messages. */
  headerOffset: number | undefined;
  /** Offset of the entry's data in the uncompressed stream (tar sources; index mode addresses data by it). */
  dataOffset?: number;
  body(): AsyncIterable<Uint8Array>;
}
