import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockGrid } from '../block-grid.ts';
import { ReadCoverage } from './read-coverage.ts';

test('ReadCoverage calls a kept block complete once reads covered each of its pages, a short last page included', () => {
  const grid = new BlockGrid(3 * 8192 + 100, 8192);
  const kept = new Set([0, 1, 3]);
  const coverage = new ReadCoverage(grid, (block) => kept.has(block));
  coverage.mark(0, 4096);
  assert.equal(coverage.isComplete(0), false);
  coverage.mark(4095, 2); // one byte of each page: page 0 again, page 1 newly
  assert.equal(coverage.isComplete(0), true);
  coverage.mark(8192 + 100, 3 * 8192 - 100); // block 1 from its first page on, block 2 (not kept), block 3
  assert.equal(coverage.isComplete(1), true);
  assert.equal(coverage.isComplete(2), false);
  assert.equal(coverage.isComplete(3), true, 'the last block is one 100-byte page');
  coverage.forget(1);
  assert.equal(coverage.isComplete(1), false);
  coverage.mark(0, 0);
  coverage.clear();
  assert.equal(coverage.isComplete(0), false);
});
