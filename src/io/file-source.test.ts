import assert from 'node:assert/strict';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { openFileSource } from './file-source.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'file-source-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('openFileSource reads any range of the file', async () => {
  const bytes = new Uint8Array(70_000).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
  const path = join(dir, 'data');
  await writeFile(path, bytes);
  const source = await openFileSource(path);
  try {
    assert.equal(source.size, bytes.byteLength);
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: bytes.byteLength }), fc.nat({ max: bytes.byteLength }), async (a, b) => {
        const offset = Math.min(a, b);
        const length = Math.max(a, b) - offset;
        assert.deepEqual(await source.read(offset, length), bytes.subarray(offset, offset + length));
      }),
      { numRuns: 200 },
    );
  } finally {
    await source.close();
  }
});

test('openFileSource rejects a read beyond the end, naming the file and the range', async () => {
  const path = join(dir, 'short');
  await writeFile(path, new Uint8Array(10));
  const source = await openFileSource(path);
  try {
    await assert.rejects(source.read(8, 3), {
      code: 'corrupt',
      message: `Cannot read 3 bytes at offset 8 of ${path}: the file has 10 bytes`,
    });
  } finally {
    await source.close();
  }
});

test('openFileSource reports a file that shrank after opening', async () => {
  const path = join(dir, 'shrinking');
  await writeFile(path, new Uint8Array(100));
  const source = await openFileSource(path);
  try {
    await truncate(path, 50);
    await assert.rejects(source.read(40, 20), {
      code: 'corrupt',
      message: `Cannot read ${path} at offset 50: unexpected end of file (expected 100 bytes)`,
    });
  } finally {
    await source.close();
  }
});

test('openFileSource maps a missing file to not-found and a directory to usage', async () => {
  await assert.rejects(openFileSource(join(dir, 'missing')), { code: 'not-found' });
  await assert.rejects(openFileSource(dir), { code: 'usage' });
});

test('openFileSource honours an aborted signal and refuses reads after close', async () => {
  const path = join(dir, 'abort');
  await writeFile(path, new Uint8Array(4));
  await assert.rejects(openFileSource(path, { signal: AbortSignal.abort() }), { code: 'aborted' });
  const source = await openFileSource(path);
  await assert.rejects(source.read(0, 1, { signal: AbortSignal.abort() }), { code: 'aborted' });
  await source.close();
  await source.close();
  await assert.rejects(source.read(0, 1), { code: 'internal' });
});
