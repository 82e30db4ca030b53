/**
 * Compression indexes for the writer: from a file's extents (consecutive, from offset 0, each one pcluster)
 * to full 8-byte lcluster indexes, and from those to the compact 4B/2B packs the kernel prefers. Follows
 * erofs-utils lib/compress.c (z_erofs_write_full_indexes, z_erofs_convert_to_compacted_format); lcluster
 * size = block size, as mkfs.erofs writes. The reader (zmap.ts) is the test oracle for every layout here.
 */
import { ErofsOciError } from '../errors.ts';
import { LclusterType, LI_D0_CBLKCNT, LI_PARTIAL_REF, lclusterIndex, zMapHeader } from './format.ts';

export interface PclusterExtent {
  /** Decoded bytes of the extent. */
  length: number;
  /** Stored uncompressed (a PLAIN lcluster head) rather than compressed (HEAD1). */
  raw: boolean;
  /** First block of the pcluster, and its size in blocks. */
  pblk: number;
  blocks: number;
  /** The pcluster decodes to more than this extent. */
  partial?: boolean;
}

/** One lcluster index, unencoded: HEADs carry `clusterofs` and `blkaddr`, NONHEADs `delta0`/`delta1`. */
export interface LclusterEntry {
  type: number;
  advise: number;
  clusterofs: number;
  blkaddr: number;
  delta0: number;
  delta1: number;
}

/** The lcluster entries of a file made of `extents`, as z_erofs_write_full_indexes + fini. */
export function lclusterEntries(
  extents: readonly PclusterExtent[],
  blockBits: number,
  bigPcluster: boolean,
): LclusterEntry[] {
  const bs = 2 ** blockBits;
  const out: LclusterEntry[] = [];
  let clusterofs = 0;
  for (const e of extents) {
    let count = e.length;
    if (count <= 0) throw new ErofsOciError('internal', 'Cannot index an empty extent');
    let d0 = 0;
    let d1 = Math.floor((clusterofs + count) / bs);
    const headType = e.raw ? LclusterType.plain : LclusterType.head1;
    if (d1 === 0) {
      // The extent ends inside this lcluster: one HEAD, and the next extent continues the same lcluster.
      out.push({ type: headType, advise: 0, clusterofs, blkaddr: e.pblk, delta0: 0, delta1: 0 });
      clusterofs = 0;
      continue;
    }
    do {
      if (d0 === 1 && bigPcluster) {
        out.push({
          type: LclusterType.nonhead,
          advise: 0,
          clusterofs: 0,
          blkaddr: 0,
          delta0: e.blocks | LI_D0_CBLKCNT,
          delta1: d1,
        });
      } else if (d0 > 0) {
        out.push({
          type: LclusterType.nonhead,
          advise: 0,
          clusterofs: 0,
          blkaddr: 0,
          delta0: Math.min(d0, LI_D0_CBLKCNT - 1),
          delta1: d1,
        });
      } else {
        out.push({
          type: headType,
          advise: e.partial ? LI_PARTIAL_REF : 0,
          clusterofs,
          blkaddr: e.pblk,
          delta0: 0,
          delta1: 0,
        });
      }
      count -= bs - clusterofs;
      clusterofs = 0;
      d0++;
      d1--;
    } while (clusterofs + count >= bs);
    clusterofs += count;
  }
  if (clusterofs)
    out.push({ type: LclusterType.plain, advise: 0, clusterofs, blkaddr: 0, delta0: 0, delta1: 0 });
  return out;
}

/** Full indexes as stored after the map header: 8 reserved bytes, then one `z_erofs_lcluster_index` each. */
export function encodeFullIndexes(entries: readonly LclusterEntry[]): Uint8Array {
  const out = new Uint8Array(8 + entries.length * lclusterIndex.size);
  for (const [i, e] of entries.entries()) {
    const head = e.type !== LclusterType.nonhead;
    lclusterIndex.encode(
      {
        advise: e.advise | e.type,
        clusterofs: head ? e.clusterofs : 0,
        delta0: head ? e.blkaddr & 0xffff : e.delta0,
        delta1: head ? Math.floor(e.blkaddr / 2 ** 16) : e.delta1,
      },
      out,
      8 + i * lclusterIndex.size,
    );
  }
  return out;
}

