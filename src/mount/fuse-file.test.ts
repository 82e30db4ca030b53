import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import { mountFuseFile, threadPoolSize } from './fuse-file.ts';

/** The tests set UV_THREADPOOL_SIZE (read by the code under test, not by libuv: its pool is running). */
function restorePoolSizeAfter(t: TestContext): void {
  const saved = process.env.UV_THREADPOOL_SIZE;
  t.after(() => {
    if (saved === undefined) delete process.env.UV_THREADPOOL_SIZE;
    else process.env.UV_THREADPOOL_SIZE = saved;
  });
}

const source = {
  size: 1,
  read: async (_offset: number, length: number) => new Uint8Array(length),
};

test('threadPoolSize reads UV_THREADPOOL_SIZE as libuv does: default 4, at most 1024', (t) => {
  restorePoolSizeAfter(t);
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
  restorePoolSizeAfter(t);
  process.env.UV_THREADPOOL_SIZE = '2';
  await assert.rejects(mountFuseFile('/nonexistent/device', source), (error: unknown) => {
    assert.ok(isErofsOciError(error, 'unsupported'), String(error));
    assert.match(error.hint ?? '', /UV_THREADPOOL_SIZE to at least 3/);
    return true;
  });
});

test('mountFuseFile counts a pool thread from the start of a mount, and gives it back when the mount fails', async (t) => {
  restorePoolSizeAfter(t);
  process.env.UV_THREADPOOL_SIZE = '4';
  // Two mounts under way hold two threads: a third would leave fewer than two free.
  const first = mountFuseFile('/nonexistent/a/device', source);
  const second = mountFuseFile('/nonexistent/b/device', source);
  await assert.rejects(mountFuseFile('/nonexistent/c/device', source), { code: 'unsupported' });
  // Both fail (no such directory), and give their threads back.
  for (const mount of [first, second]) {
    await assert.rejects(mount, (error: unknown) => isErofsOciError(error) && error.code !== 'unsupported');
  }
  process.env.UV_THREADPOOL_SIZE = '3';
  await assert.rejects(
    mountFuseFile('/nonexistent/d/device', source),
    (error: unknown) => isErofsOciError(error) && error.code !== 'unsupported',
  );
});
