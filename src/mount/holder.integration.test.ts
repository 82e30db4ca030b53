/**
 * The device holder against a real NBD server (nbdkit) that is SIGKILLed and restarted under load, with the
 * kernel's EROFS mounted on the holder's FUSE file: readers must never see an error or a wrong byte while
 * servers come and go, and must get EIO once no server has come back within the I/O timeout.
 *
 * Needs root, /dev/fuse, nbdkit and mkfs.erofs (Debian nbdkit, erofs-utils). Drops the page cache
 * (/proc/sys/vm/drop_caches) so that reads reach the server.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type TmpDir, tmpdir } from '../../test-support/kernel.ts';
import { isErofsOciError } from '../errors.ts';
import {
  dropCaches,
  erofsSkipReason,
  forceUnmount,
  fuseSkipReason,
  isMounted,
  mkfsErofs,
  type Nbdkit,
  nbdkitSkipReason,
  pseudoRandomBytes,
  sha256,
  startNbdkit,
} from './fuse-testing.ts';
import { type HolderReady, openReconnectingNbdSource, spawnHolder } from './holder.ts';

const MiB = 1024 * 1024;
const skip = fuseSkipReason() || nbdkitSkipReason() || erofsSkipReason();

/** An EROFS image holding one 100 MiB file (`big`) and a small one, built once for the whole file. */
let shared: { dir: TmpDir; image: string; bigHash: string; small: string } | undefined;

/** A slow server: 1 MiB requests take 20 ms, so a 100 MiB read lasts about a second and can be interrupted. */
const slowServer = (image: string) => ['--filter=delay', 'file', image, 'delay-read=20ms'];

/** Runs a command to completion and collects what it printed. */
function runChild(command: string, args: string[]) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const done = new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
  return { child, done };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface Deployment {
  dir: TmpDir;
  socket: string;
  device: string;
  mnt: string;
  logFile: string;
  readyFile: string;
  holderPid: number;
  /** The current server; replaced by `restart`. */
  server: Nbdkit;
  restart(): Promise<void>;
  log(): Promise<string>;
}

/**
 * The process model of a FUSE-backed lazy mount: nbdkit as the serving process, the holder as a detached
 * process, EROFS mounted on the holder's FUSE file. Everything is torn down after the test, even on failure.
 */
async function deploy(t: TestContext, ioTimeoutMs: number): Promise<Deployment> {
  assert.ok(shared);
  const { image } = shared;
  const dir = await tmpdir('erofs-oci-holder-');
  const socket = join(dir.path, 'nbd.sock');
  const device = join(dir.path, 'device');
  const mnt = join(dir.path, 'mnt');
  const logFile = join(dir.path, 'holder.log');
  const readyFile = join(dir.path, 'holder.ready');
  await mkdir(mnt);
  const deployment: Deployment = {
    dir,
    socket,
    device,
    mnt,
    logFile,
    readyFile,
    holderPid: 0,
    server: await startNbdkit(socket, slowServer(image)),
    async restart() {
      deployment.server = await startNbdkit(socket, slowServer(image));
    },
    log: () => readFile(logFile, 'utf8').catch(() => ''),
  };
  t.after(async () => {
    await forceUnmount(mnt);
    await forceUnmount(device);
    if (deployment.holderPid && isAlive(deployment.holderPid)) process.kill(deployment.holderPid, 'SIGKILL');
    await deployment.server.kill('SIGKILL');
    await dir.cleanup();
  });
  const { pid } = await spawnHolder(
    { devices: [{ mountpoint: device, socketPath: socket }], ioTimeoutMs, logFile, readyFile },
    { configPath: join(dir.path, 'holder.json'), readyTimeoutMs: 30_000 },
  );
  deployment.holderPid = pid;
  const mounted = await runChild('mount', ['-t', 'erofs', '-o', 'ro', device, mnt]).done;
  assert.equal(mounted.status, 0, mounted.stderr);
  return deployment;
}

async function sha256sum(path: string): Promise<{ status: number | null; hash: string; stderr: string }> {
  const { status, stdout, stderr } = await runChild('sha256sum', [path]).done;
  return { status, hash: stdout.split(' ')[0] ?? '', stderr };
}

function count(text: string, pattern: RegExp): number {
  return text.split('\n').filter((line) => pattern.test(line)).length;
}

