/**
 * The producer side of erofs-image-spec §3.3-3.4: takes a layer's image data (an EROFS image) as a stream
 * and emits the layer blob with its chunk index embedded at the end, in one pass and bounded memory.
 * Raw layers pass the image through and append the bare index; `+zstd` layers compress every chunk into a
 * zstd frame of its own (several chunks at once on the thread pool, emitted in order) and append the index
 * in a skippable frame, 4-byte aligned by a padding skippable frame when needed. Checksums are SHA-256 (or
 * SHA-512) over each chunk's on-blob bytes.
 */
import { createHash, type Hash } from 'node:crypto';
import { promisify } from 'node:util';
import { constants, zstdCompress } from 'node:zlib';
import { throwIfAborted } from '../errors.ts';
import type { ChunkEntry, ChunkHashSize, ChunkIndex } from './codec.ts';
import { encodeChunkIndex, hashAlgorithm } from './codec.ts';
import { skippableFrame } from './embedded.ts';
import {
  ANNOTATION_CHUNK_INDEX_DIGEST,
  ANNOTATION_CHUNK_INDEX_RANGE,
  ANNOTATION_UNCOMPRESSED_DIGEST,
} from './format.ts';

const zstd = promisify(zstdCompress);

export interface ChunkedLayerOptions {
  readonly chunkSize: number;
  /** Absent: raw chunks. */
  readonly zstdLevel?: number | undefined;
  /** Default 32 (SHA-256). */
  readonly hashSize?: ChunkHashSize;
  /** zstd frames compressed at once (default 2). */
  readonly parallel?: number;
  readonly signal?: AbortSignal;
}

export interface ChunkedLayer {
  readonly blobSize: number;
  readonly blobDigest: string;
  /** SHA-256 of the image data (the decompressed stream; the blob itself for raw layers has the index too). */
  readonly imageDigest: string;
  readonly imageSize: number;
  /** The layer's DiffID (§5.2): the blob digest for raw layers, the image digest for `+zstd`. */
  readonly diffId: string;
  readonly index: ChunkIndex;
  /** First byte of the chunk-index section and the blob's end. */
  readonly indexRange: { readonly offset: number; readonly end: number };
  readonly indexDigest: string;
  /** The descriptor annotations §2.3 asks for. */
  readonly annotations: Readonly<Record<string, string>>;
}

function hex(hash: Hash): string {
  return `sha256:${hash.digest('hex')}`;
}

export class ChunkedLayerEncoder {
  readonly #options: ChunkedLayerOptions;
  #result: ChunkedLayer | undefined;

  constructor(options: ChunkedLayerOptions) {
    if (!Number.isSafeInteger(options.chunkSize) || options.chunkSize <= 0) {
      throw new RangeError(`chunk size ${options.chunkSize}`);
    }
    this.#options = options;
  }

