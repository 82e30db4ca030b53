import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { crc32c } from './crc32c.ts';

/** Bit-at-a-time reference, the same loop as erofs-utils `erofs_crc32c`. */
function crc32cBitwise(data: Uint8Array, seed = 0xffffffff): number {
  let crc = seed >>> 0;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return crc >>> 0;
}

const ascii = (s: string) => new TextEncoder().encode(s);

test('crc32c matches the standard CRC-32C check value after the final inversion', () => {
  // RFC 3720 / the CRC catalogue: CRC-32C("123456789") = 0xe3069283.
  assert.equal(~crc32c(ascii('123456789')) >>> 0, 0xe3069283);
  assert.equal(crc32c(ascii('123456789')), 0x1cf96d7c);
});

test('crc32c returns the raw register: empty input returns the seed', () => {
  assert.equal(crc32c(new Uint8Array(0)), 0xffffffff);
  assert.equal(crc32c(new Uint8Array(0), 0x12345678), 0x12345678);
});

test('crc32c matches RFC 3720 B.4 vectors', () => {
  // 32 bytes of zeros → 0x8a9136aa; 32 bytes of 0xff → 0x62a8ab43; ascending 0..31 → 0x46dd794e.
  assert.equal(~crc32c(new Uint8Array(32)) >>> 0, 0x8a9136aa);
  assert.equal(~crc32c(new Uint8Array(32).fill(0xff)) >>> 0, 0x62a8ab43);
  assert.equal(~crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)) >>> 0, 0x46dd794e);
  assert.equal(~crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i)) >>> 0, 0x113fdb5c);
});

test('crc32c equals the bitwise reference for any data and seed, at any alignment', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 100 }),
      fc.nat({ max: 7 }),
      fc.integer({ min: 0, max: 0xffffffff }),
      (data, skip, seed) => {
        const view = data.subarray(Math.min(skip, data.length));
        assert.equal(crc32c(view, seed), crc32cBitwise(view, seed));
      },
    ),
  );
});

test('crc32c chains: crc32c(b, crc32c(a)) equals crc32c(a ++ b)', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 64 }), (a, b) => {
      const joined = new Uint8Array(a.length + b.length);
      joined.set(a);
      joined.set(b, a.length);
      assert.equal(crc32c(b, crc32c(a)), crc32c(joined));
    }),
  );
});