/**
 * Compact indexes (bytes after the map header). `headerStart` is the map header's byte offset in the image
 * (it sets the 4B run that aligns the 2B packs to 32 bytes); `firstBlock` the file's first pcluster block.
 */
export function encodeCompactIndexes(
  entries: readonly LclusterEntry[],
  options: {
    headerStart: number;
    lclusterBits: number;
    compacted2b: boolean;
    bigPcluster: boolean;
    firstBlock: number;
  },
): Uint8Array {
  const { lclusterBits, bigPcluster } = options;
  if (lclusterBits > 14 || (options.compacted2b && lclusterBits > 12)) {
    throw new ErofsOciError(
      'internal',
      `Cannot write compact indexes for ${2 ** lclusterBits}-byte lclusters`,
    );
  }
  const total = entries.length;
  const mpos = options.headerStart + zMapHeader.size;
  let initial4b = 0;
  let run2b = 0;
  let end4b = total;
  if (options.compacted2b) {
    initial4b = ((32 - (mpos % 32)) / 4) % 8;
    if (initial4b > total) {
      initial4b = 0;
      end4b = total;
    } else {
      run2b = Math.floor((total - initial4b) / 16) * 16;
      end4b = total - initial4b - run2b;
    }
  }
  const size = initial4b * 4 + run2b * 2 + Math.ceil(end4b / 2) * 8;
  const out = new Uint8Array(size);
  const state = { blkaddr: options.firstBlock, dummyHead: false };
  if (!bigPcluster) {
    state.blkaddr--;
    state.dummyHead = true;
  }
  let at = 0;
  let i = 0;
  const pack = (count: number, unit: 2 | 4, take: number, updateBlkaddr: boolean) => {
    const vec = entries.slice(i, i + take);
    while (vec.length < count)
      vec.push({ type: 0, advise: 0, clusterofs: 0, blkaddr: 0, delta0: 0, delta1: 0 });
    writePack(out.subarray(at, at + count * unit), vec, unit, lclusterBits, state, updateBlkaddr);
    at += count * unit;
    i += take;
  };
  for (let n = initial4b; n > 0; n -= 2) pack(2, 4, 2, bigPcluster);
  for (let n = run2b; n > 0; n -= 16) pack(16, 2, 16, bigPcluster);
  let rest = end4b;
  for (; rest > 1; rest -= 2) pack(2, 4, 2, bigPcluster);
  if (rest === 1) pack(2, 4, 1, bigPcluster);
  return out;
}

function writePack(
  out: Uint8Array,
  cv: readonly LclusterEntry[],
  unit: 2 | 4,
  lclusterBits: number,
  state: { blkaddr: number; dummyHead: boolean },
  updateBlkaddrIn: boolean,
): void {
  const vcnt = unit === 4 ? 2 : 16;
  const lobits = Math.max(lclusterBits, 12);
  const encodebits = (vcnt * unit * 8 - 32) / vcnt;
  let blkaddr = state.blkaddr;
  let updateBlkaddr = updateBlkaddrIn;
  let stored = state.blkaddr;
  let pos = 0;
  for (let i = 0; i < vcnt; i++) {
    const e = cv[i] as LclusterEntry;
    let offset: number;
    if (e.type === LclusterType.nonhead) {
      if (e.delta0 & LI_D0_CBLKCNT) {
        offset = e.delta0;
        blkaddr += e.delta0 & ~LI_D0_CBLKCNT;
        state.dummyHead = false;
      } else if (i + 1 === vcnt) {
        offset = Math.min(e.delta1, LI_D0_CBLKCNT - 1);
      } else {
        offset = e.delta0;
      }
    } else {
      offset = e.clusterofs;
      if (state.dummyHead) {
        blkaddr++;
        if (updateBlkaddr) stored = blkaddr;
      }
      state.dummyHead = true;
      updateBlkaddr = false;
    }
    const v = (e.type << lobits) | offset;
    const rem = pos & 7;
    const b = pos >> 3;
    out[b] = ((out[b] as number) & ((1 << rem) - 1)) | ((v << rem) & 0xff);
    out[b + 1] = (v >> (8 - rem)) & 0xff;
    if (b + 2 < out.byteLength) out[b + 2] = (v >> (16 - rem)) & 0xff;
    pos += encodebits;
  }
  new DataView(out.buffer, out.byteOffset + vcnt * unit - 4, 4).setUint32(0, stored, true);
  state.blkaddr = blkaddr;
}
