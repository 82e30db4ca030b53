/**
 * Mapping a compressed inode's logical offsets to physical clusters: full (8-byte) and compact (4B/2B)
 * lcluster indexes, big pclusters, extent records, tail-packed (inline) pclusters and fragments. A port of
 * erofs-utils lib/zmap.c (itself from Linux fs/erofs/zmap.c), with every read bounded and checked.
 */
import { ErofsOciError } from '../errors.ts';
import type { ReadOptions } from '../io/byte-source.ts';
import { INTERLACED, type PclusterFormat, SHIFTED } from './decompress.ts';
import { decodeAt } from './decode.ts';
import {
  CompressionAlg,
  DataLayout,
  EXTENT_PLEN_FMT_BIT,
  EXTENT_PLEN_MASK,
  EXTENT_PLEN_PARTIAL,
  LclusterType,
  PCLUSTER_MAX_DSIZE,
  PCLUSTER_MAX_SIZE,
  Z_ADVISE_BIG_PCLUSTER_1,
  Z_ADVISE_BIG_PCLUSTER_2,
  Z_ADVISE_EXTENTS,
  Z_ADVISE_EXTRECSZ_BIT,
  Z_ADVISE_EXTRECSZ_MASK,
  Z_ADVISE_FRAGMENT_PCLUSTER,
  Z_ADVISE_INLINE_PCLUSTER,
  Z_ADVISE_INTERLACED_PCLUSTER,
  Z_FRAGMENT_INODE_BIT,
  zExtent,
  zMapHeader,
} from './format.ts';
import type { ImageContext } from './image-context.ts';
import type { Inode } from './inode.ts';
import { corrupt, headerStart, loadLcluster, newRecorder, type Recorder } from './zindex-reader.ts';

/** One decoded extent: `[la, la + llen)` of the file comes from `plen` bytes at `pa`. */
export interface ZExtent {
  la: number;
  llen: number;
  /** false: a hole (reads as zeros). */
  mapped: boolean;
  /** The pcluster is the tail packed inline after the index (pa is a byte offset in the metadata). */
  meta: boolean;
  /** The extent is in the packed inode at `fragmentOffset`. */
  fragment: boolean;
  pa: number;
  plen: number;
  format: PclusterFormat;
  /** The pcluster decodes to more than this extent (decode only a prefix). */
  partial: boolean;
}

/** What the map header says, read once per inode. */
export interface ZInfo {
  advise: number;
  lclusterBits: number;
  algs: [number, number];
  idataSize: number;
  fragmentOffset: number;
  extents: number;
  /** The lcluster of the tail extent (tail-packed or fragment); -1 if none. */
  tailHeadLcn: number;
  /** Byte offset of the tail-packed pcluster. */
  tailPosition: number;
  wholeFragment: boolean;
}

const infos = new WeakMap<Inode, ZInfo>();

