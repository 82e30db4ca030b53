import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import type { ByteSource } from '../io/byte-source.ts';
import { readData } from './data-map.ts';
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
import { pattern } from './mkfs-fixtures.ts';
import { compressFile } from './pcluster-compress.ts';
import type { SuperblockInfo } from './superblock.ts';
import { encodeCompactIndexes, lclusterEntries } from './zindex-writer.ts';

const BS = 4096;

function memory(bytes: Uint8Array): ByteSource {
  return { size: bytes.byteLength, read: async (offset, length) => bytes.slice(offset, offset + length) };
}

/** A one-inode image: inode slot at 0, map header and compact indexes after it, pclusters from block 1. */
async function roundTrip(data: Uint8Array, alg: CompressionAlg, pclusterSize: number): Promise<Uint8Array> {
  const file = compressFile(data, { alg, blockSize: BS, pclusterSize });
  const big = pclusterSize > BS;
  const firstBlock = 1;
  const extents = file.extents.map((e) => ({ ...e, pblk: e.pblk + firstBlock }));
  const headerStart = 32;
  const indexes = encodeCompactIndexes(lclusterEntries(extents, 12, big), {
    headerStart,
    lclusterBits: 12,
    compacted2b: true,
    bigPcluster: big,
    firstBlock,
  });
  assert.ok(headerStart + zMapHeader.size + indexes.byteLength <= BS, 'test image: indexes fit block 0');
  const image = new Uint8Array((firstBlock + file.blocks) * BS);
  const advise = Z_ADVISE_COMPACTED_2B | (big ? Z_ADVISE_BIG_PCLUSTER_1 | Z_ADVISE_BIG_PCLUSTER_2 : 0);
  zMapHeader.encode({ advise, algorithmtype: alg, clusterbits: 0 }, image, headerStart);
  image.set(indexes, headerStart + zMapHeader.size);
  let at = firstBlock * BS;
  for (const p of file.pclusters) {
    image.set(p, at);
    at += p.byteLength;
  }
  const sb = {
    blockSize: BS,
    blockSizeBits: 12,
    blocks: 0,
    devices: [],
    comprAlgs: 1 << alg,
    packedNid: null,
  };
  const ctx = new ImageContext(memory(image), sb as unknown as SuperblockInfo, {});
  const inode = {
    nid: 0,
    position: 0,
    format: 0,
    extended: false,
    layout: DataLayout.compressedCompact,
    type: 'file',
    size: data.byteLength,
    xattrSize: 0,
  };
  return readData(ctx, inode as unknown as Inode, 0, data.byteLength, {});
}

const dataArb = fc
  .array(
    fc.oneof(
      fc.integer({ min: 1, max: 20_000 }).map((n) => pattern(n, n)),
      fc
        .record({ word: fc.constantFrom('erofs ', 'abc', 'zz\n'), times: fc.integer({ min: 1, max: 5000 }) })
        .map((r) => Buffer.from(r.word.repeat(r.times))),
    ),
    { minLength: 1, maxLength: 12 },
  )
  .map((parts) => Buffer.concat(parts));

describe('compressFile: pclusters our reader decodes back to the input', () => {
  for (const [name, alg] of [
    ['lz4', CompressionAlg.lz4],
    ['deflate', CompressionAlg.deflate],
    ['zstd', CompressionAlg.zstd],
  ] as const) {
    for (const pclusterSize of [BS, 16 * BS]) {
      test(`${name}, ${pclusterSize}-byte pclusters`, async () => {
        await fc.assert(
          fc.asyncProperty(dataArb, async (data) => {
            assert.ok(Buffer.from(await roundTrip(data, alg, pclusterSize)).equals(data));
          }),
          { numRuns: 30 },
        );
      });
    }
  }

  test('compressible data shrinks, random data stays raw', () => {
    const text = Buffer.from('alpha beta gamma erofs kernel\n'.repeat(10_000));
    const packed = compressFile(text, { alg: CompressionAlg.lz4, blockSize: BS, pclusterSize: 16 * BS });
    assert.ok(packed.blocks * BS < text.byteLength / 4, String(packed.blocks));
    const random = pattern(100_000, 3);
    const raw = compressFile(random, { alg: CompressionAlg.zstd, blockSize: BS, pclusterSize: 16 * BS });
    assert.ok(raw.extents.every((e) => e.raw));
  });
});
