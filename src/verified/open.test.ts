import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  ANNOTATION_CHUNK_INDEX_TARGET,
  ChunkedLayerEncoder,
  MEDIA_TYPE_CHUNK_INDEX,
  readEmbeddedChunkIndex,
  type StandaloneIndexDescriptor,
} from '../chunk-index/index.ts';
import { ErofsOciError } from '../errors.ts';
import { memorySource } from '../io/memory-source.ts';
import { hasChunkIndex, openVerifiedLayer } from './open.ts';

const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/**
 * A layer whose chunk index travels as a standalone layer: the encoder's blob cut before its embedded
 * index section, and that section's payload as the index layer's blob.
 */
async function standaloneLayer(image: Uint8Array, chunkSize: number, zstd: boolean) {
  const encoder = new ChunkedLayerEncoder({ chunkSize, ...(zstd ? { zstdLevel: 3 } : {}) });
  async function* source() {
    yield image;
  }
  const out: Uint8Array[] = [];
  for await (const bytes of encoder.encode(source())) out.push(bytes);
  const whole = new Uint8Array(Buffer.concat(out));
  const mediaType = zstd ? 'application/vnd.erofs.layer.v1+zstd' : 'application/vnd.erofs.layer.v1';
  const found = await readEmbeddedChunkIndex(memorySource(whole), {
    mediaType,
    size: whole.byteLength,
    annotations: encoder.result.annotations,
  });
  assert.ok(found);
  const blob = whole.slice(0, found.sectionOffset);
  const payload = found.payload.slice();
  const layer = { mediaType, digest: sha256(blob), size: blob.byteLength };
  const index: StandaloneIndexDescriptor = {
    mediaType: MEDIA_TYPE_CHUNK_INDEX,
    digest: sha256(payload),
    size: payload.byteLength,
    annotations: { [ANNOTATION_CHUNK_INDEX_TARGET]: layer.digest },
  };
  return { blob, payload, layer, index };
}

function imageData(size: number, seed: number): Uint8Array {
  const data = new Uint8Array(size);
  let x = seed | 1;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = i % 3 === 0 ? x >>> 24 : i & 0x0f;
  }
  return data;
}

describe('openVerifiedLayer with a standalone chunk-index layer', () => {
  it('reads equal the image, raw and +zstd, with chunks running to the end of the blob', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.integer({ min: 1, max: 30_000 }),
        fc.array(fc.tuple(fc.nat(), fc.nat({ max: 12_000 })), { minLength: 1, maxLength: 8 }),
        async (zstd, size, reads) => {
          const image = imageData(size, size);
          const { blob, payload, layer, index } = await standaloneLayer(image, 4096, zstd);
          const descriptor = { ...layer, chunkIndex: index };
          assert.ok(hasChunkIndex(descriptor));
          const source = await openVerifiedLayer(memorySource(blob), descriptor, {
            name: 'layer 0',
            readIndexBlob: async (d) => {
              assert.equal(d.digest, index.digest);
              return payload;
            },
          });
          assert.ok(source);
          assert.equal(source.size, size);
          for (const [at, len] of reads) {
            const offset = at % size;
            const length = Math.min(len, size - offset);
            const got = await source.read(offset, length);
            assert.deepEqual(Buffer.from(got), Buffer.from(image.subarray(offset, offset + length)));
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  it('refuses an index whose bytes differ from its descriptor digest, or that targets another layer', async () => {
    const image = imageData(20_000, 3);
    for (const zstd of [false, true]) {
      const { blob, payload, layer, index } = await standaloneLayer(image, 4096, zstd);
      for (let at = 0; at < payload.byteLength; at += 37) {
        const bad = payload.slice();
        bad[at]! ^= 0x10;
        await assert.rejects(
          openVerifiedLayer(
            memorySource(blob),
            { ...layer, chunkIndex: index },
            {
              name: 'layer 1 (sha256:x)',
              readIndexBlob: async () => bad,
            },
          ),
          (error: unknown) =>
            error instanceof ErofsOciError &&
            error.code === 'digest-mismatch' &&
            /^layer 1 \(sha256:x\): chunk index refused/.test(error.message),
        );
      }
      const elsewhere = {
        ...index,
        annotations: { [ANNOTATION_CHUNK_INDEX_TARGET]: `sha256:${'0'.repeat(64)}` },
      };
      await assert.rejects(
        openVerifiedLayer(
          memorySource(blob),
          { ...layer, chunkIndex: elsewhere },
          {
            name: 'layer 1',
            readIndexBlob: async () => payload,
          },
        ),
        { code: 'corrupt' },
      );
      // An index for the other compression cannot apply.
      const other = zstd ? 'application/vnd.erofs.layer.v1' : 'application/vnd.erofs.layer.v1+zstd';
      await assert.rejects(
        openVerifiedLayer(
          memorySource(blob),
          { ...layer, mediaType: other, chunkIndex: index },
          {
            name: 'layer 1',
            readIndexBlob: async () => payload,
          },
        ),
        { code: 'corrupt' },
      );
    }
  });
});
