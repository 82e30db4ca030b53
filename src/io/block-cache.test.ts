import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { ErofsOciError, isErofsOciError } from '../errors.ts';
import {
  createBlockCache,
  openBlockCache,
  type RangeFetch,
  readCachedHead,
  type WholeFetch,
} from './block-cache.ts';

interface Origin {
  fetch: RangeFetch;
  /** Every fetch asked for, in order. */
  calls: [number, number][];
}

/**
 * A range fetch over `bytes` that records its calls and answers after a random short delay. With `stream`,
 * it hands the bytes to the sink in chunks of that many bytes, pausing between them, as the registry
 * client does with a response body.
 */
function origin(
  bytes: Uint8Array,
  options: { jitter?: () => number; fail?: (call: number) => Error | null; stream?: number } = {},
): Origin {
  const calls: [number, number][] = [];
  return {
    calls,
    async fetch(offset, length, signal, sink) {
      const call = calls.length;
      calls.push([offset, length]);
      const wait = options.jitter?.() ?? 0;
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      else await Promise.resolve();
      if (signal?.aborted) throw new ErofsOciError('aborted', 'aborted');
      const failure = options.fail?.(call);
      if (failure) throw failure;
      if (offset < 0 || length < 0 || offset + length > bytes.byteLength)
        throw new Error(`fetch out of range ${offset}+${length}`);
      if (options.stream === undefined || sink === undefined) return bytes.slice(offset, offset + length);
      for (let at = offset; at < offset + length; at += options.stream) {
        sink(bytes.subarray(at, Math.min(offset + length, at + options.stream)));
        await new Promise((resolve) => setImmediate(resolve));
      }
      return new Uint8Array(0);
    },
  };
}

/** Random bytes as a plain Uint8Array (what the cache returns), so deep equality compares bytes only. */
function random(length: number): Uint8Array {
  return new Uint8Array(randomBytes(length));
}

const unavailable = () => new ErofsOciError('unavailable', 'registry returned 503');

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

test('createBlockCache retries transient failures with backoff and then succeeds', async () => {
  const bytes = random(5000);
  const source = origin(bytes, { fail: (call) => (call < 2 ? unavailable() : null) });
  const cache = createBlockCache(source.fetch, {
    size: 5000,
    blockSize: 1024,
    retries: 3,
    retryDelayMs: 1,
    readahead: false,
  });
  assert.deepEqual(await cache.read(10, 3000), bytes.subarray(10, 3010));
  assert.equal(source.calls.length, 3);
  assert.equal(cache.stats().retries, 2);
});

test('createBlockCache rejects after bounded retries, never returns zeros, and fetches again later', async () => {
  const bytes = random(5000);
  let failing = true;
  const source = origin(bytes, { fail: () => (failing ? unavailable() : null) });
  const cache = createBlockCache(source.fetch, {
    size: 5000,
    blockSize: 1024,
    retries: 2,
    retryDelayMs: 1,
    readahead: false,
  });
  await assert.rejects(cache.read(0, 100), (error) => {
    assert.ok(isErofsOciError(error, 'unavailable'));
    assert.equal(
      error.message,
      'Cannot fetch 1024 bytes at offset 0 after 3 attempts: registry returned 503',
    );
    return true;
  });
  assert.equal(source.calls.length, 3);
  failing = false;
  assert.deepEqual(await cache.read(0, 100), bytes.subarray(0, 100));
});

test('createBlockCache does not retry digest mismatches, missing blobs or refused credentials', async () => {
  for (const code of ['digest-mismatch', 'not-found', 'auth'] as const) {
    const source = origin(new Uint8Array(100), { fail: () => new ErofsOciError(code, `${code} happened`) });
    const cache = createBlockCache(source.fetch, { size: 100, blockSize: 512, retries: 5, retryDelayMs: 1 });
    await assert.rejects(cache.read(0, 10), { code, message: `${code} happened` });
    assert.equal(source.calls.length, 1, code);
  }
});

