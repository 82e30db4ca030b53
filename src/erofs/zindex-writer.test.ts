import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import type { ByteSource } from '../io/byte-source.ts';
import { SHIFTED } from './decompress.ts';
import {
  CompressionAlg,
  DataLayout,
  Z_ADVISE_BIG_PCLUSTER_1,
  Z_ADVISE_BIG_PCLUSTER_2,
  Z_ADVISE_COMPACTED_2B,
  zMapHeader,
} from './format.ts';
import { ImageContext } from './image-context.ts';
import type { Inode } from './inode.ts';
import type { SuperblockInfo } from './superblock.ts';
import {
  encodeCompactIndexes,
  encodeFullIndexes,
  lclusterEntries,
  type PclusterExtent,
} from './zindex-writer.ts';
import { zMap } from './zmap.ts';

const BITS = 12;
const BS = 4096;

function memory(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.byteLength,
    async read(offset, length) {
      return bytes.slice(offset, offset + length);
    },
  };
}

/** Extents as mkfs.erofs makes them: each but the last crosses an lcluster end; pclusters back to back. */
const extentsArb = (big: boolean) =>
  fc
    .array(
      fc.record({
        length: fc.integer({ min: BS, max: 20 * BS }),
        raw: fc.boolean(),
        blocksWanted: fc.integer({ min: 1, max: 8 }),
      }),
      { minLength: 1, maxLength: 40 },
    )
    .chain((list) =>
      fc.integer({ min: 1, max: 20 * BS }).map((lastLength) => {
        const out: PclusterExtent[] = [];
        let pblk = 1000;
        for (const [i, e] of list.entries()) {
          let length = i === list.length - 1 ? lastLength : e.length;
          let blocks = big ? Math.min(e.blocksWanted, Math.max(1, Math.floor(length / BS) - 1)) : 1;
          if (e.raw) {
            // An uncompressed pcluster holds its whole extent.
            if (!big) length = i === list.length - 1 ? Math.min(length, BS) : BS;
            blocks = big ? Math.ceil(length / BS) + 1 : 1;
            if (big && blocks > 1 && length < 3 * BS) {
              length = Math.min(length, BS);
              blocks = 1;
            }
          }
          out.push({ length, raw: e.raw, pblk, blocks });
          pblk += blocks;
        }
        return out;
      }),
    );

async function check(
  extents: PclusterExtent[],
  layout: 'full' | 'compact4b' | 'compact2b',
  big: boolean,
  slot: number,
  probes: number[],
) {
  const size = extents.reduce((s, e) => s + e.length, 0);
  const entries = lclusterEntries(extents, BITS, big);
  assert.equal(entries.length, Math.ceil(size / BS), 'one index per lcluster');
  const position = slot * 32;
  const headerStart = Math.ceil((position + 32) / 8) * 8;
  const body =
    layout === 'full'
      ? encodeFullIndexes(entries)
      : encodeCompactIndexes(entries, {
          headerStart,
          lclusterBits: BITS,
          compacted2b: layout === 'compact2b',
          bigPcluster: big,
          firstBlock: extents[0]?.pblk ?? 0,
        });
  const image = new Uint8Array(headerStart + zMapHeader.size + body.byteLength + 64);
  const advise =
    (layout === 'compact2b' ? Z_ADVISE_COMPACTED_2B : 0) |
    (big ? Z_ADVISE_BIG_PCLUSTER_1 | Z_ADVISE_BIG_PCLUSTER_2 : 0);
  zMapHeader.encode({ advise, algorithmtype: CompressionAlg.lz4, clusterbits: 0 }, image, headerStart);
  image.set(body, headerStart + zMapHeader.size);
  const sb = {
    blockSize: BS,
    blockSizeBits: BITS,
    blocks: 0,
    devices: [],
    comprAlgs: 1,
    packedNid: null,
  } as unknown as SuperblockInfo;
  const ctx = new ImageContext(memory(image), sb, {});
  const inode = {
    nid: slot,
    position,
    format: 0,
    extended: false,
    layout: layout === 'full' ? DataLayout.compressedFull : DataLayout.compressedCompact,
    type: 'file',
    size,
    xattrSize: 0,
  } as unknown as Inode;
  const starts: number[] = [];
  let at = 0;
  for (const e of extents) {
    starts.push(at);
    at += e.length;
  }
  for (const probe of probes) {
    const offset = Math.floor(probe * size) % size;
    let k = starts.length - 1;
    while ((starts[k] as number) > offset) k--;
    const e = extents[k] as PclusterExtent;
    const got = await zMap(ctx, inode, offset, {});
    const where = `offset ${offset} (extent ${k} of ${extents.length})`;
    assert.equal(got.la, starts[k], `${where} la`);
    assert.ok(
      got.la + got.llen > offset && got.la + got.llen <= (starts[k] as number) + e.length,
      `${where} llen ${got.llen}`,
    );
    assert.equal(got.pa, e.pblk * BS, `${where} pa`);
    assert.equal(got.plen, e.blocks * BS, `${where} plen`);
    assert.equal(got.format, e.raw ? SHIFTED : CompressionAlg.lz4, `${where} format`);
  }
}

describe('compression index encoder against the reader', () => {
  for (const layout of ['full', 'compact4b', 'compact2b'] as const) {
    for (const big of [false, true]) {
      test(`${layout} indexes${big ? ', big pclusters' : ''}: every offset maps to its extent`, async () => {
        await fc.assert(
          fc.asyncProperty(
            extentsArb(big),
            fc.integer({ min: 1, max: 200 }),
            fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 30 }),
            (extents, slot, probes) => check(extents, layout, big, slot, [0, 0.999999, ...probes]),
          ),
          { numRuns: 200 },
        );
      });
    }
  }
});
