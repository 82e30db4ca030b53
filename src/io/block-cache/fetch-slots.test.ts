import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBlockCache } from '../block-cache.ts';
import { random } from '../../../test-support/block-cache-origins.ts';

test('createBlockCache serves demand reads before queued readahead', async () => {
  const size = 1 << 20;
  const bytes = random(size);
  const order: number[] = [];
  const cache = createBlockCache(
    async (offset, length) => {
      order.push(offset);
      await new Promise((resolve) => setTimeout(resolve, 5));
      return bytes.slice(offset, offset + length);
    },
    { size, blockSize: 4096, parallel: 1, readahead: { initial: 65_536, max: 65_536 }, maxFetchBytes: 4096 },
  );
  // Offset 0 starts a stream: block 0 is fetched on demand and 16 blocks of readahead are queued.
  await cache.read(0, 10);
  // A random read arriving now overtakes the queued readahead.
  const jump = cache.read(800_000, 10);
  assert.deepEqual(await jump, bytes.subarray(800_000, 800_010));
  assert.ok(
    order.indexOf(Math.floor(800_000 / 4096) * 4096) <= 3,
    `demand fetch ran early: ${order.slice(0, 5)}`,
  );
  await cache.close();
});
