/**
 * A byte source over bytes in memory: the reference source that adapters (caches, concatenations, the NBD
 * server) are tested against.
 */
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource, ReadOptions } from './byte-source.ts';

export function memorySource(bytes: Uint8Array): ByteSource {
  const size = bytes.byteLength;
  return {
    size,
    async read(offset: number, length: number, options: ReadOptions = {}): Promise<Uint8Array> {
      throwIfAborted(options.signal);
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw new ErofsOciError(
          'internal',
          `Cannot read memory source: invalid range offset ${offset} length ${length}`,
        );
      }
      if (offset + length > size) {
        throw new ErofsOciError(
          'corrupt',
          `Cannot read ${length} bytes at offset ${offset} of a ${size}-byte memory source`,
        );
      }
      // A copy, so that a caller that writes into the result cannot change the source (through the
      // Uint8Array method: a Buffer's own slice() is a view).
      return Uint8Array.prototype.slice.call(bytes, offset, offset + length);
    },
  };
}

/** `source` with every read it answers recorded, in order: what a reader asked of it. */
export function recordingSource(
  source: ByteSource,
): ByteSource & { reads: { offset: number; length: number }[] } {
  const reads: { offset: number; length: number }[] = [];
  return {
    size: source.size,
    reads,
    read(offset: number, length: number, options?: ReadOptions): Promise<Uint8Array> {
      reads.push({ offset, length });
      return source.read(offset, length, options);
    },
  };
}