test('createBlockCache rejects a fetch that returns the wrong number of bytes', async () => {
  const cache = createBlockCache(async () => new Uint8Array(10), {
    size: 4096,
    blockSize: 1024,
    retries: 1,
    retryDelayMs: 1,
  });
  await assert.rejects(cache.read(0, 100), {
    code: 'io',
    message:
      'Cannot fetch 1024 bytes at offset 0 after 2 attempts: the fetch returned 10 bytes instead of 1024',
  });
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

async function withDir(run: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'block-cache-'));
  try {
    await run(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('openBlockCache keeps fetched blocks on disk and a re-opened cache reads them with zero fetches', async () => {
  await withDir(async (dir) => {
    const cacheDir = join(dir, 'cache');
    const size = 300_000;
    const bytes = random(size);
    const ranges: [number, number][] = [
      [0, 5000],
      [100_000, 50_000],
      [299_000, 1000],
    ];
    const first = origin(bytes);
    const cache = await openBlockCache(first.fetch, {
      size,
      blockSize: 4096,
      cacheDir,
      cacheId: 'sha256:abc',
      readahead: false,
    });
    for (const [offset, length] of ranges)
      assert.deepEqual(await cache.read(offset, length), bytes.subarray(offset, offset + length));
    await cache.close();
    assert.ok(first.calls.length > 0);

    assert.equal((await stat(cacheDir)).mode & 0o777, 0o700);
    const files = await readdir(cacheDir);
    assert.equal(files.length, 2, `data and record only, lock released: ${files}`);
    for (const file of files) assert.equal((await stat(join(cacheDir, file))).mode & 0o777, 0o600, file);

    const offline = origin(bytes, { fail: () => unavailable() });
    const reopened = await openBlockCache(offline.fetch, {
      size,
      blockSize: 4096,
      cacheDir,
      cacheId: 'sha256:abc',
      retries: 0,
    });
    for (const [offset, length] of ranges) {
      assert.deepEqual(await reopened.read(offset, length), bytes.subarray(offset, offset + length));
    }
    assert.equal(offline.calls.length, 0, 'cached ranges need no fetch');
    assert.ok(reopened.stats().diskHits > 0);
    // An uncached range still needs the (failing) origin.
    await assert.rejects(reopened.read(200_000, 10), { code: 'unavailable' });
    await reopened.close();
  });
});

test('openBlockCache refetches a disk block whose bytes no longer match their checksum', async () => {
  await withDir(async (dir) => {
    const size = 10_000;
    const bytes = random(size);
    const options = { size, blockSize: 4096, cacheDir: dir, cacheId: 'blob', readahead: false } as const;
    const cache = await openBlockCache(origin(bytes).fetch, options);
    await cache.read(0, size);
    await cache.close();
    const dataFile = (await readdir(dir)).find((name) => name.endsWith('.data')) as string;
    const damaged = await readFile(join(dir, dataFile));
    damaged[5000] = (damaged[5000] as number) ^ 0xff;
    await writeFile(join(dir, dataFile), damaged);

    const second = origin(bytes);
    const reopened = await openBlockCache(second.fetch, options);
    assert.deepEqual(await reopened.read(0, size), bytes);
    assert.deepEqual(second.calls, [[4096, 4096]]);
    await reopened.close();
  });
});

test('openBlockCache starts afresh when the record is for other anchors', async () => {
  await withDir(async (dir) => {
    const bytes = random(20_000);
    const options = { size: 20_000, blockSize: 4096, cacheDir: dir, cacheId: 'x', readahead: false as const };
    const cache = await openBlockCache(origin(bytes).fetch, { ...options, anchors: [1000] });
    await cache.read(0, 20_000);
    await cache.close();
    const same = origin(bytes);
    const again = await openBlockCache(same.fetch, { ...options, anchors: [1000] });
    assert.deepEqual(await again.read(0, 20_000), bytes);
    assert.equal(same.calls.length, 0);
    await again.close();
    const moved = origin(bytes);
    const reopened = await openBlockCache(moved.fetch, { ...options, anchors: [2000] });
    assert.deepEqual(await reopened.read(0, 20_000), bytes);
    assert.equal(moved.calls.length, 1);
    await reopened.close();
  });
});

test('readCachedHead answers from a disk entry only when every block of the head is listed and intact', async () => {
  await withDir(async (dir) => {
    const bytes = random(20_000);
    const options = { size: 20_000, blockSize: 4096, cacheDir: dir, cacheId: 'x', readahead: false as const };
    assert.equal(await readCachedHead(dir, 'x', 20_000, 5000), null, 'no entry');
    const cache = await openBlockCache(origin(bytes).fetch, { ...options, anchors: [1000] });
    await cache.read(0, 4000); // blocks [0, 1000) and [1000, 5096)
    await cache.close();
    assert.deepEqual(await readCachedHead(dir, 'x', 20_000, 5000), bytes.subarray(0, 5000));
    assert.deepEqual(await readCachedHead(dir, 'x', 20_000, 1000), bytes.subarray(0, 1000));
    assert.equal(await readCachedHead(dir, 'x', 20_000, 6000), null, 'a block of the head is missing');
    assert.equal(await readCachedHead(dir, 'y', 20_000, 5000), null, 'another object');
    assert.equal(await readCachedHead(dir, 'x', 30_000, 5000), null, 'another size');
    const dataFile = (await readdir(dir)).find((name) => name.endsWith('.data')) as string;
    const damaged = await readFile(join(dir, dataFile));
    damaged[3000] = (damaged[3000] as number) ^ 0xff;
    await writeFile(join(dir, dataFile), damaged);
    assert.equal(await readCachedHead(dir, 'x', 20_000, 5000), null, 'a damaged block');
  });
});

test('openBlockCache starts afresh when the record is for another size or block size', async () => {
  await withDir(async (dir) => {
    const bytes = random(8192);
    const cache = await openBlockCache(origin(bytes).fetch, {
      size: 8192,
      blockSize: 4096,
      cacheDir: dir,
      cacheId: 'x',
    });
    await cache.read(0, 8192);
    await cache.close();
    const other = random(6000);
    const second = origin(other);
    const reopened = await openBlockCache(second.fetch, {
      size: 6000,
      blockSize: 4096,
      cacheDir: dir,
      cacheId: 'x',
      readahead: false,
    });
    assert.deepEqual(await reopened.read(0, 6000), other);
    assert.equal(second.calls.length, 1);
    await reopened.close();
  });
});

test('openBlockCache refuses an entry in use and takes over one whose process died', async () => {
  await withDir(async (dir) => {
    const options = { size: 100, cacheDir: dir, cacheId: 'blob' };
    const cache = await openBlockCache(origin(new Uint8Array(100)).fetch, options);
    await assert.rejects(openBlockCache(origin(new Uint8Array(100)).fetch, options), (error) => {
      assert.ok(isErofsOciError(error, 'usage'));
      assert.match(
        error.message,
        /^Cannot open the disk cache in .* for blob: it is already open in this process$/,
      );
      return true;
    });
    await cache.close();
    const lock = join(
      dir,
      `${(await readdir(dir)).find((n) => n.endsWith('.data'))?.replace('.data', '')}.lock`,
    );
    // pid 2^22+1 is above Linux's pid_max, so no process has it.
    await writeFile(lock, `${2 ** 22 + 1}\n`);
    const again = await openBlockCache(origin(new Uint8Array(100)).fetch, options);
    await again.close();
  });
});

test('openBlockCache needs a cache id with a cache directory', async () => {
  await withDir(async (dir) => {
    await assert.rejects(openBlockCache(origin(new Uint8Array(1)).fetch, { size: 1, cacheDir: dir }), {
      code: 'usage',
    });
  });
});

function digestOf(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** `bytes` with the byte at `at` inverted. */
function flipped(bytes: Uint8Array, at: number): Uint8Array {
  const copy = bytes.slice();
  copy[at] = (copy[at] as number) ^ 0xff;
  return copy;
}

/** Ranges of `[0, size)` that `ranges` leave uncovered, as a count of bytes. */
function uncovered(size: number, ranges: [number, number][]): number {
  const covered = new Uint8Array(size);
  for (const [offset, length] of ranges) covered.fill(1, offset, offset + length);
  return covered.reduce((n, c) => n + (c === 0 ? 1 : 0), 0);
}

test('createBlockCache verifies the digest once every block has been fetched, in any read order', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        size: fc.integer({ min: 1, max: 30_000 }),
        blockSize: fc.constantFrom(512, 1000, 4096),
        memoryBytes: fc.constantFrom(0, 2048, 1 << 20),
        disk: fc.boolean(),
        readahead: fc.constantFrom(false as const, { initial: 512, max: 4096 }),
        parallel: fc.integer({ min: 1, max: 4 }),
        seed: fc.integer(),
      }),
      fc.array(fc.array(fc.tuple(fc.nat(), fc.nat({ max: 9000 })), { minLength: 1, maxLength: 6 }), {
        maxLength: 5,
      }),
      async ({ disk, ...config }, batches) => {
        const dir = disk ? await mkdtemp(join(tmpdir(), 'block-cache-')) : undefined;
        try {
          const bytes = new Uint8Array(config.size).map((_, i) => (i * 7 + config.seed) & 0xff);
          const source = origin(bytes, { jitter: () => Math.floor(Math.random() * 3) });
          const cache = await openBlockCache(source.fetch, {
            ...config,
            retries: 0,
            digest: digestOf(bytes),
            ...(dir === undefined ? {} : { cacheDir: dir, cacheId: 'blob' }),
          });
          for (const batch of batches) {
            await Promise.all(
              batch.map(([a, b]) => {
                const offset = a % config.size;
                const length = Math.min(b, config.size - offset);
                return cache
                  .read(offset, length)
                  .then((got) => assert.deepEqual(got, bytes.slice(offset, offset + length)));
              }),
            );
          }
          assert.deepEqual(await cache.read(0, config.size), bytes);
          // Blocks evicted before the running hash took them wait for it on disk (the disk cache, else a
          // temporary file): the verdict comes with the last block, whatever the memory budget.
          assert.equal(cache.stats().verification, 'verified');
          await cache.close();
        } finally {
          if (dir) await rm(dir, { recursive: true, force: true });
        }
      },
    ),
    { numRuns: 150 },
  );
});

