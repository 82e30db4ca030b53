import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { isErofsOciError } from '../../errors.ts';
import { createBlockCache, openBlockCache } from '../block-cache.ts';
import { BlockGrid } from '../block-grid.ts';
import { OrderedVerifier } from './ordered-verifier.ts';
import {
  origin,
  random,
  unavailable,
  withDir,
  digestOf,
  flipped,
  uncovered,
} from '../../../test-support/block-cache-origins.ts';

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

test('OrderedVerifier reaches the verdict from blocks offered in any order, and only then', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 24 }),
      fc.boolean(),
      fc.integer({ min: 0, max: 2 ** 31 }),
      async (count, corrupt, seed) => {
        const grid = new BlockGrid(count * 512 - (seed % 300), 512);
        const bytes = random(grid.size);
        const served = corrupt ? flipped(bytes, seed % grid.size) : bytes;
        const outcomes: string[] = [];
        const verifier = new OrderedVerifier({
          digest: digestOf(bytes),
          name: 'the test object',
          size: grid.size,
          grid,
          aheadBudget: 2048,
          // Nothing else keeps blocks: the verifier holds what it needs (the next block, the last one).
          lookup: () => undefined,
          verified: () => outcomes.push('verified'),
          failed: (error) => outcomes.push(error.code),
        });
        const order = [...Array(grid.count).keys()].sort(
          (a, b) => ((a * 7919 + seed) % 101) - ((b * 7919 + seed) % 101),
        );
        for (const [i, block] of order.entries()) {
          assert.equal(verifier.state, 'pending');
          const offered = verifier.offer(block, served.subarray(grid.start(block), grid.end(block)));
          if (i < order.length - 1) await offered;
          else await offered.catch(() => {});
          await verifier.settled();
        }
        // Blocks offered far ahead beyond the budget are let go, so the verdict may wait for a refetch.
        while (verifier.state === 'pending') {
          const block = [...Array(grid.count).keys()].find((b) => verifier.needs(b)) as number;
          await verifier.offer(block, served.subarray(grid.start(block), grid.end(block))).catch(() => {});
          await verifier.settled();
        }
        assert.deepEqual(outcomes, [corrupt ? 'digest-mismatch' : 'verified']);
        assert.equal(verifier.state, corrupt ? 'failed' : 'verified');
      },
    ),
    { numRuns: 60 },
  );
});

test('OrderedVerifier rejects a copy fetched again that differs from the block it hashed', async () => {
  const grid = new BlockGrid(4096, 1024);
  const bytes = random(4096);
  const verifier = new OrderedVerifier({
    digest: digestOf(bytes),
    name: 'the test object',
    size: 4096,
    grid,
    aheadBudget: 4096,
    lookup: () => undefined,
    verified: () => {},
    failed: () => {},
  });
  await verifier.offer(0, bytes.subarray(0, 1024));
  await verifier.settled();
  assert.equal(verifier.needs(0), false);
  verifier.check(0, bytes.slice(0, 1024));
  assert.throws(
    () => verifier.check(0, flipped(bytes.subarray(0, 1024), 5)),
    (error: unknown) =>
      isErofsOciError(error, 'digest-mismatch') && /block 0 \(bytes 0-1023\)/.test(error.message),
  );
  // Not hashed yet: nothing to compare with.
  verifier.check(2, flipped(bytes.subarray(2048, 3072), 0));
  assert.throws(
    () =>
      new OrderedVerifier({
        ...{ digest: 'md5:00', name: 'x', size: 1, grid, aheadBudget: 1 },
        lookup: () => undefined,
        verified() {},
        failed() {},
      }),
    { code: 'usage' },
  );
});
