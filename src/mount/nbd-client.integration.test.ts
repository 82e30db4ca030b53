/**
 * The NBD client against a real server, nbdkit (Debian `nbdkit`), whose filters inject what we must handle:
 * block size constraints (blocksize-policy), error replies (error), slow replies (delay), and a server
 * SIGKILLed with requests in flight.
 */
import assert from 'node:assert/strict';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { type TmpDir, tmpdir } from '../../test-support/kernel.ts';
import { isErofsOciError } from '../errors.ts';
import { type Nbdkit, nbdkitSkipReason, pseudoRandomBytes, startNbdkit } from './fuse-testing.ts';
import { connectNbd, type NbdConnection } from './nbd-client.ts';

const MiB = 1024 * 1024;
const skip = nbdkitSkipReason();

interface Fixture {
  dir: TmpDir;
  image: string;
  data: Uint8Array;
  socket: string;
}

async function fixture(t: TestContext, size = 16 * MiB): Promise<Fixture> {
  const dir = await tmpdir('erofs-oci-nbd-');
  t.after(() => dir.cleanup());
  const data = pseudoRandomBytes(size, size % 997);
  const image = join(dir.path, 'image');
  await writeFile(image, data);
  return { dir, image, data, socket: join(dir.path, 'nbd.sock') };
}

async function server(t: TestContext, socket: string, args: string[]): Promise<Nbdkit> {
  const nbdkit = await startNbdkit(socket, args);
  t.after(() => nbdkit.kill('SIGKILL'));
  return nbdkit;
}

async function client(t: TestContext, socket: string, exportName?: string): Promise<NbdConnection> {
  const connection = await connectNbd(`unix:${socket}`, exportName === undefined ? {} : { exportName });
  t.after(() => connection.close());
  return connection;
}