test('createBlockCache never lets reads of a corrupt object cover it: the read completing it fails, and all after', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        size: fc.integer({ min: 1, max: 30_000 }),
        blockSize: fc.constantFrom(512, 1000, 4096),
        readahead: fc.constantFrom(false as const, { initial: 512, max: 4096 }),
        parallel: fc.integer({ min: 1, max: 4 }),
        // Small budgets send blocks ahead of the running hash to its temporary file.
        memoryBytes: fc.constantFrom(0, 2048, 1 << 20),
        corruptAt: fc.nat(),
      }),
      fc.array(fc.array(fc.tuple(fc.nat(), fc.nat({ max: 9000 })), { minLength: 1, maxLength: 6 }), {
        maxLength: 6,
      }),
      async (config, batches) => {
        const bytes = random(config.size);
        const served = flipped(bytes, config.corruptAt % config.size);
        const source = origin(served, { jitter: () => Math.floor(Math.random() * 3) });
        const cache = createBlockCache(source.fetch, { ...config, retries: 0, digest: digestOf(bytes) });
        const answered: [number, number][] = [];
        let failedAt = -1;
        let reads = 0;
        const readOne = async (offset: number, length: number) => {
          const started = reads++;
          try {
            assert.deepEqual(await cache.read(offset, length), served.slice(offset, offset + length));
            assert.ok(failedAt < 0 || started < failedAt, 'no read started after the failure succeeds');
            answered.push([offset, length]);
          } catch (error) {
            assert.ok(isErofsOciError(error, 'digest-mismatch'), String(error));
            if (failedAt < 0) failedAt = reads;
          }
        };
        for (const batch of [...batches, [[0, config.size] as [number, number]]]) {
          await Promise.all(
            batch.map(([a, b]) => {
              const offset = a % config.size;
              return readOne(offset, Math.min(b, config.size - offset));
            }),
          );
        }
        assert.ok(uncovered(config.size, answered) > 0, 'the answered reads do not cover the object');
        assert.equal(cache.stats().verification, 'failed');
        await assert.rejects(cache.read(0, 1), { code: 'digest-mismatch' });
        await cache.close();
      },
    ),
    { numRuns: 150 },
  );
});

