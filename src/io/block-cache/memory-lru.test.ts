import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBlockCache } from '../block-cache.ts';
import { origin, random } from '../../../test-support/block-cache-origins.ts';

test('createBlockCache evicts blocks read through before blocks read in part', async () => {
  const bytes = random(40_000);
  const source = origin(bytes);
  const cache = createBlockCache(source.fetch, {
    size: bytes.byteLength,
    blockSize: 8192,
    readahead: false,
    memoryBytes: 3 * 8192,
  });
  await cache.read(8192, 100); // block 1, its first page only (least recently used)
  await cache.read(0, 8192); // block 0, read through
  await cache.read(16_384, 100); // block 2, in part
  await cache.read(24_576, 100); // block 3: one block must go
  // LRU alone would drop block 1; block 0 goes instead, as its reader has all of it already.
  const before = source.calls.length;
  assert.deepEqual(await cache.read(12_288, 900), bytes.subarray(12_288, 13_188));
  assert.equal(source.calls.length, before, 'block 1 is still in memory');
  assert.deepEqual(await cache.read(0, 10), bytes.subarray(0, 10));
  assert.equal(source.calls.length, before + 1, 'block 0 was evicted');
});

test('createBlockCache evicts least recently used blocks beyond the memory budget', async () => {
  const bytes = random(8192);
  const source = origin(bytes);
  const cache = createBlockCache(source.fetch, {
    size: 8192,
    blockSize: 1024,
    memoryBytes: 2048,
    readahead: false,
  });
  await cache.read(0, 1); // block 0
  await cache.read(1024, 1); // block 1
  await cache.read(0, 1); // block 0 becomes most recent
  await cache.read(2048, 1); // block 2 evicts block 1
  assert.equal(source.calls.length, 3);
  await cache.read(0, 1);
  assert.equal(source.calls.length, 3, 'block 0 still cached');
  await cache.read(1024, 1);
  assert.equal(source.calls.length, 4, 'block 1 was evicted');
});
