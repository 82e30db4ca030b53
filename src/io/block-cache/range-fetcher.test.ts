import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErofsOciError, isErofsOciError } from '../../errors.ts';
import { createBlockCache } from '../block-cache.ts';
import { origin, random, unavailable } from '../../../test-support/block-cache-origins.ts';

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
