/**
 * Reading one lcluster index of a compressed inode, full (8 bytes each) or compact (packs of 2 x 4B or
 * 16 x 2B sharing a base block address): erofs-utils lib/zmap.c z_erofs_load_{full,compact}_lcluster.
 */
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import type { ReadOptions } from '../io/byte-source.ts';
import { decodeAt } from './decode.ts';
import {
  DataLayout,
  LclusterType,
  LI_D0_CBLKCNT,
  LI_PARTIAL_REF,
  lclusterIndex,
  Z_ADVISE_BIG_PCLUSTER_1,
  Z_ADVISE_BIG_PCLUSTER_2,
  Z_ADVISE_COMPACTED_2B,
  zMapHeader,
} from './format.ts';
import type { ImageContext } from './image-context.ts';
import { type Inode, inodeBodyEnd } from './inode.ts';
import type { ZInfo } from './zmap.ts';

/** What one lcluster index says (`struct z_erofs_maprecorder`). */
export interface Recorder {
  lcn: number;
  type: number;
  headtype: number;
  clusterofs: number;
  delta0: number;
  delta1: number;
  pblk: number;
  compressedBlocks: number;
  nextPackOffset: number;
  partial: boolean;
}

export function corrupt(inode: Inode, message: string, at?: number): CorruptInputError {
  return new CorruptInputError(`Cannot map compressed inode ${inode.nid}: ${message}`, at ?? inode.position);
}

export function headerStart(inode: Inode): number {
  return Math.ceil(inodeBodyEnd(inode) / 8) * 8;
}

export function newRecorder(): Recorder {
  return {
    lcn: 0,
    type: 0,
    headtype: 0,
    clusterofs: 0,
    delta0: 0,
    delta1: 0,
    pblk: 0,
    compressedBlocks: 0,
    nextPackOffset: 0,
    partial: false,
  };
}

export async function loadLcluster(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  m: Recorder,
  lcn: number,
  lookahead: boolean,
  options: ReadOptions,
): Promise<void> {
  if (inode.layout === DataLayout.compressedCompact)
    await loadCompact(ctx, inode, info, m, lcn, lookahead, options);
  else await loadFull(ctx, inode, info, m, lcn, options);
  if (m.type !== LclusterType.nonhead && m.clusterofs >= 2 ** info.lclusterBits) {
    throw corrupt(inode, `lcluster ${lcn} starts at ${m.clusterofs}, beyond its size`);
  }
}

async function loadFull(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  m: Recorder,
  lcn: number,
  options: ReadOptions,
): Promise<void> {
  const total = Math.ceil(inode.size / 2 ** info.lclusterBits);
  if (lcn >= total) throw corrupt(inode, `lcluster ${lcn} is beyond the file's ${total}`);
  const pos = headerStart(inode) + zMapHeader.size + 8 + lcn * lclusterIndex.size;
  const what = `Cannot read lcluster ${lcn} of inode ${inode.nid}`;
  const di = decodeAt(
    lclusterIndex,
    await ctx.readMeta(pos, lclusterIndex.size, what, options),
    0,
    what,
    pos,
  );
  m.lcn = lcn;
  m.nextPackOffset = pos + lclusterIndex.size;
  m.type = di.advise & 3;
  if (m.type === LclusterType.nonhead) {
    m.clusterofs = 2 ** info.lclusterBits;
    m.delta0 = di.delta0;
    if (m.delta0 & LI_D0_CBLKCNT) {
      if (!(info.advise & (Z_ADVISE_BIG_PCLUSTER_1 | Z_ADVISE_BIG_PCLUSTER_2))) {
        throw corrupt(inode, `block count at lcluster ${lcn} without big pclusters`, pos);
      }
      m.compressedBlocks = m.delta0 & ~LI_D0_CBLKCNT;
      m.delta0 = 1;
    }
    m.delta1 = di.delta1;
  } else {
    m.partial = (di.advise & LI_PARTIAL_REF) !== 0;
    m.clusterofs = di.clusterofs;
    m.pblk = di.delta0 + di.delta1 * 2 ** 16;
  }
}

function bitsAt(pack: Uint8Array, lobits: number, pos: number): { lo: number; type: number } {
  const i = pos >> 3;
  const v =
    ((pack[i] ?? 0) | ((pack[i + 1] ?? 0) << 8) | ((pack[i + 2] ?? 0) << 16) | ((pack[i + 3] ?? 0) << 24)) >>>
    (pos & 7);
  return { lo: v & ((1 << lobits) - 1), type: (v >>> lobits) & 3 };
}

