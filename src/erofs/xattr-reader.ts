/** Inline and shared xattrs of an inode (include/erofs_fs.h "inline xattrs"; erofs-utils lib/xattr.c). */
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import { type ByteString, displayName, toByteString } from '../fs-tree/tree.ts';
import type { ReadOptions } from '../io/byte-source.ts';
import { align4, decodeAt, hex } from './decode.ts';
import {
  inodeCompact,
  inodeExtended,
  sharedXattrId,
  XATTR_LONG_PREFIX,
  XATTR_PREFIXES,
  xattrEntry,
  xattrIbodyHeader,
} from './format.ts';
import type { ImageContext } from './image-context.ts';
import type { Inode } from './inode.ts';

/** Inline xattr body: header, shared ids, then entries. */
export async function readXattrs(
  ctx: ImageContext,
  inode: Inode,
  options: ReadOptions,
): Promise<Map<ByteString, Uint8Array>> {
  const what = `Cannot read xattrs of inode ${inode.nid}`;
  const start = inode.position + (inode.extended ? inodeExtended.size : inodeCompact.size);
  const body = await ctx.readMeta(start, inode.xattrSize, what, options);
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
    const at = ctx.sb.xattrBlkaddr * ctx.blockSize + id * 4;
    const entryHead = await ctx.readMeta(at, xattrEntry.size, `${what}: shared xattr ${id}`, options);
    const entry = decodeAt(xattrEntry, entryHead, 0, what, at);
    const rest = await ctx.readMeta(
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
