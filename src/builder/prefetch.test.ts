import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { decompress } from '../io/decompress.ts';
import { type LazyStream, Prefetcher } from './prefetch.ts';

function chunks(parts: Uint8Array[], failWith?: Error, pauseMs = 0): LazyStream {
  return {
    name: 'test',
    async *open() {
      for (const part of parts) {
        yield part;
        if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
      }
      if (failWith) throw failWith;
    },
  };
}

async function collect(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const part of stream) parts.push(part);
  return Buffer.concat(parts);
}

describe('Prefetcher', () => {
  it('yields every stream in order, later ones through spill files that are removed at the end', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'prefetch-test-'));
    try {
      const data = [0, 1, 2].map((n) => Buffer.alloc(300_000 + n, n + 1));
      const prefetcher = new Prefetcher(
        data.map((bytes) => chunks([bytes.subarray(0, 1000), bytes.subarray(1000)])),
        { concurrency: 3, directory: dir },
      );
      for (const [index, bytes] of data.entries())
        assert.deepEqual(await collect(prefetcher.stream(index)), bytes);
      await prefetcher.close();
      assert.deepEqual(await readdir(dir), []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a look-ahead download that fails mid-write surfaces its error at its turn, and nothing else breaks', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'prefetch-test-'));
    try {
      // The spill file is open and a small write is on its way to the disk when the download fails.
      const failure = new Error('digest mismatch');
      const failing: LazyStream = {
        name: 'failing',
        async *open() {
          yield Buffer.alloc(1000, 2);
          await new Promise((resolve) => setTimeout(resolve, 20));
          yield Buffer.alloc(1000, 3);
          throw failure;
        },
      };
      const prefetcher = new Prefetcher([chunks([Buffer.alloc(10, 1)], undefined, 40), failing], {
        concurrency: 2,
        directory: dir,
      });
      assert.equal((await collect(prefetcher.stream(0))).length, 10);
      await assert.rejects(collect(prefetcher.stream(1)), failure);
      await prefetcher.close();
      // Let any late stream error show up as an uncaught exception within this test.
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(await readdir(dir), []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('with decode, yields decoded bytes and spills look-ahead streams decoded, before their turn', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'prefetch-test-'));
    try {
      const data = [0, 1, 2].map((n) => randomBytes(200_000 + n));
      const prefetcher = new Prefetcher(
        data.map((bytes) => chunks([gzipSync(bytes)])),
        { concurrency: 3, directory: dir, decode: (input, signal) => decompress(input, { signal }) },
      );
      assert.deepEqual(await collect(prefetcher.stream(0)), data[0]);
      // Streams 1 and 2 were downloaded and decoded meanwhile: their spill files hold the plain bytes.
      const spill = join(dir, (await readdir(dir))[0] as string);
      let spilled = Buffer.alloc(0);
      for (let i = 0; i < 100 && spilled.byteLength !== data[2]?.byteLength; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        spilled = await readFile(join(spill, '2')).catch(() => Buffer.alloc(0));
      }
      assert.deepEqual(spilled, data[2]);
      for (const index of [1, 2]) assert.deepEqual(await collect(prefetcher.stream(index)), data[index]);
      await prefetcher.close();
      assert.deepEqual(await readdir(dir), []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
