import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { ByteSource } from './byte-source.ts';
import { createRangeOverlay } from './range-overlay.ts';

function bytesOf(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 7 + (i >> 8)) & 0xff;
  return out;
}

function counting(data: Uint8Array): ByteSource & { reads: number } {
  const source = {
    size: data.byteLength,
    reads: 0,
    async read(offset: number, length: number) {
      source.reads++;
      return data.slice(offset, offset + length);
    },
  };
  return source;
}

test('a range overlay answers every read with the bytes of the source, whatever it holds', async () => {
  const data = bytesOf(200_000);
  const range = fc.record({ offset: fc.nat(199_000), length: fc.integer({ min: 1, max: 9000 }) });
  await fc.assert(
    fc.asyncProperty(
      fc.array(range, { maxLength: 20 }),
      fc.array(range, { minLength: 1, maxLength: 20 }),
      fc.boolean(),
      async (fills, reads, direct) => {
        const behind = counting(data);
        let fetched = 0;
        const overlay = createRangeOverlay(
          behind,
          async (offset, length) => {
            fetched += length;
            return data.slice(offset, offset + length);
          },
          { mergeGap: 1000, memoryBytes: 100_000 },
        );
        overlay.direct = direct;
        const filling = overlay.fill(fills);
        const answers = await Promise.all(
          reads.map(async (r) => {
            const length = Math.min(r.length, data.byteLength - r.offset);
            return { r, length, bytes: await overlay.read(r.offset, length) };
          }),
        );
        await filling;
        for (const { r, length, bytes } of answers) {
          assert.deepEqual(bytes, data.subarray(r.offset, r.offset + length));
        }
        assert.ok(fetched <= 100_000 + 9000 * 20 + 4096 * 20);
        await overlay.close();
      },
    ),
    { numRuns: 200 },
  );
});

test('a range overlay fetches filled ranges in few requests and answers them without the source behind', async () => {
  const data = bytesOf(1_000_000);
  const behind = counting(data);
  const requests: [number, number][] = [];
  const overlay = createRangeOverlay(
    behind,
    async (offset, length) => {
      requests.push([offset, length]);
      return data.slice(offset, offset + length);
    },
    { extendBytes: 0 },
  );
  const pieces = Array.from({ length: 50 }, (_, i) => ({ offset: 102_400 + i * 8192, length: 4096 }));
  await overlay.fill(pieces);
  // 8 KiB apart: one request for all (within the 32 KiB merge gap and 4 MiB per request).
  assert.deepEqual(requests, [[102_400, 49 * 8192 + 4096]]);
  for (const p of pieces)
    assert.deepEqual(await overlay.read(p.offset, 4096), data.subarray(p.offset, p.offset + 4096));
  assert.equal(behind.reads, 0);
  // A read across two held pieces is answered from them.
  await overlay.fill([
    { offset: 700_000, length: 4096 },
    { offset: 704_096, length: 4096 },
  ]);
  assert.deepEqual(await overlay.read(701_000, 6000), data.subarray(701_000, 707_000));
  assert.equal(behind.reads, 0);
  // Outside: the source behind answers (direct is off).
  assert.deepEqual(await overlay.read(10, 100), data.subarray(10, 110));
  assert.equal(behind.reads, 1);
  // A failed fetch leaves reads to the source behind.
  const failing = createRangeOverlay(behind, async () => {
    throw new Error('registry down');
  });
  failing.direct = true;
  await failing.fill([{ offset: 0, length: 4096 }]);
  assert.deepEqual(await failing.read(0, 4096), data.subarray(0, 4096));
});
