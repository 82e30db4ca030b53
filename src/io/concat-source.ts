/**
 * Several byte sources seen as one, end to end. This is how an index-mode EROFS image and its layer's
 * uncompressed tar become the single device `[metadata image][tar]` that the kernel mounts (SPEC §2 build
 * `--mode index`).
 */
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource, ReadOptions } from './byte-source.ts';

export function concatSources(parts: readonly ByteSource[]): ByteSource {
  // starts[i] is the offset of parts[i] in the whole; starts[parts.length] is the total size.
  const starts: number[] = [0];
  for (const part of parts) starts.push((starts.at(-1) as number) + part.size);
  const size = starts.at(-1) as number;
  const list = [...parts];

  /** Index of the last part starting at or before `offset` that is not empty (binary search). */
  function partAt(offset: number): number {
    let lo = 0;
    let hi = list.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if ((starts[mid] as number) <= offset) lo = mid;
      else hi = mid - 1;
    }
    // Skip empty parts sharing this start.
    while (lo < list.length - 1 && (starts[lo + 1] as number) <= offset) lo++;
    return lo;
  }

  return {
    size,
    async read(offset: number, length: number, options: ReadOptions = {}): Promise<Uint8Array> {
      throwIfAborted(options.signal);
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw new ErofsOciError(
          'internal',
          `Cannot read concatenation: invalid range offset ${offset} length ${length}`,
        );
      }
      if (offset + length > size) {
        throw new ErofsOciError(
          'corrupt',
          `Cannot read ${length} bytes at offset ${offset} of a concatenation of ${size} bytes`,
        );
      }
      if (length === 0) return new Uint8Array(0);
      const first = partAt(offset);
      const firstStart = starts[first] as number;
      const firstPart = list[first] as ByteSource;
      // Fast path: the whole range lies in one part; hand its buffer back without copying.
      if (offset + length <= firstStart + firstPart.size) {
        return firstPart.read(offset - firstStart, length, options);
      }
      const pieces: Promise<Uint8Array>[] = [];
      let at = offset;
      let i = first;
      while (at < offset + length) {
        const part = list[i] as ByteSource;
        const start = starts[i] as number;
        const take = Math.min(start + part.size, offset + length) - at;
        if (take > 0) pieces.push(part.read(at - start, take, options));
        at += take;
        i++;
      }
      const out = new Uint8Array(length);
      let pos = 0;
      for (const piece of await Promise.all(pieces)) {
        out.set(piece, pos);
        pos += piece.byteLength;
      }
      return out;
    },
  };
}
