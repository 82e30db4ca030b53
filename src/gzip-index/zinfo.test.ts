import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CorruptInputError } from '../errors.ts';
import {
  decodeZinfo,
  encodeZinfo,
  validateZinfo,
  WINDOW_SIZE,
  type Zinfo,
  type ZinfoCheckpoint,
  zinfoCheckpoint,
  zinfoHeader,
} from './zinfo.ts';

function checkpoint(inOffset: number, out: number, bits = 0, fill = 0): ZinfoCheckpoint {
  return { in: inOffset, out, bits, window: new Uint8Array(WINDOW_SIZE).fill(fill) };
}

const sample: Zinfo = {
  spanSize: 4 * 1024 * 1024,
  checkpoints: [
    checkpoint(10, 0),
    checkpoint(1_329_477, 4_256_137, 0, 7),
    checkpoint(2_547_895, 8_473_076, 1, 9),
  ],
};

describe('zinfo layout', () => {
  it('zinfoHeader and zinfoCheckpoint have the SOCI sizes and offsets', () => {
    assert.equal(zinfoHeader.size, 12);
    assert.deepEqual(
      zinfoHeader.fields.map((f) => [f.name, f.offset, f.size]),
      [
        ['checkpointCount', 0, 4],
        ['spanSize', 4, 8],
      ],
    );
    assert.equal(zinfoCheckpoint.size, 32785);
    assert.deepEqual(
      zinfoCheckpoint.fields.map((f) => [f.name, f.offset, f.size]),
      [
        ['in', 0, 8],
        ['out', 8, 8],
        ['bits', 16, 1],
        ['window', 17, WINDOW_SIZE],
      ],
    );
  });

  it('encodeZinfo writes little-endian fields at the documented offsets', () => {
    const bytes = encodeZinfo(sample);
    assert.equal(bytes.byteLength, 12 + 3 * 32785);
    const dv = new DataView(bytes.buffer);
    assert.equal(dv.getInt32(0, true), 3);
    assert.equal(dv.getBigInt64(4, true), 4194304n);
    const second = 12 + 32785;
    assert.equal(dv.getBigInt64(second, true), 1_329_477n);
    assert.equal(dv.getBigInt64(second + 8, true), 4_256_137n);
    assert.equal(bytes[second + 16], 0);
    assert.equal(bytes[second + 17], 7);
    assert.equal(bytes[12 + 2 * 32785 + 16], 1);
  });
});

describe('decodeZinfo', () => {
  it('decodeZinfo round-trips encodeZinfo (version 2)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 40 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 0, max: 7 }), fc.nat(5000)), {
          minLength: 0,
          maxLength: 4,
        }),
        (spanSize, steps) => {
          const checkpoints = [checkpoint(18, 0, 0, 1)];
          for (const [din, bits, dout] of steps) {
            const prev = checkpoints[checkpoints.length - 1]!;
            checkpoints.push(checkpoint(prev.in + din, prev.out + dout, bits, din & 0xff));
          }
          const decoded = decodeZinfo(encodeZinfo({ spanSize, checkpoints }));
          assert.equal(decoded.version, 2);
          assert.equal(decoded.spanSize, spanSize);
          assert.deepEqual(
            decoded.checkpoints.map((c) => ({ ...c, window: Buffer.from(c.window) })),
            checkpoints.map((c) => ({ ...c, window: Buffer.from(c.window) })),
          );
        },
      ),
      { numRuns: 30 },
    );
  });

  it('decodeZinfo reads version 1, synthesising checkpoint 0 after a 10-byte header', () => {
    const v2 = encodeZinfo(sample);
    // Version 1: the same header (count 3) but checkpoint 0 left out.
    const v1 = new Uint8Array(v2.byteLength - 32785);
    v1.set(v2.subarray(0, 12), 0);
    v1.set(v2.subarray(12 + 32785), 12);
    const decoded = decodeZinfo(v1);
    assert.equal(decoded.version, 1);
    assert.equal(decoded.checkpoints.length, 3);
    assert.deepEqual(
      decoded.checkpoints.map((c) => [c.in, c.out, c.bits]),
      [
        [10, 0, 0],
        [1_329_477, 4_256_137, 0],
        [2_547_895, 8_473_076, 1],
      ],
    );
    assert.ok(decoded.checkpoints[0]!.window.every((b) => b === 0));
  });

  it('decodeZinfo refuses a length that fits neither version', () => {
    const bytes = encodeZinfo(sample);
    assert.throws(
      () => decodeZinfo(bytes.subarray(0, bytes.byteLength - 1)),
      (e: unknown) =>
        e instanceof CorruptInputError &&
        e.code === 'corrupt' &&
        e.message ===
          `Cannot parse zinfo: ${bytes.byteLength - 1} bytes do not fit 3 checkpoints (version 2 needs 98367 bytes, version 1 needs 65582)`,
    );
    assert.throws(() => decodeZinfo(bytes.subarray(0, 11)), /fewer than the 12-byte header/);
  });

  it('decodeZinfo refuses a zero or negative checkpoint count', () => {
    const header = zinfoHeader.encode({ checkpointCount: 0, spanSize: 1 });
    assert.throws(() => decodeZinfo(header), /checkpoint count is 0, expected at least 1/);
    const negative = encodeZinfo(sample);
    new DataView(negative.buffer).setInt32(0, -1, true);
    assert.throws(() => decodeZinfo(negative), /checkpoint count is -1/);
  });

  it('decodeZinfo refuses a span size of 0', () => {
    const bytes = encodeZinfo(sample);
    new DataView(bytes.buffer).setBigInt64(4, 0n, true);
    assert.throws(
      () => decodeZinfo(bytes),
      (e: unknown) =>
        e instanceof CorruptInputError && /span size is 0, expected a positive number/.test(e.message),
    );
  });

  it('decodeZinfo refuses checkpoints out of order', () => {
    const bytes = encodeZinfo(sample);
    // Move checkpoint 2 before checkpoint 1 in the compressed stream.
    new DataView(bytes.buffer).setBigInt64(12 + 2 * 32785, 1000n, true);
    assert.throws(
      () => decodeZinfo(bytes),
      /checkpoint 2 \(in=1000 bits=1 out=8473076\) is not after checkpoint 1/,
    );
    const back = encodeZinfo(sample);
    new DataView(back.buffer).setBigInt64(12 + 2 * 32785 + 8, 5n, true);
    assert.throws(() => decodeZinfo(back), /checkpoint 2 .* is not after checkpoint 1/);
  });

  it('decodeZinfo refuses a bit offset above 7 and a first checkpoint not at offset 0', () => {
    const bytes = encodeZinfo(sample);
    bytes[12 + 32785 + 16] = 8;
    assert.throws(() => decodeZinfo(bytes), /checkpoint 1 has bit offset 8, expected 0\.\.7/);
    const moved = encodeZinfo(sample);
    new DataView(moved.buffer).setBigInt64(12 + 8, 3n, true);
    assert.throws(() => decodeZinfo(moved), /checkpoint 0 is at uncompressed offset 3, expected 0/);
  });

  it('validateZinfo refuses checkpoints beyond the blob', () => {
    validateZinfo(sample, 2_547_895);
    assert.throws(
      () => validateZinfo(sample, 2_547_894),
      /checkpoint 2 is at compressed offset 2547895, beyond the end of the 2547894-byte blob/,
    );
  });
});