test('createBlockCache fails the read of a block fetched again that differs from its hashed first copy', async () => {
  const bytes = random(4096);
  let fetches = 0;
  const cache = createBlockCache(
    async (offset, length) => {
      fetches++;
      const copy = bytes.slice(offset, offset + length);
      if (fetches === 2) copy[10] = (copy[10] as number) ^ 1;
      return copy;
    },
    // No memory cache: every read fetches again.
    { size: 4096, blockSize: 1024, memoryBytes: 0, readahead: false, digest: digestOf(bytes) },
  );
  assert.deepEqual(await cache.read(0, 100), bytes.subarray(0, 100));
  await assert.rejects(cache.read(0, 100), {
    code: 'digest-mismatch',
    message:
      'Cannot verify block 0 (bytes 0-1023) of ' +
      `${digestOf(bytes)}: fetched again, it differs from the copy hashed before`,
  });
  assert.deepEqual(await cache.read(0, 100), bytes.subarray(0, 100));
  await cache.close();
});

test('openBlockCache drops the disk entry of an object that fails verification and logs why', async () => {
  await withDir(async (dir) => {
    const size = 20_000;
    const bytes = random(size);
    const lines: string[] = [];
    const cache = await openBlockCache(origin(flipped(bytes, 12_345)).fetch, {
      size,
      blockSize: 4096,
      cacheDir: dir,
      cacheId: 'blob',
      digest: digestOf(bytes),
      name: 'blob X',
      log: (line) => lines.push(line),
    });
    assert.deepEqual(await cache.read(0, 4096), bytes.subarray(0, 4096));
    await assert.rejects(cache.read(4096, size - 4096), (error) => {
      assert.ok(isErofsOciError(error, 'digest-mismatch'));
      assert.match(
        error.message,
        new RegExp(
          `^Cannot verify blob X: its 20000 bytes have digest sha256:[0-9a-f]{64}, expected ${digestOf(bytes)}$`,
        ),
      );
      return true;
    });
    await assert.rejects(cache.read(0, 10), { code: 'digest-mismatch' });
    assert.equal(lines.length, 1);
    assert.match(
      lines[0] as string,
      /^Cannot verify blob X: .*: dropping the cached bytes; every read fails from now on$/,
    );
    await cache.close();
    assert.deepEqual(await readdir(dir), [], 'data, record and lock are gone');
  });
});

