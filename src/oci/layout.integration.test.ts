/**
 * Local image sources: OCI layouts we write ourselves and the layouts and archives skopeo writes from them
 * (`oci:`, `oci-archive:`, `docker-archive:`, also gzip-compressed).
 */
import assert from 'node:assert/strict';
import { copyFile, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gunzipSync, gzipSync } from 'node:zlib';
import { registryUnavailableReason, skopeo } from '../../test-support/registry.ts';
import { createFixtures, type Fixtures } from '../../test-support/registry-fixtures.ts';
import { exitStatusFor, isErofsOciError } from '../errors.ts';
import { blobByteSource, type ImageSource, isRangeReader, readBlob, readConfig } from './image.ts';
import { type OpenImageSourceOptions, openImageSource } from './source.ts';

const skip = registryUnavailableReason();
let fixtures: Fixtures;
const opened: ImageSource[] = [];

async function open(ref: string, options: OpenImageSourceOptions = {}): Promise<ImageSource> {
  const image = await openImageSource(ref, options);
  opened.push(image);
  return image;
}

/** Every layer's bytes, verified by the stream. */
async function layerBytes(image: ImageSource): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const layer of await image.layers()) out.push(Buffer.from(await readBlob(image, layer)));
  return out;
}

async function tempEntries(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((name) => name.startsWith('erofs-oci-archive-'));
}

describe('local layouts (integration)', { skip, timeout: 300_000 }, () => {
  before(async () => {
    fixtures = await createFixtures();
  });
  after(async () => {
    await Promise.all(opened.map((image) => image.close()));
    await fixtures?.cleanup();
  });

  it('opens an OCI layout by tag, by digest, and alone without a tag', async () => {
    const { dir, root, images } = fixtures.simple;
    const expected = images[0]!.layers.map((layer) => layer.bytes);
    for (const ref of [`oci:${dir}:v1`, `oci:${dir}@${root.digest}`, `oci:${dir}`]) {
      const image = await open(ref);
      assert.equal((await image.manifest()).digest, root.digest, ref);
      assert.deepEqual(await layerBytes(image), expected, ref);
      assert.equal((await readConfig(image)).architecture, 'amd64');
    }
  });

  it('selects a platform from a layout holding an index', async () => {
    const image = await open(`oci:${fixtures.multi.dir}:v1`, { platform: 'linux/arm/v7' });
    assert.equal((await image.manifest()).digest, fixtures.multi.images[2]!.manifest.digest);
    await assert.rejects(
      (await open(`oci:${fixtures.multi.dir}:v1`, { platform: 'windows/amd64' })).layers(),
      (error) =>
        isErofsOciError(error, 'not-found') &&
        /it offers linux\/amd64, linux\/arm64\/v8, linux\/arm\/v7/.test(error.message),
    );
  });

  it('reports an unknown tag listing the tags, and a directory that is no layout', async () => {
    await assert.rejects(
      (await open(`oci:${fixtures.simple.dir}:v2`)).manifest(),
      (error) =>
        isErofsOciError(error, 'not-found') &&
        error.message === `Cannot find tag v2 in oci:${fixtures.simple.dir}: it has v1`,
    );
    await assert.rejects(
      (await open(`oci:${fixtures.workDir}`)).manifest(),
      (error) => isErofsOciError(error, 'not-found') && /no oci-layout file/.test(error.message),
    );
    await assert.rejects(open(`oci:${join(fixtures.workDir, 'missing')}`), (error) =>
      isErofsOciError(error, 'not-found'),
    );
  });

  it('opens an oci-archive written by skopeo --all in place, with platform selection', async () => {
    const archive = join(fixtures.workDir, 'multi.tar');
    await skopeo(['copy', '--quiet', '--all', `oci:${fixtures.multi.dir}:v1`, `oci-archive:${archive}:v1`]);
    const image = await open(`oci-archive:${archive}:v1`, { platform: 'linux/arm64' });
    assert.equal((await image.manifest()).digest, fixtures.multi.images[1]!.manifest.digest);
    assert.deepEqual(await layerBytes(image), [fixtures.multi.images[1]!.layers[0]!.bytes]);
    assert.ok(isRangeReader(image));
    const layer = (await image.layers())[0]!;
    const part = await blobByteSource(image, layer).read(3, 20);
    assert.ok(Buffer.from(part).equals(fixtures.multi.images[1]!.layers[0]!.bytes.subarray(3, 23)));
  });

  it('opens docker save style archives (skopeo docker-archive), also gzip-compressed', async () => {
    const archive = join(fixtures.workDir, 'docker.tar');
    await skopeo([
      'copy',
      '--quiet',
      `oci:${fixtures.docker.dir}:v1`,
      `docker-archive:${archive}:test/docker:v1`,
    ]);
    // skopeo stores docker-archive layers uncompressed: compare with the fixture layers decompressed.
    const expected = fixtures.docker.images[0]!.layers.map((layer) => gunzipSync(layer.bytes));

    const image = await open(`docker-archive:${archive}`);
    assert.equal((await image.manifest()).mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const layers = await image.layers();
    assert.deepEqual(
      layers.map((layer) => layer.format),
      [
        { kind: 'tar', compression: 'none' },
        { kind: 'tar', compression: 'none' },
      ],
    );
    assert.deepEqual(await layerBytes(image), expected);
    assert.equal((await readConfig(image)).os, 'linux');
    const byTag = await open(`docker-archive:${archive}:test/docker:v1`);
    assert.equal((await byTag.manifest()).digest, (await image.manifest()).digest);
    await assert.rejects(
      open(`docker-archive:${archive}:other:v1`),
      (error) => isErofsOciError(error, 'not-found') && /it has .*test\/docker:v1/.test(error.message),
    );

    const compressed = join(fixtures.workDir, 'docker.tar.gz');
    await writeFile(compressed, gzipSync(await readFile(archive)));
    const before = await tempEntries();
    const fromGzip = await openImageSource(`docker-archive:${compressed}`);
    try {
      assert.deepEqual(await layerBytes(fromGzip), expected);
      assert.equal((await tempEntries()).length, before.length + 1, 'decompressed into a private temp dir');
    } finally {
      await fromGzip.close();
    }
    assert.deepEqual(await tempEntries(), before, 'the temp dir is removed on close');
  });

  it('fails with digest-mismatch when a layout blob is corrupted', async () => {
    const layer = fixtures.docker.images[0]!.layers[0]!;
    const blob = join(fixtures.docker.dir, 'blobs', 'sha256', layer.digest.slice(7));
    const saved = join(fixtures.workDir, 'saved-blob');
    await copyFile(blob, saved);
    const bytes = Buffer.from(layer.bytes);
    bytes[bytes.length - 3]! ^= 0x01;
    await writeFile(blob, bytes);
    try {
      const image = await open(`oci:${fixtures.docker.dir}:v1`);
      await assert.rejects(readBlob(image, (await image.layers())[0]!), (error) => {
        assert.ok(isErofsOciError(error, 'digest-mismatch'), String(error));
        assert.match(error.message, /its content has digest sha256:/);
        assert.equal(exitStatusFor(error), 5);
        return true;
      });
      await writeFile(blob, bytes.subarray(1));
      await assert.rejects(
        readBlob(image, (await image.layers())[0]!),
        (error) =>
          isErofsOciError(error, 'digest-mismatch') &&
          /the file has \d+ bytes, its descriptor declares/.test(error.message),
      );
    } finally {
      await copyFile(saved, blob);
    }
  });
});
