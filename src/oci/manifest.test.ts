import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import { parseManifest } from './manifest.ts';
import { layerFormat, MediaType, tryLayerFormat } from './media-types.ts';

const D = (n: number) => `sha256:${String(n).repeat(64).slice(0, 64)}`;
const json = (value: unknown) => Buffer.from(JSON.stringify(value));
const config = { mediaType: MediaType.ociConfig, digest: D(1), size: 10 };
const layer = { mediaType: MediaType.ociLayerGzip, digest: D(2), size: 20 };

describe('parseManifest', () => {
  it('reads OCI and Docker manifests by their mediaType', () => {
    for (const mediaType of [MediaType.ociManifest, MediaType.dockerManifest]) {
      const parsed = parseManifest(json({ schemaVersion: 2, mediaType, config, layers: [layer] }), 'm');
      assert.equal(parsed.kind, 'image');
      assert.equal(parsed.mediaType, mediaType);
    }
  });

  it('reads OCI indexes and Docker manifest lists with platforms', () => {
    for (const mediaType of [MediaType.ociIndex, MediaType.dockerManifestList]) {
      const parsed = parseManifest(
        json({
          schemaVersion: 2,
          mediaType,
          manifests: [
            {
              mediaType: MediaType.ociManifest,
              digest: D(3),
              size: 5,
              platform: { os: 'linux', architecture: 'arm', variant: 'v7' },
            },
          ],
        }),
        'i',
      );
      assert.ok(parsed.kind === 'index');
      assert.deepEqual(parsed.manifests[0]?.platform, { os: 'linux', architecture: 'arm', variant: 'v7' });
    }
  });

  it('judges documents without mediaType by the content type hint, else by shape', () => {
    const image = json({ schemaVersion: 2, config, layers: [layer] });
    assert.equal(parseManifest(image, 'm').mediaType, MediaType.ociManifest);
    assert.equal(
      parseManifest(image, 'm', `${MediaType.dockerManifest}; charset=utf-8`).mediaType,
      MediaType.dockerManifest,
    );
    assert.equal(parseManifest(image, 'm', 'application/json').mediaType, MediaType.ociManifest);
    assert.equal(parseManifest(json({ schemaVersion: 2, manifests: [] }), 'i').kind, 'index');
  });

  it('refuses Docker schema 1 with an unsupported error', () => {
    for (const document of [
      { schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] },
      { schemaVersion: 2, mediaType: MediaType.dockerSchema1Signed },
    ]) {
      assert.throws(
        () => parseManifest(json(document), 'manifest of x'),
        (error) =>
          isErofsOciError(error, 'unsupported') &&
          /Docker schema 1 manifests are not supported/.test(error.message),
      );
    }
  });

  it('reports corrupt documents precisely', () => {
    const cases: [unknown, RegExp][] = [
      [
        { schemaVersion: 2, config, layers: [{ ...layer, digest: 'sha256:zz' }] },
        /m layers\[0\]: descriptor digest "sha256:zz" is not valid/,
      ],
      [{ schemaVersion: 2, config, layers: [{ ...layer, size: -1 }] }, /invalid size -1/],
      [{ schemaVersion: 3, config, layers: [] }, /schemaVersion is 3, expected 2/],
      [{ schemaVersion: 2 }, /neither manifests nor config and layers/],
      [[1], /not a JSON object/],
    ];
    for (const [document, message] of cases) {
      assert.throws(
        () => parseManifest(json(document), 'm'),
        (error) => isErofsOciError(error, 'corrupt') && message.test(error.message),
      );
    }
    assert.throws(() => parseManifest(Buffer.from('{'), 'm'), /not valid JSON/);
  });

  it('refuses a non-image media type', () => {
    assert.throws(
      () =>
        parseManifest(
          json({
            schemaVersion: 2,
            mediaType: 'application/vnd.cncf.helm.config.v1+json',
            config,
            layers: [],
          }),
          'm',
        ),
      (error) => isErofsOciError(error, 'unsupported'),
    );
  });
});

describe('layerFormat', () => {
  it('knows tar layers in every compression and EROFS layers', () => {
    assert.deepEqual(layerFormat(MediaType.ociLayerTar), { kind: 'tar', compression: 'none' });
    assert.deepEqual(layerFormat(MediaType.ociLayerGzip), { kind: 'tar', compression: 'gzip' });
    assert.deepEqual(layerFormat(MediaType.ociLayerZstd), { kind: 'tar', compression: 'zstd' });
    assert.deepEqual(layerFormat(MediaType.dockerLayerGzip), { kind: 'tar', compression: 'gzip' });
    assert.deepEqual(layerFormat('application/vnd.erofs.layer.v1'), { kind: 'erofs', compression: 'none' });
    assert.deepEqual(layerFormat('application/vnd.erofs.layer.v1+zstd'), {
      kind: 'erofs',
      compression: 'zstd',
    });
    assert.deepEqual(layerFormat('application/vnd.erofs'), { kind: 'erofs', compression: 'none' });
    assert.deepEqual(layerFormat('application/vnd.example.image.erofs'), {
      kind: 'erofs',
      compression: 'none',
    });
  });
  it('names an unknown type in an unsupported error', () => {
    assert.equal(tryLayerFormat('application/x-foo'), undefined);
    assert.throws(
      () => layerFormat('application/x-foo', 'layer 2'),
      (error) =>
        isErofsOciError(error, 'unsupported') &&
        error.message === 'Cannot use layer 2: media type "application/x-foo" is not supported',
    );
  });
});
