import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isErofsOciError } from '../../errors.ts';
import { openBlockCache } from '../block-cache.ts';
import { origin, random, unavailable, withDir } from '../../../test-support/block-cache-origins.ts';

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
