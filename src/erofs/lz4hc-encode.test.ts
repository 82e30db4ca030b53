import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { lz4DecodeBlock } from './decompress.ts';
import { lz4CompressDestSize } from './lz4-encode.ts';
import { lz4hcAttempts, lz4hcCompressDestSize } from './lz4hc-encode.ts';
import { lz4Available, lz4ToolDecode, lz4ToolSize } from './lz4-testing.ts';
import { pattern } from './mkfs-fixtures.ts';

/** Inputs with repeats at many distances and lengths, long runs, and incompressible stretches. */
const inputArb = fc
  .array(
    fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 300 }),
      fc.record({
        text: fc.constantFrom('a', 'abc', 'erofs ', 'zz', '\0', 'abcdefghijklmnopqrstuvwxyz0123'),
        times: fc.integer({ min: 1, max: 3000 }),
      }),
    ),
    { maxLength: 40 },
  )
  .map((parts) =>
    Buffer.concat(parts.map((p) => (p instanceof Uint8Array ? p : Buffer.from(p.text.repeat(p.times))))),
  );

/** Text-like data: words drawn from a small vocabulary (what lazy matching gains most on). */
function words(count: number, seed: number): Buffer {
  const vocabulary = ['alpha ', 'beta ', 'gamma\n', 'erofs ', 'kernel ', 'pcluster ', 'zstd ', 'lz4 ', 'hc '];
  return Buffer.from(Array.from(pattern(count, seed), (c) => vocabulary[c % vocabulary.length]).join(''));
}

describe('lz4hcCompressDestSize', () => {
  test('round-trips through our decoder at every level, within the capacity', () => {
    fc.assert(
      fc.property(
        inputArb,
        fc.integer({ min: 1, max: 70_000 }),
        fc.integer({ min: 0, max: 12 }),
        (input, capacity, level) => {
          const { output, consumed } = lz4hcCompressDestSize(input, capacity, level);
          assert.ok(output.byteLength <= capacity);
          assert.ok(consumed <= input.byteLength);
          assert.deepEqual(Buffer.from(lz4DecodeBlock(output, consumed)), input.subarray(0, consumed));
          if (capacity >= input.byteLength + Math.ceil(input.byteLength / 255) + 16) {
            assert.equal(consumed, input.byteLength);
          }
        },
      ),
      { numRuns: 400 },
    );
  });

  test('packs more input into a full pcluster than the fast encoder, more with a higher level', () => {
    const input = Buffer.concat([words(60_000, 7), pattern(30_000, 3), words(60_000, 11)]);
    const fast = lz4CompressDestSize(input, 65536);
    const hc3 = lz4hcCompressDestSize(input, 65536, 3);
    const hc9 = lz4hcCompressDestSize(input, 65536, 9);
    for (const r of [hc3, hc9]) {
      assert.deepEqual(Buffer.from(lz4DecodeBlock(r.output, r.consumed)), input.subarray(0, r.consumed));
    }
    assert.ok(hc3.consumed > fast.consumed, `${hc3.consumed} > ${fast.consumed}`);
    assert.ok(hc9.consumed >= hc3.consumed, `${hc9.consumed} >= ${hc3.consumed}`);
  });

  test('levels map to lz4hc chain lengths', () => {
    assert.equal(lz4hcAttempts(0), 256);
    assert.equal(lz4hcAttempts(3), 4);
    assert.equal(lz4hcAttempts(9), 256);
    assert.equal(lz4hcAttempts(12), 16384);
  });

  test('the lz4 tool decodes our blocks', { skip: lz4Available ? false : 'needs the lz4 tool' }, async () => {
    const input = Buffer.concat([words(40_000, 5), Buffer.alloc(100_000), pattern(20_000, 1)]);
    const { output, consumed } = lz4hcCompressDestSize(input, 1 << 20, 9);
    assert.equal(consumed, input.byteLength);
    assert.ok((await lz4ToolDecode(output)).equals(input));
    // Within a few percent of the lz4 tool's own HC level 9 on the same data.
    const reference = await lz4ToolSize(input, 9);
    assert.ok(output.byteLength < reference * 1.05, `${output.byteLength} vs lz4 -9 ${reference}`);
  });
});
