import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import { buildZinfo, createZinfoBuilder } from './builder.ts';
import { type BlockBoundary, DeflateScanner } from './deflate-scanner.ts';
import { chunked, concat, gzipMember, testData } from './testing.ts';
import { WINDOW_SIZE } from './zinfo.ts';

async function collect(source: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of source) parts.push(chunk);
  return concat(parts);
}

function boundariesOf(gz: Uint8Array): BlockBoundary[] {
  const boundaries: BlockBoundary[] = [];
  const scanner = new DeflateScanner((b) => boundaries.push(b));
  scanner.feed(gz);
  scanner.finish();
  return boundaries;
}

/** erofs-utils' placement rule (lib/gzran.c), applied to the scanner's boundaries. */
function expectedCheckpoints(gz: Uint8Array, span: number): [number, number, number][] {
  const out: [number, number, number][] = [];
  let last = 0;
  for (const b of boundariesOf(gz)) {
    if (b.memberStart || b.out - last > span) {
      out.push([b.in, b.bits, b.out]);
      last = b.out;
    }
  }
  return out;
}

describe('createZinfoBuilder', () => {
  it('createZinfoBuilder yields the decompressed bytes and places checkpoints like erofs-utils', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            size: fc.integer({ min: 0, max: 150_000 }),
            seed: fc.nat(),
            kind: fc.constantFrom('random' as const, 'text' as const, 'mixed' as const),
            memLevel: fc.integer({ min: 1, max: 9 }),
          }),
          { minLength: 1, maxLength: 3 },
        ),
        fc.integer({ min: 1024, max: 65536 }),
        fc.array(fc.integer({ min: 1, max: 70_000 }), { minLength: 1, maxLength: 5 }),
        async (members, span, chunks) => {
          const datas = members.map((m) => testData(m.size, m.seed, m.kind));
          const gz = concat(members.map((m, i) => gzipMember(datas[i]!, { zlib: { memLevel: m.memLevel } })));
          const data = concat(datas);
          const builder = createZinfoBuilder({ span });
          const output = await collect(builder.inflate(chunked(gz, chunks)));
          assert.deepEqual(Buffer.from(output), Buffer.from(data));
          const { zinfo, compressedSize, uncompressedSize, members: count } = builder.result();
          assert.equal(compressedSize, gz.byteLength);
          assert.equal(uncompressedSize, data.byteLength);
          assert.equal(count, members.length);
          assert.equal(zinfo.spanSize, span);
          assert.deepEqual(
            zinfo.checkpoints.map((c) => [c.in, c.bits, c.out]),
            expectedCheckpoints(gz, span),
          );
          for (const c of zinfo.checkpoints) {
            // The window is the 32 KiB before the checkpoint, zero-filled before offset 0.
            const expected = new Uint8Array(WINDOW_SIZE);
            const from = Math.max(0, c.out - WINDOW_SIZE);
            expected.set(data.subarray(from, c.out), WINDOW_SIZE - (c.out - from));
            assert.ok(
              Buffer.from(c.window).equals(Buffer.from(expected)),
              `window of checkpoint at ${c.out}`,
            );
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  it('createZinfoBuilder puts a checkpoint only after more than `span` bytes', async () => {
    // Sync flushes end a block every 1000 bytes, so boundaries fall at exact multiples of 1000.
    const data = testData(10_000, 3, 'text');
    const gz = gzipMember(data, { flushEvery: 1000 });
    const at = async (span: number) =>
      (await buildZinfo(chunked(gz, [4096]), { span })).zinfo.checkpoints.map((c) => c.out);
    assert.deepEqual(await at(1000), [0, 2000, 4000, 6000, 8000]);
    assert.deepEqual(await at(999), [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000]);
  });

  it('createZinfoBuilder puts a checkpoint at every member start, empty members included', async () => {
    const parts = [testData(3000, 1, 'text'), new Uint8Array(0), testData(3000, 2, 'text')];
    const gz = concat(parts.map((p) => gzipMember(p, { name: 'member' })));
    const { zinfo } = await buildZinfo(chunked(gz, [100]), { span: 1 << 20 });
    const headerLength = 10 + 'member'.length + 1;
    const first = gzipMember(parts[0]!, { name: 'member' }).byteLength;
    const second = gzipMember(parts[1]!, { name: 'member' }).byteLength;
    assert.deepEqual(
      zinfo.checkpoints.map((c) => [c.in, c.bits, c.out]),
      [
        [headerLength, 0, 0],
        [first + headerLength, 0, 3000],
        [first + second + headerLength, 0, 3000],
      ],
    );
  });

  it('createZinfoBuilder refuses truncated input with a CorruptInputError', async () => {
    const gz = gzipMember(testData(50_000, 1, 'mixed'));
    await assert.rejects(
      buildZinfo(chunked(gz.subarray(0, gz.byteLength - 5), [1000])),
      (e: unknown) =>
        e instanceof CorruptInputError && /truncated \(ends inside the trailer of member 1\)/.test(e.message),
    );
    await assert.rejects(
      buildZinfo(chunked(gz.subarray(0, 20_000), [1000])),
      (e: unknown) =>
        e instanceof CorruptInputError &&
        /truncated \(ends inside the deflate data of member 1\)/.test(e.message),
    );
  });

  it('createZinfoBuilder refuses a CRC mismatch found by zlib', async () => {
    const gz = gzipMember(testData(50_000, 1, 'mixed'));
    gz[gz.byteLength - 8]! ^= 0xff;
    await assert.rejects(
      buildZinfo(chunked(gz, [1000])),
      (e: unknown) =>
        e instanceof CorruptInputError && e.message === 'Cannot decompress gzip stream: incorrect data check',
    );
  });

  it('createZinfoBuilder refuses trailing zeros that zlib would ignore', async () => {
    const gz = concat([gzipMember(testData(5000, 1, 'text')), new Uint8Array(1024)]);
    await assert.rejects(buildZinfo(chunked(gz, [333])), /Cannot parse data after gzip member 1/);
  });

  it('createZinfoBuilder stops when aborted', async () => {
    const gz = gzipMember(testData(2_000_000, 1, 'random'));
    const controller = new AbortController();
    const builder = createZinfoBuilder({});
    let seen = 0;
    await assert.rejects(
      (async () => {
        for await (const chunk of builder.inflate(chunked(gz, [10_000]), { signal: controller.signal })) {
          seen += chunk.byteLength;
          if (seen > 100_000) controller.abort();
        }
      })(),
      (e: unknown) => e instanceof ErofsOciError && e.code === 'aborted',
    );
    assert.throws(() => builder.result(), /not built yet/);
  });

  it('createZinfoBuilder lets the consumer stop early', async () => {
    const gz = gzipMember(testData(2_000_000, 1, 'mixed'));
    const builder = createZinfoBuilder({ span: 65536 });
    for await (const _ of builder.inflate(chunked(gz, [10_000]))) break;
    assert.throws(() => builder.result(), /not built yet/);
  });

  it('createZinfoBuilder does not wait for a stalled input when the consumer stops', async () => {
    const gz = gzipMember(testData(200_000, 1, 'random'));
    async function* stalled(): AsyncGenerator<Uint8Array> {
      yield gz.subarray(0, 100_000);
      await new Promise(() => {}); // never resolves, like an idle stdin
    }
    const builder = createZinfoBuilder({});
    let received = 0;
    for await (const chunk of builder.inflate(stalled())) {
      received += chunk.byteLength;
      break;
    }
    assert.ok(received > 0, 'output for the input received so far');
    assert.throws(() => builder.result(), /not built yet/);
  });

  it('createZinfoBuilder refuses a span that is not a positive integer', () => {
    for (const span of [0, -1, 1.5, Number.NaN]) {
      assert.throws(
        () => createZinfoBuilder({ span }),
        (e: unknown) => e instanceof ErofsOciError && e.code === 'usage',
      );
    }
  });
});
