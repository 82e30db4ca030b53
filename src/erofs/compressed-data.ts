/**
 * Reading a compressed inode: map each extent (zmap.ts), read its pcluster (a block run, the tail packed
 * after the index, or a fragment of the packed inode) and decode it (decompress.ts). Like erofs-utils
 * lib/data.c z_erofs_read_data, extents are taken from the end of the range backwards.
 */
import { CorruptInputError } from '../errors.ts';
import type { ReadOptions } from '../io/byte-source.ts';
import { decompressPcluster } from './decompress.ts';
import type { ImageContext } from './image-context.ts';
import { type Inode, readInode } from './inode.ts';
import { zInfo, zMap } from './zmap.ts';

type ReadAny = (
  ctx: ImageContext,
  inode: Inode,
  offset: number,
  length: number,
  options: ReadOptions,
) => Promise<Uint8Array>;

export async function readCompressed(
  ctx: ImageContext,
  inode: Inode,
  offset: number,
  length: number,
  options: ReadOptions,
  readAny: ReadAny,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let end = offset + length;
  while (end > offset) {
    const extent = await zMap(ctx, inode, end - 1, options);
    const want = Math.min(end, extent.la + extent.llen) - extent.la;
    const skip = Math.max(offset - extent.la, 0);
    const into = extent.la + skip - offset;
    if (!extent.mapped) {
      // A hole: zeros (out is zero-filled).
    } else if (extent.fragment) {
      if (ctx.sb.packedNid === null) {
        throw new CorruptInputError(
          `Cannot read inode ${inode.nid}: a fragment, but the image has no packed inode`,
          inode.position,
        );
      }
      if (inode.nid === ctx.sb.packedNid) {
        throw new CorruptInputError(
          `Cannot read the packed inode ${inode.nid}: it refers to a fragment`,
          inode.position,
        );
      }
      const info = await zInfo(ctx, inode, options);
      const packed = await readInode(ctx, ctx.sb.packedNid, options);
      const from = info.fragmentOffset + skip;
      if (from + (want - skip) > packed.size) {
        throw new CorruptInputError(
          `Cannot read inode ${inode.nid}: its fragment at ${from} runs past the packed inode (${packed.size} bytes)`,
          inode.position,
        );
      }
      out.set(await readAny(ctx, packed, from, want - skip, options), into);
    } else {
      let input: Uint8Array;
      if (extent.meta) {
        input = await ctx.readMeta(
          extent.pa,
          extent.plen,
          `Cannot read the inline pcluster of inode ${inode.nid}`,
          options,
        );
      } else {
        if (extent.pa + extent.plen > ctx.source.size) {
          throw new CorruptInputError(
            `Cannot read inode ${inode.nid}: pcluster of ${extent.plen} bytes at ${extent.pa} runs past the image (${ctx.source.size} bytes)`,
            extent.pa,
          );
        }
        input = await ctx.source.read(extent.pa, extent.plen, options);
      }
      const decoded = decompressPcluster({
        format: extent.format,
        input,
        length: want,
        skip,
        interlacedOffset: extent.la % ctx.blockSize,
        blockSize: ctx.blockSize,
        position: extent.pa,
      });
      out.set(decoded, into);
    }
    end = extent.la + skip;
  }
  return out;
}
