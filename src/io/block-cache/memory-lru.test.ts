import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { createBlockCache } from '../block-cache.ts';
import { BlockGrid } from '../block-grid.ts';
import { MemoryLru } from './memory-lru.ts';
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

test('MemoryLru keeps the budget and evicts the least recently used block read through, else the least recently used', () => {
  const blockSize = 8192;
  const blocks = 12;
  const op = fc.oneof(
    fc.record({ kind: fc.constant('put' as const), block: fc.nat(blocks - 1), short: fc.boolean() }),
    fc.record({ kind: fc.constant('get' as const), block: fc.nat(blocks - 1) }),
    fc.record({
      kind: fc.constant('read' as const),
      offset: fc.nat(blocks * blockSize - 1),
      length: fc.integer({ min: 1, max: 3 * blockSize }),
    }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 80 }), fc.integer({ min: 2, max: 5 }), (ops, budgetBlocks) => {
      const grid = new BlockGrid(blocks * blockSize, blockSize);
      const budget = budgetBlocks * blockSize;
      // The model: blocks in LRU order, and the pages of each that reads covered.
      let order: number[] = [];
      const held = new Map<number, Uint8Array>();
      const pages = new Map<number, Set<number>>();
      const evictions: [number, boolean][] = [];
      const lru = new MemoryLru(grid, budget, (block, bytes, readThrough) => {
        assert.equal(bytes, held.get(block), 'evicted with the bytes it was given');
        evictions.push([block, readThrough]);
      });
      const readThrough = (block: number) => (pages.get(block)?.size ?? 0) === blockSize / 4096;
      for (const step of ops) {
        if (step.kind === 'put') {
          const bytes = new Uint8Array(step.short ? blockSize / 2 : blockSize);
          evictions.length = 0;
          const expected: [number, boolean][] = [];
          order = order.filter((b) => b !== step.block);
          order.push(step.block);
          held.set(step.block, bytes);
          let total = [...held.values()].reduce((n, b) => n + b.byteLength, 0);
          while (total > budget) {
            const victim = order.find((b) => readThrough(b)) ?? (order[0] as number);
            expected.push([victim, readThrough(victim)]);
            order = order.filter((b) => b !== victim);
            total -= (held.get(victim) as Uint8Array).byteLength;
            pages.delete(victim);
            // The callback checks the bytes against `held`: remove after it ran (below).
          }
          assert.equal(lru.put(step.block, bytes), true);
          assert.deepEqual(evictions, expected);
          for (const [victim] of expected) held.delete(victim);
        } else if (step.kind === 'get') {
          const got = lru.get(step.block);
          assert.equal(got, held.get(step.block));
          if (got) order = [...order.filter((b) => b !== step.block), step.block];
        } else {
          const end = Math.min(step.offset + step.length, blocks * blockSize);
          lru.markRead(step.offset, end - step.offset);
          for (let page = Math.floor(step.offset / 4096); page <= Math.floor((end - 1) / 4096); page++) {
            const block = Math.floor((page * 4096) / blockSize);
            if (!held.has(block)) continue;
            const set = pages.get(block) ?? new Set<number>();
            set.add(page);
            pages.set(block, set);
          }
        }
        assert.ok(lru.bytes <= budget);
        assert.equal(
          lru.bytes,
          [...held.values()].reduce((n, b) => n + b.byteLength, 0),
        );
        for (let block = 0; block < blocks; block++) assert.equal(lru.has(block), held.has(block));
      }
    }),
  );
});

test('MemoryLru refuses a block larger than its whole budget and keeps what it holds', () => {
  const grid = new BlockGrid(4 * 8192, 8192);
  const evicted: number[] = [];
  const lru = new MemoryLru(grid, 4096, (block) => evicted.push(block));
  const small = new Uint8Array(4096);
  assert.equal(lru.put(0, small), true);
  assert.equal(lru.put(1, new Uint8Array(8192)), false);
  assert.equal(lru.peek(0), small);
  assert.equal(lru.has(1), false);
  assert.deepEqual(evicted, []);
});
