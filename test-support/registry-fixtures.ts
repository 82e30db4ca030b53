/**
 * Fixture images for the registry tests, generated at run time: layer tarballs made with GNU tar from small
 * directory trees, compressed with gzip or zstd, written as OCI image layouts (blobs, config, manifest,
 * index), then pushed into a registry with `skopeo copy` — as OCI and as Docker schema 2 (`--format v2s2`),
 * single images and a multi-platform index — plus a few oddities (no `mediaType`, EROFS and unknown layer
 * types) pushed with plain HTTP requests, since no tool writes them.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { skopeo, startRegistry, tempDir } from './registry.ts';

const run = promisify(execFile);

export interface Blob {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly bytes: Buffer;
}

export interface FixtureImage {
  readonly platform: { os: string; architecture: string; variant?: string };
  readonly config: Blob;
  readonly layers: Blob[];
  readonly manifest: Blob;
}

export interface FixtureLayout {
  readonly dir: string;
  readonly tag: string;
  /** The manifest or index index.json points to. */
  readonly root: Blob;
  readonly images: FixtureImage[];
}

export function blobOf(mediaType: string, bytes: Buffer): Blob {
  return {
    mediaType,
    digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`,
    size: bytes.byteLength,
    bytes,
  };
}

function descriptor(blob: Blob, extra: Record<string, unknown> = {}) {
  return { mediaType: blob.mediaType, digest: blob.digest, size: blob.size, ...extra };
}

/** A tar of `files` (path → content) made by GNU tar, reproducibly. */
export async function makeTar(files: Record<string, string | Buffer>): Promise<Buffer> {
  const root = await tempDir('tar-src');
  try {
    for (const [path, content] of Object.entries(files)) {
      await mkdir(dirname(join(root, path)), { recursive: true });
      await writeFile(join(root, path), content);
    }
    const { stdout } = await run(
      'tar',
      [
        '-C',
        root,
        '--sort=name',
        '--owner=0',
        '--group=0',
        '--numeric-owner',
        '--mtime=@0',
        '--format=gnu',
        '-cf',
        '-',
        '.',
      ],
      { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 },
    );
    return stdout;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

export type LayerCompression = 'gzip' | 'zstd' | 'none';

export async function makeLayer(
  files: Record<string, string | Buffer>,
  compression: LayerCompression,
): Promise<{ blob: Blob; diffId: string }> {
  const tar = await makeTar(files);
  const diffId = blobOf('', tar).digest;
  if (compression === 'gzip')
    return { blob: blobOf('application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(tar)), diffId };
  if (compression === 'zstd')
    return { blob: blobOf('application/vnd.oci.image.layer.v1.tar+zstd', zstdCompressSync(tar)), diffId };
  return { blob: blobOf('application/vnd.oci.image.layer.v1.tar', tar), diffId };
}

export async function makeImage(
  platform: FixtureImage['platform'],
  layerSpecs: { files: Record<string, string | Buffer>; compression: LayerCompression }[],
): Promise<FixtureImage> {
  const layers: Blob[] = [];
  const diffIds: string[] = [];
  for (const spec of layerSpecs) {
    const { blob, diffId } = await makeLayer(spec.files, spec.compression);
    layers.push(blob);
    diffIds.push(diffId);
  }
  return imageOfBlobs(layers, diffIds, platform);
}

/**
 * An OCI image (config and manifest) over ready layer blobs, bottom first. `diffIds` default to the blobs'
 * own digests (right for uncompressed and EROFS layers).
 */
export function imageOfBlobs(
  layers: Blob[],
  diffIds: string[] = layers.map((layer) => layer.digest),
  platform: FixtureImage['platform'] = { os: 'linux', architecture: 'amd64' },
): FixtureImage {
  const config = blobOf(
    'application/vnd.oci.image.config.v1+json',
    Buffer.from(
      JSON.stringify({
        created: '1970-01-01T00:00:00Z',
        ...platform,
        config: { Cmd: ['/bin/sh'] },
        rootfs: { type: 'layers', diff_ids: diffIds },
      }),
    ),
  );
  const manifest = blobOf(
    'application/vnd.oci.image.manifest.v1+json',
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: descriptor(config),
        layers: layers.map((layer) => descriptor(layer)),
      }),
    ),
  );
  return { platform, config, layers, manifest };
}

export function makeIndex(images: FixtureImage[]): Blob {
  return blobOf(
    'application/vnd.oci.image.index.v1+json',
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: images.map((image) => descriptor(image.manifest, { platform: image.platform })),
      }),
    ),
  );
}

/** Writes an OCI image layout holding `images` (an index over them when `asIndex`). */
export async function writeLayout(
  dir: string,
  tag: string,
  images: FixtureImage[],
  asIndex: boolean,
): Promise<FixtureLayout> {
  const blobs = new Map<string, Blob>();
  for (const image of images)
    for (const blob of [image.config, image.manifest, ...image.layers]) blobs.set(blob.digest, blob);
  const root = asIndex ? makeIndex(images) : images[0]!.manifest;
  blobs.set(root.digest, root);
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  for (const blob of blobs.values())
    await writeFile(join(dir, 'blobs', 'sha256', blob.digest.slice(7)), blob.bytes);
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [descriptor(root, { annotations: { 'org.opencontainers.image.ref.name': tag } })],
    }),
  );
  return { dir, tag, root, images };
}

/** Pushes a blob and a manifest with plain HTTP (no auth), for documents no tool would write. */
export async function pushRaw(
  registryUrl: string,
  repository: string,
  tag: string,
  blobs: Blob[],
  manifest: Buffer,
  contentType: string,
): Promise<void> {
  for (const blob of blobs) {
    const start = await fetch(`${registryUrl}/v2/${repository}/blobs/uploads/`, { method: 'POST' });
    if (start.status !== 202) throw new Error(`blob upload start: HTTP ${start.status}`);
    const location = new URL(start.headers.get('location') ?? '', registryUrl);
    location.searchParams.set('digest', blob.digest);
    const put = await fetch(location, {
      method: 'PUT',
      body: blob.bytes,
      headers: { 'content-type': 'application/octet-stream' },
    });
    if (put.status !== 201)
      throw new Error(`blob upload ${blob.digest}: HTTP ${put.status} ${await put.text()}`);
  }
  const put = await fetch(`${registryUrl}/v2/${repository}/manifests/${tag}`, {
    method: 'PUT',
    body: manifest,
    headers: { 'content-type': contentType },
  });
  if (put.status !== 201)
    throw new Error(`manifest PUT ${repository}:${tag}: HTTP ${put.status} ${await put.text()}`);
}

export interface Fixtures {
  /** Registry storage holding every fixture repository. */
  readonly storageDir: string;
  readonly workDir: string;
  /** `test/simple:v1`, OCI: a gzip and a zstd layer. */
  readonly simple: FixtureLayout;
  /** `test/docker:v1`, pushed as Docker schema 2; `test/docker-oci:v1` the same image as OCI. */
  readonly docker: FixtureLayout;
  /** `test/multi:v1` OCI index and `test/multi-docker:v1` Docker manifest list: amd64, arm64/v8, arm/v7. */
  readonly multi: FixtureLayout;
  /** `test/big:v1`: one ~3 MiB incompressible gzip layer, for interrupted downloads. */
  readonly big: FixtureLayout;
  /** `test/nomediatype:v1`: the simple image's manifest without `mediaType`. */
  readonly noMediaType: Blob;
  /** `test/erofs:v1`: a layer typed `application/vnd.erofs.layer.v1`; `test/weird:v1` a layer of an unknown type. */
  readonly erofsLayer: Blob;
  readonly weirdLayer: Blob;
  /** Every blob by digest, to compare what the client downloads. */
  readonly blobs: Map<string, Blob>;
  cleanup(): Promise<void>;
}

export const MULTI_PLATFORMS = [
  { os: 'linux', architecture: 'amd64' },
  { os: 'linux', architecture: 'arm64', variant: 'v8' },
  { os: 'linux', architecture: 'arm', variant: 'v7' },
];

/** Generates the fixture layouts and pushes them into fresh registry storage (a plain-HTTP registry does the pushing). */
export async function createFixtures(): Promise<Fixtures> {
  const workDir = await tempDir('fixtures');
  const storageDir = join(workDir, 'storage');
  await mkdir(storageDir);
  const host = { os: 'linux', architecture: 'amd64' };

  const simpleImage = await makeImage(host, [
    { files: { 'hello.txt': 'hello from gzip\n', 'dir/a.txt': 'a\n' }, compression: 'gzip' },
    { files: { 'zstd.txt': 'hello from zstd\n' }, compression: 'zstd' },
  ]);
  const simple = await writeLayout(join(workDir, 'simple'), 'v1', [simpleImage], false);
  const dockerImage = await makeImage(host, [
    { files: { 'one.txt': 'one\n' }, compression: 'gzip' },
    { files: { 'two.txt': 'two\n' }, compression: 'gzip' },
  ]);
  const docker = await writeLayout(join(workDir, 'docker'), 'v1', [dockerImage], false);
  const multiImages: FixtureImage[] = [];
  for (const platform of MULTI_PLATFORMS) {
    const name = [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
    multiImages.push(
      await makeImage(platform, [{ files: { 'platform.txt': `${name}\n` }, compression: 'gzip' }]),
    );
  }
  const multi = await writeLayout(join(workDir, 'multi'), 'v1', multiImages, true);
  const bigImage = await makeImage(host, [
    { files: { 'random.bin': randomBytes(3 * 1024 * 1024) }, compression: 'gzip' },
  ]);
  const big = await writeLayout(join(workDir, 'big'), 'v1', [bigImage], false);

  const registry = await startRegistry({ storageDir });
  try {
    const dest = (repo: string) => `docker://${registry.host}/${repo}:v1`;
    const copy = (args: string[]) => skopeo(['copy', '--quiet', '--dest-tls-verify=false', ...args]);
    await copy([`oci:${simple.dir}:v1`, dest('test/simple')]);
    await copy(['--format', 'v2s2', `oci:${docker.dir}:v1`, dest('test/docker')]);
    await copy([`oci:${docker.dir}:v1`, dest('test/docker-oci')]);
    await copy(['--all', `oci:${multi.dir}:v1`, dest('test/multi')]);
    await copy(['--all', '--format', 'v2s2', `oci:${multi.dir}:v1`, dest('test/multi-docker')]);
    await copy([`oci:${big.dir}:v1`, dest('test/big')]);

    const noMediaType = blobOf(
      '',
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          config: descriptor(simpleImage.config),
          layers: simpleImage.layers.map((layer) => descriptor(layer)),
        }),
      ),
    );
    await pushRaw(
      registry.url,
      'test/nomediatype',
      'v1',
      [simpleImage.config, ...simpleImage.layers],
      noMediaType.bytes,
      'application/vnd.oci.image.manifest.v1+json',
    );

    const erofsLayer = blobOf('application/vnd.erofs.layer.v1', randomBytes(8192));
    const weirdLayer = blobOf('application/x-made-up-layer', randomBytes(100));
    for (const [repo, layer] of [
      ['test/erofs', erofsLayer],
      ['test/weird', weirdLayer],
    ] as const) {
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: descriptor(simpleImage.config),
          layers: [descriptor(layer)],
        }),
      );
      await pushRaw(
        registry.url,
        repo,
        'v1',
        [simpleImage.config, layer],
        manifest,
        'application/vnd.oci.image.manifest.v1+json',
      );
    }

    const blobs = new Map<string, Blob>();
    for (const layout of [simple, docker, multi, big]) {
      for (const image of layout.images)
        for (const blob of [image.config, ...image.layers]) blobs.set(blob.digest, blob);
    }
    for (const blob of [erofsLayer, weirdLayer]) blobs.set(blob.digest, blob);
    return {
      storageDir,
      workDir,
      simple,
      docker,
      multi,
      big,
      noMediaType,
      erofsLayer,
      weirdLayer,
      blobs,
      cleanup: () => rm(workDir, { recursive: true, force: true }),
    };
  } finally {
    await registry.stop();
  }
}
