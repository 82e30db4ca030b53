import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import fc from 'fast-check';
import { ErofsOciError, isErofsOciError } from '../errors.ts';
import { type Compression, decompress, detectCompression } from './decompress.ts';

/** Yields `bytes` in pieces of the given sizes (the last piece takes the rest). */
async function* chunked(bytes: Uint8Array, sizes: readonly number[] = [65536]): AsyncGenerator<Uint8Array> {
  let offset = 0;
  let i = 0;
  while (offset < bytes.byteLength) {
    const size = Math.max(1, sizes[i++ % sizes.length]!);
    yield bytes.subarray(offset, offset + size);
    offset += size;
  }
}

async function collect(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const part of stream) parts.push(part);
  return Buffer.concat(parts);
}

async function failure(stream: AsyncIterable<Uint8Array>): Promise<ErofsOciError> {
  try {
    await collect(stream);
  } catch (error) {
    assert.ok(error instanceof ErofsOciError, `expected an ErofsOciError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected the stream to fail');
}

/** Compressible but not trivial data. */
function sampleData(size: number, seed = 1): Buffer {
  const data = Buffer.alloc(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = i % 7 === 0 ? x >>> 24 : 0x61 + ((i >> 4) % 26);
  }
  return data;
}

function run(command: string, args: string[], input: Uint8Array): Buffer {
  return execFileSync(command, args, { input, maxBuffer: 1 << 30 });
}

describe('detectCompression', () => {
  test('detectCompression recognises gzip, zstd (also a skippable first frame) and plain input', () => {
    assert.equal(detectCompression(gzipSync('x')), 'gzip');
    assert.equal(detectCompression(zstdCompressSync('x')), 'zstd');
    assert.equal(detectCompression(Buffer.from([0x5e, 0x2a, 0x4d, 0x18, 0, 0, 0, 0])), 'zstd');
    assert.equal(detectCompression(Buffer.from('hello world, a tar header')), 'none');
    assert.equal(detectCompression(new Uint8Array(0)), 'none');
    assert.equal(detectCompression(Buffer.from([0x1f])), 'none');
  });

  test('detectCompression refuses xz and bzip2 as unsupported', () => {
    const xz = run('xz', ['-c'], Buffer.from('data'));
    assert.throws(
      () => detectCompression(xz),
      (e) => isErofsOciError(e, 'unsupported') && /xz/.test(e.message),
    );
    const bz = run('bzip2', ['-c'], Buffer.from('data'));
    assert.throws(
      () => detectCompression(bz),
      (e) => isErofsOciError(e, 'unsupported') && /bzip2/.test(e.message),
    );
    const bzEmpty = run('bzip2', ['-c'], Buffer.alloc(0));
    assert.throws(
      () => detectCompression(bzEmpty),
      (e) => isErofsOciError(e, 'unsupported'),
    );
    // A tar whose first file is named "BZh9…" is not bzip2.
    assert.equal(detectCompression(Buffer.from('BZh91AY&SX-not-bzip2')), 'none');
  });
});

describe('decompress', () => {
  const data = sampleData(1_000_000);

  test('decompress round-trips gzip written by gzip(1) and zstd written by zstd(1)', async () => {
    assert.deepEqual(await collect(decompress(chunked(run('gzip', ['-c', '-6'], data)))), data);
    assert.deepEqual(await collect(decompress(chunked(run('zstd', ['-c', '-q', '-3'], data)))), data);
    assert.deepEqual(await collect(decompress(chunked(run('zstd', ['-c', '-q', '--no-check'], data)))), data);
  });

  test('decompress passes plain input through as the same chunks', async () => {
    const chunks = [Buffer.from('abc'), Buffer.from('defgh'), Buffer.from('ijklmnopqrst')];
    const out: Uint8Array[] = [];
    for await (const chunk of decompress(
      (async function* () {
        yield* chunks;
      })(),
    ))
      out.push(chunk);
    assert.equal(out.length, 3);
    assert.ok(out.every((chunk, i) => chunk === chunks[i]));
  });

  test('decompress reads every member of a multi-member gzip stream', async () => {
    const a = sampleData(300_000, 2);
    const b = sampleData(200_000, 3);
    const input = Buffer.concat([run('gzip', ['-c'], a), gzipSync(b), gzipSync(Buffer.alloc(0))]);
    assert.deepEqual(await collect(decompress(chunked(input, [777]))), Buffer.concat([a, b]));
  });

  test('decompress reads every frame of a multi-frame zstd stream, skippable frames included', async () => {
    const a = sampleData(300_000, 4);
    const b = sampleData(100_000, 5);
    const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    const input = Buffer.concat([skippable, zstdCompressSync(a), run('zstd', ['-c', '-q'], b), skippable]);
    for (const sizes of [[input.byteLength], [65536], [13, 4096, 7]]) {
      assert.deepEqual(await collect(decompress(chunked(input, sizes))), Buffer.concat([a, b]));
    }
    const tiny = Buffer.concat([zstdCompressSync('first'), skippable, zstdCompressSync('second')]);
    assert.equal((await collect(decompress(chunked(tiny, [1])))).toString(), 'firstsecond');
  });

  test('decompress gives the same output for any chunking of the input', async () => {
    const gz = gzipSync(Buffer.concat([data.subarray(0, 100_000), data.subarray(0, 50_000)]));
    const zs = Buffer.concat([
      zstdCompressSync(data.subarray(0, 70_000)),
      zstdCompressSync(data.subarray(0, 9)),
    ]);
    const expectedGz = Buffer.concat([data.subarray(0, 100_000), data.subarray(0, 50_000)]);
    const expectedZs = Buffer.concat([data.subarray(0, 70_000), data.subarray(0, 9)]);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 20 }),
        async (sizes) => {
          assert.deepEqual(await collect(decompress(chunked(gz, sizes))), expectedGz);
          assert.deepEqual(await collect(decompress(chunked(zs, sizes))), expectedZs);
        },
      ),
      { numRuns: 40 },
    );
  });

  test('decompress yields nothing for empty input', async () => {
    assert.equal((await collect(decompress(chunked(new Uint8Array(0))))).byteLength, 0);
  });

  test('decompress reports a truncated gzip stream with its compressed length', async () => {
    const gz = gzipSync(data);
    const cut = gz.subarray(0, gz.byteLength - 5);
    const error = await failure(decompress(chunked(cut, [4096])));
    assert.equal(error.code, 'corrupt');
    assert.equal(error.message, `gzip stream is truncated after ${cut.byteLength} compressed bytes`);
  });

  test('decompress reports a truncated zstd stream', async () => {
    const zs = zstdCompressSync(data);
    const cut = zs.subarray(0, 1000);
    const error = await failure(decompress(chunked(cut, [100])));
    assert.equal(error.message, 'zstd stream is truncated after 1000 compressed bytes');
  });

  test('decompress reports empty input forced to be gzip as truncated', async () => {
    const error = await failure(decompress(chunked(new Uint8Array(0)), { compression: 'gzip' }));
    assert.equal(error.message, 'gzip stream is truncated after 0 compressed bytes');
  });

  test('decompress reports corrupt gzip data with the compressed offset and zlib reason', async () => {
    const gz = gzipSync(data);
    // Byte 10 starts the first deflate block: 0b111 in its first three bits is the invalid block type 3.
    const badBlock = Buffer.from(gz);
    badBlock[10] = badBlock[10]! | 0b110;
    const error = await failure(decompress(chunked(badBlock, [1000])));
    assert.equal(error.code, 'corrupt');
    assert.equal(error.message, 'gzip data is corrupt at about compressed byte 0: invalid block type');

    const badCrc = Buffer.from(gz);
    badCrc[gz.byteLength - 6] = badCrc[gz.byteLength - 6]! ^ 0x01;
    const crcError = await failure(decompress(chunked(badCrc, [1000])));
    assert.match(
      crcError.message,
      /^gzip data is corrupt at about compressed byte \d+: incorrect data check$/,
    );
  });

  test('decompress reports any bit flip in gzip or zstd data as a corrupt-input error, never anything else', async () => {
    const small = sampleData(20_000, 9);
    const streams: Array<[Compression, Buffer]> = [
      ['gzip', gzipSync(small)],
      ['zstd', run('zstd', ['-c', '-q'], small)],
    ];
    for (const [compression, compressed] of streams) {
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 0, max: compressed.byteLength - 1 }),
          fc.integer({ min: 0, max: 7 }),
          async (at, bit) => {
            const flipped = Buffer.from(compressed);
            flipped[at] = flipped[at]! ^ (1 << bit);
            try {
              const out = await collect(decompress(chunked(flipped, [999]), { compression }));
              // Some flips land in header fields zlib does not check (mtime, OS, zstd window size); the data
              // is then still verified by the trailer checksum.
              assert.deepEqual(out, small);
            } catch (error) {
              assert.ok(isErofsOciError(error, 'corrupt'), `${compression} flip at ${at}: ${String(error)}`);
            }
          },
        ),
        { numRuns: 150 },
      );
    }
  });

  test('decompress accepts zero padding after gzip but refuses other trailing garbage', async () => {
    const gz = gzipSync(data.subarray(0, 5000));
    assert.deepEqual(
      await collect(decompress(chunked(Buffer.concat([gz, Buffer.alloc(10_000)]), [3000]))),
      data.subarray(0, 5000),
    );
    const garbage = Buffer.concat([gz, Buffer.alloc(100), Buffer.from('junk')]);
    const error = await failure(decompress(chunked(garbage, [3000])));
    assert.equal(
      error.message,
      `gzip stream is followed by garbage at compressed byte ${gz.byteLength + 100} (not another gzip member)`,
    );
  });

  test('decompress refuses garbage after the last zstd frame', async () => {
    const zs = zstdCompressSync(data.subarray(0, 5000));
    const error = await failure(decompress(chunked(Buffer.concat([zs, Buffer.from('junk!')]))));
    assert.equal(error.code, 'corrupt');
    assert.match(error.message, /^zstd data is corrupt at about compressed byte \d+: /);
  });

  test('decompress keeps memory bounded: a highly compressed stream is not decoded ahead of the consumer', async () => {
    const gz = gzipSync(Buffer.alloc(200 * 1024 * 1024)); // ~200 KiB of gzip
    let pulled = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      for await (const chunk of chunked(gz, [16 * 1024])) {
        pulled += chunk.byteLength;
        yield chunk;
      }
    }
    const iterator = decompress(source())[Symbol.asyncIterator]();
    let produced = 0;
    for (let i = 0; i < 10; i++) produced += ((await iterator.next()).value as Uint8Array).byteLength;
    // Give zlib a chance to run ahead if it were going to.
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(produced <= 1024 * 1024);
    assert.ok(pulled <= 2 * 16 * 1024, `pulled ${pulled} compressed bytes for ${produced} output bytes`);
    await iterator.return?.(undefined);
  });

  test('decompress reports compressed bytes as it takes them and closes the input when stopped early', async () => {
    const gz = gzipSync(data);
    let reported = 0;
    assert.deepEqual(
      await collect(decompress(chunked(gz, [1000]), { onCompressedBytes: (n) => (reported += n) })),
      data,
    );
    assert.equal(reported, gz.byteLength);

    let closed = false;
    async function* source(): AsyncGenerator<Uint8Array> {
      try {
        yield* chunked(gz, [1000]);
      } finally {
        closed = true;
      }
    }
    for await (const _ of decompress(source())) break;
    assert.equal(closed, true);
  });

  test('decompress stops with an aborted error when its signal fires', async () => {
    const controller = new AbortController();
    const gz = gzipSync(randomBytes(3 * 1024 * 1024));
    const stream = decompress(chunked(gz, [4096]), { signal: controller.signal });
    let n = 0;
    await assert.rejects(
      (async () => {
        for await (const _ of stream) if (++n === 3) controller.abort();
      })(),
      (e) => isErofsOciError(e, 'aborted'),
    );
  });

  test('decompress passes errors of the input through unchanged', async () => {
    const boom = new ErofsOciError('unavailable', 'registry went away');
    async function* source(): AsyncGenerator<Uint8Array> {
      yield gzipSync(data).subarray(0, 5000);
      throw boom;
    }
    await assert.rejects(collect(decompress(source())), (e) => e === boom);
  });
});
