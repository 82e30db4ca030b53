import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBlockCache } from '../block-cache.ts';
import fc from 'fast-check';
import { FetchSlots } from './fetch-slots.ts';
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

test('FetchSlots never grants more than its slots, wakes a waiter on every release, demand first, each kind in order', async () => {
  const step = fc.constantFrom('release' as const, 'demand' as const, 'readahead' as const);
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 4 }),
      fc.array(step, { maxLength: 60 }),
      async (max, steps) => {
        const slots = new FetchSlots(max);
        let held = 0;
        const waiting: { priority: 'demand' | 'readahead'; id: number }[] = [];
        let grantedNow: number[] = [];
        for (const [id, s] of steps.entries()) {
          const before = [...waiting];
          if (s === 'release') {
            if (held === 0) continue;
            held--;
            slots.release();
          } else {
            const entry = { priority: s, id };
            waiting.push(entry);
            void slots.acquire(s).then(() => {
              waiting.splice(waiting.indexOf(entry), 1);
              held++;
              grantedNow.push(id);
            });
          }
          await new Promise((resolve) => setImmediate(resolve));
          assert.ok(held <= max, `${held} slots held of ${max}`);
          // Slots free while someone waits would be a lost wake-up.
          if (waiting.length > 0) assert.equal(held, max);
          if (s === 'release' && before.length > 0) {
            const next = before.find((e) => e.priority === 'demand') ?? (before[0] as { id: number });
            assert.deepEqual(grantedNow, [next.id]);
          }
          grantedNow = [];
        }
      },
    ),
  );
});
