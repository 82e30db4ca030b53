/**
 * The filesystem model every source produces and every writer consumes: a tree of directories whose
 * entries point at nodes. A leaf object referenced from several entries is a hardlink group (one inode);
 * there is no reference counting, the writer counts references when it walks the tree.
 *
 * Names, symlink targets and xattr names are byte strings: JavaScript strings whose every code unit is one
 * byte (latin1). Names in any encoding survive unchanged, and ordinary string comparison is byte order,
 * which is the order EROFS directories need.
 */
export type ByteString = string;

export function toByteString(bytes: Uint8Array): ByteString {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
}

export function fromByteString(value: ByteString): Buffer {
  return Buffer.from(value, 'latin1');
}

/** A byte string shown to a person: decoded as UTF-8 where possible. */
export function displayName(value: ByteString): string {
  return Buffer.from(value, 'latin1').toString('utf8');
}

export interface Timestamp {
  /** Seconds since the Unix epoch; may be negative. */
  sec: number;
  /** 0 ≤ nsec < 1e9. */
  nsec: number;
}

export interface Attributes {
  /** Permission bits including setuid, setgid and sticky (mask 0o7777); the type comes from `kind`. */
  mode: number;
  uid: number;
  gid: number;
  mtime: Timestamp;
  /** Extended attributes by full name (`user.x`, `trusted.overlay.opaque`, `security.capability`, …). */
  xattrs: Map<ByteString, Uint8Array>;
}

/**
 * Where a regular file's bytes are.
 * - `blocks`: in the image's data area. `Math.floor(size / blockSize)` full blocks start at `startBlock`.
 *   The tail (`size % blockSize` bytes) either follows them in the data area (`tail` null) or is held in
 *   the writer's spill file to be packed inline after the inode (`tail` set).
 * - `external`: not in the image; `size` bytes at byte `offset` of an external device (index mode: the
 *   layer's uncompressed tar).
 */
export type FileContent =
  | { kind: 'blocks'; size: number; startBlock: number; tail: { spillOffset: number; length: number } | null }
  | { kind: 'external'; size: number; offset: number }
  /**
   * Compressed in the image: pclusters from `startBlock` (`blocks` of them in all); each extent one
   * pcluster, consecutive from offset 0, `pblk` absolute.
   */
  | {
      kind: 'compressed';
      size: number;
      alg: number;
      startBlock: number;
      blocks: number;
      /** The image has big pclusters (several blocks), which changes the index encoding. */
      bigPcluster: boolean;
      extents: readonly { length: number; raw: boolean; pblk: number; blocks: number }[];
    };

export interface RegularFile extends Attributes {
  kind: 'file';
  content: FileContent;
}

export interface Symlink extends Attributes {
  kind: 'symlink';
  target: ByteString;
}

export interface DeviceNode extends Attributes {
  kind: 'chardev' | 'blockdev';
  major: number;
  minor: number;
}

export interface SpecialNode extends Attributes {
  kind: 'fifo' | 'socket';
}

export type Leaf = RegularFile | Symlink | DeviceNode | SpecialNode;

export interface Directory extends Attributes {
  kind: 'dir';
  entries: Map<ByteString, Node>;
}

export type Node = Directory | Leaf;

export const EMPTY_CONTENT: FileContent = { kind: 'blocks', size: 0, startBlock: 0, tail: null };

export function newDirectory(attributes?: Partial<Attributes>): Directory {
  return {
    kind: 'dir',
    mode: attributes?.mode ?? 0o755,
    uid: attributes?.uid ?? 0,
    gid: attributes?.gid ?? 0,
    mtime: attributes?.mtime ?? { sec: 0, nsec: 0 },
    xattrs: attributes?.xattrs ?? new Map(),
    entries: new Map(),
  };
}

/** Size in bytes of a node's data as `stat` reports it. */
export function nodeSize(node: Leaf): number {
  switch (node.kind) {
    case 'file':
      return node.content.size;
    case 'symlink':
      return node.target.length;
    default:
      return 0;
  }
}
