import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { createBlockCache, type RangeFetch } from './block-cache.ts';
import { origin, random, unavailable } from '../../test-support/block-cache-origins.ts';

test('createBlockCache returns exactly the source bytes for random concurrent reads', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        size: fc.integer({ min: 0, max: 40_000 }),
        blockSize: fc.constantFrom(512, 1000, 4096),
        memoryBytes: fc.constantFrom(0, 2048, 1 << 20),
        readahead: fc.constantFrom(false as const, { initial: 512, max: 4096 }),
        parallel: fc.integer({ min: 1, max: 4 }),
        maxFetchBytes: fc.constantFrom(512, 3000, 16_384),
        anchors: fc.array(fc.nat({ max: 41_000 }), { maxLength: 3 }),
        stream: fc.constantFrom(undefined, 100, 4096),
        seed: fc.integer(),
      }),
      fc.array(fc.array(fc.tuple(fc.nat(), fc.nat({ max: 9000 })), { minLength: 1, maxLength: 6 }), {
        minLength: 1,
        maxLength: 5,
      }),
      async (config, batches) => {
        const bytes = new Uint8Array(config.size).map((_, i) => (i * 31 + config.seed) & 0xff);
        let rng = config.seed;
        // Seeded delays of 0-2 ms, so fetches complete out of order but reproducibly.
        const jitter = () => {
          rng = (Math.imul(rng, 1103515245) + 12345) & 0x7fffffff;
          return rng % 3;
        };
        const source = origin(bytes, {
          jitter,
          ...(config.stream === undefined ? {} : { stream: config.stream }),
        });
        const cache = createBlockCache(source.fetch, { ...config, retries: 0 });
        const starts = new Set([0, ...config.anchors]);
        for (const batch of batches) {
          // Reads of one batch are in flight together.
          const reads = batch.map(([a, b]) => {
            const offset = config.size === 0 ? 0 : a % (config.size + 1);
            const length = Math.min(b, config.size - offset);
            return cache
              .read(offset, length)
              .then((got) => assert.deepEqual(got, bytes.slice(offset, offset + length)));
          });
          await Promise.all(reads);
        }
        for (const [offset, length] of source.calls) {
          const base = Math.max(...[...starts].filter((a) => a <= offset));
          assert.equal((offset - base) % config.blockSize, 0, `fetch at ${offset} is block-aligned`);
          assert.ok(offset + length <= config.size, 'fetch within the object');
          assert.ok(length <= Math.max(config.blockSize, config.maxFetchBytes), 'fetch bounded');
        }
        await cache.close();
      },
    ),
    { numRuns: 300 },
  );
});

test('createBlockCache fetches every block at most once while the memory budget holds it all', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 30_000 }),
      fc.array(fc.array(fc.tuple(fc.nat(), fc.nat({ max: 6000 })), { minLength: 1, maxLength: 8 }), {
        maxLength: 5,
      }),
      async (size, batches) => {
        const bytes = random(size);
        const source = origin(bytes, { jitter: () => Math.floor(Math.random() * 3) });
        const cache = createBlockCache(source.fetch, {
          size,
          blockSize: 1024,
          readahead: false,
          parallel: 2,
        });
        for (const batch of batches) {
          await Promise.all(
            batch.map(([a, b]) => {
              const offset = a % size;
              const length = Math.min(b, size - offset);
              return cache
                .read(offset, length)
                .then((got) => assert.deepEqual(got, bytes.subarray(offset, offset + length)));
            }),
          );
        }
        const fetchedBlocks = source.calls.flatMap(([offset, length]) =>
          Array.from({ length: Math.ceil(length / 1024) }, (_, i) => offset / 1024 + i),
        );
        assert.equal(new Set(fetchedBlocks).size, fetchedBlocks.length, 'no block fetched twice');
        assert.equal(
          cache.stats().bytesFetched,
          source.calls.reduce((n, [, length]) => n + length, 0),
        );
        await cache.close();
      },
    ),
    { numRuns: 200 },
  );
});

test('createBlockCache coalesces concurrent reads of one block into one fetch', async () => {
  const bytes = random(10_000);
  const source = origin(bytes, { jitter: () => 5 });
  const cache = createBlockCache(source.fetch, { size: bytes.byteLength, blockSize: 4096, readahead: false });
  const reads = Array.from({ length: 20 }, (_, i) => cache.read(4096 + i * 10, 100));
  const results = await Promise.all(reads);
  for (const [i, got] of results.entries())
    assert.deepEqual(got, bytes.subarray(4096 + i * 10, 4196 + i * 10));
  assert.deepEqual(source.calls, [[4096, 4096]]);
  assert.equal(cache.stats().joined, 19);
});

test('createBlockCache fetches adjacent missing blocks as one bounded range and serves repeats from memory', async () => {
  const bytes = random(100_000);
  const source = origin(bytes);
  const cache = createBlockCache(source.fetch, {
    size: bytes.byteLength,
    blockSize: 1000,
    readahead: false,
    maxFetchBytes: 8000,
  });
  assert.deepEqual(await cache.read(3500, 2000), bytes.subarray(3500, 5500));
  assert.deepEqual(source.calls, [[3000, 3000]]);
  // Blocks 3..5 are cached; 0..2 and 6..19 are fetched as [0,3) and [6,14) and [14,20) (8 blocks at most).
  assert.deepEqual(await cache.read(0, 20_000), bytes.subarray(0, 20_000));
  assert.deepEqual(source.calls.slice(1), [
    [0, 3000],
    [6000, 8000],
    [14_000, 6000],
  ]);
  assert.deepEqual(await cache.read(100, 19_000), bytes.subarray(100, 19_100));
  assert.equal(source.calls.length, 4);
  // The last block is short.
  assert.deepEqual(await cache.read(99_990, 10), bytes.subarray(99_990));
  assert.deepEqual(source.calls.at(-1), [99_000, 1000]);
});