test('openBlockCache verifies a complete unverified entry before answering, records it, and trusts it later', async () => {
  await withDir(async (dir) => {
    const size = 50_000;
    const bytes = random(size);
    const options = { size, blockSize: 4096, cacheDir: dir, cacheId: 'blob', readahead: false } as const;
    // Filled without a digest: complete, not verified.
    const unverified = await openBlockCache(origin(bytes).fetch, options);
    await unverified.read(0, size);
    assert.equal(unverified.stats().verification, 'off');
    await unverified.close();

    const offline = origin(bytes, { fail: () => unavailable() });
    const lines: string[] = [];
    const checking = await openBlockCache(offline.fetch, {
      ...options,
      retries: 0,
      digest: digestOf(bytes),
      log: (line) => lines.push(line),
    });
    assert.deepEqual(await checking.read(40_000, 10), bytes.subarray(40_000, 40_010));
    assert.equal(checking.stats().verification, 'verified');
    assert.deepEqual(lines, [`verified ${digestOf(bytes)}: its 50000 bytes match the digest`]);
    await checking.close();
    assert.equal(offline.calls.length, 0);
    const record = (await readdir(dir)).find((name) => name.endsWith('.json')) as string;
    assert.equal(JSON.parse(await readFile(join(dir, record), 'utf8')).verified, true);

    // A verified entry is not hashed again (here: a digest it would not match is not even looked at).
    const trusting = await openBlockCache(offline.fetch, { ...options, digest: digestOf(random(1)) });
    assert.deepEqual(await trusting.read(0, 10), bytes.subarray(0, 10));
    assert.equal(trusting.stats().verification, 'verified');
    await trusting.close();
  });
  await withDir(async (dir) => {
    const bytes = random(9000);
    const options = { size: 9000, blockSize: 4096, cacheDir: dir, cacheId: 'blob' } as const;
    const unverified = await openBlockCache(origin(bytes).fetch, options);
    await unverified.read(0, 9000);
    await unverified.close();
    const wrong = await openBlockCache(origin(bytes).fetch, { ...options, digest: digestOf(random(9000)) });
    await assert.rejects(wrong.read(0, 10), { code: 'digest-mismatch' });
    await wrong.close();
    assert.deepEqual(await readdir(dir), []);
  });
});

