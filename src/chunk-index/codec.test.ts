import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ErofsOciError, isErofsOciError } from '../errors.ts';
import {
  type ChunkHashSize,
  type ChunkIndex,
  decodeChunkIndex,
  encodeChunkIndex,
  findChunk,
  locateChunk,
  payloadSize,
} from './codec.ts';
import { chunkIndexHeader } from './format.ts';

/** Random valid indexes: ascending chunk starts from 0, below the image size. */
function arbitraryIndex(): fc.Arbitrary<ChunkIndex> {
  return fc
    .record({
      compression: fc.constantFrom('none' as const, 'zstd' as const),
      hashSize: fc.constantFrom<ChunkHashSize>(0, 32, 64),
      lengths: fc.array(fc.integer({ min: 1, max: 2 ** 40 }), { maxLength: 20 }),
      gaps: fc.array(fc.integer({ min: 1, max: 2 ** 30 }), { minLength: 20, maxLength: 20 }),
      seed: fc.uint8Array({ minLength: 64, maxLength: 64 }),
    })
    .map(({ compression, hashSize, lengths, gaps, seed }) => {
      let u = 0;
      let b = 0;
      const entries = lengths.map((length, i) => {
        const e = {
          blockOffset: b,
          uncompressedOffset: u,
          checksum: seed.slice(0, hashSize).map((x) => x ^ i),
        };
        u += length;
        b += compression === 'none' ? length : gaps[i]!;
        return e;
      });
      return { compression, hashSize, uncompressedSize: u, entries };
    });
}

function assertCode(fn: () => unknown, codes: string[]): void {
  assert.throws(fn, (e: unknown) => e instanceof ErofsOciError && codes.includes(e.code));
}

describe('chunk index codec', () => {
  it('decode(encode(index)) is the index, of exactly the announced size', () => {
    fc.assert(
      fc.property(arbitraryIndex(), (index) => {
        const bytes = encodeChunkIndex(index);
        assert.equal(bytes.byteLength, payloadSize(index.entries.length, index.hashSize));
        assert.deepEqual(decodeChunkIndex(bytes), index);
      }),
    );
  });

  it('lays out the header as spec.md §3.4.1 says', () => {
    const bytes = encodeChunkIndex({
      compression: 'zstd',
      hashSize: 32,
      uncompressedSize: 0x0102030405,
      entries: [{ blockOffset: 7, uncompressedOffset: 0, checksum: new Uint8Array(32).fill(0xaa) }],
    });
    assert.deepEqual([...bytes.subarray(0, 4)], [0xcd, 0xe4, 0xec, 0x67]);
    assert.equal(bytes[4], 1); // version
    assert.equal(bytes[5], 1); // zstd
    assert.deepEqual([...bytes.subarray(8, 16)], [5, 4, 3, 2, 1, 0, 0, 0]);
    assert.deepEqual([...bytes.subarray(16, 20)], [1, 0, 0, 0]);
    assert.equal(bytes[20], 1); // SHA-2
    assert.equal(bytes[21], 32);
    assert.deepEqual([...bytes.subarray(22, 32)], new Array(10).fill(0));
    assert.deepEqual([...bytes.subarray(32, 40)], [7, 0, 0, 0, 0, 0, 0, 0]);
    assert.equal(bytes.byteLength, 32 + 48);
  });

  it('an empty layer has a valid header and no entries', () => {
    const bytes = encodeChunkIndex({ compression: 'none', hashSize: 32, uncompressedSize: 0, entries: [] });
    assert.equal(bytes.byteLength, 32);
    assert.deepEqual(decodeChunkIndex(bytes).entries, []);
  });

  it('any changed byte of the header or the entry offsets is an error or decodes to a different index', () => {
    fc.assert(
      fc.property(
        arbitraryIndex().filter((i) => i.entries.length > 0),
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        (index, at, xor) => {
          const bytes = encodeChunkIndex(index);
          const p = at % bytes.byteLength;
          bytes[p]! ^= xor;
          try {
            assert.notDeepEqual(decodeChunkIndex(bytes), index);
          } catch (e) {
            if (e instanceof assert.AssertionError) throw e;
            assert.ok(isErofsOciError(e), String(e));
            assert.ok(['corrupt', 'unsupported'].includes((e as ErofsOciError).code));
          }
        },
      ),
    );
  });

  it('refuses wrong magic, reserved bytes, truncation and trailing bytes as corrupt', () => {
    const good = encodeChunkIndex({
      compression: 'none',
      hashSize: 32,
      uncompressedSize: 10,
      entries: [{ blockOffset: 0, uncompressedOffset: 0, checksum: new Uint8Array(32) }],
    });
    const patched = (at: number, value: number) => {
      const b = good.slice();
      b[at] = value;
      return b;
    };
    assertCode(() => decodeChunkIndex(patched(0, 0)), ['corrupt']);
    assertCode(() => decodeChunkIndex(patched(chunkIndexHeader.offsetOf('reserved') + 3, 1)), ['corrupt']);
    assertCode(() => decodeChunkIndex(good.subarray(0, good.byteLength - 1)), ['corrupt']);
    assertCode(() => decodeChunkIndex(new Uint8Array([...good, 0])), ['corrupt']);
    assertCode(() => decodeChunkIndex(good.subarray(0, 31)), ['corrupt']);
    // hash size without an algorithm
    const noAlgo = patched(20, 0);
    assertCode(() => decodeChunkIndex(noAlgo), ['corrupt']);
    // unknown formats: the reader falls back to sequential reads
    assertCode(() => decodeChunkIndex(patched(4, 2)), ['unsupported']); // version
    assertCode(() => decodeChunkIndex(patched(5, 2)), ['unsupported']); // compression type
    assertCode(() => decodeChunkIndex(patched(6, 1)), ['unsupported']); // flags
    assertCode(() => decodeChunkIndex(patched(20, 2)), ['unsupported']); // hash family
  });

  it('refuses entries out of order or not starting at 0', () => {
    const e = (blockOffset: number, uncompressedOffset: number) => ({
      blockOffset,
      uncompressedOffset,
      checksum: new Uint8Array(0),
    });
    const bad: ChunkIndex[] = [
      { compression: 'none', hashSize: 0, uncompressedSize: 10, entries: [e(0, 1)] },
      { compression: 'none', hashSize: 0, uncompressedSize: 10, entries: [e(0, 0), e(5, 0)] },
      { compression: 'none', hashSize: 0, uncompressedSize: 10, entries: [e(0, 0), e(10, 10)] },
      { compression: 'zstd', hashSize: 0, uncompressedSize: 10, entries: [e(4, 0), e(4, 5)] },
      { compression: 'none', hashSize: 0, uncompressedSize: 10, entries: [] },
    ];
    for (const index of bad) assertCode(() => encodeChunkIndex(index), ['corrupt']);
  });

  it('findChunk and locateChunk agree with a linear scan', () => {
    fc.assert(
      fc.property(
        arbitraryIndex().filter((i) => i.entries.length > 0),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (index, where) => {
          const offset = Math.floor(where * index.uncompressedSize);
          const i = findChunk(index, offset);
          const end = index.entries.at(-1)!.blockOffset + 1_000_000;
          const c = locateChunk(index, i, end);
          assert.ok(c.uncompressedOffset <= offset && offset < c.uncompressedOffset + c.uncompressedLength);
          assert.ok(c.blockLength > 0);
          const total = index.entries.reduce(
            (sum, _, k) => sum + locateChunk(index, k, end).uncompressedLength,
            0,
          );
          assert.equal(total, index.uncompressedSize);
        },
      ),
    );
  });
});
