/**
 * Test helpers for the gzip index: gzip streams with the features that matter to block scanning (many
 * small blocks, fixed and stored blocks, flush points, optional header fields, several members), and an
 * in-memory byte source that counts what is read. Used by the tests only.
 */
import { constants, crc32, deflateRawSync, type ZlibOptions } from 'node:zlib';
import { ErofsOciError } from '../errors.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';

export interface MemberOptions {
  zlib?: ZlibOptions;
  /** Compress the data in these pieces, with a sync or full flush after each (empty stored blocks). */
  flushEvery?: number;
  flush?: 'sync' | 'full';
  /** Optional header fields (RFC 1952 §2.3.1). */
  name?: string;
  comment?: string;
  extra?: Uint8Array;
  headerCrc?: boolean;
}

/** One gzip member holding `data`. */
export function gzipMember(data: Uint8Array, options: MemberOptions = {}): Uint8Array {
  const zopts = options.zlib ?? {};
  let deflated: Uint8Array;
  if (options.flushEvery && options.flushEvery > 0) {
    const parts: Uint8Array[] = [];
    const flushFlag = options.flush === 'full' ? constants.Z_FULL_FLUSH : constants.Z_SYNC_FLUSH;
    // Pieces compressed separately, each but the last ending with a flush (an empty stored block, no final
    // block), concatenate into one valid raw stream: deflate lets an encoder ignore the earlier output.
    for (let at = 0; at < data.byteLength; at += options.flushEvery) {
      const piece = data.subarray(at, at + options.flushEvery);
      const last = at + options.flushEvery >= data.byteLength;
      parts.push(
        deflateRawSync(piece, {
          ...zopts,
          finishFlush: last ? constants.Z_FINISH : flushFlag,
        }),
      );
    }
    deflated = concat(parts.length > 0 ? parts : [deflateRawSync(data, zopts)]);
  } else {
    deflated = deflateRawSync(data, zopts);
  }
  let flags = 0;
  const fields: Uint8Array[] = [];
  if (options.extra) {
    flags |= 0x04;
    fields.push(
      Uint8Array.of(options.extra.byteLength & 0xff, options.extra.byteLength >>> 8),
      options.extra,
    );
  }
  if (options.name !== undefined) {
    flags |= 0x08;
    fields.push(new TextEncoder().encode(options.name), Uint8Array.of(0));
  }
  if (options.comment !== undefined) {
    flags |= 0x10;
    fields.push(new TextEncoder().encode(options.comment), Uint8Array.of(0));
  }
  if (options.headerCrc) flags |= 0x02;
  const fixed = Uint8Array.of(0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3);
  const header = concat([fixed, ...fields]);
  const headerCrc = options.headerCrc ? [le16(crc32(header) & 0xffff)] : [];
  return concat([header, ...headerCrc, deflated, le32(crc32(data)), le32(data.byteLength % 2 ** 32)]);
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

function le16(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, v >>> 8);
}

function le32(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24);
}

/** Deterministic test data: `kind` random (incompressible), text (compressible), zeros or a mix. */
export function testData(
  size: number,
  seed: number,
  kind: 'random' | 'text' | 'zeros' | 'mixed',
): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const words = ['erofs', 'gzip', 'window', 'block', 'span', 'layer', 'tar', ' ', '\n', 'the', 'index'];
  let at = 0;
  while (at < size) {
    const mode = kind === 'mixed' ? (['random', 'text', 'zeros'] as const)[next() % 3]! : kind;
    const run = Math.min(size - at, kind === 'mixed' ? 1 + (next() % 20000) : size);
    if (mode === 'random') for (let i = 0; i < run; i++) out[at + i] = next() & 0xff;
    else if (mode === 'text') {
      let i = 0;
      while (i < run) {
        const w = words[next() % words.length]!;
        for (let k = 0; k < w.length && i < run; k++) out[at + i++] = w.charCodeAt(k);
      }
    }
    at += run;
  }
  return out;
}

export interface MemorySource extends ByteSource {
  readonly reads: { offset: number; length: number }[];
}

/** A byte source over `bytes` that records every read. */
export function memorySource(bytes: Uint8Array): MemorySource {
  const reads: { offset: number; length: number }[] = [];
  return {
    size: bytes.byteLength,
    reads,
    async read(offset: number, length: number, _options?: ReadOptions) {
      if (offset < 0 || length < 0 || offset + length > bytes.byteLength) {
        throw new ErofsOciError(
          'internal',
          `memory source: read ${offset}+${length} beyond ${bytes.byteLength}`,
        );
      }
      reads.push({ offset, length });
      return bytes.slice(offset, offset + length);
    },
  };
}

/** Yields `bytes` in chunks of the given sizes (cycled), to exercise chunk boundaries. */
export async function* chunked(bytes: Uint8Array, sizes: readonly number[]): AsyncGenerator<Uint8Array> {
  let at = 0;
  for (let k = 0; at < bytes.byteLength; k++) {
    const n = Math.max(1, sizes[k % sizes.length]!);
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

/** Z_FIXED etc. for tests. */
export const STRATEGIES = [
  constants.Z_DEFAULT_STRATEGY,
  constants.Z_FILTERED,
  constants.Z_HUFFMAN_ONLY,
  constants.Z_RLE,
  constants.Z_FIXED,
] as const;
