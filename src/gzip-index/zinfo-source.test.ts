import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import { buildZinfo } from './builder.ts';
import { chunked, concat, gzipMember, memorySource, STRATEGIES, testData } from './testing.ts';
import { decodeZinfo, encodeZinfo, type Zinfo } from './zinfo.ts';
import { openZinfoSource } from './zinfo-source.ts';

interface Fixture {
  gz: Uint8Array;
  data: Uint8Array;
  zinfo: Zinfo;
  /** Uncompressed offsets where members start. */
  memberStarts: number[];
}

const memberArb: fc.Arbitrary<MemberSpec> = fc.record({
  size: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 120_000 })),
  seed: fc.nat(),
  kind: fc.constantFrom('random' as const, 'text' as const, 'zeros' as const, 'mixed' as const),
  level: fc.integer({ min: 0, max: 9 }),
  memLevel: fc.integer({ min: 1, max: 9 }),
  strategy: fc.constantFrom(...STRATEGIES),
  name: fc.option(fc.string({ maxLength: 10 }), { nil: undefined }),
});

interface MemberSpec {
  size: number;
  seed: number;
  kind: 'random' | 'text' | 'zeros' | 'mixed';
  level: number;
  memLevel: number;
  strategy: number;
  name?: string | undefined;
}

async function fixture(members: readonly MemberSpec[], span: number): Promise<Fixture> {
  const datas = members.map((m) => testData(m.size, m.seed, m.kind));
  const gz = concat(
    members.map((m, i) =>
      gzipMember(datas[i]!, {
        zlib: { level: m.level, memLevel: m.memLevel, strategy: m.strategy },
        name: m.name,
      }),
    ),
  );
  const { zinfo } = await buildZinfo(chunked(gz, [65536]), { span });
  const memberStarts: number[] = [];
  let at = 0;
  for (const d of datas) {
    memberStarts.push(at);
    at += d.byteLength;
  }
  return { gz, data: concat(datas), zinfo, memberStarts };
}

/** Reads at random places, at member boundaries and at the very end. */
function readsFor(f: Fixture, random: [number, number][]): [number, number][] {
  const size = f.data.byteLength;
  const reads: [number, number][] = random.map(([a, b]) => {
    const offset = size === 0 ? 0 : a % (size + 1);
    return [offset, Math.min(b, size - offset)];
  });
  for (const start of f.memberStarts)
    reads.push([Math.max(0, start - 100), Math.min(200, size - Math.max(0, start - 100))]);
  for (const c of f.zinfo.checkpoints)
    reads.push([Math.max(0, c.out - 1), Math.min(2, size - Math.max(0, c.out - 1))]);
  reads.push([Math.max(0, size - 1), Math.min(1, size)], [size, 0]);
  return reads;
}

