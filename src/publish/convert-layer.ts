/**
 * One source layer → one EROFS layer blob: the builder writes the layer in overlay form (as `build --layer N`
 * makes it) to a temporary image, which is then streamed through the chunk-index encoder into the blob
 * file (raw with an embedded index, or one zstd frame per chunk). Build time and volume UUID come from the
 * source (the layer's digest), so the same source gives the same blob.
 */
import { createHash } from 'node:crypto';
import { appendFile, type FileHandle, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { build } from '../builder/build.ts';
import { type ChunkedLayer, ChunkedLayerEncoder } from '../chunk-index/index.ts';
import type { BlockSize } from '../erofs/writer.ts';
import { throwIfAborted } from '../errors.ts';
import { fileError } from '../io/files.ts';
import type { Image, LayerDescriptor } from '../oci/index.ts';

export interface LayerConversionOptions {
  /** Where the temporary image and the blob are written. */
  directory: string;
  chunkSize: number;
  zstdLevel?: number | undefined;
  blockSize?: BlockSize | undefined;
  timestamp: number;
  /** Default: derived from the source layer's digest. */
  uuid?: Uint8Array | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((sourceBytes: number) => void) | undefined;
  /** The source layers below this one (bottom first): hardlinks into them are resolved by copying. */
  lowers?: readonly LayerDescriptor[];
}

export interface ConvertedLayer extends ChunkedLayer {
  readonly source: LayerDescriptor;
  /** The blob file (its name is the digest's hex in `directory`). */
  readonly path: string;
}

/** A v4-shaped UUID from the layer digest: reproducible, and distinct per layer. */
export function uuidFor(digest: string): Uint8Array {
  const bytes = new Uint8Array(
    createHash('sha256').update(`erofs-oci convert ${digest}`).digest().subarray(0, 16),
  );
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return bytes;
}

/** Rounds the chunk size up to a whole number of blocks (chunks then start on block boundaries). */
export function roundChunkSize(chunkSize: number, blockSize: number): number {
  return Math.max(blockSize, Math.ceil(chunkSize / blockSize) * blockSize);
}

export async function convertLayer(
  image: Image,
  layer: LayerDescriptor,
  options: LayerConversionOptions,
): Promise<ConvertedLayer> {
  const hex = layer.digest.replace(/^sha\d+:/, '');
  const erofsPath = join(options.directory, `${hex}.erofs`);
  const blobPath = join(options.directory, `${hex}.blob`);
  try {
    await build({
      sources: [{ kind: 'lazy', name: layer.digest, open: (signal) => image.openBlob(layer, { signal }) }],
      output: erofsPath,
      whiteouts: 'overlay',
      blockSize: options.blockSize,
      timestamp: options.timestamp,
      uuid: options.uuid ?? uuidFor(layer.digest),
      signal: options.signal,
      prefetch: 1,
      lowerLayers: (options.lowers ?? []).map((lower) => ({
        name: lower.digest,
        open: (signal) => image.openBlob(lower, { signal }),
      })),
      onProgress: options.onProgress ? (_, bytes) => options.onProgress?.(bytes) : undefined,
    });
    const encoder = new ChunkedLayerEncoder({
      chunkSize: roundChunkSize(options.chunkSize, options.blockSize ?? 4096),
      zstdLevel: options.zstdLevel,
      signal: options.signal,
    });
    const imageData = readPooled(erofsPath, options.signal);
    if (options.zstdLevel === undefined) {
      // Raw: the blob is the image with the index after it; append the index to the image file instead of
      // copying the image (the encoder's last output is the index, the rest is the image passed through).
      let last: Uint8Array | undefined;
      for await (const bytes of encoder.encode(imageData)) last = bytes;
      await appendFile(erofsPath, last as Uint8Array);
      await rename(erofsPath, blobPath);
    } else {
      const out = await open(blobPath, 'w', 0o600).catch((error) => {
        throw fileError(`Cannot create ${blobPath}`, error);
      });
      try {
        for await (const bytes of encoder.encode(imageData)) await out.write(bytes);
      } finally {
        await out.close();
      }
    }
    return { ...encoder.result, source: layer, path: blobPath };
  } catch (error) {
    await rm(blobPath, { force: true });
    throw error;
  } finally {
    await rm(erofsPath, { force: true });
  }
}

/**
 * The built image in 1 MiB reads through two rotating buffers: a fresh buffer per read is garbage for every
 * MiB of every layer. The encoder copies what it keeps (zstd) or passes each chunk on before the next read
 * (raw, whose bytes are already in the file and not kept).
 */
async function* readPooled(path: string, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    throw fileError(`Cannot open ${path}`, error);
  }
  const pool = [Buffer.allocUnsafe(1 << 20), Buffer.allocUnsafe(1 << 20)];
  try {
    for (let i = 0; ; i++) {
      throwIfAborted(signal);
      const buffer = pool[i % pool.length] as Buffer;
      const { bytesRead } = await handle.read(buffer, 0, buffer.byteLength, null);
      if (bytesRead === 0) return;
      yield buffer.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}
