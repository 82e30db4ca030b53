/**
 * `convert` into OCI layouts: layers from the independent fixture scripts, each converted layer mounted by
 * the kernel and the overlay of all of them compared with the expected tree (GNU tar plus the whiteout
 * script); skopeo reads the layout; the chunk index checked against the blob; +zstd decompressed by the
 * zstd tool; reproducibility; a corrupt source is exit 5 and names nothing.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cp, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import {
  check,
  isRoot,
  runCli,
  snapshot,
  type TmpDir,
  tmpdir,
  withOverlay,
} from '../../test-support/kernel.ts';
import { assertSameTree, buildExpected, generateLayers } from '../../test-support/oracle.ts';
import {
  type RegistryHandle,
  registryUnavailableReason,
  skopeo,
  startRegistry,
} from '../../test-support/registry.ts';
import { startFaultProxy } from '../../test-support/registry-fault-proxy.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../../test-support/registry-fixtures.ts';
import { locateChunk, readChunk, readEmbeddedChunkIndex } from '../chunk-index/index.ts';
import { memorySource } from '../io/memory-source.ts';

const skip = !isRoot() ? 'needs root to mount images' : registryUnavailableReason();

interface Summary {
  manifest: string;
  layers: { sourceDigest: string; digest: string; size: number; mediaType: string; transfer: string }[];
}
interface Manifest {
  config: { digest: string };
  layers: { mediaType: string; digest: string; size: number; annotations: Record<string, string> }[];
}

async function blobPath(layout: string, digest: string) {
  return join(layout, 'blobs', 'sha256', digest.slice(7));
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

describe('convert into OCI layouts', { skip }, () => {
  let dir: TmpDir;
  let layers: string[];
  let layout: string;
  let expected: Awaited<ReturnType<typeof snapshot>>;
  let implicitDirs: string[];
  let registry: RegistryHandle;

  before(async () => {
    dir = await tmpdir();
    const base = await generateLayers('everything', join(dir.path, 'base'));
    const top = await generateLayers('overlay', join(dir.path, 'top'));
    layers = [...base, ...top];
    const blobs = [];
    const diffIds = [];
    for (const tar of layers) {
      const bytes = await readFile(tar);
      diffIds.push(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
      blobs.push(blobOf('application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(bytes)));
    }
    layout = join(dir.path, 'source');
    await writeLayout(layout, 'v1', [imageOfBlobs(blobs, diffIds)], false);
    const expectedDir = join(dir.path, 'expected');
    ({ implicitDirs } = await buildExpected(expectedDir, layers, 'merged'));
    expected = await snapshot(expectedDir);
    registry = await startRegistry({ storageDir: join(dir.path, 'storage') });
    await skopeo([
      'copy',
      '--dest-tls-verify=false',
      `oci:${layout}:v1`,
      `docker://${registry.host}/test/src:v1`,
    ]);
  });

  after(async () => {
    await registry?.stop();
    await dir?.cleanup();
  });

  async function convert(dest: string, ...options: string[]) {
    return convertFrom(`oci:${layout}:v1`, dest, ...options);
  }

  async function convertFrom(source: string, dest: string, ...options: string[]) {
    const result = await runCli(['convert', '--quiet', '--json', ...options, source, dest]);
    assert.equal(result.status, 0, result.stderr);
    return JSON.parse(result.stdout) as Summary;
  }

  async function checkLayout(out: string, summary: Summary, zstd: boolean) {
    // skopeo reads the layout and copies it, checking every digest
    const raw = JSON.parse(await skopeo(['inspect', '--raw', `oci:${out}:erofs`])) as Manifest;
    if (!summary.manifest)
      summary.manifest = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')).manifests[0].digest;
    const manifestBytes = await readFile(await blobPath(out, summary.manifest));
    assert.equal(`sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`, summary.manifest);
    await skopeo(['copy', `oci:${out}:erofs`, `oci:${join(dir.path, `copy-${Math.random()}`)}:x`]);
    assert.equal(raw.layers.length, layers.length);
    const config = await readJson<{ rootfs: { diff_ids: string[] }; 'os.features': string[] }>(
      await blobPath(out, raw.config.digest),
    );
    assert.ok(config['os.features'].includes('erofs'));
    const images: string[] = [];
    for (const [i, layer] of raw.layers.entries()) {
      assert.equal(layer.mediaType, `application/vnd.erofs.layer.v1${zstd ? '+zstd' : ''}`);
      assert.equal(summary.layers[i]?.digest, layer.digest);
      const bytes = await readFile(await blobPath(out, layer.digest));
      const source = memorySource(bytes);
      const found = await readEmbeddedChunkIndex(source, layer);
      assert.ok(found, 'every layer has an embedded chunk index');
      const parts: Uint8Array[] = [];
      for (let c = 0; c < found.index.entries.length; c++) {
        parts.push(await readChunk(source, found.index, locateChunk(found.index, c, found.sectionOffset)));
      }
      const image = Buffer.concat(parts);
      const imagePath = join(dir.path, `layer-${Math.random()}.erofs`);
      if (zstd) {
        const viaTool = join(dir.path, `unzstd-${Math.random()}.erofs`);
        await writeFile(`${viaTool}.zst`, bytes);
        await check('zstd', ['-q', '-d', `${viaTool}.zst`, '-o', viaTool]);
        assert.ok(
          (await readFile(viaTool)).equals(image),
          'the zstd tool decompresses the blob to the image',
        );
        const sum = `sha256:${createHash('sha256').update(image).digest('hex')}`;
        assert.equal(layer.annotations['org.erofs.uncompressed-digest'], sum);
        assert.equal(config.rootfs.diff_ids[i], sum);
        await writeFile(imagePath, image);
      } else {
        assert.ok(bytes.subarray(0, image.byteLength).equals(image));
        assert.equal(config.rootfs.diff_ids[i], layer.digest);
        await writeFile(imagePath, bytes); // the blob as it is, index included, mounts
      }
      images.push(imagePath);
    }
    await withOverlay(images, async (merged) => {
      assertSameTree(expected, await snapshot(merged), { loosePaths: implicitDirs, ignoreRoot: true });
    });
  }

  it('raw layers: mountable blobs with embedded chunk indexes, the overlay equals the source', async () => {
    const out = join(dir.path, 'raw');
    const summary = await convert(`oci:${out}:erofs`);
    assert.equal(summary.layers.length, layers.length);
    assert.ok(summary.layers.every((l) => l.transfer === 'uploaded'));
    await checkLayout(out, summary, false);
    // the same source gives the same manifest, and nothing is written again
    const again = await convert(`oci:${out}:erofs`);
    assert.equal(again.manifest, summary.manifest);
    assert.ok(again.layers.every((l) => l.transfer === 'exists'));
  });

  it('oci-archive: a tar of the layout that skopeo reads and copies; nothing left beside it', async () => {
    const archiveDir = join(dir.path, 'archive');
    await mkdir(archiveDir);
    const file = join(archiveDir, 'image.tar');
    const summary = await convert(`oci-archive:${file}:erofs`);
    const raw = await skopeo(['inspect', '--raw', `oci-archive:${file}:erofs`]);
    assert.equal(`sha256:${createHash('sha256').update(raw).digest('hex')}`, summary.manifest);
    assert.deepEqual(await readdir(archiveDir), ['image.tar'], 'no work files beside the archive');
    const copy = join(dir.path, 'from-archive');
    await skopeo(['copy', `oci-archive:${file}:erofs`, `oci:${copy}:erofs`]);
    await checkLayout(copy, { ...summary, manifest: '' }, false);
    // GNU tar reads it too, and a second convert replaces it with the same bytes
    const listing = await check('tar', ['-tf', file]);
    assert.match(listing, /^oci-layout\nindex\.json\nblobs\/\nblobs\/sha256\//);
    const before = await readFile(file);
    await convert(`oci-archive:${file}:erofs`);
    assert.ok(before.equals(await readFile(file)));
  });

  it('+zstd layers: one frame per chunk, decompressed by the zstd tool', async () => {
    const out = join(dir.path, 'zstd');
    const summary = await convert(`oci:${out}:erofs`, '--compress', 'zstd:3', '--chunk-size', '100000');
    await checkLayout(out, summary, true);
  });

  it('a source layer failing its digest is exit 5 and the layout names nothing', async () => {
    const broken = join(dir.path, 'broken');
    await cp(layout, broken, { recursive: true });
    const index = await readJson<{ manifests: { digest: string }[] }>(join(broken, 'index.json'));
    const manifest = await readJson<Manifest>(await blobPath(broken, index.manifests[0]?.digest ?? ''));
    const blob = await blobPath(broken, manifest.layers[1]?.digest ?? '');
    const bytes = await readFile(blob);
    bytes[bytes.length - 20] = (bytes[bytes.length - 20] ?? 0) ^ 1;
    await writeFile(blob, bytes);
    const out = join(dir.path, 'broken-out');
    await mkdir(out);
    const result = await runCli(['convert', '--quiet', `oci:${broken}:v1`, `oci:${out}:erofs`]);
    assert.equal(result.status, 5, result.stderr);
    await assert.rejects(readFile(join(out, 'index.json')), 'no index.json names a half-converted image');
  });

  it('pushes to a registry: skopeo copies it back, every layer and the overlay check out; again: nothing uploaded', async () => {
    const src = `${registry.host}/test/src:v1`;
    const dest = `${registry.host}/test/src:erofs`;
    const summary = await convertFrom(src, dest, '--insecure', '--compress', 'zstd');
    assert.ok(
      summary.layers.every((l) => l.transfer === 'uploaded'),
      JSON.stringify(summary.layers),
    );
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${dest}`]);
    assert.equal(`sha256:${createHash('sha256').update(raw).digest('hex')}`, summary.manifest);
    const copy = join(dir.path, 'pulled');
    await skopeo(['copy', '--src-tls-verify=false', `docker://${dest}`, `oci:${copy}:erofs`]);
    await checkLayout(copy, { ...summary, manifest: '' }, true);
    const again = await convertFrom(src, dest, '--insecure', '--compress', 'zstd');
    assert.equal(again.manifest, summary.manifest);
    assert.ok(
      again.layers.every((l) => l.transfer === 'exists'),
      JSON.stringify(again.layers),
    );
    // into another repository of the same registry: every blob is mounted from the source repository
    const other = await convertFrom(
      src,
      `${registry.host}/test/other:erofs`,
      '--insecure',
      '--compress',
      'zstd',
    );
    assert.equal(other.manifest, summary.manifest);
    assert.ok(
      other.layers.every((l) => l.transfer === 'mounted'),
      JSON.stringify(other.layers),
    );
    await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/test/other:erofs`]);
  });

  it('push refused (401) is exit 4 and no tag is written', async () => {
    const proxy = await startFaultProxy(registry.url);
    try {
      proxy.addRule({ path: /\/blobs\/uploads\//, method: 'POST', fault: { kind: 'status', status: 401 } });
      const dest = `${proxy.host}/test/denied:erofs`;
      const result = await runCli(['convert', '--quiet', '--insecure', `oci:${layout}:v1`, dest]);
      assert.equal(result.status, 4, result.stderr);
      const tag = await fetch(`${registry.url}/v2/test/denied/manifests/erofs`, { method: 'HEAD' });
      assert.equal(tag.status, 404, 'no tag names the half-pushed image');
    } finally {
      await proxy.stop();
    }
  });

  it('erofs-oci mount of the pushed (raw) image equals the source', async () => {
    const dest = `${registry.host}/test/src:erofs-raw`;
    await convertFrom(`${registry.host}/test/src:v1`, dest, '--insecure');
    const env = { ...process.env, EROFS_OCI_STATE_DIR: join(dir.path, 'state') };
    const mnt = join(dir.path, 'mnt');
    await mkdir(mnt);
    const mounted = await runCli(['mount', '--insecure', dest, mnt], { env });
    assert.equal(mounted.status, 0, mounted.stderr);
    try {
      assertSameTree(expected, await snapshot(mnt), { loosePaths: implicitDirs, ignoreRoot: true });
    } finally {
      const unmounted = await runCli(['umount', mnt], { env });
      assert.equal(unmounted.status, 0, unmounted.stderr);
    }
  });
});
