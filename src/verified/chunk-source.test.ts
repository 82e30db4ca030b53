import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ChunkedLayerEncoder, readEmbeddedChunkIndex } from '../chunk-index/index.ts';
import { ErofsOciError, raceAbort } from '../errors.ts';
import type { ByteSource } from '../io/byte-source.ts';
import { memorySource } from '../io/memory-source.ts';
import { openVerifiedSource } from './chunk-source.ts';
import { openChunkStore } from './chunk-store.ts';

const RAW = 'application/vnd.erofs.layer.v1';
const ZSTD = 'application/vnd.erofs.layer.v1+zstd';

function imageData(size: number, seed: number): Uint8Array {
  const data = new Uint8Array(size);
  let x = seed | 1;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = i % 5 === 0 ? x >>> 24 : i & 0x1f;
  }
  return data;
}

async function layerOf(image: Uint8Array, chunkSize: number, zstd: boolean) {
  const encoder = new ChunkedLayerEncoder({ chunkSize, ...(zstd ? { zstdLevel: 3 } : {}) });
  async function* source() {
    for (let at = 0; at < image.byteLength; at += 3000) yield image.subarray(at, at + 3000);
  }
  const out: Uint8Array[] = [];
  for await (const bytes of encoder.encode(source())) out.push(bytes);
  const blob = new Uint8Array(Buffer.concat(out));
  const mediaType = zstd ? ZSTD : RAW;
  const found = await readEmbeddedChunkIndex(memorySource(blob), {
    mediaType,
    size: blob.byteLength,
    annotations: encoder.result.annotations,
  });
  assert.ok(found);
  return { blob, found };
}

/** A blob source that counts requests and can be told to serve bad bytes for some reads. */
function origin(blob: Uint8Array) {
  const requests: Array<[number, number]> = [];
  let tamper: ((offset: number, bytes: Uint8Array) => void) | undefined;
  const source: ByteSource = {
    size: blob.byteLength,
    async read(offset, length) {
      requests.push([offset, length]);
      const bytes = blob.slice(offset, offset + length);
      tamper?.(offset, bytes);
      return bytes;
    },
  };
  return {
    source,
    requests,
    setTamper(fn: typeof tamper) {
      tamper = fn;
    },
  };
}

