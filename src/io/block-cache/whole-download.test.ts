import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isErofsOciError } from '../../errors.ts';
import { createBlockCache, openBlockCache } from '../block-cache.ts';
import {
  random,
  unavailable,
  withDir,
  digestOf,
  flipped,
  wholeOrigin,
} from '../../../test-support/block-cache-origins.ts';

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