describe('openZinfoSource', () => {
  it('openZinfoSource reads the same bytes as a full decompression', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(memberArb, { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1024, max: 65536 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 150_000 })), { maxLength: 12 }),
        fc.record({
          cacheBytes: fc.constantFrom(0, 50_000, 64 * 1024 * 1024),
          readChunkBytes: fc.integer({ min: 64, max: 70_000 }),
          giveSize: fc.boolean(),
          prefetch: fc.boolean(),
        }),
        async (members, span, random, opts) => {
          const f = await fixture(members, span);
          const source = await openZinfoSource(memorySource(f.gz), f.zinfo, {
            cacheBytes: opts.cacheBytes,
            readChunkBytes: opts.readChunkBytes,
            prefetch: opts.prefetch,
            ...(opts.giveSize ? { uncompressedSize: f.data.byteLength } : {}),
          });
          assert.equal(source.size, f.data.byteLength);
          for (const [offset, length] of readsFor(f, random)) {
            const got = await source.read(offset, length);
            assert.ok(
              Buffer.from(got).equals(Buffer.from(f.data.subarray(offset, offset + length))),
              `read ${offset}+${length}`,
            );
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('openZinfoSource follows gzip members inside a span (indexes without member checkpoints)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(memberArb, { minLength: 2, maxLength: 6 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 150_000 })), { maxLength: 8 }),
        async (members, random) => {
          const f = await fixture(members, 1 << 30);
          // soci-snapshotter only checkpoints the start of the first member; keep only that one.
          const soci: Zinfo = { spanSize: 1 << 30, checkpoints: [f.zinfo.checkpoints[0]!] };
          const source = await openZinfoSource(memorySource(f.gz), soci);
          assert.equal(source.size, f.data.byteLength);
          for (const [offset, length] of readsFor({ ...f, zinfo: soci }, random)) {
            const got = await source.read(offset, length);
            assert.ok(Buffer.from(got).equals(Buffer.from(f.data.subarray(offset, offset + length))));
          }
        },
      ),
      { numRuns: 20 },
    );
  });

  it('openZinfoSource never returns wrong bytes with the zinfo of another blob', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(memberArb, { minLength: 1, maxLength: 2 }),
        fc.array(memberArb, { minLength: 1, maxLength: 2 }),
        fc.integer({ min: 1024, max: 16384 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 50_000 })), { minLength: 1, maxLength: 5 }),
        async (membersA, membersB, span, random) => {
          const a = await fixture(membersA, span);
          const b = await fixture(membersB, span);
          let source: Awaited<ReturnType<typeof openZinfoSource>>;
          try {
            source = await openZinfoSource(memorySource(b.gz), a.zinfo, {
              uncompressedSize: a.data.byteLength,
            });
          } catch (error) {
            assert.ok(error instanceof CorruptInputError, String(error));
            return;
          }
          for (const [offset, length] of readsFor(a, random)) {
            try {
              const got = await source.read(offset, length);
              // Allowed only if these really are blob B's bytes.
              assert.ok(Buffer.from(got).equals(Buffer.from(b.data.subarray(offset, offset + length))));
            } catch (error) {
              assert.ok(error instanceof CorruptInputError, String(error));
              assert.match(error.message, /the zinfo does not belong to this blob or the blob is corrupt/);
            }
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('openZinfoSource reports a zinfo of another blob as corrupt on the first read', async () => {
    const a = await fixture(
      [{ size: 300_000, seed: 1, kind: 'text', level: 6, memLevel: 8, strategy: 0 }],
      65536,
    );
    const b = await fixture(
      [{ size: 300_000, seed: 2, kind: 'text', level: 6, memLevel: 8, strategy: 0 }],
      65536,
    );
    const source = await openZinfoSource(memorySource(b.gz), a.zinfo, { uncompressedSize: 300_000 });
    await assert.rejects(source.read(100_000, 10), (e: unknown) => {
      assert.ok(e instanceof CorruptInputError);
      assert.equal(e.code, 'corrupt');
      assert.match(
        e.message,
        /^Cannot read gzip blob from zinfo checkpoint \d+ \(compressed offset \d+, bit offset \d, uncompressed offset \d+\): /,
      );
      return true;
    });
  });

  it('openZinfoSource reads a version 1 zinfo', async () => {
    const f = await fixture(
      [{ size: 200_000, seed: 4, kind: 'mixed', level: 6, memLevel: 8, strategy: 0 }],
      16384,
    );
    const v2 = encodeZinfo(f.zinfo);
    const v1 = concat([v2.subarray(0, 12), v2.subarray(12 + 32785)]);
    const zinfo = decodeZinfo(v1);
    assert.equal(zinfo.version, 1);
    const source = await openZinfoSource(memorySource(f.gz), zinfo);
    assert.ok(Buffer.from(await source.read(0, 200_000)).equals(Buffer.from(f.data)));
  });

  it('openZinfoSource inflates each span once for sequential small reads', async () => {
    const f = await fixture(
      [{ size: 4_000_000, seed: 5, kind: 'text', level: 6, memLevel: 8, strategy: 0 }],
      512 * 1024,
    );
    const source = await openZinfoSource(memorySource(f.gz), f.zinfo, {
      uncompressedSize: f.data.byteLength,
    });
    let rereadCost = 0;
    const outs = f.zinfo.checkpoints.map((c) => c.out);
    for (let offset = 0; offset < f.data.byteLength; offset += 32768) {
      const length = Math.min(32768, f.data.byteLength - offset);
      const got = await source.read(offset, length);
      assert.ok(Buffer.from(got).equals(Buffer.from(f.data.subarray(offset, offset + length))));
      // What inflating from the checkpoint on every read (erofs-utils' gzran reader) would cost.
      rereadCost += offset + length - outs.filter((o) => o <= offset).at(-1)!;
    }
    assert.equal(source.stats.spansInflated, f.zinfo.checkpoints.length);
    assert.equal(source.stats.bytesInflated, f.data.byteLength);
    assert.ok(rereadCost > 8 * source.stats.bytesInflated, `${rereadCost} vs ${source.stats.bytesInflated}`);
  });

  it('openZinfoSource shares one inflation among concurrent reads of a span', async () => {
    const f = await fixture(
      [{ size: 1_000_000, seed: 6, kind: 'text', level: 6, memLevel: 8, strategy: 0 }],
      1 << 20,
    );
    const source = await openZinfoSource(memorySource(f.gz), f.zinfo, {
      uncompressedSize: f.data.byteLength,
    });
    const reads = Array.from({ length: 16 }, (_, k) => source.read(k * 50_000, 1000));
    const results = await Promise.all(reads);
    results.forEach((got, k) => {
      assert.ok(Buffer.from(got).equals(Buffer.from(f.data.subarray(k * 50_000, k * 50_000 + 1000))));
    });
    assert.equal(source.stats.spansInflated, 1);
  });

  it('openZinfoSource reads only the compressed range of the spans it needs, in bounded chunks', async () => {
    const f = await fixture(
      [{ size: 2_000_000, seed: 7, kind: 'mixed', level: 6, memLevel: 8, strategy: 0 }],
      128 * 1024,
    );
    const blob = memorySource(f.gz);
    const source = await openZinfoSource(blob, f.zinfo, {
      uncompressedSize: f.data.byteLength,
      readChunkBytes: 4096,
      prefetch: false,
    });
    const cps = f.zinfo.checkpoints;
    const i = Math.floor(cps.length / 2);
    await source.read(cps[i]!.out + 10, 100);
    assert.ok(blob.reads.length > 0);
    for (const r of blob.reads) {
      assert.ok(r.length <= 4096);
      assert.ok(
        r.offset >= cps[i]!.in - 1 && r.offset + r.length <= (cps[i + 1]?.in ?? f.gz.byteLength),
        JSON.stringify(r),
      );
    }
  });

  it('openZinfoSource refuses a wrong uncompressed size', async () => {
    const f = await fixture(
      [{ size: 100_000, seed: 8, kind: 'text', level: 6, memLevel: 1, strategy: 0 }],
      16384,
    );
    assert.ok(f.zinfo.checkpoints.length > 2);
    const bigger = await openZinfoSource(memorySource(f.gz), f.zinfo, { uncompressedSize: 100_001 });
    await assert.rejects(
      bigger.read(99_999, 2),
      (e: unknown) =>
        e instanceof CorruptInputError &&
        /\(up to uncompressed offset 100000\), short of the 100001 declared;/.test(e.message),
    );
    await assert.rejects(
      openZinfoSource(memorySource(f.gz), f.zinfo, { uncompressedSize: 1 }),
      /uncompressed size 1 is before the last checkpoint/,
    );
  });

  it('openZinfoSource serves a declared size shorter than the stream (erofs-utils index devices)', async () => {
    const f = await fixture(
      [{ size: 100_000, seed: 11, kind: 'mixed', level: 6, memLevel: 8, strategy: 0 }],
      16384,
    );
    const lastOut = f.zinfo.checkpoints.at(-1)!.out;
    for (const declared of [lastOut, lastOut + 1, 100_000 - 1024, 99_999]) {
      const source = await openZinfoSource(memorySource(f.gz), f.zinfo, { uncompressedSize: declared });
      assert.equal(source.size, declared);
      assert.deepEqual(await source.read(0, declared), f.data.subarray(0, declared));
      await assert.rejects(
        source.read(declared - 1, 2),
        (e: unknown) => e instanceof ErofsOciError && e.code === 'internal',
      );
    }
    // The stream past the declared end is still checked: a cut-off blob fails.
    const cut = await openZinfoSource(memorySource(f.gz.subarray(0, f.gz.byteLength - 3)), f.zinfo, {
      uncompressedSize: 99_000,
    });
    await assert.rejects(
      cut.read(98_000, 1000),
      (e: unknown) =>
        e instanceof CorruptInputError && /the gzip trailer is cut off|blob ends inside/.test(e.message),
    );
  });

  it('openZinfoSource refuses a truncated blob and checkpoints beyond it', async () => {
    const f = await fixture(
      [{ size: 100_000, seed: 9, kind: 'mixed', level: 6, memLevel: 8, strategy: 0 }],
      16384,
    );
    const lastIn = f.zinfo.checkpoints.at(-1)!.in;
    await assert.rejects(
      openZinfoSource(memorySource(f.gz.subarray(0, lastIn - 1)), f.zinfo),
      (e: unknown) => e instanceof CorruptInputError && /beyond the end of the \d+-byte blob/.test(e.message),
    );
    await assert.rejects(
      openZinfoSource(memorySource(f.gz.subarray(0, f.gz.byteLength - 3)), f.zinfo),
      (e: unknown) =>
        e instanceof CorruptInputError && /the gzip trailer is cut off|blob ends inside/.test(e.message),
    );
  });

  it('openZinfoSource refuses reads beyond the end and honours an aborted signal', async () => {
    const f = await fixture(
      [{ size: 10_000, seed: 10, kind: 'text', level: 6, memLevel: 8, strategy: 0 }],
      4096,
    );
    const source = await openZinfoSource(memorySource(f.gz), f.zinfo);
    await assert.rejects(
      source.read(9_999, 2),
      (e: unknown) => e instanceof ErofsOciError && e.code === 'internal',
    );
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(
      source.read(0, 10, { signal: controller.signal }),
      (e: unknown) => e instanceof ErofsOciError && e.code === 'aborted',
    );
  });
});
