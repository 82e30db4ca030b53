/**
 * The NBD server against real clients: libnbd's nbdinfo, nbdcopy, its Python binding (what nbdsh runs),
 * and nbdfuse feeding a kernel EROFS mount. Debian packages: libnbd-bin nbdkit python3-libnbd nbdfuse
 * erofs-utils. Tests skip, saying why, when a tool is missing.
 *
 * Clients run as child processes and are awaited asynchronously: the server lives in this process's event
 * loop, so a synchronous spawn would deadlock.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createBlockCache } from '../io/block-cache.ts';
import type { ByteSource } from '../io/byte-source.ts';
import { openFileSource } from '../io/file-source.ts';
import { memorySource } from '../io/memory-source.ts';
import { type NbdServer, type ServeNbdOptions, serveNbd } from './server.ts';
import { delayedSource, failingSource } from './testing.ts';

/** libnbd's Python binding is installed for the system Python, not for whatever `python3` is first on PATH. */
const PYTHON = '/usr/bin/python3';
const haveTools =
  ['/usr/bin/nbdinfo', '/usr/bin/nbdcopy'].every(existsSync) &&
  existsSync('/usr/lib/python3/dist-packages/nbd.py');
const skipTools = haveTools ? false : 'libnbd-bin and python3-libnbd are not installed';

const SIZE = 64 << 20;
const bytes = new Uint8Array(randomBytes(SIZE));
const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

interface Result {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

function run(
  command: string,
  args: string[],
  options: { input?: string; onStdoutLine?: (line: string, child: ChildProcess) => void } = {},
): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    let pending = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out.push(chunk);
      if (options.onStdoutLine) {
        pending += chunk.toString('latin1');
        let newline = pending.indexOf('\n');
        while (newline >= 0) {
          options.onStdoutLine(pending.slice(0, newline), child);
          pending = pending.slice(newline + 1);
          newline = pending.indexOf('\n');
        }
      }
    });
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: err }));
    child.stdin.end(options.input ?? '');
  });
}