describe('openVerifiedSource', () => {
  for (const zstd of [false, true]) {
    it(`random reads equal the image (${zstd ? '+zstd' : 'raw'})`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 1, max: 40_000 }),
          fc.constantFrom(512, 4096, 6144),
          fc.array(fc.tuple(fc.nat(), fc.nat({ max: 20_000 })), { minLength: 1, maxLength: 12 }),
          fc.integer({ min: 1, max: 1 << 16 }),
          async (size, chunkSize, reads, memoryBytes) => {
            const image = imageData(size, size * 31 + chunkSize);
            const { blob, found } = await layerOf(image, chunkSize, zstd);
            const o = origin(blob);
            const source = openVerifiedSource(o.source, found.index, found.sectionOffset, {
              name: 'layer 0',
              memoryBytes,
            });
            assert.equal(source.size, size);
            await Promise.all(
              reads.map(async ([at, len]) => {
                const offset = at % size;
                const length = Math.min(len, size - offset);
                const got = await source.read(offset, length);
                assert.deepEqual(Buffer.from(got), Buffer.from(image.subarray(offset, offset + length)));
              }),
            );
            // Every request starts and ends on chunk boundaries.
            const starts = new Set(found.index.entries.map((e) => e.blockOffset));
            for (const [offset, length] of o.requests) {
              assert.ok(starts.has(offset), `request at ${offset} starts a chunk`);
              assert.ok(starts.has(offset + length) || offset + length === found.sectionOffset);
            }
          },
        ),
        { numRuns: 40 },
      );
    });

    it(`a corrupted chunk fails exactly the reads touching it, logged and retried once (${zstd ? '+zstd' : 'raw'})`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 2000, max: 30_000 }),
          fc.nat(),
          fc.boolean(),
          fc.array(fc.tuple(fc.nat(), fc.nat({ max: 9000 })), { minLength: 1, maxLength: 10 }),
          async (size, pick, persistent, reads) => {
            const chunkSize = 4096;
            const image = imageData(size, size);
            const { blob, found } = await layerOf(image, chunkSize, zstd);
            const bad = pick % found.index.entries.length;
            const badStart = found.index.entries[bad]!.blockOffset;
            const o = origin(blob);
            let served = 0;
            // Flip a byte of the bad chunk in what the origin sends: always, or only the first time.
            o.setTamper((offset, bytes) => {
              if (
                offset <= badStart &&
                badStart < offset + bytes.byteLength &&
                (persistent || served++ === 0)
              ) {
                bytes[badStart - offset]! ^= 0x40;
              }
            });
            const log: string[] = [];
            const source = openVerifiedSource(o.source, found.index, found.sectionOffset, {
              name: 'layer 3 (sha256:abc)',
              log: (line) => log.push(line),
            });
            const badUncompressed = found.index.entries[bad]!.uncompressedOffset;
            const badEnd = found.index.entries[bad + 1]?.uncompressedOffset ?? size;
            for (const [at, len] of reads) {
              const offset = at % size;
              const length = Math.max(1, Math.min(len, size - offset));
              const touches = offset < badEnd && badUncompressed < offset + length;
              if (touches && persistent) {
                await assert.rejects(
                  source.read(offset, length),
                  (error: unknown) => error instanceof ErofsOciError && error.code === 'digest-mismatch',
                );
              } else {
                const got = await source.read(offset, length);
                assert.deepEqual(Buffer.from(got), Buffer.from(image.subarray(offset, offset + length)));
              }
            }
            if (log.length > 0) assert.match(log[0]!, new RegExp(`layer 3 \\(sha256:abc\\): chunk ${bad} `));
          },
        ),
        { numRuns: 40 },
      );
    });
  }

  it('a disk store keeps verified chunks only, and a tampered copy is refetched after a restart', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'verified-store-'));
    try {
      const image = imageData(50_000, 7);
      const { blob, found } = await layerOf(image, 4096, true);
      const o = origin(blob);
      o.setTamper((offset, bytes) => {
        // Chunk 2 always arrives wrong.
        const at = found.index.entries[2]!.blockOffset;
        if (offset <= at && at < offset + bytes.byteLength) bytes[at - offset]! ^= 1;
      });
      const first = openVerifiedSource(o.source, found.index, found.sectionOffset, {
        name: 'layer 0',
        store: await openChunkStore(dir),
      });
      await assert.rejects(first.read(0, image.byteLength));
      await first.read(0, found.index.entries[2]!.uncompressedOffset);
      const stored = await readdir(join(dir, 'chunks'));
      const badName = Buffer.from(found.index.entries[2]!.checksum).toString('hex');
      assert.equal(stored.length, found.index.entries.length - 1, 'every chunk stored but the bad one');
      assert.ok(!stored.includes(badName));
      // Tamper with a stored copy, then "restart": a new source over the same store and an honest origin.
      const victim = join(dir, 'chunks', stored[0]!);
      const copy = await readFile(victim);
      copy[copy.byteLength - 1]! ^= 0xff;
      await writeFile(victim, copy);
      o.setTamper(undefined);
      o.requests.length = 0;
      const log: string[] = [];
      const second = openVerifiedSource(o.source, found.index, found.sectionOffset, {
        name: 'layer 0',
        store: await openChunkStore(dir),
        log: (line) => log.push(line),
      });
      const got = await second.read(0, image.byteLength);
      assert.deepEqual(Buffer.from(got), Buffer.from(image));
      assert.equal(second.stats.storeHits, stored.length - 1, 'the intact stored chunks are used');
      assert.ok(log.some((line) => line.includes('disk cache copy')));
      assert.ok(o.requests.length >= 1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
  it('a reader that gives up does not fail the other readers waiting on the same chunks', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.integer({ min: 5000, max: 30_000 }),
        fc.array(fc.tuple(fc.nat(), fc.nat({ max: 9000 }), fc.boolean()), { minLength: 2, maxLength: 8 }),
        async (zstd, size, readers) => {
          const image = imageData(size, size + 5);
          const { blob, found } = await layerOf(image, 4096, zstd);
          // An origin that honours a request's signal and answers only once released.
          let release!: () => void;
          const gate = new Promise<void>((resolve) => {
            release = resolve;
          });
          const source: ByteSource = {
            size: blob.byteLength,
            async read(offset, length, options = {}) {
              await raceAbort(gate, options.signal);
              return blob.slice(offset, offset + length);
            },
          };
          const verified = openVerifiedSource(source, found.index, found.sectionOffset, {
            name: 'layer 0',
            readaheadChunks: 0,
          });
          // Every reader asks for its range (all of them start before any fetch is answered); the ones
          // marked give up at once. The first reader always gives up, so the shared fetch is its own.
          const runs = readers.map(([at, len, abort], k) => {
            const offset = at % size;
            const length = Math.max(1, Math.min(len, size - offset));
            const controller = new AbortController();
            const giveUp = abort || k === 0;
            return {
              offset,
              length,
              giveUp,
              controller,
              result: verified.read(offset, length, { signal: controller.signal }).then(
                (bytes) => ({ bytes }),
                (error: unknown) => ({ error }),
              ),
            };
          });
          for (const run of runs) if (run.giveUp) run.controller.abort();
          release();
          for (const run of runs) {
            const outcome = await run.result;
            if (run.giveUp && 'error' in outcome) {
              assert.equal((outcome.error as ErofsOciError).code, 'aborted');
              continue;
            }
            assert.ok(
              'bytes' in outcome,
              `reader at ${run.offset} failed: ${String((outcome as { error: unknown }).error)}`,
            );
            assert.deepEqual(
              Buffer.from(outcome.bytes),
              Buffer.from(image.subarray(run.offset, run.offset + run.length)),
            );
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('lend gives the bytes read gives; a released buffer is reused, never one still lent', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.array(fc.tuple(fc.nat(), fc.constantFrom(1, 4096, 10_000, 16_384), fc.boolean()), {
          minLength: 1,
          maxLength: 20,
        }),
        async (zstd, reads) => {
          const size = 60_000;
          const image = imageData(size, 11);
          const { blob, found } = await layerOf(image, 4096, zstd);
          const source = openVerifiedSource(origin(blob).source, found.index, found.sectionOffset, {
            name: 'layer 0',
          });
          const held: Array<{ offset: number; length: number; bytes: Uint8Array }> = [];
          for (const [at, len, keep] of reads) {
            const offset = at % size;
            const length = Math.min(len, size - offset);
            const loan = await source.lend(offset, length);
            const expected = Buffer.from(image.subarray(offset, offset + length));
            assert.deepEqual(Buffer.from(loan.bytes), expected);
            if (keep) held.push({ offset, length, bytes: loan.bytes });
            else loan.release();
          }
          // Bytes still lent were never overwritten by later loans.
          for (const h of held)
            assert.deepEqual(
              Buffer.from(h.bytes),
              Buffer.from(image.subarray(h.offset, h.offset + h.length)),
            );
          // A read across chunks given back is the buffer the next such read gets.
          const a = await source.lend(4000, 200);
          a.release();
          const b = await source.lend(8100, 200);
          assert.equal(b.bytes, a.bytes);
          assert.deepEqual(Buffer.from(b.bytes), Buffer.from(image.subarray(8100, 8300)));
        },
      ),
      { numRuns: 40 },
    );
  });
});