describe('device holder (integration)', { skip, timeout: 600_000 }, () => {
  before(async () => {
    const dir = await tmpdir('erofs-oci-holder-image-');
    const tree = join(dir.path, 'tree');
    await mkdir(join(tree, 'sub'), { recursive: true });
    const big = pseudoRandomBytes(100 * MiB, 42);
    await writeFile(join(tree, 'big'), big);
    await writeFile(join(tree, 'sub', 'small'), 'small file\n');
    const image = join(dir.path, 'image.erofs');
    await mkfsErofs(image, tree);
    shared = { dir, image, bigHash: sha256(big), small: 'small file\n' };
  });
  after(() => shared?.dir.cleanup());

  test('ReconnectingNbdSource re-issues reads lost with the server and refuses a different export', async (t) => {
    assert.ok(shared);
    const dir = await tmpdir('erofs-oci-reconnect-');
    const socket = join(dir.path, 'nbd.sock');
    const data = pseudoRandomBytes(16 * MiB, 7);
    const image = join(dir.path, 'image');
    const other = join(dir.path, 'other');
    await writeFile(image, data);
    await writeFile(other, pseudoRandomBytes(8 * MiB, 8));
    let server = await startNbdkit(socket, ['--filter=delay', 'file', image, 'delay-read=100ms']);
    const log: string[] = [];
    const source = await openReconnectingNbdSource({
      address: { kind: 'unix', path: socket },
      ioTimeoutMs: 20_000,
      retryDelayMs: { min: 50, max: 200 },
      log: (line) => log.push(line),
    });
    t.after(async () => {
      await source.close();
      await server.kill('SIGKILL');
      await dir.cleanup();
    });
    assert.equal(source.size, data.byteLength);

    const reads = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => source.read(i * 2 * MiB, MiB));
    await sleep(50);
    await server.kill('SIGKILL');
    await sleep(500);
    server = await startNbdkit(socket, ['file', image]);
    const results = await Promise.all(reads);
    results.forEach((bytes, i) => {
      assert.equal(Buffer.compare(bytes, data.subarray(i * 2 * MiB, i * 2 * MiB + MiB)), 0, `read ${i}`);
    });
    assert.equal(source.connections, 2);

    await server.kill('SIGKILL');
    server = await startNbdkit(socket, ['file', other]);
    const started = Date.now();
    await assert.rejects(
      source.read(0, 4096),
      (error) =>
        isErofsOciError(error, 'corrupt') &&
        /exports 8388608 bytes as "", expected 16777216/.test(error.message),
    );
    assert.ok(Date.now() - started < 5000, 'a wrong export fails reads at once, not after the I/O timeout');
    assert.ok(
      log.some((line) => line.startsWith('Refusing the new connection')),
      log.join('\n'),
    );

    await server.kill('SIGKILL');
    server = await startNbdkit(socket, ['file', image]);
    assert.equal(Buffer.compare(await source.read(5 * MiB, 100), data.subarray(5 * MiB, 5 * MiB + 100)), 0);
  });

  test('ReconnectingNbdSource fails a read after ioTimeoutMs without a server, then recovers', async (t) => {
    const dir = await tmpdir('erofs-oci-reconnect-');
    const socket = join(dir.path, 'nbd.sock');
    const data = pseudoRandomBytes(4 * MiB, 9);
    const image = join(dir.path, 'image');
    await writeFile(image, data);
    let server = await startNbdkit(socket, ['file', image]);
    const source = await openReconnectingNbdSource({
      address: { kind: 'unix', path: socket },
      ioTimeoutMs: 1000,
    });
    t.after(async () => {
      await source.close();
      await server.kill('SIGKILL');
      await dir.cleanup();
    });
    await server.kill('SIGKILL');
    const started = Date.now();
    await assert.rejects(
      source.read(0, 4096),
      (error) =>
        isErofsOciError(error, 'unavailable') &&
        /Cannot serve a read of 4096 bytes at offset 0: no NBD server unix:.* for \d+ ms/.test(
          error.message,
        ) &&
        /erofs-oci reattach/.test(error.hint ?? ''),
    );
    const waited = Date.now() - started;
    assert.ok(waited >= 950 && waited < 3000, `gave up after ${waited} ms`);
    server = await startNbdkit(socket, ['file', image]);
    assert.equal(Buffer.compare(await source.read(100, 100), data.subarray(100, 200)), 0);
  });

  test('the holder keeps an EROFS mount readable when its server is killed mid-read and restarted', async (t) => {
    assert.ok(shared);
    const deployment = await deploy(t, 60_000);
    const ready = JSON.parse(await readFile(deployment.readyFile, 'utf8')) as HolderReady;
    assert.equal(ready.ok, true);
    assert.equal(ready.pid, deployment.holderPid);

    await dropCaches();
    const reader = runChild('sha256sum', [join(deployment.mnt, 'big')]);
    await sleep(400);
    assert.equal(reader.child.exitCode, null, 'the reader is still reading when the server dies');
    await deployment.server.kill('SIGKILL');
    await sleep(1000);
    await deployment.restart();
    const result = await reader.done;
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout.split(' ')[0], shared.bigHash);
    assert.equal(await readFile(join(deployment.mnt, 'sub', 'small'), 'utf8'), shared.small);
    assert.ok(count(await deployment.log(), /Reconnected to NBD server/) >= 1, await deployment.log());

    // SIGTERM while EROFS still uses the device is refused: the holder must outlive its users.
    process.kill(deployment.holderPid, 'SIGTERM');
    await sleep(500);
    assert.ok(isAlive(deployment.holderPid), 'the holder ignored SIGTERM while the device is in use');
    assert.match(await deployment.log(), /Still serving .*: Cannot unmount FUSE file .*busy/);
    await dropCaches();
    assert.equal((await sha256sum(join(deployment.mnt, 'big'))).hash, shared.bigHash);

    // Once EROFS is gone, SIGTERM unmounts the device and the holder exits.
    assert.equal((await runChild('umount', [deployment.mnt]).done).status, 0);
    process.kill(deployment.holderPid, 'SIGTERM');
    for (let i = 0; i < 100 && isAlive(deployment.holderPid); i++) await sleep(50);
    assert.ok(!isAlive(deployment.holderPid), 'the holder exited');
    assert.ok(!isMounted(deployment.device));
    assert.match(await deployment.log(), /Every device unmounted; exiting/);
  });

  test('the holder survives 20 server kills under continuous reads without a failed read', async (t) => {
    assert.ok(shared);
    const deployment = await deploy(t, 60_000);
    const big = join(deployment.mnt, 'big');
    const results: { status: number | null; hash: string; stderr: string }[] = [];
    let stop = false;
    const readers = (async () => {
      while (!stop) {
        await dropCaches();
        results.push(await sha256sum(big));
      }
    })();
    try {
      for (let cycle = 0; cycle < 20; cycle++) {
        // Deterministic but uneven timing: kills land at different points of the reads. (The holder redials
        // every 100-500 ms, so part of each serving period goes to noticing that the server is back.)
        await sleep(600 + ((cycle * 137) % 500));
        await deployment.server.kill('SIGKILL');
        await sleep(150 + ((cycle * 263) % 900));
        await deployment.restart();
      }
    } finally {
      stop = true;
      await readers;
    }
    const failed = results.filter((result) => result.status !== 0 || result.hash !== shared?.bigHash);
    assert.deepEqual(failed, [], `${failed.length} of ${results.length} reads failed`);
    assert.ok(results.length >= 3, `only ${results.length} whole reads`);
    const log = await deployment.log();
    assert.ok(count(log, /Reconnected to NBD server/) >= 20, log);
  });

  test('one holder serves several devices, waiting for servers that start after it', async (t) => {
    assert.ok(shared);
    const { image } = shared;
    const dir = await tmpdir('erofs-oci-holder-multi-');
    const names = ['a', 'b'];
    const servers: Nbdkit[] = [];
    let holderPid = 0;
    t.after(async () => {
      for (const name of names) await forceUnmount(join(dir.path, `mnt-${name}`));
      for (const name of names) await forceUnmount(join(dir.path, `dev-${name}`));
      if (holderPid && isAlive(holderPid)) process.kill(holderPid, 'SIGKILL');
      for (const server of servers) await server.kill('SIGKILL');
      await dir.cleanup();
    });
    const devices = [];
    for (const name of names) {
      await writeFile(join(dir.path, `dev-${name}`), '');
      await mkdir(join(dir.path, `mnt-${name}`));
      devices.push({ mountpoint: join(dir.path, `dev-${name}`), socketPath: join(dir.path, `${name}.sock`) });
    }
    const readyFile = join(dir.path, 'holder.ready');
    const holding = spawnHolder(
      { devices, ioTimeoutMs: 20_000, logFile: join(dir.path, 'holder.log'), readyFile },
      { configPath: join(dir.path, 'holder.json'), readyTimeoutMs: 30_000 },
    );
    // The servers come up only after the holder has started and found no socket.
    await sleep(300);
    for (const name of names)
      servers.push(await startNbdkit(join(dir.path, `${name}.sock`), ['file', image]));
    holderPid = (await holding).pid;
    const ready = JSON.parse(await readFile(readyFile, 'utf8')) as HolderReady;
    assert.ok(ready.ok);
    assert.deepEqual(
      ready.devices.map((d) => d.mountpoint),
      devices.map((d) => d.mountpoint),
    );
    for (const name of names) {
      const mounted = await runChild('mount', [
        '-t',
        'erofs',
        '-o',
        'ro',
        join(dir.path, `dev-${name}`),
        join(dir.path, `mnt-${name}`),
      ]).done;
      assert.equal(mounted.status, 0, mounted.stderr);
      assert.equal(await readFile(join(dir.path, `mnt-${name}`, 'sub', 'small'), 'utf8'), shared.small);
    }
    // The holder outlives the first device's unmount and exits after the last.
    for (const name of names) await forceUnmount(join(dir.path, `mnt-${name}`));
    await forceUnmount(join(dir.path, 'dev-a'));
    await sleep(300);
    assert.ok(isAlive(holderPid), 'still serving dev-b');
    await forceUnmount(join(dir.path, 'dev-b'));
    for (let i = 0; i < 100 && isAlive(holderPid); i++) await sleep(50);
    assert.ok(!isAlive(holderPid), 'the holder exits once every device is unmounted');
    assert.match(await readFile(join(dir.path, 'holder.log'), 'utf8'), /dev-a: Connected to NBD server/);
  });

  test('a holder that cannot serve one of its devices stops the others and reports why', async (t) => {
    assert.ok(shared);
    const dir = await tmpdir('erofs-oci-holder-partial-');
    const good = join(dir.path, 'dev-good');
    const server = await startNbdkit(join(dir.path, 'good.sock'), ['file', shared.image]);
    t.after(async () => {
      await forceUnmount(good);
      await server.kill('SIGKILL');
      await dir.cleanup();
    });
    await writeFile(good, '');
    await assert.rejects(
      spawnHolder(
        {
          devices: [
            { mountpoint: good, socketPath: join(dir.path, 'good.sock') },
            // No such file to mount the FUSE file on.
            { mountpoint: join(dir.path, 'missing', 'dev'), socketPath: join(dir.path, 'good.sock') },
          ],
          ioTimeoutMs: 5000,
          logFile: join(dir.path, 'holder.log'),
          readyFile: join(dir.path, 'holder.ready'),
        },
        { configPath: join(dir.path, 'holder.json'), readyTimeoutMs: 30_000 },
      ),
      (error: unknown) => isErofsOciError(error) && /Cannot start the device holder/.test(error.message),
    );
    const ready = JSON.parse(await readFile(join(dir.path, 'holder.ready'), 'utf8')) as HolderReady;
    assert.equal(ready.ok, false);
    for (let i = 0; i < 100 && isAlive(ready.pid); i++) await sleep(50);
    assert.ok(!isAlive(ready.pid), 'the holder exits');
    const log = await readFile(join(dir.path, 'holder.log'), 'utf8');
    assert.match(log, /dev-good: Serving /, 'the good device was served');
    assert.ok(!isMounted(good), 'the device it could serve is unmounted again');
  });

  test('the holder fails reads with EIO once no server has come back within the I/O timeout', async (t) => {
    assert.ok(shared);
    const deployment = await deploy(t, 1500);
    await deployment.server.kill('SIGKILL');
    await dropCaches();
    const started = Date.now();
    const result = await sha256sum(join(deployment.mnt, 'big'));
    const waited = Date.now() - started;
    assert.notEqual(result.status, 0);
    assert.match(result.stderr, /Input\/output error/);
    assert.ok(waited >= 1400, `failed after ${waited} ms, before the I/O timeout`);
    assert.match(await deployment.log(), /FUSE READ of \d+ bytes at offset \d+ failed: Cannot serve a read/);

    // A server that comes back later serves the next reads.
    await deployment.restart();
    await dropCaches();
    assert.equal((await sha256sum(join(deployment.mnt, 'big'))).hash, shared.bigHash);
  });
});
