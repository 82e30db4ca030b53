import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ErofsOciError } from '../errors.ts';
import { buildZinfo } from './builder.ts';
import { decodeSpanDigests, encodeSpanDigests, zinfoDigest } from './span-digests.ts';
import { chunked, concat, gzipMember, memorySource, testData } from './testing.ts';
import { encodeZinfo } from './zinfo.ts';
import { openZinfoSource } from './zinfo-source.ts';

const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest();

describe('span digests', () => {
  it('the builder hashes exactly each span of the uncompressed stream (several members, any chunking)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 60_000 }), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1000, max: 20_000 }),
        fc.integer({ min: 1, max: 9000 }),
        async (sizes, span, piece) => {
          const parts = sizes.map((n, k) => testData(n, n + k, 'mixed'));
          const data = concat(parts);
          const gz = concat(parts.map((p) => gzipMember(p)));
          const built = await buildZinfo(chunked(gz, [piece]), { span, spanDigests: true });
          const cps = built.zinfo.checkpoints;
          assert.equal(built.spanDigests?.length, cps.length);
          for (const [i, c] of cps.entries()) {
            const end = cps[i + 1]?.out ?? data.byteLength;
            assert.deepEqual(built.spanDigests![i], sha(data.subarray(c.out, end)), `span ${i}`);
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('the zinfo source checks every span it inflates: a wrong digest fails only the reads of its span', async () => {
    const data = testData(3_000_000, 9, 'mixed');
    const gz = gzipMember(data);
    const built = await buildZinfo(chunked(gz, [4096]), { span: 16_384, spanDigests: true });
    const cps = built.zinfo.checkpoints;
    assert.ok(cps.length > 3);
    const good = await openZinfoSource(memorySource(gz), built.zinfo, {
      spanDigests: built.spanDigests!,
      uncompressedSize: data.byteLength,
    });
    assert.deepEqual(Buffer.from(await good.read(0, data.byteLength)), Buffer.from(data));
    const bad = 2;
    const wrong = built.spanDigests!.map((d, i) => (i === bad ? sha(new Uint8Array(1)) : d));
    const source = await openZinfoSource(memorySource(gz), built.zinfo, {
      spanDigests: wrong,
      uncompressedSize: data.byteLength,
      prefetch: false,
    });
    for (const [i, c] of cps.entries()) {
      const end = cps[i + 1]?.out ?? data.byteLength;
      if (end === c.out) continue;
      if (i === bad) {
        await assert.rejects(
          source.read(c.out, end - c.out),
          (error: unknown) => error instanceof ErofsOciError && error.code === 'digest-mismatch',
        );
        // Not cached: asking again fails again.
        await assert.rejects(source.read(c.out, 1), { code: 'digest-mismatch' });
      } else {
        assert.deepEqual(
          Buffer.from(await source.read(c.out, end - c.out)),
          Buffer.from(data.subarray(c.out, end)),
        );
      }
    }
  });

  it('the sidecar round-trips and is refused for another zinfo or the wrong number of spans', async () => {
    const data = testData(1_000_000, 4, 'mixed');
    const built = await buildZinfo(chunked(gzipMember(data), [1000]), { span: 8192, spanDigests: true });
    const zinfo = encodeZinfo(built.zinfo);
    const file = encodeSpanDigests({ zinfo: zinfoDigest(zinfo), spans: built.spanDigests! });
    const back = decodeSpanDigests(file, zinfo, built.zinfo.checkpoints.length, 'X.span-sha256');
    assert.deepEqual(
      back.spans.map((d) => Buffer.from(d).toString('hex')),
      built.spanDigests!.map((d) => Buffer.from(d).toString('hex')),
    );
    const other = zinfo.slice();
    other[other.byteLength - 1]! ^= 1;
    assert.throws(() => decodeSpanDigests(file, other, built.zinfo.checkpoints.length, 'X'), {
      code: 'corrupt',
    });
    assert.throws(() => decodeSpanDigests(file, zinfo, built.zinfo.checkpoints.length + 1, 'X'), {
      code: 'corrupt',
    });
  });
});
