/**
 * mountFuseFile against the real kernel: a byte source exposed as a FUSE file is read back by other
 * processes (sha256sum, dd with O_DIRECT) and by this one, concurrently; failures surface as EIO; signals
 * interrupt reads; and EROFS mounted on the file (a file-backed mount) shows the same tree as the image
 * mounted directly. Every test leaves /proc/self/mountinfo as it found it.
 *
 * Needs root, /dev/fuse, and for the EROFS test mkfs.erofs (Debian erofs-utils) and python3.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { snapshot, type TmpDir, tmpdir, withMount } from '../../test-support/kernel.ts';
import { makeFixtureTree } from '../erofs/mkfs-fixtures.ts';
import { ErofsOciError, isErofsOciError } from '../errors.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { openFileSource } from '../io/file-source.ts';
import { FUSE_FS_TYPE, type FuseMount, fuseConnectionOf, mountFuseFile } from './fuse-file.ts';
import {
  erofsSkipReason,
  forceUnmount,
  fuseSkipReason,
  isMounted,
  mkfsErofs,
  pseudoRandomBytes,
  sha256,
  sha256sumOf,
} from './fuse-testing.ts';

const skip = fuseSkipReason();
const MiB = 1024 * 1024;

/** An in-memory source that counts reads and how many run at once. */
function memorySource(data: Uint8Array, delayMs = 0): ByteSource & { reads: number; maxInFlight: number } {
  let inFlight = 0;
  const source = {
    size: data.byteLength,
    reads: 0,
    maxInFlight: 0,
    async read(offset: number, length: number, _options?: ReadOptions): Promise<Uint8Array> {
      source.reads++;
      inFlight++;
      source.maxInFlight = Math.max(source.maxInFlight, inFlight);
      try {
        if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
        return data.slice(offset, offset + length);
      } finally {
        inFlight--;
      }
    },
  };
  return source;
}

/** A temporary dir plus a FUSE file in it, always unmounted and removed after the test. */
async function setup(
  t: TestContext,
  source: ByteSource,
  log: string[] = [],
): Promise<{ dir: TmpDir; mount: FuseMount }> {
  const dir = await tmpdir('erofs-oci-fuse-');
  const file = join(dir.path, 'device');
  t.after(async () => {
    await forceUnmount(file);
    await dir.cleanup();
  });
  const mount = await mountFuseFile(file, source, { fsname: 'test-source', log: (line) => log.push(line) });
  return { dir, mount };
}

/** Runs a command to completion; resolves with its status, stdout and stderr. */
function runChild(
  command: string,
  args: string[],
): {
  child: ReturnType<typeof spawn>;
  done: Promise<{ status: number | null; signal: string | null; stdout: Buffer; stderr: string }>;
} {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: Buffer[] = [];
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const done = new Promise<{ status: number | null; signal: string | null; stdout: Buffer; stderr: string }>(
    (resolve, reject) => {
      child.once('error', reject);
      child.once('close', (status, signal) =>
        resolve({ status, signal, stdout: Buffer.concat(stdout), stderr }),
      );
    },
  );
  return { child, done };
}

