/**
 * A `+zstd` EROFS layer without a chunk index cannot be read lazily (its frames cannot be found without
 * one): it is downloaded once (the blob digest checked by the image source), decompressed into a private
 * file (0600, in the disk cache or $TMPDIR, unlinked once open) while the decompressed bytes are hashed,
 * and checked against `org.erofs.uncompressed-digest` (erofs-image-spec §3.4, §5.2) before anything is
 * served. The log says it is not lazy.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ANNOTATION_UNCOMPRESSED_DIGEST } from '../chunk-index/format.ts';
import { ErofsOciError } from '../errors.ts';
import { decompress } from '../io/decompress.ts';
import { type FileSource, openFileSource } from '../io/file-source.ts';
import type { ImageSource, LayerDescriptor } from '../oci/index.ts';
import type { DeviceOptions } from './device.ts';

export async function openWholeZstdLayer(
  image: ImageSource,
  layer: LayerDescriptor,
  options: DeviceOptions,
): Promise<{ source: FileSource; close(): Promise<void> }> {
  const pinned = layer.annotations?.[ANNOTATION_UNCOMPRESSED_DIGEST];
  if (pinned === undefined || !pinned.startsWith('sha256:')) {
    throw new ErofsOciError(
      'unsupported',
      `layer ${layer.digest} is +zstd without a chunk index or a sha256 ${ANNOTATION_UNCOMPRESSED_DIGEST}: its decompressed bytes cannot be verified`,
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
        `layer ${layer.digest}: its decompressed image is ${actual}, ${ANNOTATION_UNCOMPRESSED_DIGEST} says ${pinned}`,
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
