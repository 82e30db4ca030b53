import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { FileWriter } from './file-writer.ts';

type Op = { kind: 'write'; bytes: Uint8Array } | { kind: 'zeros'; count: number } | { kind: 'relieve' };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('write' as const),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 3 << 20 }),
  }),
  fc.record({ kind: fc.constant('zeros' as const), count: fc.integer({ min: 1, max: 2 << 20 }) }),
  fc.record({ kind: fc.constant('relieve' as const) }),
);

async function withFile<T>(run: (path: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'file-writer-test-'));
  try {
    return await run(join(dir, 'out'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('FileWriter', () => {
  it('writes what it was given, in order, whatever the background writes do (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 5000 }),
        fc.array(op, { maxLength: 12 }),
        async (start, ops) =>
          withFile(async (path) => {
            const fd = openSync(path, 'w+');
            const writer = new FileWriter(fd, start);
            const expected: Uint8Array[] = [new Uint8Array(start)];
            for (const o of ops) {
              if (o.kind === 'write') {
                // The caller may reuse its chunk as soon as write() returns.
                const reused = Buffer.from(o.bytes);
                writer.write(reused);
                reused.fill(0xee);
                expected.push(o.bytes);
              } else if (o.kind === 'zeros') {
                writer.writeZeros(o.count);
                expected.push(new Uint8Array(o.count));
              } else {
                await writer.relieve();
              }
            }
            const total = expected.reduce((n, c) => n + c.byteLength, 0);
            assert.equal(writer.position, total);
            await writer.settle();
            writer.close();
            const actual = readFileSync(path);
            // The gap before `start` is never written: with nothing after it the file stays empty.
            const written = total > start ? total : 0;
            assert.equal(actual.byteLength, written);
            assert.ok(actual.equals(Buffer.concat(expected).subarray(0, written)));
          }),
      ),
      { numRuns: 25 },
    );
  });

  it('close() with writes in flight waits for them before closing the descriptor', async () => {
    await withFile(async (path) => {
      const fd = openSync(path, 'w+');
      const writer = new FileWriter(fd);
      writer.write(Buffer.alloc(5 << 20, 7));
      writer.close();
      // The descriptor is still open until the background writes end: reopening must not reuse it.
      const other = openSync(path, 'r');
      assert.notEqual(other, fd);
      closeSync(other);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.throws(() => closeSync(fd), /EBADF/);
    });
  });

  it('reports a failed background write from settle()', async () => {
    await withFile(async (path) => {
      const fd = openSync(path, 'w+');
      closeSync(fd);
      const readOnly = openSync(path, 'r');
      const writer = new FileWriter(readOnly);
      writer.write(Buffer.alloc(1 << 20, 1));
      writer.write(Buffer.alloc(10, 1)); // the full buffer goes to the background
      await assert.rejects(writer.settle(), { code: 'io' });
      writer.close();
    });
  });
});
