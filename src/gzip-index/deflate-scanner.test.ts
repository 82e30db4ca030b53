import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { gunzipSync, inflateRawSync } from 'node:zlib';
import fc from 'fast-check';
import { CorruptInputError } from '../errors.ts';
import { type BlockBoundary, DeflateScanner } from './deflate-scanner.ts';
import { alignmentPrefix } from './realign.ts';
import { concat, gzipMember, type MemberOptions, STRATEGIES, testData } from './testing.ts';

function scan(gz: Uint8Array, chunkSizes: readonly number[] = [gz.byteLength]) {
  const boundaries: BlockBoundary[] = [];
  const scanner = new DeflateScanner((b) => boundaries.push(b));
  let at = 0;
  for (let k = 0; at < gz.byteLength; k++) {
    const n = Math.max(1, chunkSizes[k % chunkSizes.length]!);
    scanner.feed(gz.subarray(at, at + n));
    at += n;
  }
  return { boundaries, summary: scanner.finish() };
}

/** Inflates from a boundary with native zlib (the reader's method) and returns what it produces. */
function inflateFrom(gz: Uint8Array, output: Uint8Array, b: BlockBoundary): Uint8Array {
  const dictionary = output.subarray(Math.max(0, b.out - 32768), b.out);
  const data =
    b.bits === 0 ? gz.subarray(b.in) : concat([alignmentPrefix(b.bits, gz[b.in - 1]!), gz.subarray(b.in)]);
  return inflateRawSync(data, dictionary.byteLength > 0 ? { dictionary } : {});
}

/** Up to `n` elements spread over `items`, the first and last included (checking all would be quadratic). */
function spread<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  return Array.from({ length: n }, (_, k) => items[Math.round((k * (items.length - 1)) / (n - 1))]!);
}

const memberOptions: fc.Arbitrary<MemberOptions> = fc.record(
  {
    zlib: fc.record({
      level: fc.integer({ min: 0, max: 9 }),
      memLevel: fc.integer({ min: 1, max: 9 }),
      strategy: fc.constantFrom(...STRATEGIES),
      windowBits: fc.integer({ min: 9, max: 15 }),
    }),
    flushEvery: fc.integer({ min: 100, max: 40000 }),
    flush: fc.constantFrom('sync' as const, 'full' as const),
    name: fc.string({ maxLength: 20 }),
    comment: fc.string({ maxLength: 20 }),
    extra: fc.uint8Array({ maxLength: 40 }),
    headerCrc: fc.boolean(),
  },
  { requiredKeys: ['zlib'] },
);

const dataKind = fc.constantFrom('random' as const, 'text' as const, 'zeros' as const, 'mixed' as const);

