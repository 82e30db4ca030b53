/**
 * `serve` under registry faults (SPEC §2 serve: "A read never succeeds with bytes it does not have"):
 * `erofs-oci serve` reads a layer blob of a real registry (Debian's docker-registry) through the
 * fault-injecting proxy (test-support/registry-fault-proxy.ts), and libnbd clients (nbdcopy, nbdsh) read
 * the export. Connections cut mid-range, 503s, Range ignored, a flipped byte, and a registry that goes away
 * and comes back.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import {
  findExecutable,
  run,
  startServe as startServeProcess,
  stopProcess,
} from '../../test-support/kernel.ts';
import {
  freePort,
  type RegistryHandle,
  registryUnavailableReason,
  startRegistry,
  tempDir,
} from '../../test-support/registry.ts';
import { type FaultProxy, startFaultProxy } from '../../test-support/registry-fault-proxy.ts';
import { type Blob, createFixtures, type Fixtures } from '../../test-support/registry-fixtures.ts';

const skip =
  registryUnavailableReason() ??
  (['nbdcopy', 'nbdsh'].every((tool) => findExecutable(tool))
    ? undefined
    : 'needs libnbd-bin (nbdcopy, nbdsh)');

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

interface Served {
  child: ChildProcess;
  socket: string;
  uri: string;
  /** Everything the server has logged so far. */
  log(): string;
}

/** Starts `erofs-oci serve ARGS` on a unix socket in `dir` and waits until it listens. */
async function startServe(dir: string, args: string[]): Promise<Served> {
  const socket = join(dir, `serve-${Math.random().toString(36).slice(2)}.sock`);
  const { child, log } = await startServeProcess(args, socket, 15_000);
  return { child, socket, uri: `nbd+unix:///?socket=${socket}`, log };
}

/** Stops the server the way the mount machinery does (SIGTERM) and returns its exit status. */
async function stop(served: Served): Promise<number | null> {
  return stopProcess(served.child);
}

/** nbdcopy of the whole export into a file: its exit status and, when it succeeded, the copy's digest. */
async function copyAll(
  served: Served,
  dir: string,
): Promise<{ status: number | null; digest?: string; stderr: string }> {
  const out = join(dir, `copy-${Math.random().toString(36).slice(2)}`);
  const result = await run('nbdcopy', ['--', served.uri, out]);
  try {
    if (result.status !== 0) return { status: result.status, stderr: result.stderr };
    return { status: 0, digest: sha256(await readFile(out)), stderr: result.stderr };
  } finally {
    await rm(out, { force: true });
  }
}

/** One read of `length` bytes at `offset` with nbdsh: the bytes' digest, or the error libnbd reports. */
async function readWithNbdsh(
  served: Served,
  offset: number,
  length: number,
): Promise<{ ok: true; digest: string } | { ok: false; error: string }> {
  const script = [
    'import hashlib, sys',
    'try:',
    `    data = h.pread(${length}, ${offset})`,
    "    sys.stdout.write('sha256:' + hashlib.sha256(data).hexdigest())",
    'except nbd.Error as e:',
    "    sys.stdout.write('ERROR ' + str(e))",
  ].join('\n');
  // nbdsh runs the first python3 on PATH; the nbd module is Debian's (python3-libnbd).
  const result = await run('nbdsh', ['-u', served.uri, '-c', script], {
    env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
  });
  if (result.status !== 0) throw new Error(`nbdsh failed (exit ${result.status}): ${result.stderr}`);
  return result.stdout.startsWith('ERROR ')
    ? { ok: false, error: result.stdout.slice(6) }
    : { ok: true, digest: result.stdout };
}

/**
 * A TCP relay in front of the proxy that can be shut (connections cut, port closed: ECONNREFUSED) and
 * opened again on the same port: a registry that goes away and comes back.
 */
interface Gate {
  readonly host: string;
  shut(): Promise<void>;
  open(): Promise<void>;
}