async function loadCompact(
  ctx: ImageContext,
  inode: Inode,
  info: ZInfo,
  m: Recorder,
  lcnIn: number,
  lookahead: boolean,
  options: ReadOptions,
): Promise<void> {
  const bits = info.lclusterBits;
  const ebase = headerStart(inode) + zMapHeader.size;
  const total = Math.ceil(inode.size / ctx.blockSize);
  if (lcnIn >= total || bits > 14) throw corrupt(inode, `lcluster ${lcnIn} is beyond the file's ${total}`);
  m.lcn = lcnIn;
  const initial4b = Math.floor((32 - (ebase % 32)) / 4) & 7;
  let compacted2b = 0;
  if (info.advise & Z_ADVISE_COMPACTED_2B && initial4b < total) {
    compacted2b = Math.floor((total - initial4b) / 16) * 16;
  }
  let pos = ebase;
  let shift = 2;
  let lcn = lcnIn;
  if (lcn >= initial4b) {
    pos += initial4b * 4;
    lcn -= initial4b;
    if (lcn < compacted2b) shift = 1;
    else {
      pos += compacted2b * 2;
      lcn -= compacted2b;
    }
  }
  pos += lcn * 2 ** shift;
  let vcnt: number;
  if (shift === 2) vcnt = 2;
  else if (bits <= 12) vcnt = 16;
  else
    throw new ErofsOciError(
      'unsupported',
      `Cannot map compressed inode ${inode.nid}: 2B indexes with ${bits} lcluster bits`,
    );
  const packSize = vcnt << shift;
  const packStart = Math.floor(pos / packSize) * packSize;
  const what = `Cannot read compact indexes of inode ${inode.nid}`;
  const pack = await ctx.readMeta(packStart, packSize, what, options);
  m.nextPackOffset = packStart + packSize;
  const lobits = Math.max(bits, 12);
  const encodebits = ((packSize - 4) * 8) / vcnt;
  let i = (pos - packStart) >> shift;
  let { lo, type } = bitsAt(pack, lobits, encodebits * i);
  m.type = type;
  if (type === LclusterType.nonhead) {
    m.clusterofs = 2 ** bits;
    if (lookahead) {
      let d1 = 0;
      let j = i;
      let last = lo;
      for (; j < vcnt; j++) {
        const e = bitsAt(pack, lobits, encodebits * j);
        last = e.lo;
        if (e.type !== LclusterType.nonhead) break;
        d1++;
      }
      if (j === vcnt && !(last & LI_D0_CBLKCNT)) d1 += last - 1;
      m.delta1 = d1;
    }
    if (lo & LI_D0_CBLKCNT) {
      if (!(info.advise & Z_ADVISE_BIG_PCLUSTER_1)) {
        throw corrupt(inode, `block count at lcluster ${lcnIn} without big pclusters`, pos);
      }
      m.compressedBlocks = lo & ~LI_D0_CBLKCNT;
      m.delta0 = 1;
      return;
    }
    if (i + 1 !== vcnt) {
      m.delta0 = lo;
      return;
    }
    // The last lcluster of a pack stores delta[1]; delta[0] comes from the one before.
    const prev = bitsAt(pack, lobits, encodebits * (i - 1));
    lo = prev.type !== LclusterType.nonhead ? 0 : prev.lo & LI_D0_CBLKCNT ? 1 : prev.lo;
    m.delta0 = lo + 1;
    return;
  }
  m.clusterofs = lo;
  m.delta0 = 0;
  let nblk: number;
  if (!(info.advise & Z_ADVISE_BIG_PCLUSTER_1)) {
    nblk = 1;
    while (i > 0) {
      --i;
      const e = bitsAt(pack, lobits, encodebits * i);
      if (e.type === LclusterType.nonhead) i -= e.lo;
      if (i >= 0) ++nblk;
    }
  } else {
    nblk = 0;
    while (i > 0) {
      --i;
      const e = bitsAt(pack, lobits, encodebits * i);
      if (e.type === LclusterType.nonhead) {
        if (e.lo & LI_D0_CBLKCNT) {
          --i;
          nblk += e.lo & ~LI_D0_CBLKCNT;
          continue;
        }
        if (e.lo <= 1) throw corrupt(inode, `plain delta ${e.lo} in a big pcluster pack`, pos);
        i -= e.lo - 2;
        continue;
      }
      ++nblk;
    }
  }
  const base = new DataView(pack.buffer, pack.byteOffset + packSize - 4, 4).getUint32(0, true);
  m.pblk = base + nblk;
}
