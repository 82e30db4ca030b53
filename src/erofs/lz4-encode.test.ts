import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { lz4DecodeBlock } from './decompress.ts';
import { lz4CompressDestSize } from './lz4-encode.ts';
import { lz4Available, lz4ToolDecode } from './lz4-testing.ts';
import { pattern } from './mkfs-fixtures.ts';

/** Inputs with repeats at many distances and lengths, and incompressible stretches. */
const inputArb = fc
  .array(
    fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 300 }),
      fc.record({
        text: fc.constantFrom('a', 'abc', 'erofs ', 'zz'),
        times: fc.integer({ min: 1, max: 400 }),
      }),
    ),
    { maxLength: 40 },
  )
  .map((parts) =>
    Buffer.concat(parts.map((p) => (p instanceof Uint8Array ? p : Buffer.from(p.text.repeat(p.times))))),
  );

describe('lz4CompressDestSize', () => {
  test('round-trips through our decoder, within the capacity, taking everything when it fits', () => {
    fc.assert(
      fc.property(inputArb, fc.integer({ min: 1, max: 70_000 }), (input, capacity) => {
        const { output, consumed } = lz4CompressDestSize(input, capacity);
        assert.ok(output.byteLength <= capacity);
        assert.ok(consumed <= input.byteLength);
        assert.deepEqual(Buffer.from(lz4DecodeBlock(output, consumed)), input.subarray(0, consumed));
        if (capacity >= input.byteLength + Math.ceil(input.byteLength / 255) + 16) {
          assert.equal(consumed, input.byteLength);
        }
      }),
      { numRuns: 500 },
    );
  });

  test('fills a 4 KiB pcluster with more than 4 KiB of compressible input', () => {
    const words = ['alpha ', 'beta ', 'gamma\n', 'erofs ', 'kernel ', 'pcluster ', 'zstd ', 'lz4 '];
    const choice = pattern(20_000, 5);
    const input = Buffer.from(Array.from(choice, (c) => words[c % words.length]).join(''));
    const { output, consumed } = lz4CompressDestSize(input, 4096);
    assert.ok(output.byteLength <= 4096 && output.byteLength > 4000, String(output.byteLength));
    assert.ok(consumed > 8192 && consumed < input.byteLength, String(consumed));
  });

  test('the lz4 tool decodes our blocks', { skip: lz4Available ? false : 'needs the lz4 tool' }, async () => {
    const input = Buffer.concat([
      Buffer.from('abcdefgh'.repeat(5000)),
      pattern(20_000, 1),
      Buffer.from('x'.repeat(70_000)),
    ]);
    const { output, consumed } = lz4CompressDestSize(input, 1 << 20);
    assert.equal(consumed, input.byteLength);
    assert.ok((await lz4ToolDecode(output)).equals(input));
  });
});
