/**
 * `convert --all-platforms` and `--with-source` on a multi-platform index (three platforms and a buildx-style
 * attestation entry): the output index as skopeo reads it, every EROFS entry marked `erofs` in
 * `os.features`, every platform's layer mounted by the kernel with its own content; `--with-source` lists
 * the source's manifests first and DEST holds all their blobs (skopeo copy --all verifies every digest).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isRoot, runCli, type TmpDir, tmpdir, withMount } from '../../test-support/kernel.ts';
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
  MULTI_PLATFORMS,
  makeImage,
  writeLayout,
} from '../../test-support/registry-fixtures.ts';

const skip = !isRoot() ? 'needs root to mount images' : registryUnavailableReason();

interface IndexDocument {
  mediaType: string;
  manifests: {
    mediaType: string;
    digest: string;
    platform?: { os: string; architecture: string; variant?: string; 'os.features'?: string[] };
  }[];
}

const nameOf = (p: { os: string; architecture: string; variant?: string }) =>
  [p.os, p.architecture, p.variant].filter(Boolean).join('/');

describe('convert of a multi-platform index', { skip }, () => {
  let dir: TmpDir;
  let layout: string;
  let images: FixtureImage[];
  let registry: RegistryHandle;

  before(async () => {
    dir = await tmpdir();
    images = [];
    for (const platform of MULTI_PLATFORMS) {
      images.push(
        await makeImage(platform, [
          { files: { 'base.txt': 'shared base\n' }, compression: 'gzip' },
          { files: { 'platform.txt': `${nameOf(platform)}\n` }, compression: 'gzip' },
        ]),
      );
    }
    // An attestation manifest as buildx writes them: not an image of any platform, not a tar layer.
    const statement = blobOf('application/vnd.in-toto+json', Buffer.from('{"_type":"statement"}'));
    images.push(imageOfBlobs([statement], [statement.digest], { os: 'unknown', architecture: 'unknown' }));
    layout = join(dir.path, 'multi');
    await writeLayout(layout, 'v1', images, true);
    registry = await startRegistry({ storageDir: join(dir.path, 'storage') });
  });

  after(async () => {
    await registry?.stop();
    await dir?.cleanup();
  });

  async function convert(dest: string, ...options: string[]) {
    const result = await runCli(['convert', '--quiet', '--json', ...options, `oci:${layout}:v1`, dest]);
    assert.equal(result.status, 0, result.stderr);
    return JSON.parse(result.stdout) as {
      manifest: string;
      mediaType: string;
      images: { platform: { architecture: string }; manifest: string }[];
    };
  }

  /** Every EROFS entry: `erofs` in os.features, each layer mounts, platform.txt names the platform. */
  async function checkErofsEntries(out: string, index: IndexDocument) {
    const erofs = index.manifests.filter((m) => m.platform?.['os.features']?.includes('erofs'));
    assert.deepEqual(
      erofs.map((m) => nameOf(m.platform!)),
      MULTI_PLATFORMS.map(nameOf),
    );
    for (const entry of erofs) {
      const manifest = JSON.parse(
        await readFile(join(out, 'blobs', 'sha256', entry.digest.slice(7)), 'utf8'),
      ) as { config: { digest: string }; layers: { mediaType: string; digest: string }[] };
      assert.ok(manifest.layers.every((l) => l.mediaType === 'application/vnd.erofs.layer.v1'));
      const config = JSON.parse(
        await readFile(join(out, 'blobs', 'sha256', manifest.config.digest.slice(7)), 'utf8'),
      ) as { architecture: string; 'os.features': string[] };
      assert.equal(config.architecture, entry.platform?.architecture);
      assert.ok(config['os.features'].includes('erofs'));
      const top = join(out, 'blobs', 'sha256', (manifest.layers[1]?.digest ?? '').slice(7));
      const text = await withMount(top, (mnt) => readFile(join(mnt, 'platform.txt'), 'utf8'));
      assert.equal(text, `${nameOf(entry.platform!)}\n`);
    }
  }

  it('--all-platforms: an index of every platform, attestations left out; skopeo copies it all', async () => {
    const out = join(dir.path, 'all');
    const summary = await convert(`oci:${out}:erofs`, '--all-platforms');
    assert.equal(summary.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.equal(summary.images.length, MULTI_PLATFORMS.length);
    const index = JSON.parse(await skopeo(['inspect', '--raw', `oci:${out}:erofs`])) as IndexDocument;
    assert.equal(index.manifests.length, MULTI_PLATFORMS.length);
    await checkErofsEntries(out, index);
    await skopeo(['copy', '--all', `oci:${out}:erofs`, `oci:${join(dir.path, 'all-copy')}:x`]);
    const again = await convert(`oci:${out}:erofs`, '--all-platforms');
    assert.equal(again.manifest, summary.manifest, 'reproducible');
  });

  it('--with-source --all-platforms to a registry: source manifests first, then the EROFS ones', async () => {
    const dest = `${registry.host}/test/multi:v1`;
    const summary = await convert(dest, '--insecure', '--with-source', '--all-platforms');
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${dest}`]);
    const index = JSON.parse(raw) as IndexDocument;
    assert.equal(index.manifests.length, images.length + MULTI_PLATFORMS.length);
    assert.deepEqual(
      index.manifests.slice(0, images.length).map((m) => m.digest),
      images.map((image) => image.manifest.digest),
      'the source manifests, unchanged and first',
    );
    assert.ok(summary.manifest.startsWith('sha256:'));
    const copy = join(dir.path, 'with-source-copy');
    await skopeo(['copy', '--all', '--src-tls-verify=false', `docker://${dest}`, `oci:${copy}:x`]);
    await checkErofsEntries(copy, index);
    // a plain client picking linux/arm64 takes the first match: the source's tar image
    const plain = join(dir.path, 'plain-client');
    await skopeo([
      'copy',
      '--override-arch',
      'arm64',
      '--src-tls-verify=false',
      `docker://${dest}`,
      `oci:${plain}:x`,
    ]);
    const picked = JSON.parse(await skopeo(['inspect', '--raw', `oci:${plain}:x`])) as {
      layers: { mediaType: string }[];
    };
    assert.ok(picked.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+gzip'));
  });

  it('--with-source of one platform (default: the host) into a layout', async () => {
    const out = join(dir.path, 'one');
    const summary = await convert(`oci:${out}:erofs`, '--with-source', '--platform', 'linux/arm/v7');
    assert.equal(summary.images.length, 1);
    const index = JSON.parse(await skopeo(['inspect', '--raw', `oci:${out}:erofs`])) as IndexDocument;
    assert.equal(index.manifests.length, images.length + 1);
    const last = index.manifests.at(-1);
    assert.equal(nameOf(last!.platform!), 'linux/arm/v7');
    assert.ok(last?.platform?.['os.features']?.includes('erofs'));
    await skopeo(['copy', '--all', `oci:${out}:erofs`, `oci:${join(dir.path, 'one-copy')}:x`]);
  });

  it('--all-platforms with --platform is a usage error (2)', async () => {
    const result = await runCli([
      'convert',
      '--all-platforms',
      '--platform',
      'linux/amd64',
      `oci:${layout}:v1`,
      `oci:${join(dir.path, 'x')}:y`,
    ]);
    assert.equal(result.status, 2, result.stderr);
  });
});
