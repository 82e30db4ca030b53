import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import { mountFuseFile, threadPoolSize } from './fuse-file.ts';

const source = {
  size: 1,
  read: async (_offset: number, length: number) => new Uint8Array(length),
};

test('threadPoolSize reads UV_THREADPOOL_SIZE as libuv does: default 4, at most 1024', (t) => {
  const saved = process.env.UV_THREADPOOL_SIZE;
  t.after(() => {
    if (saved === undefined) delete process.env.UV_THREADPOOL_SIZE;
    else process.env.UV_THREADPOOL_SIZE = saved;
  });
  delete process.env.UV_THREADPOOL_SIZE;
  assert.equal(threadPoolSize(), 4);
  for (const [value, size] of [
    ['9', 9],
    ['0', 4],
    ['x', 4],
    ['5000', 1024],
  ] as const) {
    process.env.UV_THREADPOOL_SIZE = value;
    assert.equal(threadPoolSize(), size, value);
  }
});

test('mountFuseFile refuses a session that would leave fewer than two pool threads, and says what to set', async (t) => {
  const saved = process.env.UV_THREADPOOL_SIZE;
  t.after(() => {
    if (saved === undefined) delete process.env.UV_THREADPOOL_SIZE;
    else process.env.UV_THREADPOOL_SIZE = saved;
  });
  process.env.UV_THREADPOOL_SIZE = '2';
  await assert.rejects(mountFuseFile('/nonexistent/device', source), (error: unknown) => {
    assert.ok(isErofsOciError(error, 'unsupported'), String(error));
    assert.match(error.hint ?? '', /UV_THREADPOOL_SIZE to at least 3/);
    return true;
  });
});
