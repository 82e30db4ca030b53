import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ErofsOciError, isErofsOciError } from '../errors.ts';
import type { ByteSource } from './byte-source.ts';
import { concatSources } from './concat-source.ts';

/** In-memory source that also records the reads it serves. */
function memory(bytes: Uint8Array, log: [number, number][] = []): ByteSource {
  return {
    size: bytes.byteLength,
    async read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > bytes.byteLength) {
        throw new ErofsOciError('corrupt', `memory read ${offset}+${length} out of range`);
      }
      log.push([offset, length]);
      return bytes.slice(offset, offset + length);
    },
  };
}

function joined(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

test('concatSources reads any range as the concatenated bytes', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 8 }),
      fc.nat(),
      fc.nat(),
      async (parts, a, b) => {
        const whole = joined(parts);
        const source = concatSources(parts.map((p) => memory(p)));
        assert.equal(source.size, whole.byteLength);
        const offset = whole.byteLength === 0 ? 0 : a % (whole.byteLength + 1);
        const length = b % (whole.byteLength - offset + 1);
        assert.deepEqual(await source.read(offset, length), whole.slice(offset, offset + length));
      },
    ),
    { numRuns: 500 },
  );
});

test('concatSources splits a read crossing several parts, including empty ones, into one read per part', async () => {
  const logs: [number, number][][] = [[], [], [], [], []];
  const parts = [
    new Uint8Array([1, 2, 3]),
    new Uint8Array(0),
    new Uint8Array([4, 5]),
    new Uint8Array(0),
    new Uint8Array([6, 7, 8]),
  ];
  const source = concatSources(parts.map((p, i) => memory(p, logs[i])));
  assert.deepEqual(await source.read(1, 6), new Uint8Array([2, 3, 4, 5, 6, 7]));
  assert.deepEqual(logs, [[[1, 2]], [], [[0, 2]], [], [[0, 2]]]);
});

test('concatSources reads at the very end and zero-length reads', async () => {
  const source = concatSources([memory(new Uint8Array([1, 2])), memory(new Uint8Array(0))]);
  assert.deepEqual(await source.read(2, 0), new Uint8Array(0));
  assert.deepEqual(await source.read(1, 1), new Uint8Array([2]));
  assert.deepEqual(await concatSources([]).read(0, 0), new Uint8Array(0));
});

test('concatSources rejects a range beyond the end with a corrupt error naming it', async () => {
  const source = concatSources([memory(new Uint8Array(3)), memory(new Uint8Array(4))]);
  await assert.rejects(source.read(5, 3), {
    code: 'corrupt',
    message: 'Cannot read 3 bytes at offset 5 of a concatenation of 7 bytes',
  });
  await assert.rejects(source.read(-1, 1), (e) => isErofsOciError(e, 'internal'));
});

test('concatSources passes part failures through', async () => {
  const failing: ByteSource = {
    size: 10,
    read: async () => {
      throw new ErofsOciError('unavailable', 'registry down');
    },
  };
  const source = concatSources([memory(new Uint8Array(4)), failing]);
  await assert.rejects(source.read(2, 4), { code: 'unavailable' });
});

test('concatSources honours an aborted signal', async () => {
  const source = concatSources([memory(new Uint8Array(4))]);
  await assert.rejects(source.read(0, 1, { signal: AbortSignal.abort() }), { code: 'aborted' });
});
