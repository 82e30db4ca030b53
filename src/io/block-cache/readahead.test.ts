import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBlockCache } from '../block-cache.ts';
import { BlockGrid } from '../block-grid.ts';
import { Readahead, ReadaheadStreams } from './readahead.ts';
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

test('ReadaheadStreams opens a window on the second sequential read and doubles it per block crossed, up to the limit', () => {
  const streams = new ReadaheadStreams();
  const limits = { initial: 4096, max: 16_384 };
  const block = (offset: number) => Math.floor(offset / 4096);
  assert.equal(streams.advance(0, 4096, block(4095), limits), 0, 'a lone read is no stream');
  assert.equal(streams.advance(4096, 8192, block(8191), limits), 4096);
  assert.equal(streams.advance(8192, 9000, block(8999), limits), 8192);
  assert.equal(streams.advance(9000, 10_000, block(9999), limits), 8192, 'no block crossed: no growth');
  assert.equal(streams.advance(10_000, 16_384, block(16_383), limits), 16_384);
  assert.equal(streams.advance(16_384, 20_480, block(20_479), limits), 16_384, 'capped at max');
  assert.equal(
    streams.advance(10_000_000, 10_004_096, block(10_004_095), limits),
    0,
    'a far read starts anew',
  );
  assert.equal(streams.advance(20_480, 24_576, block(24_575), limits), 16_384, 'the first stream goes on');
});

test('Readahead plans the missing blocks of a stream, stops at blocks read through, and forgets that once re-read', () => {
  const grid = new BlockGrid(64 * 4096, 4096);
  const ahead = new Readahead(grid, { initial: 4 * 4096, max: 8 * 4096 }, 64 * 4096);
  const none = () => false;
  assert.deepEqual(ahead.plan(0, 4096, 0, 0, none), []);
  assert.deepEqual(ahead.plan(4096, 8192, 1, 1, none), [2, 3, 4, 5]);
  // Blocks 8 onwards were read through and evicted: the reader has them, readahead stops before them.
  for (let block = 8; block < 12; block++) ahead.evicted(block, true);
  assert.deepEqual(
    ahead.plan(8192, 12_288, 2, 2, (b) => b <= 3),
    [4, 5, 6, 7],
  );
  // Reading block 8 again shows its reader lost it: the run of such blocks it starts is fetched again.
  const fresh = new Readahead(grid, { initial: 4 * 4096, max: 4 * 4096 }, 64 * 4096);
  for (let block = 8; block < 12; block++) fresh.evicted(block, true);
  fresh.plan(7 * 4096, 8 * 4096, 7, 7, none);
  assert.deepEqual(fresh.plan(8 * 4096, 9 * 4096, 8, 8, none), [9, 10, 11, 12]);
  assert.deepEqual(new Readahead(grid, false, 64 * 4096).plan(0, 8192, 0, 1, none), []);
});

test('Readahead keeps the blocks it started and no read asked for within half the memory budget', () => {
  const grid = new BlockGrid(64 * 4096, 4096);
  const ahead = new Readahead(grid, { initial: 8 * 4096, max: 8 * 4096 }, 8 * 4096);
  ahead.plan(0, 4096, 0, 0, () => false);
  const planned = ahead.plan(4096, 8192, 1, 1, () => false);
  assert.deepEqual(planned, [2, 3, 4, 5], 'four blocks: half of an eight-block budget');
  for (const block of planned) ahead.started(block, new Promise(() => {}));
  assert.deepEqual(
    ahead.plan(8192, 12_288, 2, 2, () => false),
    [],
    'nothing more while they are unread',
  );
  ahead.asked(2);
  ahead.asked(3);
  assert.deepEqual(
    ahead.plan(12_288, 16_384, 3, 3, (b) => b <= 5),
    [6, 7],
  );
});
