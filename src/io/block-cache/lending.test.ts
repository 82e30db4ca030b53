import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { digestOf, origin, random } from '../../../test-support/block-cache-origins.ts';
import { createBlockCache } from '../block-cache.ts';

test('createBlockCache recycles block buffers only when nothing holds them: lent bytes stay right until released, read bytes for good', async () => {
  const blockSize = 4096;
  const bytes = random(48 * blockSize - 1000);
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.record({
          offset: fc.nat(bytes.byteLength - 1),
          length: fc.integer({ min: 1, max: 3 * blockSize }),
          lend: fc.boolean(),
          holdTicks: fc.nat(6),
        }),
        { minLength: 1, maxLength: 60 },
      ),
      fc.boolean(),
      async (reads, verify) => {
        const source = origin(bytes, { jitter: () => Math.random() * 2, stream: 1500 });
        const cache = createBlockCache(source.fetch, {
          size: bytes.byteLength,
          blockSize,
          memoryBytes: 4 * blockSize,
          readahead: { initial: blockSize, max: 4 * blockSize },
          ...(verify ? { digest: digestOf(bytes) } : {}),
        });
        const kept: [Uint8Array, number][] = [];
        const tasks = reads.map(async (r, i) => {
          const length = Math.min(r.length, bytes.byteLength - r.offset);
          const expected = bytes.subarray(r.offset, r.offset + length);
          await new Promise((resolve) => setTimeout(resolve, i % 3));
          if (!r.lend) {
            const got = await cache.read(r.offset, length);
            assert.deepEqual(got, expected);
            kept.push([got, r.offset]);
            return;
          }
          const loan = await cache.lend(r.offset, length);
          for (let t = 0; t < r.holdTicks; t++) await new Promise((resolve) => setImmediate(resolve));
          assert.deepEqual(loan.bytes, expected, 'lent bytes changed before their release');
          loan.release();
          loan.release(); // a second release is harmless
        });
        await Promise.all(tasks);
        // Streaming through a small budget once more recycles buffers; what reads returned stays intact.
        for (let at = 0; at < bytes.byteLength; at += blockSize) {
          const loan = await cache.lend(at, Math.min(blockSize, bytes.byteLength - at));
          loan.release();
        }
        for (const [got, offset] of kept)
          assert.deepEqual(got, bytes.subarray(offset, offset + got.byteLength));
        await cache.close();
      },
    ),
    { numRuns: 40 },
  );
});

test('createBlockCache reuses block buffers for a stream read through lent views', async () => {
  const blockSize = 4096;
  const bytes = random(64 * blockSize);
  const source = origin(bytes, { stream: 1000 });
  const cache = createBlockCache(source.fetch, {
    size: bytes.byteLength,
    blockSize,
    memoryBytes: 8 * blockSize,
    readahead: { initial: blockSize, max: 4 * blockSize },
    digest: digestOf(bytes),
  });
  for (let at = 0; at < bytes.byteLength; at += blockSize / 2) {
    const loan = await cache.lend(at, blockSize / 2);
    assert.deepEqual(loan.bytes, bytes.subarray(at, at + blockSize / 2));
    loan.release();
  }
  const stats = cache.stats();
  assert.equal(stats.verification, 'verified');
  assert.ok(stats.buffersReused > 32, `${stats.buffersReused} buffers reused of 64 blocks`);
  await cache.close();
});
