import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBlockCache } from '../block-cache.ts';
import { origin, random } from '../../../test-support/block-cache-origins.ts';

test('createBlockCache reads ahead of a sequential stream with a growing window', async () => {
  const size = 4 << 20;
  const bytes = random(size);
  const source = origin(bytes, { jitter: () => 1 });
  const cache = createBlockCache(source.fetch, {
    size,
    blockSize: 64 * 1024,
    readahead: { initial: 64 * 1024, max: 1 << 20 },
    maxFetchBytes: 1 << 20,
  });
  const chunk = 32 * 1024;
  for (let offset = 0; offset < size; offset += chunk) {
    assert.deepEqual(await cache.read(offset, chunk), bytes.subarray(offset, offset + chunk));
  }
  const stats = cache.stats();
  assert.ok(stats.readaheadBlocks > 50, `most blocks were read ahead (${stats.readaheadBlocks})`);
  assert.ok(source.calls.length < 20, `few large fetches (${source.calls.length})`);
  assert.ok(Math.max(...source.calls.map(([, length]) => length)) >= 512 * 1024, 'the window grew');
  assert.equal(stats.bytesFetched, size, 'nothing fetched twice');

  // Random reads do not trigger readahead.
  const scattered = origin(bytes);
  const cold = createBlockCache(scattered.fetch, {
    size,
    blockSize: 64 * 1024,
    readahead: { initial: 64 * 1024, max: 1 << 20 },
  });
  for (const offset of [3_000_000, 100_000, 2_000_000, 700_000]) await cold.read(offset, 100);
  assert.equal(cold.stats().readaheadBlocks, 0);
  assert.equal(scattered.calls.length, 4);
});

test('createBlockCache does not read ahead of reads that hop through consecutive blocks', async () => {
  // One small file of each of many directories, files stored round-robin: reads half a block apart touch
  // every block in turn without being a stream.
  const blockSize = 1 << 20;
  const size = 32 * blockSize;
  const source = origin(random(size));
  const cache = createBlockCache(source.fetch, { size, blockSize, memoryBytes: 8 * blockSize });
  for (let offset = 0; offset + 4096 <= size; offset += blockSize / 2) await cache.read(offset, 4096);
  assert.equal(cache.stats().readaheadBlocks, 0);
  assert.equal(cache.stats().bytesFetched, size, 'each block fetched once, nothing more');
});

test('createBlockCache keeps readahead no read has asked for within half the memory budget', async () => {
  const blockSize = 64 * 1024;
  const size = 64 * blockSize;
  const source = origin(random(size), { jitter: () => 1 });
  const cache = createBlockCache(source.fetch, {
    size,
    blockSize,
    memoryBytes: 8 * blockSize,
    readahead: { initial: blockSize, max: 16 * blockSize },
    maxFetchBytes: 16 * blockSize,
  });
  // Several streams at once, as threads of a copy working on regions of their own.
  for (let step = 0; step < 6; step++) {
    await Promise.all([0, 20, 40].map((start) => cache.read((start + step) * blockSize, 4096)));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  const read = 3 * 6;
  assert.ok(cache.stats().readaheadBlocks > 0, 'the streams were read ahead');
  assert.ok(
    cache.stats().bytesFetched <= (read + 4) * blockSize,
    `at most 4 blocks (half of 8) fetched ahead of the reads: ${cache.stats().bytesFetched / blockSize} blocks`,
  );
  await cache.close();
});

test('createBlockCache does not read ahead into a region another stream has read through', async () => {
  // nbdcopy's threads: one copies the first half while another has already copied the second.
  const blockSize = 64 * 1024;
  const size = 64 * blockSize;
  const bytes = random(size);
  const source = origin(bytes);
  const cache = createBlockCache(source.fetch, {
    size,
    blockSize,
    memoryBytes: 16 * blockSize,
    readahead: { initial: blockSize, max: 8 * blockSize },
    maxFetchBytes: 8 * blockSize,
  });
  const copy = async (from: number, to: number) => {
    for (let offset = from; offset < to; offset += 16 * 1024) {
      assert.deepEqual(await cache.read(offset, 16 * 1024), bytes.subarray(offset, offset + 16 * 1024));
    }
  };
  await copy(size / 2, size);
  await copy(0, size / 2);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(cache.stats().bytesFetched, size, 'no block fetched twice');
  // Read again (the reader's own cache dropped), the first half streams with readahead as before.
  const before = source.calls.length;
  await copy(0, size / 2);
  assert.ok(
    source.calls.length - before < 16,
    `few fetches for 32 blocks: ${JSON.stringify(source.calls.slice(before).map(([o, l]) => [o / blockSize, l / blockSize]))}`,
  );
  await cache.close();
});