describe('connectNbd (integration)', { skip, timeout: 120_000 }, () => {
  test('connectNbd reads an export byte for byte with many requests in flight', async (t) => {
    const { image, data, socket } = await fixture(t, 64 * MiB);
    await server(t, socket, ['file', image]);
    const nbd = await client(t, socket);
    assert.equal(nbd.size, data.byteLength);
    const reads: Promise<Uint8Array>[] = [];
    for (let offset = 0; offset < nbd.size; offset += MiB) reads.push(nbd.read(offset, MiB));
    const parts = await Promise.all(reads);
    parts.forEach((part, i) => {
      assert.equal(Buffer.compare(part, data.subarray(i * MiB, (i + 1) * MiB)), 0, `MiB ${i}`);
    });
    await fc.assert(
      fc.asyncProperty(fc.nat(data.byteLength), fc.nat(2 * MiB), async (offset, wanted) => {
        const length = Math.min(wanted, data.byteLength - offset);
        const bytes = await nbd.read(offset, length);
        assert.equal(Buffer.compare(bytes, data.subarray(offset, offset + length)), 0);
      }),
      { numRuns: 100 },
    );
  });

  test('connectNbd aligns reads to the minimum block size and splits them at the maximum', async (t) => {
    const { image, data, socket } = await fixture(t);
    // With error policy "error", nbdkit answers EINVAL to any misaligned or oversized request.
    await server(t, socket, [
      '--filter=blocksize-policy',
      'file',
      image,
      'blocksize-minimum=4096',
      'blocksize-preferred=65536',
      'blocksize-maximum=65536',
      'blocksize-error-policy=error',
    ]);
    const nbd = await client(t, socket);
    assert.deepEqual(nbd.blockSizes, { minimum: 4096, preferred: 65536, maximum: 65536 });
    await fc.assert(
      fc.asyncProperty(fc.nat(data.byteLength), fc.nat(300_000), async (offset, wanted) => {
        const length = Math.min(wanted, data.byteLength - offset);
        const bytes = await nbd.read(offset, length);
        assert.equal(Buffer.compare(bytes, data.subarray(offset, offset + length)), 0);
      }),
      { numRuns: 100 },
    );
  });

  test('connectNbd opens the named export and names a missing one', async (t) => {
    const { dir, socket } = await fixture(t, 4096);
    const exports = join(dir.path, 'exports');
    await rm(exports, { recursive: true, force: true });
    await mkdir(exports);
    await writeFile(join(exports, 'a'), pseudoRandomBytes(8192, 1));
    await writeFile(join(exports, 'b'), pseudoRandomBytes(12288, 2));
    await server(t, socket, ['file', `dir=${exports}`]);
    const b = await client(t, socket, 'b');
    assert.equal(b.size, 12288);
    assert.equal(Buffer.compare(await b.read(100, 5000), pseudoRandomBytes(12288, 2).subarray(100, 5100)), 0);
    await assert.rejects(
      connectNbd(`unix:${socket}`, { exportName: 'missing' }),
      (error) =>
        isErofsOciError(error, 'not-found') && /export "missing" .*no such export/.test(error.message),
    );
  });

  test('connectNbd fails a read the server refuses with code io and keeps the connection', async (t) => {
    const { dir, image, data, socket } = await fixture(t);
    const trigger = join(dir.path, 'fail-reads');
    await server(t, socket, [
      '--filter=error',
      'file',
      image,
      'error-pread-rate=100%',
      `error-pread-file=${trigger}`,
    ]);
    const nbd = await client(t, socket);
    await writeFile(trigger, '');
    await assert.rejects(
      nbd.read(4096, 100),
      (error) =>
        isErofsOciError(error, 'io') &&
        /failed to read 100 bytes at offset 4096: error 5 \(EIO\)/.test(error.message),
    );
    await rm(trigger);
    assert.equal(Buffer.compare(await nbd.read(4096, 100), data.subarray(4096, 4196)), 0);
  });

  test('connectNbd fails reads in flight with code unavailable when the server dies', async (t) => {
    const { image, socket } = await fixture(t);
    const nbdkit = await server(t, socket, ['--filter=delay', 'file', image, 'delay-read=2']);
    const nbd = await client(t, socket);
    const reads = [nbd.read(0, 4096), nbd.read(MiB, MiB)].map((read) =>
      assert.rejects(read, (error) => isErofsOciError(error, 'unavailable')),
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    await nbdkit.kill('SIGKILL');
    await Promise.all(reads);
    const reason = await nbd.closed;
    assert.ok(isErofsOciError(reason, 'unavailable'));
    await assert.rejects(nbd.read(0, 1), (error) => isErofsOciError(error, 'unavailable'));
  });

  test('connectNbd gives up an aborted read at once and skips its late reply', async (t) => {
    const { image, data, socket } = await fixture(t);
    await server(t, socket, ['--filter=delay', 'file', image, 'delay-read=300ms']);
    const nbd = await client(t, socket);
    const controller = new AbortController();
    const abandoned = nbd.read(8192, 65536, { signal: controller.signal });
    const next = nbd.read(65536, 65536);
    setTimeout(() => controller.abort(), 50);
    const started = Date.now();
    await assert.rejects(abandoned, (error) => isErofsOciError(error, 'aborted'));
    assert.ok(Date.now() - started < 250, 'the aborted read did not wait for its reply');
    assert.equal(Buffer.compare(await next, data.subarray(65536, 131072)), 0);
    assert.equal(Buffer.compare(await nbd.read(0, 100), data.subarray(0, 100)), 0);
  });

  test('connectNbd refuses a server without fixed newstyle negotiation', async (t) => {
    const { image, socket } = await fixture(t, 4096);
    await server(t, socket, ['--mask-handshake=0', 'file', image]);
    await assert.rejects(
      connectNbd(`unix:${socket}`),
      (error) => isErofsOciError(error, 'unsupported') && /fixed newstyle/.test(error.message),
    );
  });

  test('connectNbd reports a missing server as unavailable', async (t) => {
    const { socket } = await fixture(t, 4096);
    await assert.rejects(
      connectNbd(`unix:${socket}`),
      (error) =>
        isErofsOciError(error, 'unavailable') &&
        error.message.includes(`Cannot connect to NBD server unix:${socket}`),
    );
  });

  test('NbdConnection.close disconnects; later reads fail with code aborted', async (t) => {
    const { image, socket } = await fixture(t, 4096);
    await server(t, socket, ['file', image]);
    const nbd = await connectNbd(`unix:${socket}`);
    await nbd.close();
    assert.equal(await nbd.closed, undefined);
    await assert.rejects(nbd.read(0, 1), (error) => isErofsOciError(error, 'aborted'));
  });
});
