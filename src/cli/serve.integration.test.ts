/**
 * `serve` end to end: blobs in a real registry (Debian's docker-registry), exported by our NBD server,
 * read by real libnbd clients (nbdinfo, nbdcopy, nbdfuse) and mounted by the kernel.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import {
  buildReproducible,
  check,
  findExecutable,
  isRoot,
  runCli,
  snapshot,
  startServe as startServeProcess,
  stopProcess,
  type TmpDir,
  tmpdir,
  withMount,
} from '../../test-support/kernel.ts';
import { assertSameTree, generateLayers } from '../../test-support/oracle.ts';
import {
  type RegistryHandle,
  registryUnavailableReason,
  skopeo,
  startRegistry,
} from '../../test-support/registry.ts';
import { startFaultProxy } from '../../test-support/registry-fault-proxy.ts';
import {
  blobOf,
  type FixtureImage,
  imageOfBlobs,
  writeLayout,
} from '../../test-support/registry-fixtures.ts';

const skip = !isRoot()
  ? 'needs root to mount'
  : (registryUnavailableReason() ??
    (['nbdinfo', 'nbdcopy', 'nbdfuse'].every((t) => findExecutable(t))
      ? undefined
      : 'needs libnbd-bin and nbdfuse'));

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function imageOf(layers: { mediaType: string; bytes: Buffer; diffId: string }[]): FixtureImage {
  return imageOfBlobs(
    layers.map((l) => blobOf(l.mediaType, l.bytes)),
    layers.map((l) => l.diffId),
  );
}

async function startServe(args: string[], socket: string): Promise<ChildProcess> {
  return (await startServeProcess(args, socket)).child;
}

const stop = stopProcess;

/** Reads the whole export with nbdcopy. */
async function copyExport(socket: string, out: string): Promise<Buffer> {
  await check('nbdcopy', ['--', `nbd+unix:///?socket=${socket}`, out]);
  return readFile(out);
}

/** nbdfuse exposes the export as the file FUSEDIR/image; the kernel mounts EROFS on it. */
async function withNbdfuseMount<T>(
  socket: string,
  dir: string,
  fn: (mountpoint: string) => Promise<T>,
): Promise<T> {
  const fuseDir = join(dir, `fuse-${Math.random().toString(36).slice(2)}`);
  await mkdir(fuseDir);
  const pidFile = `${fuseDir}.pid`;
  const fuse = spawn(
    'nbdfuse',
    ['-r', '-P', pidFile, join(fuseDir, 'image'), `nbd+unix:///?socket=${socket}`],
    {
      stdio: 'ignore',
    },
  );
  try {
    for (let i = 0; i < 100 && !existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(pidFile), 'nbdfuse became ready');
    return await withMount(join(fuseDir, 'image'), fn);
  } finally {
    await check('fusermount3', ['-u', fuseDir]).catch(() => check('umount', ['-l', fuseDir]));
    await new Promise((resolve) => (fuse.exitCode !== null ? resolve(null) : fuse.once('exit', resolve)));
  }
}

