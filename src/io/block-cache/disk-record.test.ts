import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openBlockCache, readCachedHead } from '../block-cache.ts';
import { origin, random, withDir } from '../../../test-support/block-cache-origins.ts';

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
