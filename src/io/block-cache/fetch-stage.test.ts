import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErofsOciError } from '../../errors.ts';
import { origin, random } from '../../../test-support/block-cache-origins.ts';
import { createBlockCache } from '../block-cache.ts';
import { BlockGrid } from '../block-grid.ts';
import type { FetchStage } from './fetch-stage.ts';

/** A stage that changes every byte, so that the tests see what it returned, not what was fetched. */
const inverted: FetchStage = (_block, fetched) => fetched.map((b) => b ^ 0xff);

test('createBlockCache serves and caches what the fetch stage made of each whole fetched block', async () => {
  const bytes = random(10 * 4096 + 123);
  const source = origin(bytes, { stream: 1000, jitter: () => 1 });
  const seen: [number, number][] = [];
  const cache = createBlockCache(source.fetch, {
    size: bytes.byteLength,
    blockSize: 4096,
    anchors: [5000],
    readahead: false,
    stage: async (block, fetched) => {
      seen.push([block, fetched.byteLength]);
      await new Promise((resolve) => setTimeout(resolve, 1));
      return inverted(block, fetched);
    },
  });
  const expected = bytes.map((b) => b ^ 0xff);
  assert.deepEqual(await cache.read(3000, 30_000), expected.subarray(3000, 33_000));
  assert.deepEqual(await cache.read(0, bytes.byteLength), expected);
  assert.deepEqual(await cache.read(4096, 10), expected.subarray(4096, 4106));
  // Each block reached the stage once, whole (the anchor at 5000 cuts block 1 short).
  seen.sort((a, b) => a[0] - b[0]);
  const grid = new BlockGrid(bytes.byteLength, 4096, [5000]);
  assert.deepEqual(
    seen,
    [...Array(grid.count).keys()].map((block) => [block, grid.length(block)]),
  );
  assert.equal(seen[1]?.[1], 904);
  await cache.close();
});

test('createBlockCache fails the reads of a block its fetch stage refuses, caches nothing of it, and fetches it again', async () => {
  const bytes = random(4 * 4096);
  const source = origin(bytes);
  let refusals = 1;
  const cache = createBlockCache(source.fetch, {
    size: bytes.byteLength,
    blockSize: 4096,
    readahead: false,
    stage: (block, fetched) => {
      if (block === 2 && refusals-- > 0)
        throw new ErofsOciError('digest-mismatch', 'Cannot verify chunk 2: its digest differs');
      return fetched;
    },
  });
  await assert.rejects(cache.read(4096, 3 * 4096), { code: 'digest-mismatch' });
  const calls = source.calls.length;
  assert.deepEqual(await cache.read(4096, 4096), bytes.subarray(4096, 8192), 'the block before it was kept');
  assert.equal(source.calls.length, calls);
  assert.deepEqual(await cache.read(2 * 4096, 4096), bytes.subarray(8192, 12_288));
  assert.equal(source.calls.length, calls + 1, 'the refused block is fetched again');
  await cache.close();
});