describe('serve', { skip }, () => {
  let dir: TmpDir;
  let registry: RegistryHandle;
  let tarBytes: Buffer;
  let erofsBytes: Buffer;
  let gzipBytes: Buffer;
  let expectedTree: Awaited<ReturnType<typeof snapshot>>;
  const ref = () => `${registry.host}/test/lazy:v1`;

  before(async () => {
    dir = await tmpdir();
    const [layer] = await generateLayers('types', join(dir.path, 'layers'));
    tarBytes = await readFile(layer as string);
    gzipBytes = gzipSync(tarBytes);
    const erofsPath = join(dir.path, 'layer.erofs');
    erofsBytes = await buildReproducible(`tar:${layer}`, erofsPath);
    await withMount(erofsPath, async (mnt) => {
      expectedTree = await snapshot(mnt);
    });
    const diffId = `sha256:${sha256(tarBytes)}`;
    const image = imageOf([
      {
        mediaType: 'application/vnd.erofs.layer.v1',
        bytes: erofsBytes,
        diffId: `sha256:${sha256(erofsBytes)}`,
      },
      { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', bytes: gzipBytes, diffId },
    ]);
    const layout = join(dir.path, 'layout');
    await writeLayout(layout, 'v1', [image], false);
    registry = await startRegistry({ storageDir: join(dir.path, 'storage') });
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${ref()}`]);
  });

  after(async () => {
    await registry?.stop();
    await dir?.cleanup();
  });

  it('exports an EROFS layer blob: nbdinfo, nbdcopy hash, kernel mount through nbdfuse', async () => {
    const socket = join(dir.path, 'erofs.sock');
    const server = await startServe(['--insecure', '--layer', '0', ref()], socket);
    try {
      const info = JSON.parse(await check('nbdinfo', ['--json', `nbd+unix:///?socket=${socket}`])) as {
        exports: { 'export-size': number; is_read_only: boolean }[];
      };
      assert.equal(info.exports[0]?.['export-size'], erofsBytes.byteLength);
      assert.equal(info.exports[0]?.is_read_only, true);
      const copied = await copyExport(socket, join(dir.path, 'copy.erofs'));
      assert.equal(sha256(copied), sha256(erofsBytes));
      await withNbdfuseMount(socket, dir.path, async (mnt) => {
        assertSameTree(expectedTree, await snapshot(mnt));
      });
    } finally {
      assert.equal(await stop(server), 0);
    }
  });

  it('cuts an EROFS layer where the mount and find read: the head alone, the metadata starting a block', async () => {
    // A layer whose metadata starts well past 1 MiB and not on a 1 MiB boundary: 3 MiB of file data, then
    // 40 directories of small files.
    const tree = join(dir.path, 'anchored-tree');
    await mkdir(tree);
    await writeFile(join(tree, 'big'), Buffer.alloc(3 * 2 ** 20 + 12_345, 7));
    for (let d = 0; d < 40; d++) {
      await mkdir(join(tree, `d${d}`));
      for (let f = 0; f < 30; f++) await writeFile(join(tree, `d${d}`, `f${f}`), `file ${d}/${f}\n`);
    }
    const bytes = await buildReproducible(`dir:${tree}`, join(dir.path, 'anchored.erofs'));
    // meta_blkaddr (superblock at 1024, field at byte 40) in 4 KiB blocks.
    const metaStart = bytes.readUInt32LE(1024 + 40) * 4096;
    assert.ok(metaStart > 2 ** 20 && metaStart % 2 ** 20 !== 0, `metadata at ${metaStart}`);
    const layout = join(dir.path, 'anchored-layout');
    await writeLayout(
      layout,
      'v1',
      [imageOf([{ mediaType: 'application/vnd.erofs.layer.v1', bytes, diffId: `sha256:${sha256(bytes)}` }])],
      false,
    );
    await skopeo([
      'copy',
      '--dest-tls-verify=false',
      `oci:${layout}:v1`,
      `docker://${registry.host}/test/anchored:v1`,
    ]);
    const proxy = await startFaultProxy(registry.url);
    const socket = join(dir.path, 'anchored.sock');
    const server = await startServe(['--insecure', `${proxy.host}/test/anchored:v1`], socket);
    try {
      await withNbdfuseMount(socket, dir.path, async (mnt) => {
        const listed = await check('find', [mnt]);
        assert.equal(listed.trim().split('\n').length, 1 + 1 + 40 + 40 * 30);
      });
    } finally {
      assert.equal(await stop(server), 0);
      await proxy.stop();
    }
    const ranges = proxy.requests
      .filter((r) => r.method === 'GET' && r.path.includes('/blobs/'))
      .map((r) => {
        const m = /^bytes=(\d+)-(\d+)$/.exec(String(r.headers.range));
        assert.ok(m, `every blob request is a range: ${r.headers.range}`);
        return [Number(m[1]), Number(m[2]) + 1] as const;
      });
    // The head (superblock and the mount's first read) comes first and alone: 128 KiB, not 1 MiB.
    assert.deepEqual(ranges[0], [0, 128 * 1024]);
    // No fetch straddles the start of the metadata, so the directories come in one range, not two.
    for (const [from, to] of ranges) assert.ok(to <= metaStart || from >= metaStart, `${from}-${to}`);
    assert.ok(
      ranges.some(([from]) => from === metaStart),
      'a fetch starts at the metadata',
    );
    // The find reads only the head and the metadata: the 3 MiB file's blocks are not fetched.
    const fetched = ranges.reduce((sum, [from, to]) => sum + (to - from), 0);
    assert.ok(fetched <= 128 * 1024 + (bytes.byteLength - metaStart), `fetched ${fetched} bytes`);
  });

  it('with --blob-size and --media-type serves the blob without fetching the manifest', async () => {
    const proxy = await startFaultProxy(registry.url);
    const socket = join(dir.path, 'known.sock');
    const digest = `sha256:${sha256(erofsBytes)}`;
    const server = await startServe(
      [
        '--insecure',
        '--blob',
        digest,
        '--blob-size',
        String(erofsBytes.byteLength),
        '--media-type',
        'application/vnd.erofs.layer.v1',
        `${proxy.host}/test/lazy:v1`,
      ],
      socket,
    );
    try {
      const copied = await copyExport(socket, join(dir.path, 'known.erofs'));
      assert.equal(sha256(copied), sha256(erofsBytes));
    } finally {
      assert.equal(await stop(server), 0);
      await proxy.stop();
    }
    assert.deepEqual(
      proxy.requests.filter((r) => !r.path.includes('/blobs/')).map((r) => r.path),
      [],
      'only blob requests',
    );
    const half = await runCli(['serve', '--blob', digest, '--blob-size', '10', ref(), '--listen', 'unix:/x']);
    assert.equal(half.status, 2);
    assert.match(half.stderr, /--blob-size and --media-type go together/);
  });

  it('exports the hybrid device [index][uncompressed tar] of a gzip layer', async () => {
    const meta = join(dir.path, 'layer.meta');
    const zinfo = join(dir.path, 'layer.zinfo');
    const built = await runCli([
      'build',
      '--quiet',
      '--insecure',
      '--mode',
      'index',
      '--zinfo',
      zinfo,
      '--span',
      '65536',
      '--layer',
      '1',
      ref(),
      meta,
    ]);
    assert.equal(built.status, 0, built.stderr);
    const metaBytes = await readFile(meta);
    // The same index from the zinfo command, straight from the registry layer.
    const alone = join(dir.path, 'alone.zinfo');
    const indexed = await runCli(['zinfo', '--insecure', '--span', '65536', '--layer', '1', ref(), alone]);
    assert.equal(indexed.status, 0, indexed.stderr);
    assert.ok((await readFile(alone)).equals(await readFile(zinfo)), 'zinfo command and build --zinfo agree');
    const socket = join(dir.path, 'hybrid.sock');
    const server = await startServe(
      ['--insecure', '--layer', '1', '--tarindex', meta, '--zinfo', zinfo, ref()],
      socket,
    );
    try {
      const copied = await copyExport(socket, join(dir.path, 'copy.hybrid'));
      assert.equal(copied.byteLength, metaBytes.byteLength + tarBytes.byteLength);
      assert.ok(copied.subarray(0, metaBytes.byteLength).equals(metaBytes), 'index part');
      assert.ok(copied.subarray(metaBytes.byteLength).equals(tarBytes), 'uncompressed tar part');
      await withNbdfuseMount(socket, dir.path, async (mnt) => {
        assertSameTree(expectedTree, await snapshot(mnt), { ignoreRoot: true });
      });
    } finally {
      assert.equal(await stop(server), 0);
    }
  });

  it('a gzip layer with --tarindex but no --zinfo is a usage error', async () => {
    await writeFile(join(dir.path, 'empty'), '');
    const result = await runCli([
      'serve',
      '--insecure',
      '--layer',
      '1',
      '--tarindex',
      join(dir.path, 'empty'),
      ref(),
      '--listen',
      `unix:${join(dir.path, 'x.sock')}`,
    ]);
    assert.notEqual(result.status, 0);
    assert.match(result.stderr, /^erofs-oci: serve: /);
  });
});
