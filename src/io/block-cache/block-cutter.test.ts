import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { BlockGrid } from '../block-grid.ts';
import { BlockCutter } from './block-cutter.ts';

test('BlockCutter hands on each block of a range once, in order, whole, however the bytes are chunked', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 1, maxLength: 6000 }),
      fc.array(fc.integer({ min: 1, max: 2000 }), { minLength: 1, maxLength: 20 }),
      fc.array(fc.integer({ min: 1, max: 5999 }), { maxLength: 3 }),
      fc.nat(),
      (bytes, sizes, anchors, pick) => {
        const grid = new BlockGrid(bytes.byteLength, 512, anchors);
        const first = pick % grid.count;
        const count = 1 + ((pick >> 4) % (grid.count - first));
        const start = grid.start(first);
        const end = grid.end(first + count - 1);
        const got: [number, Uint8Array][] = [];
        const cutter = new BlockCutter(grid, first, count, (i, block) => got.push([i, block.slice()]));
        for (let at = start, i = 0; at < end; i++) {
          const n = sizes[i % sizes.length] as number;
          cutter.push(bytes.subarray(at, Math.min(end + 7, at + n)));
          assert.equal(cutter.completed, got.length);
          at += n;
        }
        assert.deepEqual(
          got,
          [...Array(count).keys()].map((i) => [i, bytes.slice(grid.start(first + i), grid.end(first + i))]),
        );
      },
    ),
  );
});
