import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ErofsOciError } from '../errors.ts';
import { memorySource } from '../io/memory-source.ts';
import { locateChunk } from './codec.ts';
import { readChunk, readEmbeddedChunkIndex } from './embedded.ts';
import { ChunkedLayerEncoder, type ChunkedLayerOptions } from './encoder.ts';
import {
  ANNOTATION_CHUNK_INDEX_DIGEST,
  ANNOTATION_CHUNK_INDEX_RANGE,
  ANNOTATION_UNCOMPRESSED_DIGEST,
} from './format.ts';

const RAW = 'application/vnd.erofs.layer.v1';
const ZSTD = 'application/vnd.erofs.layer.v1+zstd';
const hasZstdTool = spawnSync('zstd', ['--version']).status === 0;

/** Compressible image data of `size` bytes in pieces of random sizes. */
function pieces(size: number, seed: number, cut: number): Uint8Array[] {
  const data = new Uint8Array(size);
  let x = seed | 1;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = i % 7 === 0 ? x >>> 24 : i & 0x3f;
  }
  const out: Uint8Array[] = [];
  for (let at = 0; at < size; at += cut) out.push(data.subarray(at, Math.min(size, at + cut)));
  return out;
}

async function encode(parts: Uint8Array[], options: ChunkedLayerOptions) {
  const encoder = new ChunkedLayerEncoder(options);
  async function* source() {
    yield* parts;
  }
  const out: Uint8Array[] = [];
  for await (const bytes of encoder.encode(source())) out.push(bytes);
  return { blob: new Uint8Array(Buffer.concat(out)), layer: encoder.result };
}

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

async function readAll(blob: Uint8Array, mediaType: string, annotations: Record<string, string>) {
  const source = memorySource(blob);
  const found = await readEmbeddedChunkIndex(source, { mediaType, size: blob.byteLength, annotations });
  assert.ok(found);
  const parts: Uint8Array[] = [];
  for (let i = 0; i < found.index.entries.length; i++) {
    parts.push(await readChunk(source, found.index, locateChunk(found.index, i, found.sectionOffset)));
  }
  return { found, image: Buffer.concat(parts) };
}

describe('ChunkedLayerEncoder', () => {
  it('raw and +zstd blobs give back their image chunk by chunk, checksums and digests verified', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 200_000 }),
        fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 512, max: 100_000 })),
        fc.integer({ min: 1, max: 70_000 }),
        fc.boolean(),
        fc.nat(),
        async (size0, chunkSize, cut, compressed, seed) => {
          const size = chunkSize < 512 ? size0 % 2000 : size0;
          const parts = pieces(size, seed, cut);
          const image = Buffer.concat(parts);
          const { blob, layer } = await encode(parts, { chunkSize, zstdLevel: compressed ? 3 : undefined });
          const mediaType = compressed ? ZSTD : RAW;
          assert.equal(layer.blobDigest, sha256(blob));
          assert.equal(layer.blobSize, blob.byteLength);
          assert.equal(layer.imageDigest, sha256(image));
          assert.equal(layer.diffId, compressed ? layer.imageDigest : layer.blobDigest);
          assert.equal(layer.index.entries.length, Math.ceil(size / chunkSize));
          if (!compressed) assert.deepEqual(blob.subarray(0, size), new Uint8Array(image));
          else assert.equal(layer.indexRange.offset % 4, 0);
          assert.equal(
            layer.annotations[ANNOTATION_UNCOMPRESSED_DIGEST],
            compressed ? layer.imageDigest : undefined,
          );
          const { found, image: back } = await readAll(blob, mediaType, { ...layer.annotations });
          assert.deepEqual(found.index, layer.index);
          assert.equal(sha256(found.payload), layer.annotations[ANNOTATION_CHUNK_INDEX_DIGEST]);
          assert.ok(back.equals(image));
        },
      ),
      { numRuns: 40 },
    );
  });

  it('a +zstd blob decompresses with the zstd tool to the image (the index frame is skipped)', {
    skip: !hasZstdTool,
  }, async () => {
    const parts = pieces(1_500_000, 7, 65_536);
    const { blob } = await encode(parts, { chunkSize: 1 << 20, zstdLevel: 3 });
    const result = spawnSync('zstd', ['-d', '-c'], { input: blob, maxBuffer: 1 << 26 });
    assert.equal(result.status, 0, String(result.stderr));
    assert.ok(result.stdout.equals(Buffer.concat(parts)));
    assert.ok(blob.byteLength < 1_500_000 / 2);
  });

  it('a flipped byte in a chunk fails its checksum; in the index, the index digest', async () => {
    for (const zstdLevel of [undefined, 1]) {
      const { blob, layer } = await encode(pieces(40_000, 3, 9000), { chunkSize: 8192, zstdLevel });
      const mediaType = zstdLevel === undefined ? RAW : ZSTD;
      const inChunk = blob.slice();
      inChunk[layer.index.entries[2]!.blockOffset + 1]! ^= 0x10;
      await assert.rejects(readAll(inChunk, mediaType, { ...layer.annotations }), (e: unknown) => {
        return e instanceof ErofsOciError && e.code === 'digest-mismatch';
      });
      const inIndex = blob.slice();
      inIndex[blob.byteLength - 5]! ^= 1;
      await assert.rejects(readAll(inIndex, mediaType, { ...layer.annotations }), (e: unknown) => {
        return e instanceof ErofsOciError && e.code === 'digest-mismatch';
      });
    }
  });

  it('a range annotation that does not frame the index is corrupt; none means no index', async () => {
    const { blob, layer } = await encode(pieces(20_000, 5, 20_000), { chunkSize: 4096, zstdLevel: 1 });
    const { offset, end } = layer.indexRange;
    const source = memorySource(blob);
    for (const range of [
      `${offset + 4}:${end}`,
      `${offset}:${end + 1}`,
      `${offset}:${end - 1}`,
      'x',
      `${end}:${offset}`,
    ]) {
      await assert.rejects(
        readEmbeddedChunkIndex(source, {
          mediaType: ZSTD,
          size: blob.byteLength,
          annotations: { ...layer.annotations, [ANNOTATION_CHUNK_INDEX_RANGE]: range },
        }),
        (e: unknown) => e instanceof ErofsOciError && e.code === 'corrupt',
        range,
      );
    }
    // the open-ended form of the range is accepted
    const open = { ...layer.annotations, [ANNOTATION_CHUNK_INDEX_RANGE]: `${offset}` };
    assert.ok(
      await readEmbeddedChunkIndex(source, { mediaType: ZSTD, size: blob.byteLength, annotations: open }),
    );
    assert.equal(await readEmbeddedChunkIndex(source, { mediaType: ZSTD, size: blob.byteLength }), undefined);
  });
});