interface WholeOrigin extends Origin {
  whole: WholeFetch;
  downloads: number;
}

/**
 * An origin that ignores ranges, like an HTTP server answering 200 to `Range`: a range fetch returns the
 * right bytes but is marked as answered whole, and `whole.fetch` streams the object in `chunk`-byte pieces,
 * the first `breaks` downloads breaking after `breakAfter` bytes.
 */
function wholeOrigin(
  bytes: Uint8Array,
  options: { chunk?: number; breaks?: number; breakAfter?: number } = {},
): WholeOrigin {
  const marked = new WeakSet<Uint8Array>();
  const ranged = origin(bytes, { jitter: () => 1 });
  const result: WholeOrigin = {
    calls: ranged.calls,
    downloads: 0,
    async fetch(offset, length, signal) {
      const got = await ranged.fetch(offset, length, signal);
      marked.add(got);
      return got;
    },
    whole: {
      answeredWhole: (got) => marked.has(got),
      async *fetch(signal) {
        const download = result.downloads++;
        const chunk = options.chunk ?? 777;
        for (let at = 0; at < bytes.byteLength; at += chunk) {
          await new Promise((resolve) => setTimeout(resolve, 0));
          if (signal.aborted) throw new ErofsOciError('aborted', 'aborted');
          if (download < (options.breaks ?? 0) && at >= (options.breakAfter ?? 0))
            throw new ErofsOciError('unavailable', 'the connection broke');
          yield bytes.slice(at, at + chunk);
        }
      },
    },
  };
  return result;
}

test('createBlockCache downloads an object that ignores ranges once: into memory, a temporary file or the disk cache', async () => {
  for (const store of ['memory', 'temporary file', 'disk cache'] as const) {
    await withDir(async (dir) => {
      const size = 100_000;
      const bytes = random(size);
      const source = wholeOrigin(bytes);
      const lines: string[] = [];
      const options = {
        size,
        blockSize: 4096,
        memoryBytes: store === 'memory' ? 1 << 20 : 8192,
        digest: digestOf(bytes),
        whole: source.whole,
        log: (line: string) => lines.push(line),
        ...(store === 'disk cache' ? { cacheDir: join(dir, 'cache'), cacheId: 'blob' } : {}),
      };
      const cache = await openBlockCache(source.fetch, options);
      const ranges: [number, number][] = [
        [90_000, 5000],
        [10, 20],
        [50_000, 30_000],
        [0, size],
        [99_999, 1],
      ];
      const reads = ranges.map(([offset, length]) =>
        cache
          .read(offset, length)
          .then((got) => assert.deepEqual(got, bytes.subarray(offset, offset + length))),
      );
      await Promise.all(reads);
      for (const [offset, length] of ranges)
        assert.deepEqual(await cache.read(offset, length), bytes.subarray(offset, offset + length), store);
      assert.equal(source.calls.length, 1, `${store}: one range fetch told the origin ignores ranges`);
      assert.equal(source.downloads, 1, `${store}: one whole download`);
      const stats = cache.stats();
      assert.equal(stats.wholeDownloads, 1);
      assert.equal(stats.verification, 'verified');
      assert.match(lines[0] as string, /ignores ranges: downloading it once, whole, into the cache$/);
      await cache.close();
      assert.deepEqual(
        (await readdir(tmpdir())).filter((name) => name.startsWith('erofs-oci-blob-')),
        [],
        'the temporary file is never visible',
      );
      if (store === 'disk cache') {
        const offline = wholeOrigin(bytes);
        const reopened = await openBlockCache(offline.fetch, options);
        assert.deepEqual(await reopened.read(0, size), bytes);
        assert.equal(offline.calls.length + offline.downloads, 0, 'everything came from the disk cache');
        await reopened.close();
      }
    });
  }
});