  /** The finished layer; available once `encode`'s output has been read to the end. */
  get result(): ChunkedLayer {
    if (!this.#result) throw new Error('ChunkedLayerEncoder: result read before the blob was');
    return this.#result;
  }

  /**
   * Yields the blob's bytes for `image`, the image data in order. Raw layers yield the input chunks
   * themselves: a source that reuses its buffers must have the output consumed before the next pull.
   */
  async *encode(image: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    const { chunkSize, zstdLevel, signal } = this.#options;
    const hashSize = this.#options.hashSize ?? 32;
    const algorithm = hashAlgorithm({ hashSize });
    const parallel = Math.max(1, this.#options.parallel ?? 2);
    const blobHash = createHash('sha256');
    let imageHash = createHash('sha256');
    const entries: ChunkEntry[] = [];
    let blobSize = 0;
    let imageSize = 0;
    const emit = (bytes: Uint8Array): Uint8Array => {
      blobHash.update(bytes);
      blobSize += bytes.byteLength;
      return bytes;
    };
    const checksum = (bytes: Uint8Array): Uint8Array =>
      algorithm === undefined
        ? new Uint8Array(0)
        : new Uint8Array(createHash(algorithm).update(bytes).digest());

    // A chunk being filled, and (for zstd) frames being compressed, oldest first.
    let pending: Uint8Array[] = [];
    let pendingSize = 0;
    const frames: { uncompressedOffset: number; frame: Promise<Uint8Array> }[] = [];
    const params = zstdLevel === undefined ? {} : { [constants.ZSTD_c_compressionLevel]: zstdLevel };
    const startChunk = (chunk: Uint8Array, uncompressedOffset: number): void => {
      const frame = zstd(chunk, { params });
      frame.catch(() => {}); // awaited in order below; an early failure must not be unhandled meanwhile
      frames.push({ uncompressedOffset, frame });
    };
    /**
     * The last frame carries a padding skippable frame when needed, so the index frame starts 4-byte aligned
     * (§3.4.3 SHOULD). It counts as part of the last chunk's on-blob bytes (its length runs to the index,
     * §3.4.2), so its checksum covers it; a zstd decoder passes over it.
     */
    const takeFrame = async (last = false): Promise<Uint8Array> => {
      const { uncompressedOffset, frame } = frames.shift()!;
      let bytes = await frame;
      const misalignment = (blobSize + bytes.byteLength) % 4;
      if (last && misalignment !== 0) {
        bytes = Buffer.concat([bytes, skippableFrame(new Uint8Array((4 - misalignment) % 4))]);
      }
      entries.push({ blockOffset: blobSize, uncompressedOffset, checksum: checksum(bytes) });
      return emit(bytes);
    };
    const closeChunk = (): void => {
      if (pendingSize === 0) return;
      const chunk = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingSize);
      const uncompressedOffset = imageSize - pendingSize;
      pending = [];
      pendingSize = 0;
      startChunk(chunk, uncompressedOffset);
    };

    if (zstdLevel === undefined) {
      // Raw: the image passes through as it comes (no copies); each chunk's checksum is taken as its bytes
      // go by, and the image digest is the blob hash before the index (Hash.copy), not a third pass.
      let chunkHash = algorithm === undefined ? undefined : createHash(algorithm);
      let chunkFill = 0;
      const closeRaw = () => {
        entries.push({
          blockOffset: imageSize - chunkFill,
          uncompressedOffset: imageSize - chunkFill,
          checksum: chunkHash ? new Uint8Array(chunkHash.digest()) : new Uint8Array(0),
        });
        chunkHash = algorithm === undefined ? undefined : createHash(algorithm);
        chunkFill = 0;
      };
      for await (let data of image) {
        throwIfAborted(signal);
        yield emit(data);
        while (data.byteLength > 0) {
          const take = Math.min(chunkSize - chunkFill, data.byteLength);
          chunkHash?.update(take === data.byteLength ? data : data.subarray(0, take));
          chunkFill += take;
          imageSize += take;
          data = data.subarray(take);
          if (chunkFill === chunkSize) closeRaw();
        }
      }
      if (chunkFill > 0) closeRaw();
      imageHash = blobHash.copy();
    }
    for await (let data of zstdLevel === undefined ? [] : image) {
      throwIfAborted(signal);
      imageHash.update(data);
      while (data.byteLength > 0) {
        const take = Math.min(chunkSize - pendingSize, data.byteLength);
        // Copy: the source may reuse its buffers, and a chunk outlives this iteration.
        pending.push(data.slice(0, take));
        pendingSize += take;
        imageSize += take;
        data = data.subarray(take);
        if (pendingSize === chunkSize) {
          closeChunk();
          while (frames.length >= parallel) yield await takeFrame();
        }
      }
    }
    closeChunk();
    while (frames.length > 0) yield await takeFrame(frames.length === 1);

    const index: ChunkIndex = {
      compression: zstdLevel === undefined ? 'none' : 'zstd',
      uncompressedSize: imageSize,
      hashSize,
      entries,
    };
    const payload = encodeChunkIndex(index);
    const offset = blobSize;
    yield emit(zstdLevel === undefined ? payload : skippableFrame(payload));
    const imageDigest = hex(imageHash);
    const blobDigest = hex(blobHash);
    const indexDigest = `sha256:${createHash('sha256').update(payload).digest('hex')}`;
    const annotations: Record<string, string> = {
      [ANNOTATION_CHUNK_INDEX_RANGE]: `${offset}:${blobSize}`,
      [ANNOTATION_CHUNK_INDEX_DIGEST]: indexDigest,
    };
    if (zstdLevel !== undefined) annotations[ANNOTATION_UNCOMPRESSED_DIGEST] = imageDigest;
    this.#result = {
      blobSize,
      blobDigest,
      imageDigest,
      imageSize,
      diffId: zstdLevel === undefined ? blobDigest : imageDigest,
      index,
      indexRange: { offset, end: blobSize },
      indexDigest,
      annotations,
    };
  }
}