async function withServer(
  source: ByteSource,
  options: Partial<ServeNbdOptions>,
  body: (server: NbdServer, log: string[]) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-it-'));
  const log: string[] = [];
  const server = await serveNbd(source, {
    listen: { kind: 'unix', path: join(dir, 'nbd.sock') },
    log: (line) => log.push(line),
    ...options,
  });
  try {
    await body(server, log);
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A Python script with libnbd: reads [offset, length] pairs (JSON on stdin), writes the bytes to stdout. */
const PREAD_SCRIPT = `
import json, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for offset, length in json.load(sys.stdin):
    sys.stdout.buffer.write(h.pread(length, offset))
h.shutdown()
`;

function randomRanges(count: number, maxLength: number): [number, number][] {
  return Array.from({ length: count }, () => {
    const offset = Math.floor(Math.random() * SIZE);
    return [offset, Math.min(SIZE - offset, 1 + Math.floor(Math.random() * maxLength))];
  });
}

function expectedBytes(ranges: [number, number][]): Buffer {
  return Buffer.concat(ranges.map(([offset, length]) => bytes.subarray(offset, offset + length)));
}

test('nbdinfo --json shows the export: size, read-only, block sizes, name, description', {
  skip: skipTools,
}, async () => {
  await withServer(
    memorySource(bytes),
    { exportName: 'layer', description: 'a test layer' },
    async (server) => {
      const result = await run('nbdinfo', ['--json', server.uri]);
      assert.equal(result.code, 0, result.stderr);
      const info = JSON.parse(result.stdout.toString());
      assert.equal(info.protocol, 'newstyle-fixed');
      assert.equal(info.structured, true);
      const [exp] = info.exports;
      assert.equal(exp['export-name'], 'layer');
      assert.equal(exp.description, 'a test layer');
      assert.equal(exp['export-size'], SIZE);
      assert.equal(exp.is_read_only, true);
      assert.equal(exp.can_multi_conn, true);
      assert.equal(exp.can_cache, true);
      assert.equal(exp.can_flush, true);
      assert.equal(exp.can_trim, false);
      assert.equal(exp.block_size_minimum, 1);
      assert.equal(exp.block_size_preferred, 4096);
      assert.equal(exp.block_size_maximum, 32 << 20);
    },
  );
});

test('nbdinfo --list sees the export through NBD_OPT_LIST', { skip: skipTools }, async () => {
  await withServer(memorySource(bytes), { exportName: 'layer', description: 'listed' }, async (server) => {
    const result = await run('nbdinfo', ['--list', '--json', server.uri]);
    assert.equal(result.code, 0, result.stderr);
    const exports = JSON.parse(result.stdout.toString()).exports;
    assert.equal(exports.length, 1);
    assert.equal(exports[0]['export-name'], 'layer');
    assert.equal(exports[0].description, 'listed');
  });
});

test('nbdcopy of the whole export hashes to the source sha256 (unix socket and multi-connection TCP)', {
  skip: skipTools,
}, async () => {
  await withServer(memorySource(bytes), {}, async (server) => {
    const result = await run('nbdcopy', [server.uri, '-']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(sha256(result.stdout), sha256(bytes));
  });
  const tcp = await serveNbd(memorySource(bytes), { listen: { kind: 'tcp', host: '127.0.0.1', port: 0 } });
  try {
    const dir = await mkdtemp(join(tmpdir(), 'nbd-it-'));
    const out = join(dir, 'copy.img');
    await writeFile(out, '');
    const result = await run('nbdcopy', [
      '--connections=4',
      '--requests=32',
      '--request-size=1048576',
      tcp.uri,
      out,
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(sha256(await readFile(out)), sha256(bytes));
    await rm(dir, { recursive: true, force: true });
  } finally {
    await tcp.close();
  }
});

test('libnbd random-range preads return the source bytes', { skip: skipTools }, async () => {
  await withServer(memorySource(bytes), {}, async (server) => {
    const ranges = [...randomRanges(300, 300_000), [0, 1], [SIZE - 1, 1], [12_345, 32 << 20]] as [
      number,
      number,
    ][];
    const result = await run(PYTHON, ['-c', PREAD_SCRIPT, server.uri], { input: JSON.stringify(ranges) });
    assert.equal(result.code, 0, result.stderr);
    assert.ok(result.stdout.equals(expectedBytes(ranges)));
  });
});

test('32 concurrent libnbd clients all get the right bytes', { skip: skipTools }, async () => {
  await withServer(memorySource(bytes), {}, async (server, log) => {
    const clients = Array.from({ length: 32 }, async () => {
      const ranges = randomRanges(20, 2 << 20);
      const result = await run(PYTHON, ['-c', PREAD_SCRIPT, server.uri], { input: JSON.stringify(ranges) });
      assert.equal(result.code, 0, result.stderr);
      assert.ok(result.stdout.equals(expectedBytes(ranges)));
    });
    await Promise.all(clients);
    assert.equal(log.filter((line) => line.endsWith('connected')).length, 32);
  });
});

test('a failing source gives libnbd clients EIO, never data', { skip: skipTools }, async () => {
  const bad = [40 << 20, (40 << 20) + 100_000];
  const source = failingSource(memorySource(bytes), bad[0] as number, bad[1] as number);
  await withServer(source, {}, async (server, log) => {
    const script = `
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
try:
    h.pread(4096, ${bad[0]})
    print("read succeeded")
except nbd.Error as e:
    print(e.errnum, e.string)
print(h.pread(4, 0).hex())
h.shutdown()
`;
    const result = await run(PYTHON, ['-c', script, server.uri]);
    assert.equal(result.code, 0, result.stderr);
    const [error, after] = result.stdout.toString().trim().split('\n');
    // libnbd reports the errno; the message of our error chunk shows in its debug output only.
    assert.equal(error, '5 nbd_pread: read: command failed: Input/output error');
    assert.equal(after, Buffer.from(bytes.subarray(0, 4)).toString('hex'));

    const copy = await run('nbdcopy', [server.uri, '-']);
    assert.notEqual(copy.code, 0);
    assert.match(copy.stderr, /Input\/output error|registry unavailable/);
    // Whatever nbdcopy wrote before failing is a prefix of the true bytes: nothing made up.
    assert.ok(copy.stdout.length <= bad[0]!);
    assert.ok(copy.stdout.equals(Buffer.from(bytes.subarray(0, copy.stdout.length))));
    assert.ok(log.some((line) => line.includes('failed (EIO): registry unavailable')));
  });
});

test('libnbd writes, trims and zeroes get EPERM', { skip: skipTools }, async () => {
  await withServer(memorySource(bytes), {}, async (server) => {
    const script = `
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.set_strict_mode(0)  # let the requests reach the server instead of libnbd refusing them itself
for name, call in [("pwrite", lambda: h.pwrite(b"x" * 8192, 0)), ("trim", lambda: h.trim(4096, 0)), ("zero", lambda: h.zero(4096, 0))]:
    try:
        call()
        print(name, "ok")
    except nbd.Error as e:
        print(name, e.errnum)
h.flush()
print(h.pread(4, 0).hex())
h.shutdown()
`;
    const result = await run(PYTHON, ['-c', script, server.uri]);
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(result.stdout.toString().trim().split('\n'), [
      'pwrite 1',
      'trim 1',
      'zero 1',
      Buffer.from(bytes.subarray(0, 4)).toString('hex'),
    ]);
  });
});

test('close() lets a libnbd read in flight complete with the right bytes', { skip: skipTools }, async () => {
  const slow = delayedSource(memorySource(bytes), () => 500);
  await withServer(slow, {}, async (server) => {
    const script = `
import hashlib, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = nbd.Buffer(1 << 20)
cookie = h.aio_pread(buf, 4096)
print("sent", flush=True)
while not h.aio_command_completed(cookie):
    h.poll(-1)
print(hashlib.sha256(buf.to_bytearray()).hexdigest(), flush=True)
`;
    let closing: Promise<void> | undefined;
    const result = await run(PYTHON, ['-c', script, server.uri], {
      onStdoutLine: (line) => {
        if (line === 'sent')
          closing = new Promise((resolve) => setTimeout(resolve, 100)).then(() => server.close());
      },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(
      result.stdout.toString().trim().split('\n')[1],
      sha256(bytes.subarray(4096, 4096 + (1 << 20))),
    );
    await closing;
  });
});

test('nbdcopy through a block cache gets the source bytes; NBD_CMD_CACHE warms the cache', {
  skip: skipTools,
}, async () => {
  let fetches = 0;
  const cache = createBlockCache(
    async (offset, length) => {
      fetches++;
      return bytes.slice(offset, offset + length);
    },
    { size: SIZE, blockSize: 1 << 20, memoryBytes: 128 << 20 },
  );
  await withServer(cache, {}, async (server) => {
    const script = `
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.cache(8 << 20, 16 << 20)
print("cached", flush=True)
sys.stdin.readline()
sys.stdout.buffer.write(h.pread(8 << 20, 16 << 20))
h.shutdown()
`;
    let afterCache = -1;
    const result = await run(PYTHON, ['-c', script, server.uri], {
      input: '\n',
      onStdoutLine: (line) => {
        if (line === 'cached') afterCache = fetches;
      },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.ok(afterCache > 0);
    assert.equal(fetches, afterCache, 'the read after CACHE needed no fetch');
    assert.ok(
      result.stdout.subarray('cached\n'.length).equals(Buffer.from(bytes.subarray(16 << 20, 24 << 20))),
    );

    const copy = await run('nbdcopy', [server.uri, '-']);
    assert.equal(copy.code, 0, copy.stderr);
    assert.equal(sha256(copy.stdout), sha256(bytes));
    assert.equal(cache.stats().bytesFetched, SIZE, 'each block fetched once');
  });
  await cache.close();
});

const chainSkip =
  skipTools ||
  (process.getuid?.() !== 0
    ? 'needs root to mount'
    : !existsSync('/usr/bin/nbdfuse')
      ? 'nbdfuse is not installed'
      : !existsSync('/usr/bin/mkfs.erofs')
        ? 'erofs-utils is not installed'
        : !existsSync('/dev/fuse')
          ? 'no /dev/fuse'
          : false);

test('nbdfuse exposes an exported EROFS image as a file that the kernel mounts', {
  skip: chainSkip,
}, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-chain-'));
  const tree = join(dir, 'tree');
  const fuse = join(dir, 'fuse');
  const mnt = join(dir, 'mnt');
  await mkdir(join(tree, 'sub'), { recursive: true });
  await mkdir(fuse);
  await mkdir(mnt);
  const payload = randomBytes(700_000);
  await writeFile(join(tree, 'sub', 'payload.bin'), payload);
  await writeFile(join(tree, 'hello.txt'), 'hello through NBD\n');
  const image = join(dir, 'image.erofs');
  const mkfs = await run('mkfs.erofs', [image, tree]);
  assert.equal(mkfs.code, 0, mkfs.stderr);

  const source = await openFileSource(image);
  const server = await serveNbd(source, { listen: { kind: 'unix', path: join(dir, 'nbd.sock') } });
  const pidFile = join(dir, 'nbdfuse.pid');
  const nbdfuse = spawn('nbdfuse', ['-r', '-P', pidFile, join(fuse, 'image'), server.uri], {
    stdio: 'ignore',
  });
  let mounted = false;
  try {
    for (let i = 0; i < 100 && !existsSync(pidFile); i++)
      await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(existsSync(pidFile), 'nbdfuse became ready');
    // File-backed EROFS mounts need Linux 6.12; older kernels need a loop device.
    let mount = await run('mount', ['-t', 'erofs', '-o', 'ro', join(fuse, 'image'), mnt]);
    if (mount.code !== 0)
      mount = await run('mount', ['-t', 'erofs', '-o', 'ro,loop', join(fuse, 'image'), mnt]);
    assert.equal(mount.code, 0, mount.stderr);
    mounted = true;
    assert.deepEqual(await readFile(join(mnt, 'sub', 'payload.bin')), payload);
    assert.equal(await readFile(join(mnt, 'hello.txt'), 'utf8'), 'hello through NBD\n');
  } finally {
    if (mounted) await run('umount', [mnt]);
    await run('umount', [fuse]);
    nbdfuse.kill();
    await server.close();
    await source.close();
    await rm(dir, { recursive: true, force: true });
  }
});
