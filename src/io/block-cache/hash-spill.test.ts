import assert from 'node:assert/strict';
import { test } from 'node:test';
import { random } from '../../../test-support/block-cache-origins.ts';
import { BlockGrid } from '../block-grid.ts';
import { HashSpill } from './hash-spill.ts';

test('HashSpill keeps blocks the hash still needs, within its bound, until closed', async () => {
  const grid = new BlockGrid(8 * 4096 - 100, 4096);
  const bytes = random(grid.size);
  const block = (b: number) => bytes.slice(grid.start(b), grid.end(b));
  const needed = new Set([0, 1, 2, 7]);
  const lines: string[] = [];
  const spill = new HashSpill({
    grid,
    maxBytes: 3 * 4096,
    needs: (b) => needed.has(b),
    log: (l) => lines.push(l),
  });
  assert.equal(spill.lookup(0), undefined, 'nothing kept: no file opened');
  spill.keep(0, block(0));
  spill.keep(7, block(7)); // the short last block
  needed.delete(1);
  spill.keep(1, block(1)); // no longer needed once the file is open: not written
  spill.keep(2, block(2)); // beyond the bound: not kept
  // Writes run in the background; a lookup waits for a block being written.
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(await spill.lookup(0), block(0));
  assert.deepEqual(await spill.lookup(7), block(7));
  assert.equal(await spill.lookup(1), null);
  assert.equal(await spill.lookup(2), null);
  await spill.close();
  assert.equal(spill.lookup(0), undefined);
  spill.keep(3, block(3));
  assert.equal(spill.lookup(3), undefined, 'closed for good');
  assert.deepEqual(lines, []);
});