test('createBlockCache fails the reads a broken whole download leaves behind, and the next read downloads again', async () => {
  const size = 40_000;
  const bytes = random(size);
  const source = wholeOrigin(bytes, { breaks: 1, breakAfter: 20_000 });
  const cache = createBlockCache(source.fetch, {
    size,
    blockSize: 4096,
    readahead: false,
    digest: digestOf(bytes),
    whole: source.whole,
  });
  // The probe's own range is answered; the rest waits for the download, which breaks.
  assert.deepEqual(await cache.read(0, 10), bytes.subarray(0, 10));
  const early = cache.read(8192, 100);
  const late = cache.read(30_000, 100);
  assert.deepEqual(await early, bytes.subarray(8192, 8292));
  await assert.rejects(late, (error) => {
    assert.ok(isErofsOciError(error, 'unavailable'));
    assert.match(
      error.message,
      /^Cannot download sha256:.* whole \(the origin ignores ranges\): the connection broke$/,
    );
    return true;
  });
  assert.deepEqual(await cache.read(30_000, 100), bytes.subarray(30_000, 30_100));
  assert.deepEqual(await cache.read(0, size), bytes);
  assert.equal(source.downloads, 2);
  assert.equal(cache.stats().verification, 'verified');
  await cache.close();
});

test('createBlockCache fails every read of a corrupt object downloaded whole', async () => {
  const size = 40_000;
  const bytes = random(size);
  const source = wholeOrigin(flipped(bytes, 39_000));
  const cache = createBlockCache(source.fetch, {
    size,
    blockSize: 4096,
    digest: digestOf(bytes),
    whole: source.whole,
    readahead: false,
  });
  assert.deepEqual(await cache.read(0, 10), bytes.subarray(0, 10));
  await assert.rejects(cache.read(0, size), { code: 'digest-mismatch' });
  await assert.rejects(cache.read(0, 10), { code: 'digest-mismatch' });
  assert.equal(source.downloads, 1);
  assert.equal(cache.stats().verification, 'failed');
  await cache.close();
});

test('createBlockCache probes with one fetch, and fetches waiting for a failed probe go ahead side by side', async () => {
  const bytes = random(40_000);
  let down = true;
  const calls: number[] = [];
  const source = wholeOrigin(bytes);
  const cache = createBlockCache(
    async (offset, length, signal) => {
      calls.push(Date.now());
      await new Promise((resolve) => setTimeout(resolve, 100));
      if (down) throw unavailable();
      return source.fetch(offset, length, signal);
    },
    { size: 40_000, blockSize: 4096, readahead: false, retries: 0, whole: source.whole },
  );
  const started = Date.now();
  const reads = [0, 12_000, 24_000, 36_000].map((offset) => cache.read(offset, 10));
  for (const read of reads) await assert.rejects(read, { code: 'unavailable' });
  const elapsed = Date.now() - started;
  assert.equal(calls.length, 4);
  assert.ok((calls[1] as number) - (calls[0] as number) >= 90, 'the others waited for the probe');
  assert.ok(elapsed < 350, `the waiting fetches ran side by side (${elapsed} ms, not 4 x 100 ms)`);
  down = false;
  assert.deepEqual(await cache.read(36_000, 10), bytes.subarray(36_000, 36_010));
  await cache.close();
});
