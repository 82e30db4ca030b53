import assert from 'node:assert/strict';
import { it } from 'node:test';
import { foldChunkIndexLayers } from './chunk-index-layers.ts';

const digest = (c: string) => `sha256:${c.repeat(64)}`;
const erofs = (c: string) => ({
  mediaType: 'application/vnd.erofs.layer.v1+zstd',
  digest: digest(c),
  size: 100,
});
const index = (c: string, target?: string) => ({
  mediaType: 'application/vnd.erofs.chunk-index.v1',
  digest: digest(c),
  size: 80,
  ...(target === undefined ? {} : { annotations: { 'org.erofs.chunk-index.target': target } }),
});

it('standalone chunk-index entries fold into the layer before them; layer numbers count filesystem layers', () => {
  const layers = foldChunkIndexLayers(
    [erofs('a'), index('b', digest('a')), erofs('c'), index('d'), erofs('e')],
    'img',
  );
  assert.deepEqual(
    layers.map((l) => [l.digest, l.chunkIndex?.digest]),
    [
      [digest('a'), digest('b')],
      [digest('c'), digest('d')],
      [digest('e'), undefined],
    ],
  );
  assert.equal(layers[0]?.format.kind, 'erofs');
});

it('a misplaced or mistargeted chunk-index entry is a malformed manifest', () => {
  const bad = [
    [index('b'), erofs('a')],
    [erofs('a'), index('b')],
    [erofs('a'), index('b'), index('c'), erofs('d')],
    [erofs('a'), index('b', digest('f')), erofs('d')],
    [
      { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digest('a'), size: 1 },
      index('b'),
      erofs('d'),
    ],
  ];
  for (const layers of bad) {
    assert.throws(() => foldChunkIndexLayers(layers, 'img'), { code: 'corrupt' }, JSON.stringify(layers));
  }
});