export async function zInfo(ctx: ImageContext, inode: Inode, options: ReadOptions): Promise<ZInfo> {
  const known = infos.get(inode);
  if (known) return known;
  const at = headerStart(inode);
  const what = `Cannot read the compression header of inode ${inode.nid}`;
  const bytes = await ctx.readMeta(at, zMapHeader.size, what, options);
  const h = decodeAt(zMapHeader, bytes, 0, what, at);
  const info: ZInfo = {
    advise: h.advise,
    lclusterBits: ctx.blockBits + (h.clusterbits & 15),
    algs: [h.algorithmtype & 15, h.algorithmtype >> 4],
    idataSize: 0,
    fragmentOffset: 0,
    extents: 0,
    tailHeadLcn: -1,
    tailPosition: 0,
    wholeFragment: false,
  };
  if (h.clusterbits >> Z_FRAGMENT_INODE_BIT) {
    // The whole file is in the packed inode; the other 63 bits are the offset there.
    const view = new DataView(bytes.buffer, bytes.byteOffset, 8);
    info.advise = Z_ADVISE_FRAGMENT_PCLUSTER;
    info.fragmentOffset = Number(view.getBigUint64(0, true) ^ (1n << 63n));
    info.wholeFragment = true;
    info.tailHeadLcn = 0;
    infos.set(inode, info);
    return info;
  }
  if (info.lclusterBits > 20) throw corrupt(inode, `lcluster bits ${info.lclusterBits} are too many`, at);
  if (inode.layout === DataLayout.compressedFull && h.advise & Z_ADVISE_EXTENTS) {
    info.extents = h.reserved1 + h.idataSize * 2 ** 16 + (h.algorithmtype + h.clusterbits * 256) * 2 ** 32;
    infos.set(inode, info);
    return info;
  }
  if (h.advise & Z_ADVISE_FRAGMENT_PCLUSTER) info.fragmentOffset = h.reserved1 + h.idataSize * 2 ** 16;
  else if (h.advise & Z_ADVISE_INLINE_PCLUSTER) info.idataSize = h.idataSize;
  if (
    inode.layout === DataLayout.compressedCompact &&
    !(h.advise & Z_ADVISE_BIG_PCLUSTER_1) !== !(h.advise & Z_ADVISE_BIG_PCLUSTER_2)
  ) {
    throw corrupt(inode, 'big pcluster head1/head2 bits of compact indexes differ', at);
  }
  if (info.idataSize > 0 || h.advise & Z_ADVISE_FRAGMENT_PCLUSTER) {
    // Find the tail extent's head lcluster (and, for tail packing, where the inline pcluster lies).
    const m = newRecorder();
    await loadLcluster(
      ctx,
      inode,
      info,
      m,
      Math.floor((inode.size - 1) / 2 ** info.lclusterBits),
      false,
      options,
    );
    if (info.idataSize > 0) info.tailPosition = m.nextPackOffset;
    await lookbackIfNeeded(ctx, inode, info, m, inode.size - 1, options);
    info.tailHeadLcn = m.lcn;
    if (h.advise & Z_ADVISE_FRAGMENT_PCLUSTER && inode.layout === DataLayout.compressedFull) {
      info.fragmentOffset += m.pblk * 2 ** 32;
    }
  }
  infos.set(inode, info);
  return info;
}

/** The extent holding `offset` (< inode.size). */
export async function zMap(
  ctx: ImageContext,
  inode: Inode,
  offset: number,
  options: ReadOptions,
): Promise<ZExtent> {
  const info = await zInfo(ctx, inode, options);
  let extent: ZExtent;
  if (inode.layout === DataLayout.compressedFull && info.advise & Z_ADVISE_EXTENTS && !info.wholeFragment) {
    extent = await mapExtentRecords(ctx, inode, info, offset, options);
  } else {
    extent = await mapLclusters(ctx, inode, info, offset, options);
  }
  if (extent.mapped && !extent.fragment && !extent.meta) {
    if (extent.format < 16 && !(ctx.sb.comprAlgs & (1 << extent.format))) {
      throw corrupt(
        inode,
        `extent at ${extent.la} uses algorithm ${extent.format}, which the superblock does not list`,
      );
    }
    if (extent.plen > PCLUSTER_MAX_SIZE || extent.llen > PCLUSTER_MAX_DSIZE) {
      throw new ErofsOciError(
        'unsupported',
        `Cannot map compressed inode ${inode.nid}: pcluster of ${extent.plen} bytes decoding to ${extent.llen} is larger than EROFS allows`,
      );
    }
  }
  if (extent.llen <= 0 || extent.la > offset || extent.la + extent.llen <= offset) {
    throw corrupt(
      inode,
      `the extent found for offset ${offset} ([${extent.la}, +${extent.llen})) does not hold it`,
    );
  }
  return extent;
}

