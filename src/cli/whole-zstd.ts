/**
 * A `+zstd` EROFS layer without a chunk index cannot be read lazily (its frames cannot be found without
 * one): it is downloaded once (the blob digest checked by the image source), decompressed into a private
 * file (0600, in the disk cache or $TMPDIR, unlinked once open) while the decompressed bytes are hashed,
 * and checked against `org.erofs.uncompressed-digest`, or without it the config's `rootfs.diff_ids` entry
 * (erofs-image-spec §3.4, §5.2; the config is pinned by the manifest), before anything is served. The log
 * says it is not lazy.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ANNOTATION_UNCOMPRESSED_DIGEST } from '../chunk-index/format.ts';
import { ErofsOciError } from '../errors.ts';
import { decompress } from '../io/decompress.ts';
import { type FileSource, openFileSource } from '../io/file-source.ts';
import { type ImageSource, type LayerDescriptor, readConfig } from '../oci/index.ts';
import type { DeviceOptions } from './device.ts';

export async function openWholeZstdLayer(
  image: ImageSource,
  layer: LayerDescriptor,
  options: DeviceOptions,
): Promise<{ source: FileSource; close(): Promise<void> }> {
  const { digest: pinned, from } = await uncompressedDigest(image, layer, options.signal);
  if (pinned === undefined || !pinned.startsWith('sha256:')) {
    throw new ErofsOciError(
      'unsupported',
      `layer ${layer.digest} is +zstd without a chunk index, a sha256 ${ANNOTATION_UNCOMPRESSED_DIGEST} or a sha256 diff_id: its decompressed bytes cannot be verified`,
      { hint: 'convert the image with erofs-oci convert --compress zstd, which writes both' },
    );
  }
  options.log?.(
    `layer ${layer.digest} of ${image.name} is +zstd without a chunk index: not lazy, fetching all ${layer.size} bytes and decompressing them before the mount`,
  );
  const dir = options.cacheDir ?? tmpdir();
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, `.zstd-${randomBytes(6).toString('hex')}.tmp`);
  const hash = createHash('sha256');
  const out = await open(path, 'wx', 0o600);
  let source: FileSource | undefined;
  try {
    let position = 0;
    const blob = image.openBlob(layer, options.signal === undefined ? {} : { signal: options.signal });
    for await (const chunk of decompress(blob, {
      compression: 'zstd',
      ...(options.signal ? { signal: options.signal } : {}),
    })) {
      hash.update(chunk);
      await out.write(chunk, 0, chunk.byteLength, position);
      position += chunk.byteLength;
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== pinned) {
      throw new ErofsOciError(
        'digest-mismatch',
        `layer ${layer.digest}: its decompressed image is ${actual}, ${from} says ${pinned}`,
      );
    }
    source = await openFileSource(path);
  } finally {
    await out.close();
    await rm(path, { force: true });
  }
  const opened = source;
  return { source: opened, close: () => opened.close() };
}

/**
 * The layer's uncompressed digest: its annotation, else its `rootfs.diff_ids` entry (§5.2 item 2), found by
 * the layer's position in the manifest (a layer described without its manifest, as the serving process of
 * a mount gets it, is looked up in the image by digest).
 */
async function uncompressedDigest(
  image: ImageSource,
  layer: LayerDescriptor,
  signal: AbortSignal | undefined,
): Promise<{ digest: string | undefined; from: string }> {
  const annotated = layer.annotations?.[ANNOTATION_UNCOMPRESSED_DIGEST];
  if (annotated !== undefined) return { digest: annotated, from: ANNOTATION_UNCOMPRESSED_DIGEST };
  const options = signal === undefined ? {} : { signal };
  const position =
    layer.manifestIndex ??
    (await image.layers(options)).find((l) => l.digest === layer.digest)?.manifestIndex;
  const from = `the config's rootfs.diff_ids[${position}]`;
  if (position === undefined) return { digest: undefined, from };
  const rootfs = (await readConfig(image, options)).rootfs as { diff_ids?: unknown } | undefined;
  const diffId = Array.isArray(rootfs?.diff_ids) ? rootfs.diff_ids[position] : undefined;
  return { digest: typeof diffId === 'string' ? diffId : undefined, from };
}
