import type { EntryNode } from '../fs-tree/apply.ts';
import type { Attributes, FileContent, Leaf } from '../fs-tree/tree.ts';
import type { TarEntry } from '../tar/reader.ts';

/**
 * One entry of a build source, whatever the source: a tar entry, or an entry of a directory walk, which can
 * also be a socket (something a tar cannot carry) and has no tar header or data offset.
 */
export interface SourceEntry extends Omit<TarEntry, 'type' | 'headerOffset' | 'dataOffset'> {
  type: TarEntry['type'] | 'socket';
  /** Where the entry's header starts in the (uncompressed) source, for error messages. */
  headerOffset: number | undefined;
  /** Offset of the entry's data in the uncompressed stream (tar sources; index mode addresses data by it). */
  dataOffset?: number;
  body(): AsyncIterable<Uint8Array>;
}

/** The tree node an entry stands for; a regular file's data is `content`. */
export function entryNode(entry: SourceEntry, content: FileContent): EntryNode {
  const attributes: Attributes = {
    mode: entry.mode & 0o7777,
    uid: entry.uid,
    gid: entry.gid,
    mtime: entry.mtime,
    xattrs: entry.xattrs,
  };
  switch (entry.type) {
    case 'dir':
      return { kind: 'dir', attributes };
    case 'hardlink':
      return { kind: 'hardlink', target: entry.linkname };
    case 'file':
      return { kind: 'leaf', leaf: { kind: 'file', ...attributes, content } };
    case 'symlink':
      return { kind: 'leaf', leaf: { kind: 'symlink', ...attributes, target: entry.linkname } };
    case 'chardev':
    case 'blockdev':
      return {
        kind: 'leaf',
        leaf: {
          kind: entry.type,
          ...attributes,
          major: entry.devmajor,
          minor: entry.devminor,
        } satisfies Leaf,
      };
    case 'fifo':
    case 'socket':
      return { kind: 'leaf', leaf: { kind: entry.type, ...attributes } };
  }
}
