/**
 * Opening a layer for verified reads: from its descriptor, find the chunk index it announces (embedded,
 * `org.erofs.chunk-index.range`, or a standalone chunk-index layer after it), read it (through the raw
 * blob, or the index layer's own blob), check it against `org.erofs.chunk-index.digest` (a standalone one
 * against its descriptor digest and `org.erofs.chunk-index.target`) before any entry is believed, and
 * return the verified image-data source.
 * A layer without an index gives undefined (the caller falls back to whole-blob verification); an index
 * whose digest annotation is missing or that carries no checksums is refused, since it could not verify
 * what it serves.
 */

import { ANNOTATION_CHUNK_INDEX_DIGEST, ANNOTATION_CHUNK_INDEX_RANGE } from '../chunk-index/format.ts';
import {
  decodeStandaloneChunkIndex,
  type EmbeddedChunkIndex,
  type LayerDescriptor,
  readEmbeddedChunkIndex,
  type StandaloneIndexDescriptor,
} from '../chunk-index/index.ts';
import { ErofsOciError } from '../errors.ts';
import type { ByteSource } from '../io/byte-source.ts';
import { openVerifiedSource, type VerifiedSource } from './chunk-source.ts';
import { openChunkStore } from './chunk-store.ts';

export interface OpenVerifiedOptions {
  name: string;
  cacheDir?: string;
  memoryBytes?: number;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** Fetches a standalone chunk-index layer (needed when the descriptor has one). */
  readIndexBlob?: IndexBlobReader;
}

/** A layer descriptor, with the standalone chunk-index layer that follows it in the manifest, if any. */
export interface IndexedLayerDescriptor extends LayerDescriptor {
  readonly digest: string;
  readonly chunkIndex?: StandaloneIndexDescriptor | undefined;
}

/** Whether the descriptor announces a chunk index this reader can use. */
export function hasChunkIndex(descriptor: IndexedLayerDescriptor): boolean {
  return (
    descriptor.annotations?.[ANNOTATION_CHUNK_INDEX_RANGE] !== undefined ||
    descriptor.chunkIndex !== undefined
  );
}

/** Reads a standalone chunk-index layer's blob (`size` bytes); its bytes are checked here. */
export type IndexBlobReader = (
  descriptor: StandaloneIndexDescriptor,
  signal?: AbortSignal,
) => Promise<Uint8Array>;

/**
 * Reads the chunk index the descriptor announces and checks it against its digest annotation: undefined
 * without one, `digest-mismatch`/`corrupt` (exit 5) naming the layer when it is wrong.
 */
export async function readVerifiedChunkIndex(
  blob: ByteSource,
  descriptor: IndexedLayerDescriptor,
  options: Pick<OpenVerifiedOptions, 'name' | 'signal' | 'readIndexBlob'>,
): Promise<EmbeddedChunkIndex | undefined> {
  if (!hasChunkIndex(descriptor)) return undefined;
  const standalone = descriptor.chunkIndex;
  if (descriptor.annotations?.[ANNOTATION_CHUNK_INDEX_RANGE] === undefined && standalone !== undefined) {
    // The index layer's digest is in the manifest: it pins the index as the digest annotation would.
    if (options.readIndexBlob === undefined) {
      throw new ErofsOciError('internal', `${options.name}: no reader for its chunk-index layer`);
    }
    try {
      const payload = await options.readIndexBlob(standalone, options.signal);
      return decodeStandaloneChunkIndex(payload, descriptor, standalone);
    } catch (error) {
      if (error instanceof ErofsOciError) {
        throw new ErofsOciError(error.code, `${options.name}: chunk index refused: ${error.message}`, {
          cause: error,
        });
      }
      throw error;
    }
  }
  if (descriptor.annotations?.[ANNOTATION_CHUNK_INDEX_DIGEST] === undefined) {
    throw new ErofsOciError(
      'corrupt',
      `${options.name}: its chunk index has no ${ANNOTATION_CHUNK_INDEX_DIGEST}, so nothing pins it`,
    );
  }
  let found: EmbeddedChunkIndex | undefined;
  try {
    found = await readEmbeddedChunkIndex(blob, descriptor, options.signal ? { signal: options.signal } : {});
  } catch (error) {
    if (error instanceof ErofsOciError) {
      throw new ErofsOciError(error.code, `${options.name}: chunk index refused: ${error.message}`, {
        cause: error,
      });
    }
    throw error;
  }
  return found;
}

export async function openVerifiedLayer(
  blob: ByteSource,
  descriptor: IndexedLayerDescriptor,
  options: OpenVerifiedOptions,
): Promise<VerifiedSource | undefined> {
  const found = await readVerifiedChunkIndex(blob, descriptor, options);
  if (found === undefined) return undefined;
  return openVerifiedSource(blob, found.index, found.sectionOffset, {
    name: options.name,
    ...(options.memoryBytes === undefined ? {} : { memoryBytes: options.memoryBytes }),
    ...(options.log === undefined ? {} : { log: options.log }),
    ...(options.cacheDir === undefined ? {} : { store: await openChunkStore(options.cacheDir) }),
  });
}
