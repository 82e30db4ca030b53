/**
 * Verified lazy mounts end to end (root, real kernel, real registry whose storage the test owns): images
 * converted by `erofs-oci convert`, raw and `--compress zstd`, mounted with `--require-verified` and compared
 * with the tree GNU tar extracts; then one flipped byte in a blob in the registry's storage fails exactly the
 * file that holds it (EIO), a flipped byte in the chunk index refuses the mount (exit 5), and an image
 * without chunk indexes is refused under `--require-verified`. The same images rewritten with standalone
 * chunk-index layers (erofs-image-spec §3.4.3) mount chunk-verified too, and a flipped byte in such an
 * index layer refuses the mount.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import {
  buildReproducible,
  check,
  cliEntry,
  findExecutable,
  isRoot,
  nodeBinary,
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
  type Blob,
  blobOf,
  imageOfBlobs,
  makeTar,
  pushRaw,
  writeLayout,
} from '../../test-support/registry-fixtures.ts';
import { parseRange } from '../chunk-index/index.ts';

const skip = !isRoot()
  ? 'needs root to mount'
  : (registryUnavailableReason() ?? (existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse'));

const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

interface Manifest {
  layers: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> }[];
}

describe('verified mounts', { skip }, () => {
  let dir: TmpDir;
  let registry: RegistryHandle;
  let env: NodeJS.ProcessEnv;
  let tars: string[];
  let expected: Snapshot;
  let storage: string;

  before(async () => {
    dir = await tmpdir();
    env = { ...process.env, EROFS_OCI_STATE_DIR: join(dir.path, 'state') };
    const files: Record<string, string | Buffer>[] = [
      { 'big.bin': randomBytes(6 * 1024 * 1024), 'etc/a.conf': 'a=1\n', 'small.txt': 'small\n' },
      { 'top.txt': 'top\n', 'more.bin': randomBytes(300_000), 'etc/.wh.a.conf': '' },
    ];
    tars = [];
    const blobs = [];
    const diffIds = [];
    for (const [i, layerFiles] of files.entries()) {
      const tar = await makeTar(layerFiles);
      const path = join(dir.path, `layer-${i}.tar`);
      await writeFile(path, tar);
      tars.push(path);
      blobs.push(blobOf('application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(tar)));
      diffIds.push(sha256(tar));
    }
    const source = join(dir.path, 'source');
    await writeLayout(source, 'v1', [imageOfBlobs(blobs, diffIds)], false);
    await buildExpected(join(dir.path, 'expected'), tars, 'merged');
    expected = withoutDirNlink(await snapshot(join(dir.path, 'expected')));
    storage = join(dir.path, 'storage');
    registry = await startRegistry({ storageDir: storage });
    for (const [name, options] of [
      ['raw', []],
      ['zstd', ['--compress', 'zstd']],
    ] as const) {
      const out = join(dir.path, `out-${name}`);
      const converted = await runCli(['convert', '--quiet', ...options, `oci:${source}:v1`, `oci:${out}:v1`]);
      assert.equal(converted.status, 0, converted.stderr);
      await skopeo([
        'copy',
        '--dest-tls-verify=false',
        `oci:${out}:v1`,
        `docker://${registry.host}/test/${name}:v1`,
      ]);
      await pushStandalone(registry.url, `test/${name}-standalone`, out);
    }
    // The gzip source itself, for hybrid mounts.
    await skopeo([
      'copy',
      '--dest-tls-verify=false',
      `oci:${source}:v1`,
      `docker://${registry.host}/test/gzip:v1`,
    ]);
    // An image without chunk indexes: layers built by `build`.
    const plain = await buildReproducible(`tar:${tars[0]}`, join(dir.path, 'plain.erofs'));
    const plainLayout = join(dir.path, 'plain');
    await writeLayout(
      plainLayout,
      'v1',
      [imageOfBlobs([blobOf('application/vnd.erofs.layer.v1', plain)], [sha256(plain)])],
      false,
    );
    await skopeo([
      'copy',
      '--dest-tls-verify=false',
      `oci:${plainLayout}:v1`,
      `docker://${registry.host}/test/plain:v1`,
    ]);
    // The same image zstd-compressed in one frame, with neither a chunk index nor an
    // org.erofs.uncompressed-digest: only the config's diff_id pins its decompressed bytes (right, or wrong).
    const zstdPlain = blobOf('application/vnd.erofs.layer.v1+zstd', zstdCompressSync(plain));
    for (const [name, diffId] of [
      ['plain-zstd', sha256(plain)],
      ['plain-zstd-wrong', sha256(Buffer.from('not this'))],
    ] as const) {
      const image = imageOfBlobs([zstdPlain], [diffId]);
      await pushRaw(
        registry.url,
        `test/${name}`,
        'v1',
        [zstdPlain, image.config],
        image.manifest.bytes,
        'application/vnd.oci.image.manifest.v1+json',
      );
    }
  });

  after(async () => {
    const listed = await runCli(['list', '--json'], { env });
    for (const m of (JSON.parse(listed.stdout || '[]') as { mountpoint: string }[]) ?? [])
      await runCli(['umount', m.mountpoint], { env });
    await registry?.stop();
    await dir?.cleanup();
  });

  const ref = (name: string) => `${registry.host}/test/${name}:v1`;

  async function manifestOf(name: string): Promise<Manifest> {
    return JSON.parse(
      await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${ref(name)}`]),
    ) as Manifest;
  }

  function blobFile(digest: string): string {
    const hex = digest.slice('sha256:'.length);
    return join(storage, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
  }

  async function flip(path: string, offset: number): Promise<() => Promise<void>> {
    const handle = await open(path, 'r+');
    try {
      const byte = Buffer.alloc(1);
      await handle.read(byte, 0, 1, offset);
      await handle.write(Buffer.from([byte[0]! ^ 0x55]), 0, 1, offset);
    } finally {
      await handle.close();
    }
    return async () => {
      await flip(path, offset);
    };
  }

  async function mounted<T>(name: string, args: string[], fn: (mnt: string) => Promise<T>): Promise<T> {
    const mnt = join(dir.path, `mnt-${name}-${Math.random().toString(36).slice(2)}`);
    await mkdir(mnt);
    const result = await runCli(['mount', '--insecure', '--backend', 'fuse', ...args, ref(name), mnt], {
      env,
    });
    assert.equal(result.status, 0, result.stderr);
    try {
      return await fn(mnt);
    } finally {
      const done = await runCli(['umount', mnt], { env });
      assert.equal(done.status, 0, done.stderr);
    }
  }

  for (const name of ['raw', 'zstd', 'raw-standalone', 'zstd-standalone']) {
    it(`a converted ${name} image mounts lazily with --require-verified and equals the expected tree`, async () => {
      await mounted(name, ['--require-verified'], async (mnt) => {
        assertSameTree(expected, withoutDirNlink(await snapshot(mnt)), {
          ignoreRoot: true,
          ignoreDirMtimes: true,
        });
        const listed = JSON.parse((await runCli(['list', '--json'], { env })).stdout) as {
          layers: { verification: string }[];
        }[];
        assert.deepEqual(
          listed[0]?.layers.map((l) => l.verification),
          ['chunk-verified', 'chunk-verified'],
        );
        if (name.endsWith('-standalone')) {
          // Layer 0's index came from the chunk-index layer: the server read the layer chunk by chunk.
          const bottom = (await manifestOf(name)).layers[0]!;
          const logs = await grepLogs(join(dir.path, 'state'), 'chunk index verified');
          assert.ok(
            logs.some((line) => line.includes(bottom.digest)),
            logs.join('\n'),
          );
        }
      });
    });
  }

  it('a flipped byte in a zstd blob fails the file holding it with EIO, and only that file', async () => {
    const manifest = await manifestOf('zstd');
    const layer = manifest.layers[0]!;
    // The middle chunk of layer 0 lies inside big.bin (6 MiB of the layer's image).
    const range = parseRange(layer.annotations!['org.erofs.chunk-index.range']!);
    const offset = Math.floor(range.offset / 2);
    const restore = await flip(blobFile(layer.digest), offset);
    try {
      await mounted('zstd', [], async (mnt) => {
        await assert.rejects(
          readFile(join(mnt, 'big.bin')),
          (error: NodeJS.ErrnoException) => error.code === 'EIO',
        );
        assert.equal(await readFile(join(mnt, 'small.txt'), 'utf8'), 'small\n');
        assert.equal(await readFile(join(mnt, 'top.txt'), 'utf8'), 'top\n');
        const more = await readFile(join(mnt, 'more.bin'));
        assert.equal(more.byteLength, 300_000);
        const logs = await grepLogs(join(dir.path, 'state'), 'fails its checksum');
        assert.ok(
          logs.some((line) => /chunk \d+ \(blob bytes \[\d+, \d+\)/.test(line)),
          logs.join('\n'),
        );
        assert.ok(
          logs.some((line) => line.includes(layer.digest)),
          logs.join('\n'),
        );
      });
    } finally {
      await restore();
    }
  });

  it('a flipped byte in the chunk index refuses the mount with exit 5', async () => {
    const manifest = await manifestOf('raw');
    const layer = manifest.layers[1]!;
    const range = parseRange(layer.annotations!['org.erofs.chunk-index.range']!);
    const restore = await flip(blobFile(layer.digest), range.offset + 40);
    try {
      const mnt = join(dir.path, 'mnt-bad-index');
      await mkdir(mnt);
      const result = await runCli(['mount', '--insecure', '--backend', 'fuse', ref('raw'), mnt], { env });
      assert.equal(result.status, 5, result.stderr);
      assert.match(result.stderr, /chunk index/);
    } finally {
      await restore();
    }
  });

  it('a flipped byte in a standalone chunk-index layer refuses the mount with exit 5', async () => {
    const manifest = await manifestOf('zstd-standalone');
    const index = manifest.layers[1]!;
    assert.equal(index.mediaType, 'application/vnd.erofs.chunk-index.v1');
    const restore = await flip(blobFile(index.digest), 40);
    try {
      const mnt = join(dir.path, 'mnt-bad-standalone');
      await mkdir(mnt);
      const result = await runCli(
        ['mount', '--insecure', '--backend', 'fuse', '--layer', '0', ref('zstd-standalone'), mnt],
        { env },
      );
      assert.equal(result.status, 5, result.stderr);
      assert.match(result.stderr, /chunk index refused/);
      assert.ok(result.stderr.includes(index.digest), result.stderr);
    } finally {
      await restore();
    }
  });

  it('serve: nbdcopy of a +zstd layer hashes to its uncompressed digest; a tampered disk cache is refetched after a restart', {
    skip: findExecutable('nbdcopy') ? undefined : 'needs nbdcopy',
  }, async () => {
    const manifest = await manifestOf('zstd');
    const layer = manifest.layers[0]!;
    const wanted = layer.annotations!['org.erofs.uncompressed-digest']!;
    const cacheDir = join(dir.path, 'serve-cache');
    const socket = join(dir.path, 'serve.sock');
    const serveOnce = async (name: string): Promise<{ hash: string; log: string }> => {
      const child = spawn(
        nodeBinary,
        [
          cliEntry,
          'serve',
          '--insecure',
          '--layer',
          '0',
          '--cache-dir',
          cacheDir,
          ref('zstd'),
          '--listen',
          `unix:${socket}`,
        ],
        {
          stdio: ['ignore', 'ignore', 'pipe'],
        },
      );
      let log = '';
      child.stderr?.on('data', (c: Buffer) => {
        log += c.toString();
      });
      try {
        for (let i = 0; i < 200 && !existsSync(socket); i++) {
          if (child.exitCode !== null) throw new Error(`serve exited early: ${log}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        const out = join(dir.path, `${name}.img`);
        await check('nbdcopy', ['--', `nbd+unix:///?socket=${socket}`, out]);
        return { hash: sha256(await readFile(out)), log };
      } finally {
        child.kill('SIGTERM');
        await new Promise((resolve) =>
          child.exitCode !== null ? resolve(null) : child.once('exit', resolve),
        );
        await rm(socket, { force: true });
      }
    };
    const first = await serveOnce('first');
    assert.equal(first.hash, wanted, first.log);
    const chunks = await readdir(join(cacheDir, 'chunks'));
    assert.ok(chunks.length > 1, 'verified chunks are on disk');
    const victim = join(cacheDir, 'chunks', chunks[0]!);
    const bytes = await readFile(victim);
    bytes[bytes.byteLength >> 1]! ^= 0x01;
    await writeFile(victim, bytes);
    const second = await serveOnce('second');
    assert.equal(second.hash, wanted, second.log);
    assert.match(second.log, /disk cache copy of chunk \d+ .* fails its checksum/);
  });

  it('list --json: a layer without an index is not yet verified until every block has been fetched', async () => {
    await mounted('plain', [], async (mnt) => {
      assert.equal(await readFile(join(mnt, 'small.txt'), 'utf8'), 'small\n');
      type Row = { mountpoint: string; layers: { verificationState: string; device: string }[] };
      const rows = async () => JSON.parse((await runCli(['list', '--json'], { env })).stdout) as Row[];
      const layer = () => rows().then((r) => r.find((m) => m.mountpoint === mnt)!.layers[0]!);
      const before = await layer();
      assert.equal(before.verificationState, 'not-yet-verified');
      // The FUSE backend's device is a file: reading all of it fetches every block, and the digest's
      // verdict lands in the layer's disk cache record.
      await readFile(before.device);
      let state = '';
      for (let i = 0; i < 100 && state !== 'whole-blob-verified'; i++) {
        state = (await layer()).verificationState;
        if (state !== 'whole-blob-verified') await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(state, 'whole-blob-verified');
    });
  });

  it('a +zstd layer with neither index nor uncompressed-digest is checked against its diff_id', async () => {
    await mounted('plain-zstd', [], async (mnt) => {
      assert.equal(await readFile(join(mnt, 'small.txt'), 'utf8'), 'small\n');
      const rows = JSON.parse((await runCli(['list', '--json'], { env })).stdout) as {
        mountpoint: string;
        layers: { verificationState: string }[];
      }[];
      assert.equal(
        rows.find((m) => m.mountpoint === mnt)?.layers[0]?.verificationState,
        'whole-blob-verified',
      );
    });
    const mnt = join(dir.path, 'mnt-plain-zstd-wrong');
    await mkdir(mnt);
    const result = await runCli(['mount', '--insecure', '--backend', 'fuse', ref('plain-zstd-wrong'), mnt], {
      env,
    });
    assert.equal(result.status, 5, result.stderr);
    assert.match(
      result.stderr,
      /decompressed image is sha256:[0-9a-f]+, the config.s rootfs\.diff_ids\[0\] says/,
    );
  });

  it('hybrid: build --zinfo writes span digests beside an unchanged zinfo; mount checks every span it inflates', async () => {
    const meta = join(dir.path, 'gz.meta');
    const zinfo = join(dir.path, 'gz.zinfo');
    const built = await runCli(
      [
        'build',
        '--quiet',
        '--insecure',
        '--mode',
        'index',
        '--zinfo',
        zinfo,
        '--span',
        `${1 << 20}`,
        '--layer',
        '0',
        ref('gzip'),
        meta,
      ],
      { env },
    );
    assert.equal(built.status, 0, built.stderr);
    // The zinfo is what `erofs-oci zinfo` alone writes for the same blob: the digests live beside it.
    const alone = join(dir.path, 'alone.zinfo');
    const indexed = await runCli(
      ['zinfo', '--insecure', '--span', `${1 << 20}`, '--layer', '0', ref('gzip'), alone],
      { env },
    );
    assert.equal(indexed.status, 0, indexed.stderr);
    assert.ok(Buffer.compare(await readFile(zinfo), await readFile(alone)) === 0, 'the same zinfo bytes');
    const sidecar = `${zinfo}.span-sha256`;
    const digests = JSON.parse(await readFile(sidecar, 'utf8')) as { spans: string[] };
    assert.ok(digests.spans.length >= 6, 'a 6 MiB layer has six 1 MiB spans or more');
    const args = ['--layer', '0', '--tarindex', meta, '--zinfo', zinfo];
    await mounted('gzip', args, async (mnt) => {
      assert.equal(
        sha256(await readFile(join(mnt, 'big.bin'))),
        sha256(await readFile(join(dir.path, 'expected', 'big.bin'))),
      );
      assert.equal(await readFile(join(mnt, 'small.txt'), 'utf8'), 'small\n');
      const logs = await grepLogs(join(dir.path, 'state'), 'every span inflated is checked');
      assert.ok(logs.length > 0, 'the server says it checks spans');
    });
    // A digest that does not match its span (as if the blob had changed under the zinfo): the file in that
    // span (the middle of big.bin) fails with EIO, files in other spans read.
    const wrong = { ...digests, spans: digests.spans.map((d, i) => (i === 3 ? '0'.repeat(64) : d)) };
    await writeFile(sidecar, JSON.stringify(wrong));
    try {
      await mounted('gzip', args, async (mnt) => {
        await assert.rejects(
          readFile(join(mnt, 'big.bin')),
          (error: NodeJS.ErrnoException) => error.code === 'EIO',
        );
        assert.equal(await readFile(join(mnt, 'small.txt'), 'utf8'), 'small\n');
      });
    } finally {
      await writeFile(sidecar, JSON.stringify(digests));
    }
  });

  it('--require-verified refuses an image without chunk indexes, naming the layer', async () => {
    const mnt = join(dir.path, 'mnt-plain');
    await mkdir(mnt);
    const manifest = await manifestOf('plain');
    const result = await runCli(['mount', '--insecure', '--require-verified', ref('plain'), mnt], { env });
    assert.equal(result.status, 5, result.stderr);
    assert.ok(result.stderr.includes(manifest.layers[0]!.digest), result.stderr);
  });
});

/**
 * Pushes the converted layout `out` again with every layer's but the top one's embedded chunk index moved into a standalone
 * `application/vnd.erofs.chunk-index.v1` layer right after it: the blob cut before its index section, the
 * index payload as its own blob naming its target (and the config's diff_ids to match, §5.2).
 */
