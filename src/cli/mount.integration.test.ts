/**
 * Lazy mounts end to end (root, real kernel, real registry): EROFS-native layers built by our `build`,
 * pushed with skopeo, mounted through FUSE device holders and overlayfs; the expected tree comes from GNU
 * tar extraction plus the whiteout script of test-support.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import {
  buildReproducible,
  check,
  isRoot,
  runCli,
  type Snapshot,
  snapshot,
  type TmpDir,
  tmpdir,
} from '../../test-support/kernel.ts';
import { assertSameTree, buildExpected } from '../../test-support/oracle.ts';
import {
  type RegistryHandle,
  registryUnavailableReason,
  skopeo,
  startRegistry,
} from '../../test-support/registry.ts';
import {
  blobOf,
  type FixtureImage,
  imageOfBlobs,
  makeTar,
  writeLayout,
} from '../../test-support/registry-fixtures.ts';
import { startTokenServer } from '../../test-support/registry-token-server.ts';

const skip = !isRoot()
  ? 'needs root to mount'
  : (registryUnavailableReason() ?? (existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse'));

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

function imageOf(layers: { mediaType: string; bytes: Buffer; diffId: string }[]): FixtureImage {
  return imageOfBlobs(
    layers.map((l) => blobOf(l.mediaType, l.bytes)),
    layers.map((l) => l.diffId),
  );
}

async function listJson(env: NodeJS.ProcessEnv) {
  const result = await runCli(['list', '--json'], { env });
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout) as {
    mountpoint: string;
    health: string;
    pids: number[];
    devicePids: number[];
  }[];
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('mount', { skip }, () => {
  let dir: TmpDir;
  let registry: RegistryHandle;
  let env: NodeJS.ProcessEnv;
  let tars: string[];
  let big: Buffer;
  const ref = () => `${registry.host}/test/native:v1`;

  before(async () => {
    dir = await tmpdir();
    env = { ...process.env, EROFS_OCI_STATE_DIR: join(dir.path, 'state') };
    big = randomBytes(48 * 1024 * 1024);
    const layerFiles: Record<string, string | Buffer>[] = [
      {
        'a.txt': 'first a\n',
        'dir/keep.txt': 'keep\n',
        'dir/gone.txt': 'gone\n',
        'opq/old.txt': 'old\n',
        'big.bin': big,
      },
      { 'dir/.wh.gone.txt': '', 'opq/.wh..wh..opq': '', 'opq/new.txt': 'new\n', 'b.txt': 'b\n' },
      { 'a.txt': 'second a\n', 'c/deep.txt': 'deep\n' },
    ];
    tars = [];
    const layers = [];
    for (const [i, files] of layerFiles.entries()) {
      const tar = await makeTar(files);
      const tarPath = join(dir.path, `layer-${i}.tar`);
      await writeFile(tarPath, tar);
      tars.push(tarPath);
      const bytes = await buildReproducible(`tar:${tarPath}`, join(dir.path, `layer-${i}.erofs`));
      layers.push({ mediaType: 'application/vnd.erofs.layer.v1', bytes, diffId: `sha256:${sha256(bytes)}` });
    }
    // A fourth, gzip tar layer for the hybrid mount.
    const gz = gzipSync(await readFile(tars[0] as string));
    layers.push({
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      bytes: gz,
      diffId: `sha256:${sha256(await readFile(tars[0] as string))}`,
    });
    const layout = join(dir.path, 'layout');
    await writeLayout(layout, 'v1', [imageOf(layers.slice(0, 3))], false);
    const hybridLayout = join(dir.path, 'hybrid-layout');
    await writeLayout(hybridLayout, 'v1', [imageOf(layers.slice(3))], false);
    registry = await startRegistry({ storageDir: join(dir.path, 'storage') });
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${ref()}`]);
    await skopeo([
      'copy',
      '--dest-tls-verify=false',
      `oci:${hybridLayout}:v1`,
      `docker://${registry.host}/test/gz:v1`,
    ]);
  });

  after(async () => {
    // Whatever a failing test left mounted.
    for (const m of await listJson(env).catch(() => [])) await runCli(['umount', m.mountpoint], { env });
    await registry?.stop();
    await dir?.cleanup();
  });

  async function newMountpoint(name: string): Promise<string> {
    const path = join(dir.path, name);
    await mkdir(path, { recursive: true });
    return path;
  }

  async function mount(args: string[], mountpoint: string) {
    const started = performance.now();
    const result = await runCli(['mount', '--insecure', ...args, mountpoint], { env });
    assert.equal(result.status, 0, result.stderr);
    process.stderr.write(
      `# mount ${args.join(' ')}: ${((performance.now() - started) / 1000).toFixed(2)} s\n`,
    );
  }

  async function umount(mountpoint: string) {
    const before = (await listJson(env)).find((m) => m.mountpoint === mountpoint);
    const started = performance.now();
    const result = await runCli(['umount', mountpoint], { env });
    assert.equal(result.status, 0, result.stderr);
    process.stderr.write(
      `# umount: ${((performance.now() - started) / 1000).toFixed(2)} s\n${result.stderr}`,
    );
    const mounts = await readFile('/proc/self/mountinfo', 'utf8');
    assert.ok(!mounts.includes(dir.path), `nothing under the test dir stays mounted:\n${mounts}`);
    assert.equal((await listJson(env)).length, 0, 'no record left');
    for (const pid of [...(before?.pids ?? []), ...(before?.devicePids ?? [])]) {
      for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(!alive(pid), `process ${pid} is gone`);
    }
  }

  it('stacks every EROFS layer with overlayfs; the tree equals the merged layers', async () => {
    const mnt = await newMountpoint('all');
    await mount([ref()], mnt);
    try {
      const expectedDir = join(dir.path, 'expected-merged');
      await buildExpected(expectedDir, tars, 'merged');
      // overlayfs reports nlink 1 for merged directories ("unknown"), so directory link counts are not compared.
      assertSameTree(withoutDirNlink(await snapshot(expectedDir)), withoutDirNlink(await snapshot(mnt)), {
        ignoreRoot: true,
        ignoreDirMtimes: true,
      });
      const [listed] = await listJson(env);
      assert.equal(listed?.mountpoint, mnt);
      assert.equal(listed?.health, 'serving');
      // One serving process and one device holder serve the three layers.
      assert.equal(listed?.pids.length, 1);
      assert.equal(listed?.devicePids.length, 1);
    } finally {
      await umount(mnt);
    }
    // Idempotent.
    const again = await runCli(['umount', mnt], { env });
    assert.equal(again.status, 0, again.stderr);
  });

  it('mounts one layer with --layer', async () => {
    const mnt = await newMountpoint('one');
    await mount(['--layer', '0', ref()], mnt);
    try {
      assert.equal(sha256(await readFile(join(mnt, 'big.bin'))), sha256(big));
      assert.equal(await readFile(join(mnt, 'dir', 'gone.txt'), 'utf8'), 'gone\n');
    } finally {
      await umount(mnt);
    }
  });

  it('--upper makes the mount writable and writes land in the upper dir', async () => {
    const mnt = await newMountpoint('upper');
    const upper = join(dir.path, 'upper-dir');
    await mount(['--upper', upper, ref()], mnt);
    try {
      await writeFile(join(mnt, 'written.txt'), 'hello upper\n');
      assert.equal(await readFile(join(upper, 'written.txt'), 'utf8'), 'hello upper\n');
      assert.ok((await readdir(mnt)).includes('b.txt'));
    } finally {
      await umount(mnt);
    }
  });

  it('mounts a gzip layer from its index and zinfo (hybrid)', async () => {
    const meta = join(dir.path, 'gz.meta');
    const zinfo = join(dir.path, 'gz.zinfo');
    const gzRef = `${registry.host}/test/gz:v1`;
    const built = await runCli(
      ['build', '--quiet', '--insecure', '--mode', 'index', '--zinfo', zinfo, '--layer', '0', gzRef, meta],
      { env },
    );
    assert.equal(built.status, 0, built.stderr);
    const mnt = await newMountpoint('hybrid');
    await mount(['--layer', '0', '--tarindex', meta, '--zinfo', zinfo, gzRef], mnt);
    try {
      assert.equal(sha256(await readFile(join(mnt, 'big.bin'))), sha256(big));
      assert.equal(await readFile(join(mnt, 'a.txt'), 'utf8'), 'first a\n');
    } finally {
      await umount(mnt);
    }
  });

  it('a gzip layer without an index is refused with a hint, nothing mounted', async () => {
    const mnt = await newMountpoint('noindex');
    const result = await runCli(['mount', '--insecure', '--layer', '0', `${registry.host}/test/gz:v1`, mnt], {
      env,
    });
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /build --mode index/);
    assert.equal((await listJson(env)).length, 0);
  });

  it('errors: busy mount point, missing layer, unreachable registry leave nothing mounted', async () => {
    const mnt = await newMountpoint('errors');
    await mount(['--layer', '1', ref()], mnt);
    try {
      const busy = await runCli(['mount', '--insecure', ref(), mnt], { env });
      assert.notEqual(busy.status, 0);
      assert.match(busy.stderr, /already/);
    } finally {
      await umount(mnt);
    }
    const missing = await runCli(['mount', '--insecure', '--layer', '9', ref(), mnt], { env });
    assert.equal(missing.status, 3, missing.stderr);
    const unreachable = await runCli(
      ['mount', '--insecure', '--timeout', '3', '127.0.0.1:1/none/x:v1', mnt],
      { env },
    );
    assert.equal(unreachable.status, 7, unreachable.stderr);
    assert.equal((await listJson(env)).length, 0);
    assert.ok(!(await readFile('/proc/self/mountinfo', 'utf8')).includes(mnt));
  });

  it('survives repeated SIGKILLs of the server: reattach, and the reader gets every byte right', async () => {
    const mnt = await newMountpoint('crash');
    await mount(['--layer', '0', '--io-timeout', '60', ref()], mnt);
    try {
      // A reader in another process, reading the big file in small pieces while servers are killed.
      // A reader in another process: it reads the big file in small pieces, pass after pass (dropping the
      // page cache between passes so reads keep reaching the server), checking every pass, until told to
      // stop. The first kill lands while the file is not cached anywhere yet.
      const stopFile = join(dir.path, 'stop-reading');
      const script = [
        'import hashlib,os,sys,time',
        'path,want,stop=sys.argv[1:4]',
        'passes=0',
        'while True:',
        '  h=hashlib.sha256()',
        '  with open(path,"rb",buffering=0) as f:',
        '    while True:',
        '      b=f.read(65536)',
        '      if not b: break',
        '      h.update(b)',
        '      time.sleep(0.002)',
        '  if h.hexdigest()!=want: sys.exit("pass %d: wrong bytes" % passes)',
        '  passes+=1',
        '  if os.path.exists(stop): break',
        '  open("/proc/sys/vm/drop_caches","w").write("3")',
        'print(passes)',
      ].join('\n');
      const reader = spawn('python3', ['-c', script, join(mnt, 'big.bin'), sha256(big), stopFile], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      reader.stdout.on('data', (c: Buffer) => {
        out += c.toString();
      });
      reader.stderr.on('data', (c: Buffer) => {
        err += c.toString();
      });
      const finished = new Promise<number | null>((resolve) => reader.once('exit', resolve));
      for (let kill = 0; kill < 20; kill++) {
        assert.equal(reader.exitCode, null, `the reader is still reading at kill ${kill}: ${err}`);
        const [m] = await listJson(env);
        const pid = m?.pids[0] as number;
        process.kill(pid, 'SIGKILL');
        for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
        assert.equal((await listJson(env))[0]?.health, 'server dead');
        // Reads issued now wait for the new server.
        await new Promise((r) => setTimeout(r, 100));
        const re = await runCli(['reattach', mnt], { env });
        assert.equal(re.status, 0, re.stderr);
        assert.equal((await listJson(env))[0]?.health, 'serving');
        await new Promise((r) => setTimeout(r, 150));
      }
      await writeFile(stopFile, '');
      assert.equal(await finished, 0, `reader failed: ${err}`);
      assert.ok(Number(out.trim()) >= 1, `the reader completed ${out.trim()} correct passes`);
    } finally {
      await umount(mnt);
    }
  });

  it('reattach while the registry is down: what the disk cache holds reads, the rest fails with EIO', async () => {
    const own = await startRegistry({ storageDir: join(dir.path, 'storage') });
    let registryUp = true;
    const mnt = await newMountpoint('offline');
    try {
      const source = `${own.host}/test/native:v1`;
      await mount(['--layer', '0', '--timeout', '2', '--io-timeout', '5', source], mnt);
      try {
        assert.equal(await readFile(join(mnt, 'a.txt'), 'utf8'), 'first a\n');
        // The disk cache lists blocks once they are durable, within a second of their fetch.
        await new Promise((resolve) => setTimeout(resolve, 1500));
        const [listed] = await listJson(env);
        process.kill(listed?.pids[0] as number, 'SIGKILL');
        await own.stop();
        registryUp = false;
        await new Promise((resolve) => setTimeout(resolve, 200));
        const re = await runCli(['reattach', mnt], { env });
        assert.equal(re.status, 0, re.stderr);
        assert.equal((await listJson(env))[0]?.health, 'serving');
        await check('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
        assert.equal(await readFile(join(mnt, 'a.txt'), 'utf8'), 'first a\n');
        assert.equal(await readFile(join(mnt, 'dir', 'keep.txt'), 'utf8'), 'keep\n');
        await assert.rejects(readFile(join(mnt, 'big.bin')), { code: 'EIO' });
      } finally {
        await umount(mnt);
      }
    } finally {
      if (registryUp) await own.stop();
    }
  });

  it('--username with --password-stdin: mount, and reattach asks for the password again', async () => {
    const basic = await startRegistry({
      storageDir: join(dir.path, 'storage'),
      auth: { kind: 'htpasswd', users: { bob: 'pa55-W0rd-bob' } },
    });
    const mnt = await newMountpoint('basic');
    try {
      const login = ['--insecure', '--username', 'bob', '--password-stdin'];
      const source = `${basic.host}/test/native:v1`;
      const mounted = await runCli(['mount', ...login, '--layer', '1', source, mnt], {
        env,
        stdin: 'pa55-W0rd-bob\n',
      });
      assert.equal(mounted.status, 0, mounted.stderr);
      try {
        assert.equal(await readFile(join(mnt, 'b.txt'), 'utf8'), 'b\n');
        const [listed] = await listJson(env);
        process.kill(listed?.pids[0] as number, 'SIGKILL');
        await new Promise((resolve) => setTimeout(resolve, 200));
        const bare = await runCli(['reattach', mnt], { env });
        assert.equal(bare.status, 4, bare.stderr); // SPEC §4: authentication
        assert.match(bare.stderr, /give the password again/);
        const again = await runCli(['reattach', '--username', 'bob', '--password-stdin', mnt], {
          env,
          stdin: 'pa55-W0rd-bob\n',
        });
        assert.equal(again.status, 0, again.stderr);
        await check('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
        assert.equal(await readFile(join(mnt, 'b.txt'), 'utf8'), 'b\n');
        const secret = Buffer.from('bob:pa55-W0rd-bob').toString('base64');
        assert.deepEqual(await grep(join(dir.path, 'state'), ['pa55-W0rd-bob', secret]), []);
      } finally {
        await umount(mnt);
      }
    } finally {
      await basic.stop();
    }
  });

  it('no secret reaches the state directory (token auth, credentials from an auth file)', async () => {
    await mkdir(join(dir.path, 'pki'), { recursive: true });
    const tokenServer = await startTokenServer({
      dir: join(dir.path, 'pki'),
      users: { alice: 's3cret-Passw0rd' },
    });
    const secure = await startRegistry({
      storageDir: join(dir.path, 'storage'),
      auth: { kind: 'token', tokenServer },
    });
    try {
      const authfile = join(dir.path, 'auth.json');
      const auth = Buffer.from('alice:s3cret-Passw0rd').toString('base64');
      await writeFile(authfile, JSON.stringify({ auths: { [secure.host]: { auth } } }), { mode: 0o600 });
      const mnt = await newMountpoint('secret');
      const before = tokenServer.requests.length;
      const result = await runCli(
        ['mount', '--insecure', '--authfile', authfile, '--layer', '1', `${secure.host}/test/native:v1`, mnt],
        { env },
      );
      assert.equal(result.status, 0, result.stderr);
      try {
        assert.ok(tokenServer.requests.length > before, 'the registry asked for bearer tokens');
        assert.equal(await readFile(join(mnt, 'b.txt'), 'utf8'), 'b\n');
        const found = await grep(join(dir.path, 'state'), ['s3cret-Passw0rd', auth]);
        assert.deepEqual(found, [], 'no file in the state directory holds the password or its base64');
      } finally {
        await umount(mnt);
      }
    } finally {
      await secure.stop();
      await tokenServer.stop();
    }
  });
});

function withoutDirNlink(tree: Snapshot): Snapshot {
  const entries = Object.fromEntries(
    Object.entries(tree.entries).map(([path, entry]) => [
      path,
      entry.type === 'dir' ? { ...entry, nlink: 0 } : entry,
    ]),
  );
  return { ...tree, entries };
}

async function grep(root: string, needles: string[]): Promise<string[]> {
  const hits: string[] = [];
  const walk = async (path: string) => {
    for (const entry of await readdir(path, { withFileTypes: true })) {
      const full = join(path, entry.name);
      if (entry.isDirectory()) {
        if (entry.name.endsWith('.mnt')) continue; // mounted layer contents, not state
        await walk(full);
      } else if (entry.isFile() && !entry.name.endsWith('.dev')) {
        // (.dev files are the FUSE devices: the layer blobs themselves)
        const content = await readFile(full).catch(() => Buffer.alloc(0));
        for (const needle of needles) if (content.includes(needle)) hits.push(`${full}: ${needle}`);
      }
    }
  };
  await walk(root);
  return hits;
}