async function mapLclusters(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  offset: number,
  options: ReadOptions,
): Promise<ZExtent> {
  const bits = info.lclusterBits;
  const lsize = 2 ** bits;
  if (info.wholeFragment) {
    return fragmentExtent(0, inode.size);
  }
  const m = newRecorder();
  const initialLcn = Math.floor(offset / lsize);
  const endoff = offset % lsize;
  await loadLcluster(ctx, inode, info, m, initialLcn, false, options);
  let end = (m.lcn + 1) * lsize;
  let la: number;
  if (m.type !== LclusterType.nonhead && endoff >= m.clusterofs) {
    m.headtype = m.type;
    la = m.lcn * lsize + m.clusterofs;
    if (info.idataSize > 0 && end > inode.size) end = inode.size;
  } else {
    if (m.type !== LclusterType.nonhead) {
      if (m.lcn === 0) throw corrupt(inode, 'logical cluster 0 starts after its head');
      end = m.lcn * lsize + m.clusterofs;
      m.delta0 = 1;
    }
    la = await lookback(ctx, inode, info, m, m.delta0, options);
  }
  end = Math.min(end, inode.size);
  const extent: ZExtent = {
    la,
    llen: end - la,
    mapped: true,
    meta: false,
    fragment: false,
    pa: 0,
    plen: 0,
    format: CompressionAlg.lz4,
    partial: m.partial,
  };
  if (info.idataSize > 0 && m.lcn === info.tailHeadLcn) {
    extent.meta = true;
    extent.pa = info.tailPosition;
    extent.plen = info.idataSize;
    if ((extent.pa % ctx.blockSize) + extent.plen > ctx.blockSize) {
      throw corrupt(inode, `tail-packed pcluster of ${extent.plen} bytes crosses a block`, extent.pa);
    }
  } else if (info.advise & Z_ADVISE_FRAGMENT_PCLUSTER && m.lcn === info.tailHeadLcn) {
    return fragmentExtent(la, end - la);
  } else {
    extent.pa = m.pblk * ctx.blockSize;
    extent.plen = (await compressedBlocks(ctx, inode, info, m, options)) * ctx.blockSize;
  }
  if (m.headtype === LclusterType.plain) {
    if (extent.llen > extent.plen) {
      throw corrupt(inode, `uncompressed extent of ${extent.llen} bytes in a ${extent.plen}-byte pcluster`);
    }
    extent.format = info.advise & Z_ADVISE_INTERLACED_PCLUSTER ? INTERLACED : SHIFTED;
  } else {
    extent.format = (m.headtype === LclusterType.head2 ? info.algs[1] : info.algs[0]) as CompressionAlg;
  }
  return extent;
}

function fragmentExtent(la: number, llen: number): ZExtent {
  return {
    la,
    llen,
    mapped: true,
    meta: false,
    fragment: true,
    pa: 0,
    plen: 0,
    format: SHIFTED,
    partial: false,
  };
}

/** For the FINDTAIL pass: the head of the extent holding `offset`, as mapLclusters finds it. */
async function lookbackIfNeeded(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  m: Recorder,
  offset: number,
  options: ReadOptions,
): Promise<void> {
  const lsize = 2 ** info.lclusterBits;
  if (m.type !== LclusterType.nonhead && offset % lsize >= m.clusterofs) {
    m.headtype = m.type;
    return;
  }
  if (m.type !== LclusterType.nonhead) {
    if (m.lcn === 0) throw corrupt(inode, 'logical cluster 0 starts after its head');
    m.delta0 = 1;
  }
  await lookback(ctx, inode, info, m, m.delta0, options);
}

/** Walks back to the HEAD lcluster of the extent; returns its logical start. */
async function lookback(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  m: Recorder,
  distance: number,
  options: ReadOptions,
): Promise<number> {
  let d = distance;
  while (d > 0 && m.lcn >= d) {
    await loadLcluster(ctx, inode, info, m, m.lcn - d, false, options);
    if (m.type === LclusterType.nonhead) {
      d = m.delta0;
      continue;
    }
    m.headtype = m.type;
    return m.lcn * 2 ** info.lclusterBits + m.clusterofs;
  }
  throw corrupt(inode, `bogus lookback distance ${d} at lcluster ${m.lcn}`);
}

