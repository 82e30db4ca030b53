import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { BlockGrid } from './block-grid.ts';

test('without anchors, blocks are blockSize from 0 and the last is short', () => {
  const grid = new BlockGrid(2500, 1024);
  assert.equal(grid.count, 3);
  assert.deepEqual(
    [0, 1, 2].map((b) => [grid.start(b), grid.length(b)]),
    [
      [0, 1024],
      [1024, 1024],
      [2048, 452],
    ],
  );
  assert.equal(grid.blockOf(2047), 1);
  assert.equal(new BlockGrid(0, 1024).count, 0);
});

test('anchors start blocks: an EROFS superblock alone, metadata on its own grid', () => {
  const mib = 1 << 20;
  const grid = new BlockGrid(10 * mib, mib, [4096, 5 * mib + 12288]);
  assert.deepEqual([grid.start(0), grid.length(0)], [0, 4096]);
  assert.deepEqual([grid.start(1), grid.length(1)], [4096, mib]);
  const meta = grid.blockOf(5 * mib + 12288);
  assert.equal(grid.start(meta), 5 * mib + 12288);
  assert.equal(grid.length(meta - 1), 5 * mib + 12288 - grid.start(meta - 1));
  assert.equal(grid.end(grid.count - 1), 10 * mib);
});

test('anchors outside the object or repeated are ignored', () => {
  const grid = new BlockGrid(4096, 1024, [0, 4096, 9999, 2048, 2048, -5]);
  assert.deepEqual(grid.anchors, [2048]);
  assert.equal(grid.count, 4);
});

test('property: blocks tile the object, each anchor starts one, and blockOf inverts start', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 1 << 22 }),
      fc.integer({ min: 512, max: 1 << 18 }),
      fc.array(fc.integer({ min: -10, max: (1 << 22) + 10 }), { maxLength: 6 }),
      (size, blockSize, anchors) => {
        const grid = new BlockGrid(size, blockSize, anchors);
        let at = 0;
        for (let block = 0; block < grid.count; block++) {
          assert.equal(grid.start(block), at);
          const length = grid.length(block);
          assert.ok(length > 0 && length <= blockSize);
          assert.equal(grid.blockOf(at), block);
          assert.equal(grid.blockOf(at + length - 1), block);
          at += length;
        }
        assert.equal(at, size);
        for (const anchor of grid.anchors) assert.equal(grid.start(grid.blockOf(anchor)), anchor);
      },
    ),
    { numRuns: 300 },
  );
});