describe('DeflateScanner', () => {
  it('DeflateScanner reports boundaries from which native inflate reproduces the rest of the member', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 120_000 }),
        fc.nat(),
        dataKind,
        memberOptions,
        (size, seed, kind, options) => {
          const data = testData(size, seed, kind);
          const gz = gzipMember(data, options);
          const { boundaries, summary } = scan(gz);
          assert.equal(summary.uncompressedSize, data.byteLength);
          assert.equal(summary.compressedSize, gz.byteLength);
          assert.equal(summary.members, 1);
          assert.ok(boundaries[0]!.memberStart);
          assert.equal(boundaries.filter((b) => b.memberStart).length, 1);
          let previous = -1;
          for (const b of boundaries) {
            assert.ok(b.bits >= 0 && b.bits <= 7);
            assert.ok(b.in * 8 - b.bits > previous, 'boundaries advance');
            previous = b.in * 8 - b.bits;
          }
          for (const b of spread(boundaries, 25)) {
            const rest = inflateFrom(gz, data, b);
            assert.deepEqual(
              Buffer.from(rest),
              Buffer.from(data.subarray(b.out)),
              `from boundary ${JSON.stringify(b)}`,
            );
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('DeflateScanner gives the same boundaries whatever the input chunking', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 60_000 }),
        fc.nat(),
        dataKind,
        memberOptions,
        fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 8 }),
        (size, seed, kind, options, chunks) => {
          const gz = concat([
            gzipMember(testData(size, seed, kind), options),
            gzipMember(testData(size >>> 1, seed + 1, kind)),
          ]);
          assert.deepEqual(scan(gz, chunks), scan(gz));
        },
      ),
      { numRuns: 60 },
    );
  });

  it('DeflateScanner counts members and reports a member start for each, empty members included', () => {
    const parts = [
      testData(5000, 1, 'text'),
      new Uint8Array(0),
      testData(70000, 2, 'mixed'),
      new Uint8Array(0),
    ];
    const gz = concat(parts.map((p, i) => gzipMember(p, { name: `m${i}`, zlib: { memLevel: 1 } })));
    const { boundaries, summary } = scan(gz, [777]);
    assert.equal(summary.members, 4);
    assert.equal(summary.uncompressedSize, 75000);
    const starts = boundaries.filter((b) => b.memberStart);
    assert.deepEqual(
      starts.map((b) => b.out),
      [0, 5000, 5000, 75000],
    );
    assert.deepEqual(Buffer.from(gunzipSync(gz)), Buffer.from(concat(parts)));
  });

  it('DeflateScanner refuses every truncation of a stream', () => {
    const gz = gzipMember(testData(3000, 5, 'mixed'), { name: 'x', zlib: { memLevel: 1 }, flushEvery: 700 });
    for (let cut = 0; cut < gz.byteLength; cut++) {
      assert.throws(
        () => scan(gz.subarray(0, cut), [97]),
        (e: unknown) => e instanceof CorruptInputError && /truncated|empty/.test(e.message),
        `cut at ${cut}`,
      );
    }
  });

  it('DeflateScanner refuses data after the last member', () => {
    const gz = gzipMember(testData(1000, 1, 'text'));
    assert.throws(
      () => scan(concat([gz, new Uint8Array(512)])),
      (e: unknown) =>
        e instanceof CorruptInputError &&
        e.offset === gz.byteLength &&
        e.message ===
          `Cannot parse data after gzip member 1 (trailing garbage or a corrupt member header): magic is 00 00, expected 1f 8b (at offset ${gz.byteLength})`,
    );
    assert.throws(() => scan(concat([gz, Uint8Array.of(0x1f)])), /truncated/);
  });

  it('DeflateScanner refuses input that is not gzip', () => {
    assert.throws(
      () => scan(new TextEncoder().encode('hello world')),
      /^ErofsOciError: Cannot parse gzip stream: magic is 68 65, expected 1f 8b \(at offset 0\)$/,
    );
    assert.throws(() => scan(new Uint8Array(0)), /the input is empty/);
    const gz = gzipMember(testData(100, 1, 'text'));
    const badMethod = gz.slice();
    badMethod[2] = 7;
    assert.throws(() => scan(badMethod), /compression method is 7, expected 8 \(deflate\)/);
    const reserved = gz.slice();
    reserved[3] = 0x20;
    assert.throws(() => scan(reserved), /reserved flag bits are set \(flags 0x20\)/);
  });

  it('DeflateScanner refuses a trailer whose size does not match', () => {
    const gz = gzipMember(testData(1000, 1, 'text'));
    gz[gz.byteLength - 4]! ^= 1;
    assert.throws(
      () => scan(gz),
      (e: unknown) =>
        e instanceof CorruptInputError &&
        /member 1 has 1000 bytes but its trailer says 1001 \(mod 2\^32\)/.test(e.message) &&
        e.offset === gz.byteLength - 8,
    );
  });

  it('DeflateScanner refuses an invalid block type', () => {
    // Header, then a block header with BTYPE 11.
    const gz = concat([
      Uint8Array.of(0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3),
      Uint8Array.of(0b111),
      new Uint8Array(20),
    ]);
    assert.throws(
      () => scan(gz),
      /Cannot index gzip stream: invalid block type 3 in member 1 \(at offset 10\)/,
    );
  });

  it('DeflateScanner refuses a stored block whose length does not match its complement', () => {
    const gz = gzipMember(testData(100, 1, 'random'), { zlib: { level: 0 } });
    gz[10 + 1]! ^= 0xff;
    assert.throws(() => scan(gz), /stored block length .* does not match its complement/);
  });

  it('DeflateScanner refuses a distance before the member start', () => {
    // Fixed block: literal 'a', then a match of length 3 at distance 2 (only 1 byte exists).
    const bits: number[] = [];
    const put = (value: number, n: number, msbFirst = false) => {
      for (let i = 0; i < n; i++) bits.push(msbFirst ? (value >>> (n - 1 - i)) & 1 : (value >>> i) & 1);
    };
    put(1, 1);
    put(1, 2);
    put(0x30 + 0x61, 8, true); // literal 'a'
    put(0b0000001, 7, true); // length symbol 257: length 3
    put(1, 5, true); // distance symbol 1: distance 2
    put(0, 7, true); // end of block
    const raw = new Uint8Array(Math.ceil(bits.length / 8));
    bits.forEach((b, i) => {
      raw[i >>> 3]! |= b << (i & 7);
    });
    const gz = concat([Uint8Array.of(0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3), raw, new Uint8Array(8)]);
    assert.throws(() => scan(gz), /distance 2 reaches before the start of the member/);
  });
});