describe('mountFuseFile (integration)', { skip, timeout: 300_000 }, () => {
  test('mountFuseFile serves a 64 MiB source byte for byte as a read-only regular file', async (t) => {
    const data = pseudoRandomBytes(64 * MiB, 1);
    const source = memorySource(data);
    const { mount } = await setup(t, source);
    assert.ok(mount.protocolMinor >= 28, `negotiated 7.${mount.protocolMinor}`);

    const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
    const line = mountinfo.split('\n').find((l) => l.split(' ')[4] === mount.mountpoint);
    assert.ok(line, 'the FUSE file is in mountinfo');
    assert.match(line, new RegExp(` - ${FUSE_FS_TYPE.replace('.', '\\.')} test-source ro,`));

    const { stdout } = await runChild('stat', ['-c', '%s %a %F %u', mount.mountpoint]).done;
    assert.equal(stdout.toString().trim(), `${64 * MiB} 444 regular file 0`);
    assert.equal(await sha256sumOf(mount.mountpoint), sha256(data));
    assert.ok(source.reads > 0);
  });

  test('mountFuseFile returns exactly the bytes of any range, including ranges past the end', async (t) => {
    const data = pseudoRandomBytes(8 * MiB + 123, 2);
    const { mount } = await setup(t, memorySource(data));
    const handle = await open(mount.mountpoint, 'r');
    t.after(() => handle.close());
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: data.byteLength + 4096 }),
        fc.integer({ min: 0, max: 3 * MiB }),
        async (offset, length) => {
          const buffer = new Uint8Array(length);
          const { bytesRead } = await handle.read(buffer, 0, length, offset);
          const expected = data.subarray(
            Math.min(offset, data.byteLength),
            Math.min(offset + length, data.byteLength),
          );
          // One pread may return less than asked only at the end of the file.
          assert.equal(bytesRead, expected.byteLength);
          assert.equal(Buffer.compare(buffer.subarray(0, bytesRead), expected), 0);
        },
      ),
      { numRuns: 150 },
    );
  });

  test('mountFuseFile serves concurrent readers in parallel and answers out of order', async (t) => {
    const data = pseudoRandomBytes(32 * MiB, 3);
    // A slow source: replies come back in whatever order the timers fire.
    const source = memorySource(data, 5);
    const { mount } = await setup(t, source);
    const readers = [0, 1, 2, 3].map((i) =>
      runChild('sh', [
        '-c',
        `dd if=${mount.mountpoint} bs=1M skip=${i * 8} count=8 iflag=direct status=none | sha256sum`,
      ]),
    );
    const results = await Promise.all(readers.map((reader) => reader.done));
    results.forEach((result, i) => {
      assert.equal(result.status, 0, result.stderr);
      assert.equal(
        result.stdout.toString().split(' ')[0],
        sha256(data.subarray(i * 8 * MiB, (i + 1) * 8 * MiB)),
      );
    });
    assert.ok(source.maxInFlight >= 2, `at most ${source.maxInFlight} reads ran at once`);
  });

  test('mountFuseFile answers a failed read with EIO, never with zeros', async (t) => {
    const data = pseudoRandomBytes(4 * MiB, 4);
    const inner = memorySource(data);
    const source: ByteSource = {
      size: inner.size,
      read(offset, length, options) {
        if (offset < 2 * MiB + 4096 && offset + length > 2 * MiB) {
          return Promise.reject(new ErofsOciError('unavailable', `no bytes at offset ${offset}`));
        }
        return inner.read(offset, length, options);
      },
    };
    const log: string[] = [];
    const { mount } = await setup(t, source, log);
    const bad = await runChild('dd', [
      `if=${mount.mountpoint}`,
      'of=/dev/null',
      'bs=4096',
      'skip=512',
      'count=1',
      'iflag=direct',
    ]).done;
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /Input\/output error/);
    assert.ok(
      log.some((line) => /READ of 4096 bytes at offset 2097152 failed: no bytes/.test(line)),
      log.join('\n'),
    );
    const good = await runChild('sh', [
      '-c',
      `dd if=${mount.mountpoint} bs=4096 skip=513 count=16 iflag=direct status=none | sha256sum`,
    ]).done;
    assert.equal(good.stdout.toString().split(' ')[0], sha256(data.subarray(513 * 4096, 529 * 4096)));
  });

  test('mountFuseFile aborts the signal of a read whose caller was interrupted', async (t) => {
    let started: () => void = () => {};
    const readStarted = new Promise<void>((resolve) => {
      started = resolve;
    });
    let aborted: () => void = () => {};
    const readAborted = new Promise<void>((resolve) => {
      aborted = resolve;
    });
    const source: ByteSource = {
      size: MiB,
      read(_offset, _length, options) {
        started();
        // Never answers on its own: only the kernel's INTERRUPT ends it.
        return new Promise((_resolve, reject) => {
          options?.signal?.addEventListener('abort', () => {
            aborted();
            reject(new ErofsOciError('aborted', 'interrupted'));
          });
        });
      },
    };
    const { mount } = await setup(t, source);
    const reader = runChild('dd', [
      `if=${mount.mountpoint}`,
      'of=/dev/null',
      'bs=4096',
      'count=1',
      'iflag=direct',
    ]);
    await readStarted;
    reader.child.kill('SIGTERM');
    const timeout = new Promise((_, reject) =>
      setTimeout(() => reject(new Error('no INTERRUPT within 5 s')), 5000),
    );
    await Promise.race([readAborted, timeout]);
    const result = await reader.done;
    assert.equal(result.signal, 'SIGTERM');
  });

  test('mountFuseFile exposes an EROFS image that mounts and shows the same tree as the image itself', async (t) => {
    const erofsSkip = erofsSkipReason();
    if (erofsSkip) return t.skip(erofsSkip);
    const dir = await tmpdir('erofs-oci-fuse-erofs-');
    const tree = join(dir.path, 'tree');
    const image = join(dir.path, 'image.erofs');
    const device = join(dir.path, 'device');
    const mnt = join(dir.path, 'mnt');
    t.after(async () => {
      await forceUnmount(mnt);
      await forceUnmount(device);
      await dir.cleanup();
    });
    await makeFixtureTree(tree);
    await writeFile(join(tree, 'large'), pseudoRandomBytes(20 * MiB + 5, 5));
    await mkfsErofs(image, tree);
    await mkdir(mnt);

    const expected = await withMount(image, (direct) => snapshot(direct));
    const file = await openFileSource(image);
    t.after(() => file.close());
    const mount = await mountFuseFile(device, file);
    await runChild('mount', ['-t', 'erofs', '-o', 'ro', device, mnt]).done.then((result) => {
      assert.equal(result.status, 0, result.stderr);
    });
    const actual = await snapshot(mnt);
    assert.deepEqual(actual, expected);
    assert.deepEqual(actual.problems, []);

    // While EROFS uses the file, it cannot be unmounted; afterwards it can, and nothing is left.
    await assert.rejects(
      mount.unmount(),
      (error) => isErofsOciError(error, 'io') && /busy/.test(error.message),
    );
    assert.ok(isMounted(mount.mountpoint));
    assert.equal((await runChild('umount', [mnt]).done).status, 0);
    await mount.unmount();
    assert.ok(!isMounted(mount.mountpoint));
    assert.ok(!isMounted(mnt));
  });

  test('mountFuseFile ends the session when someone else unmounts the file', async (t) => {
    const log: string[] = [];
    const { mount } = await setup(t, memorySource(new Uint8Array(4096)), log);
    const connection = await fuseConnectionOf(mount.mountpoint);
    assert.equal(typeof connection, 'number');
    assert.equal((await runChild('umount', [mount.mountpoint]).done).status, 0);
    await mount.ended;
    assert.ok(!isMounted(mount.mountpoint));
    assert.ok(
      log.some((line) => /the kernel ended the session/.test(line)),
      log.join('\n'),
    );
    await mount.unmount(); // idempotent once ended
  });

  test('mountFuseFile ends the session when its signal is aborted, even while the file is in use', async (t) => {
    const dir = await tmpdir('erofs-oci-fuse-abort-');
    const device = join(dir.path, 'device');
    t.after(async () => {
      await forceUnmount(device);
      await dir.cleanup();
    });
    const controller = new AbortController();
    let pending = 0;
    const source: ByteSource = {
      size: MiB,
      read: (_offset, _length, options) =>
        new Promise((_resolve, reject) => {
          pending++;
          options?.signal?.addEventListener('abort', () => reject(new ErofsOciError('aborted', 'ended')));
        }),
    };
    const mount = await mountFuseFile(device, source, { signal: controller.signal });
    const reader = runChild('dd', [`if=${device}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct']);
    while (pending === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    controller.abort();
    await mount.ended;
    const result = await reader.done;
    assert.notEqual(result.status, 0, 'the stuck reader fails once the connection is aborted');
    assert.ok(!isMounted(device));
  });

  test('mountFuseFile refuses a directory as mount point', async (t) => {
    const dir = await tmpdir('erofs-oci-fuse-dir-');
    t.after(() => dir.cleanup());
    await assert.rejects(
      mountFuseFile(dir.path, memorySource(new Uint8Array(1))),
      (error) => isErofsOciError(error, 'usage') && /it is not a regular file/.test(error.message),
    );
    await rm(join(dir.path, 'nothing'), { force: true });
  });
});