async function compressedBlocks(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  m: Recorder,
  options: ReadOptions,
): Promise<number> {
  const big1 = (info.advise & Z_ADVISE_BIG_PCLUSTER_1) !== 0;
  const big2 = (info.advise & Z_ADVISE_BIG_PCLUSTER_2) !== 0;
  const lcn = m.lcn + 1;
  if (
    (m.headtype === LclusterType.head1 && !big1) ||
    ((m.headtype === LclusterType.plain || m.headtype === LclusterType.head2) && !big2) ||
    lcn * 2 ** info.lclusterBits >= inode.size
  ) {
    return 1;
  }
  m.compressedBlocks = 0;
  await loadLcluster(ctx, inode, info, m, lcn, false, options);
  if (m.type === LclusterType.nonhead) {
    if (m.delta0 !== 1 || m.compressedBlocks === 0) {
      throw corrupt(inode, `no block count (CBLKCNT) at lcluster ${lcn}`);
    }
    return m.compressedBlocks;
  }
  return 1;
}

async function mapExtentRecords(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  offset: number,
  options: ReadOptions,
): Promise<ZExtent> {
  const recsz = 4 << ((info.advise >> Z_ADVISE_EXTRECSZ_BIT) & Z_ADVISE_EXTRECSZ_MASK);
  let pos = Math.ceil((headerStart(inode) + zMapHeader.size) / recsz) * recsz;
  const lsize = 2 ** info.lclusterBits;
  const what = `Cannot read extent records of inode ${inode.nid}`;
  const rec = async (at: number) => {
    const bytes = new Uint8Array(zExtent.size);
    bytes.set(await ctx.readMeta(at, recsz, what, options));
    return decodeAt(zExtent, bytes, 0, what, at);
  };
  let lend = inode.size;
  let lstart: number;
  let plen = 0;
  let pa = 0;
  let last: boolean;
  if (recsz <= 8) {
    let running: number | null = null;
    if (recsz <= 4) {
      const head = await ctx.readMeta(pos, 8, what, options);
      running = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true));
      pos += 8;
      lstart = 0;
    } else {
      lstart = Math.floor(offset / lsize) * lsize;
      pos += (lstart / lsize) * recsz;
    }
    for (; lstart <= offset; lstart += lsize) {
      const e = await rec(pos);
      plen = e.plen;
      if (running !== null) {
        pa = running;
        running += plen & EXTENT_PLEN_MASK;
      } else pa = e.pstartLo;
      pos += recsz;
    }
    last = lstart >= Math.ceil(lend / lsize) * lsize;
    lend = Math.min(lstart, lend);
    lstart -= lsize;
  } else {
    lstart = lend;
    let l = 0;
    let r = info.extents;
    while (l < r) {
      const mid = l + Math.floor((r - l) / 2);
      const e = await rec(pos + mid * recsz);
      let la = e.lstartLo;
      if (recsz > 16) la += e.lstartHi * 2 ** 32;
      if (la > offset) {
        r = mid;
        if (la > lend) throw corrupt(inode, 'extent records are not sorted');
        lend = la;
      } else {
        l = mid + 1;
        if (offset === la) r = Math.min(l + 1, r);
        lstart = la;
        plen = e.plen;
        pa = e.pstartLo + e.pstartHi * 2 ** 32;
      }
    }
    last = l >= info.extents;
  }
  const extent: ZExtent = {
    la: lstart,
    llen: lend - lstart,
    mapped: false,
    meta: false,
    fragment: false,
    pa,
    plen: plen & EXTENT_PLEN_MASK,
    format: SHIFTED,
    partial: false,
  };
  if (lstart < lend) {
    if (last && info.advise & Z_ADVISE_FRAGMENT_PCLUSTER) {
      info.fragmentOffset = plen + (recsz > 4 ? pa * 2 ** 32 : 0);
      return fragmentExtent(lstart, lend - lstart);
    }
    if (plen & EXTENT_PLEN_MASK) {
      extent.mapped = true;
      extent.partial = (plen & EXTENT_PLEN_PARTIAL) !== 0;
      const fmt = plen >>> EXTENT_PLEN_FMT_BIT;
      const bmask = ctx.blockSize - 1;
      if (fmt) extent.format = (fmt - 1) as CompressionAlg;
      else if (info.advise & Z_ADVISE_INTERLACED_PCLUSTER && !((pa | extent.plen) & bmask))
        extent.format = INTERLACED;
      else extent.format = SHIFTED;
    }
  }
  return extent;
}