async function startGate(targetPort: number): Promise<Gate> {
  const port = await freePort();
  const sockets = new Set<Socket>();
  let server: Server | null = null;
  const open = async () => {
    server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1');
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        // Either side failing ends the relayed connection; the client sees a reset and retries.
        socket.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    const listening = server;
    await new Promise<void>((resolve, reject) => {
      listening.once('error', reject);
      listening.listen(port, '127.0.0.1', resolve);
    });
  };
  await open();
  return {
    host: `127.0.0.1:${port}`,
    open,
    async shut() {
      const closing = server;
      server = null;
      for (const socket of sockets) socket.destroy();
      if (closing) await new Promise((resolve) => closing.close(resolve));
    },
  };
}

describe('serve under registry faults (integration)', { skip, timeout: 300_000 }, () => {
  let fixtures: Fixtures;
  let registry: RegistryHandle;
  let proxy: FaultProxy;
  let dir: string;
  let blob: Blob;
  let blobPath: RegExp;
  const servers: Served[] = [];
  const ref = (host = proxy.host) => `${host}/test/big:v1`;
  const blobRequests = () => proxy.requests.filter((r) => blobPath.test(r.path));
  const serve = async (args: string[], host?: string) => {
    // 256 KiB fetches: the ~3 MiB blob takes a dozen range requests, so faults hit the middle of a copy.
    const served = await startServe(dir, ['--insecure', '--fetch-kib', '256', ...args, ref(host)]);
    servers.push(served);
    return served;
  };

  before(async () => {
    fixtures = await createFixtures();
    registry = await startRegistry({ storageDir: fixtures.storageDir });
    proxy = await startFaultProxy(registry.url);
    dir = await tempDir('serve-faults');
    const layer = fixtures.big.images[0]?.layers[0];
    assert.ok(layer);
    blob = layer;
    blobPath = new RegExp(`/blobs/${blob.digest}$`);
  });
  beforeEach(() => {
    proxy.requests.length = 0;
  });
  afterEach(async () => {
    proxy.clearRules();
    for (const served of servers.splice(0)) await stop(served);
  });
  after(async () => {
    for (const served of servers.splice(0)) await stop(served);
    await proxy?.stop();
    await registry?.stop();
    await fixtures?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a connection cut mid-range: nbdcopy still gets the blob, resumed from the byte it stopped at', async () => {
    const served = await serve([]);
    proxy.addRule({ path: blobPath, fault: { kind: 'cut', afterBytes: 100_000 }, times: 3 });
    const copy = await copyAll(served, dir);
    assert.equal(copy.status, 0, copy.stderr);
    assert.equal(copy.digest, blob.digest);
    const requests = blobRequests();
    const ranges = requests.map((r) => /^bytes=(\d+)-(\d+)$/.exec(String(r.headers.range)));
    const cuts = requests.flatMap((r, i) => (r.fault === 'cut' ? [i] : []));
    assert.equal(cuts.length, 3);
    // Each range cut short is asked for again from the first byte that did not arrive.
    let resumed = 0;
    for (const i of cuts) {
      const [, from, to] = ranges[i] ?? assert.fail(`request ${i} had no range`);
      if (Number(to) - Number(from) + 1 <= 100_000) continue; // it ended before the cut
      resumed++;
      const resumedAt = `bytes=${Number(from) + 100_000}-${to}`;
      assert.ok(
        requests.slice(i + 1).some((r) => r.headers.range === resumedAt),
        `${resumedAt} follows: ${requests.map((r) => `${r.status} ${r.headers.range}`).join(', ')}`,
      );
    }
    assert.ok(resumed >= 2, 'ranges were cut');
    assert.match(served.log(), /verified blob sha256:.*: its \d+ bytes match the digest/);
  });

  it('503 with Retry-After: nbdcopy gets the blob after the wait', async () => {
    const served = await serve([]);
    proxy.addRule({ path: blobPath, fault: { kind: 'status', status: 503, retryAfter: '1' }, times: 2 });
    const started = Date.now();
    const copy = await copyAll(served, dir);
    assert.equal(copy.status, 0, copy.stderr);
    assert.equal(copy.digest, blob.digest);
    assert.deepEqual(
      blobRequests()
        .slice(0, 3)
        .map((r) => r.status),
      [503, 503, 206],
    );
    assert.ok(Date.now() - started >= 1900, 'the server waited as Retry-After asked');
  });

  it('Range ignored: the blob is downloaded once, whole, into memory, a temporary file or the disk cache', async () => {
    for (const [store, args] of [
      ['memory', []],
      ['temporary file', ['--cache-mib', '1']],
      ['disk cache', ['--cache-dir', join(dir, 'whole-cache')]],
    ] as const) {
      proxy.requests.length = 0;
      proxy.addRule({ path: blobPath, fault: { kind: 'ignore-range' } });
      const served = await serve([...args]);
      for (let i = 0; i < 2; i++) {
        const copy = await copyAll(served, dir);
        assert.equal(copy.status, 0, `${store}: ${copy.stderr}`);
        assert.equal(copy.digest, blob.digest, store);
      }
      const requests = blobRequests();
      // The first range request tells (200, cut short once its range is in); then one GET of the whole blob.
      assert.deepEqual(
        requests.map((r) => [r.status, r.headers.range === undefined ? 'whole' : 'range']),
        [
          [200, 'range'],
          [200, 'whole'],
        ],
        store,
      );
      assert.match(served.log(), /ignores ranges: downloading it once, whole, into the cache/);
      assert.match(served.log(), /verified blob sha256:/);
      assert.equal(await stop(served), 0);
      proxy.clearRules();
    }
  });

  it('a flipped byte: a full nbdcopy fails, later reads fail, and the disk cache entry is dropped', async () => {
    const cacheDir = join(dir, 'flip-cache');
    const served = await serve(['--cache-dir', cacheDir]);
    proxy.addRule({ path: blobPath, fault: { kind: 'flip-byte', offset: 5000 }, times: 1 });
    const copy = await copyAll(served, dir);
    assert.notEqual(copy.status, 0, 'nbdcopy must not complete with wrong bytes');
    assert.match(copy.stderr, /Input\/output error/);
    assert.match(
      served.log(),
      /Cannot verify blob sha256:\S+ of .*test\/big:v1: its \d+ bytes have digest sha256:[0-9a-f]{64}, expected sha256:/,
    );
    // The registry serves the right bytes again, but what was fetched is known bad: every read fails.
    const later = await readWithNbdsh(served, 0, 4096);
    assert.equal(later.ok, false);
    assert.match((later as { error: string }).error, /Input\/output error/);
    assert.deepEqual(
      (await readdir(cacheDir)).filter((name) => !name.endsWith('.lock')),
      [],
      'the data file and record are gone',
    );
    assert.equal(served.child.exitCode, null, 'the server stays up');
    assert.equal(await stop(served), 0);
  });

  it('registry gone: a read of an uncached block fails with EIO within the retry budget; the server serves again when it returns', async () => {
    const proxyPort = Number(new URL(proxy.url).port);
    const gate = await startGate(proxyPort);
    try {
      // --timeout 10: a registry operation (retries included) gives up after 10 s at most; against a
      // refused connection the client's six attempts end sooner (backoff 0.25 + 0.5 + 1 + 2 + 4 s at most).
      const served = await serve(['--timeout', '10'], gate.host);
      const head = await readWithNbdsh(served, 0, 4096);
      assert.deepEqual(head, { ok: true, digest: sha256(blob.bytes.subarray(0, 4096)) });

      await gate.shut();
      const tail = blob.size - 100_000;
      const started = Date.now();
      const failed = await readWithNbdsh(served, tail, 50_000);
      const elapsed = Date.now() - started;
      assert.equal(failed.ok, false, 'no bytes without a registry');
      assert.match((failed as { error: string }).error, /Input\/output error/);
      assert.ok(elapsed < 12_000, `EIO after ${elapsed} ms`);
      assert.ok(elapsed > 200, `it retried before giving up (${elapsed} ms)`);
      assert.match(
        served.log(),
        /READ of 50000 bytes at offset \d+ failed \(EIO\): Cannot read bytes .*ECONNREFUSED.*gave up after \d+ attempts/,
      );
      assert.equal(served.child.exitCode, null, 'the server stays up');
      // What was cached still reads while the registry is away.
      assert.deepEqual(await readWithNbdsh(served, 0, 4096), head);

      await gate.open();
      const again = await readWithNbdsh(served, tail, 50_000);
      assert.deepEqual(again, { ok: true, digest: sha256(blob.bytes.subarray(tail, tail + 50_000)) });
      assert.equal(await stop(served), 0);
    } finally {
      await gate.shut();
    }
  });
});