async function pushStandalone(registryUrl: string, repository: string, out: string): Promise<void> {
  const readBlob = (digest: string) => readFile(join(out, 'blobs', 'sha256', digest.slice('sha256:'.length)));
  const top = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as {
    manifests: { digest: string }[];
  };
  const manifest = JSON.parse((await readBlob(top.manifests[0]!.digest)).toString()) as Manifest & {
    config: { digest: string };
  };
  const config = JSON.parse((await readBlob(manifest.config.digest)).toString()) as {
    rootfs: { diff_ids: string[] };
  };
  const blobs: Blob[] = [];
  const layers: Record<string, unknown>[] = [];
  const diffIds: string[] = [];
  for (const [i, layer] of manifest.layers.entries()) {
    if (i === manifest.layers.length - 1) {
      // A chunk-index layer must not be the last entry (§3.8 rule 1): the top layer keeps its embedded one.
      blobs.push(blobOf(layer.mediaType, await readBlob(layer.digest)));
      layers.push(layer);
      diffIds.push(config.rootfs.diff_ids[i]!);
      continue;
    }
    const bytes = await readBlob(layer.digest);
    const range = parseRange(layer.annotations!['org.erofs.chunk-index.range']!);
    const zstd = layer.mediaType.endsWith('+zstd');
    const cut = blobOf(layer.mediaType, bytes.subarray(0, range.offset));
    const index = blobOf(
      'application/vnd.erofs.chunk-index.v1',
      bytes.subarray(range.offset + (zstd ? 8 : 0), range.end ?? bytes.byteLength),
    );
    const {
      'org.erofs.chunk-index.range': _r,
      'org.erofs.chunk-index.digest': _d,
      ...kept
    } = layer.annotations ?? {};
    blobs.push(cut, index);
    layers.push(
      { mediaType: cut.mediaType, digest: cut.digest, size: cut.size, annotations: kept },
      {
        mediaType: index.mediaType,
        digest: index.digest,
        size: index.size,
        annotations: { 'org.erofs.chunk-index.target': cut.digest },
      },
    );
    diffIds.push(zstd ? config.rootfs.diff_ids[i]! : cut.digest, index.digest);
  }
  const configBlob = blobOf(
    'application/vnd.oci.image.config.v1+json',
    Buffer.from(JSON.stringify({ ...config, rootfs: { type: 'layers', diff_ids: diffIds } })),
  );
  blobs.push(configBlob);
  const document = Buffer.from(
    JSON.stringify({
      ...manifest,
      config: { ...manifest.config, digest: configBlob.digest, size: configBlob.size },
      layers,
    }),
  );
  await pushRaw(registryUrl, repository, 'v1', blobs, document, 'application/vnd.oci.image.manifest.v1+json');
}

function withoutDirNlink(tree: Snapshot): Snapshot {
  const entries = Object.fromEntries(
    Object.entries(tree.entries).map(([path, entry]) => [
      path,
      entry.type === 'dir' ? { ...entry, nlink: 0 } : entry,
    ]),
  );
  return { ...tree, entries };
}

async function grepLogs(root: string, needle: string): Promise<string[]> {
  const hits: string[] = [];
  const walk = async (path: string) => {
    for (const entry of await readdir(path, { withFileTypes: true }).catch(() => [])) {
      const full = join(path, entry.name);
      if (entry.isDirectory() && !entry.name.endsWith('.mnt') && !entry.name.startsWith('cache'))
        await walk(full);
      else if (entry.isFile() && entry.name.endsWith('.log')) {
        for (const line of (await readFile(full, 'utf8')).split('\n'))
          if (line.includes(needle)) hits.push(line);
      }
    }
  };
  await walk(root);
  return hits;
}
