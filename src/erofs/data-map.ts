/**
 * Where an inode's data lives and reading it: flat (plain and inline tail) and chunk-based layouts, chunks on
 * extra devices or at their unified address (erofs-utils lib/data.c; Linux fs/erofs/data.c).
 */
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { displayName } from '../fs-tree/tree.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { decodeAt } from './decode.ts';
import {
  blockMapEntry,
  CHUNK_FORMAT_48BIT,
  CHUNK_FORMAT_BLKBITS_MASK,
  CHUNK_FORMAT_INDEXES,
  chunkIndex,
  DataLayout,
  inodeCompact,
  inodeExtended,
  NULL_ADDR_32,
} from './format.ts';
import type { ImageContext } from './image-context.ts';
import type { Inode } from './inode.ts';
import { readCompressed } from './compressed-data.ts';

export function isCompressed(inode: Inode): boolean {
  return inode.layout === DataLayout.compressedFull || inode.layout === DataLayout.compressedCompact;
}

/** Where a stretch of file data lives. */
export type Extent =
  | { kind: 'hole'; logical: number; length: number }
  | { kind: 'meta'; logical: number; length: number; position: number }
  | { kind: 'data'; logical: number; length: number; source: ByteSource; device: string; position: number };

/** Reads `[offset, offset + length)` of an inode's data; the range lies within its size. */
export async function readData(
  ctx: ImageContext,
  inode: Inode,
  offset: number,
  length: number,
  options: ReadOptions,
): Promise<Uint8Array> {
  throwIfAborted(options.signal);
  if (isCompressed(inode)) return readCompressed(ctx, inode, offset, length, options, readData);
  const out = new Uint8Array(length);
  let at = offset;
  const end = offset + length;
  while (at < end) {
    const extents = await mapExtents(ctx, inode, at, end, options);
    for (const extent of extents) {
      const from = Math.max(at, extent.logical);
      const to = Math.min(end, extent.logical + extent.length);
      if (to <= from) continue;
      const skip = from - extent.logical;
      if (extent.kind === 'meta') {
        const what = `Cannot read inline data of inode ${inode.nid}`;
        out.set(await ctx.readMeta(extent.position + skip, to - from, what, options), from - offset);
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
export async function mapExtents(
  ctx: ImageContext,
  inode: Inode,
  from: number,
  end: number,
  options: ReadOptions,
): Promise<Extent[]> {
  const bs = ctx.blockSize;
  if (inode.layout === DataLayout.chunkBased) return mapChunks(ctx, inode, from, end, options);
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
        source: ctx.source,
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
async function mapChunks(
  ctx: ImageContext,
  inode: Inode,
  from: number,
  end: number,
  options: ReadOptions,
): Promise<Extent[]> {
  const bs = ctx.blockSize;
  const format = inode.chunkFormat ?? 0;
  const indexed = (format & CHUNK_FORMAT_INDEXES) !== 0;
  const unit = indexed ? chunkIndex.size : blockMapEntry.size;
  const chunkBits = ctx.blockBits + (format & CHUNK_FORMAT_BLKBITS_MASK);
  const chunkSize = 2 ** chunkBits;
  const inodeEnd =
    inode.position + (inode.extended ? inodeExtended.size : inodeCompact.size) + inode.xattrSize;
  const base = Math.ceil(inodeEnd / unit) * unit;
  const first = Math.floor(from / chunkSize);
  // Bound the index bytes read at once; the caller loops for the rest.
  const last = Math.min(Math.floor((end - 1) / chunkSize), first + 4095);
  const what = `Cannot read chunk indexes of inode ${inode.nid}`;
  const table = await ctx.readMeta(base + first * unit, (last - first + 1) * unit, what, options);
  const mask = ctx.deviceMask();
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
            ...resolve(ctx, inode, c, deviceId, block * bs, base + c * unit),
          };
    const prev = extents.at(-1);
    if (prev && prev.logical + prev.length === logical && prev.length % bs === 0 && canMerge(prev, extent)) {
      prev.length += length;
    } else {
      extents.push(extent);
    }
  }
  return extents;
}

/** Finds the device and offset of a chunk (erofs-utils lib/data.c erofs_map_dev; Linux erofs_map_dev). */
function resolve(
  ctx: ImageContext,
  inode: Inode,
  chunk: number,
  deviceId: number,
  address: number,
  indexAt: number,
): { source: ByteSource; device: string; position: number } {
  const devices = ctx.sb.devices;
  if (deviceId > 0) {
    const device = devices[deviceId - 1];
    if (device === undefined) {
      throw new CorruptInputError(
        `Cannot read data of inode ${inode.nid}: chunk ${chunk} is on device ${deviceId}, the image has ${devices.length} extra device(s)`,
        indexAt,
      );
    }
    const given = ctx.devices?.[deviceId - 1];
    if (given) return { source: given, device: `device ${deviceId}`, position: address };
    if (device.uniaddr === 0) {
      throw new ErofsOciError(
        'not-found',
        `Cannot read data of inode ${inode.nid}: it is on device ${deviceId} (${displayName(device.tag) || 'no tag'}), which was not given and has no unified address`,
      );
    }
    // Flat address space: the extra device follows the image at its unified address.
    return { source: ctx.source, device: 'the image', position: device.uniaddr * ctx.blockSize + address };
  }
  if (ctx.devices) {
    for (const [i, device] of devices.entries()) {
      if (device.uniaddr === 0) continue;
      const start = device.uniaddr * ctx.blockSize;
      if (address >= start && address < start + device.blocks * ctx.blockSize) {
        return {
          source: ctx.devices[i] as ByteSource,
          device: `device ${i + 1}`,
          position: address - start,
        };
      }
    }
  }
  return { source: ctx.source, device: 'the image', position: address };
}

/** Byte offset in its device of an inode's data at `logical` (for error messages); 0 in a hole. */
export async function positionOf(
  ctx: ImageContext,
  inode: Inode,
  logical: number,
  options: ReadOptions,
): Promise<number> {
  if (isCompressed(inode)) return 0;
  const [extent] = await mapExtents(ctx, inode, logical, logical + 1, options);
  if (extent === undefined || extent.kind === 'hole') return 0;
  return extent.position + (logical - extent.logical);
}

function canMerge(a: Extent, b: Extent): boolean {
  if (a.kind === 'hole') return b.kind === 'hole';
  if (a.kind === 'data' && b.kind === 'data') {
    return a.source === b.source && a.position + a.length === b.position;
  }
  return false;
}