test('createBlockCache starts blocks at anchors: a small first block, and one where reads begin', async () => {
  const bytes = random(100_000);
  const source = origin(bytes);
  const cache = createBlockCache(source.fetch, {
    size: bytes.byteLength,
    blockSize: 8192,
    anchors: [1024, 50_000],
    readahead: false,
  });
  assert.deepEqual(await cache.read(100, 200), bytes.subarray(100, 300));
  assert.deepEqual(await cache.read(50_100, 8000), bytes.subarray(50_100, 58_100));
  assert.deepEqual(await cache.read(49_000, 200), bytes.subarray(49_000, 49_200));
  assert.deepEqual(source.calls, [
    [0, 1024],
    [50_000, 8192],
    // The block before the anchor ends short: 1024 + 6 * 8192 = 50,176 > 50,000.
    [41_984, 8016],
  ]);
});

test('createBlockCache starts with prefetched bytes: no fetch for their blocks, and they count for the digest', async () => {
  const bytes = random(20_000);
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const source = origin(bytes);
  const cache = createBlockCache(source.fetch, {
    size: bytes.byteLength,
    blockSize: 4096,
    anchors: [9000],
    readahead: false,
    digest,
    prefetched: bytes.slice(0, 9000),
  });
  assert.deepEqual(await cache.read(0, 9000), bytes.subarray(0, 9000));
  assert.deepEqual(source.calls, []);
  assert.deepEqual(await cache.read(8000, 12_000), bytes.subarray(8000));
  assert.deepEqual(source.calls, [[9000, 11_000]]);
  assert.equal(cache.stats().fetches, 2);
  assert.equal(cache.stats().verification, 'verified');
});

test('createBlockCache hands over each block of a streamed range as soon as its bytes are in', async () => {
  const bytes = random(64 * 1024);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const fetch: RangeFetch = async (offset, length, _signal, sink) => {
    assert.ok(sink, 'the cache offers a sink');
    // The first half now; the rest only once the test has read the first block.
    sink(bytes.subarray(offset, offset + length / 2));
    await gate;
    sink(bytes.subarray(offset + length / 2, offset + length));
    return new Uint8Array(0);
  };
  const cache = createBlockCache(fetch, {
    size: bytes.byteLength,
    blockSize: 4096,
    readahead: false,
    maxFetchBytes: 64 * 1024,
  });
  const whole = cache.read(0, bytes.byteLength);
  assert.deepEqual(await cache.read(0, 4096), bytes.subarray(0, 4096));
  release();
  assert.deepEqual(await whole, bytes);
  assert.equal(cache.stats().fetches, 1);
});

test('createBlockCache continues a streamed range where a broken attempt stopped', async () => {
  const bytes = random(40_000);
  const calls: [number, number][] = [];
  const fetch: RangeFetch = async (offset, length, _signal, sink) => {
    calls.push([offset, length]);
    const stop = calls.length === 1 ? offset + 12_345 : offset + length;
    for (let at = offset; at < stop; at += 1000) sink?.(bytes.subarray(at, Math.min(stop, at + 1000)));
    if (calls.length === 1) throw unavailable();
    return new Uint8Array(0);
  };
  const cache = createBlockCache(fetch, {
    size: bytes.byteLength,
    blockSize: 8192,
    readahead: false,
    retryDelayMs: 1,
    maxFetchBytes: 5 * 8192,
  });
  assert.deepEqual(await cache.read(0, 40_000), bytes);
  assert.deepEqual(calls, [
    [0, 40_000],
    [12_345, 40_000 - 12_345],
  ]);
  assert.equal(cache.stats().bytesFetched, 40_000);
});

test('createBlockCache rejects ranges beyond the end and honours an aborted signal', async () => {
  const source = origin(new Uint8Array(1000));
  const cache = createBlockCache(source.fetch, { size: 1000, blockSize: 512 });
  await assert.rejects(cache.read(990, 11), {
    code: 'corrupt',
    message: 'Cannot read 11 bytes at offset 990 of a 1000-byte object',
  });
  await assert.rejects(cache.read(0, 1, { signal: AbortSignal.abort() }), { code: 'aborted' });
  assert.deepEqual(await cache.read(1000, 0), new Uint8Array(0));
  assert.equal(source.calls.length, 0);
});

test('createBlockCache lets a reader give up while the shared fetch completes for others', async () => {
  const bytes = random(2048);
  const source = origin(bytes, { jitter: () => 20 });
  const cache = createBlockCache(source.fetch, { size: 2048, blockSize: 1024, readahead: false });
  const controller = new AbortController();
  const abandoned = cache.read(0, 10, { signal: controller.signal });
  const patient = cache.read(5, 10);
  controller.abort();
  await assert.rejects(abandoned, { code: 'aborted' });
  assert.deepEqual(await patient, bytes.subarray(5, 15));
  assert.equal(source.calls.length, 1);
});
