/**
 * Decoding one physical cluster: LZ4 blocks (our own decoder: the block format is small, and no Node
 * built-in has it), raw DEFLATE and Zstandard through node:zlib, and the two uncompressed forms (shifted and
 * interlaced). Mirrors erofs-utils lib/decompress.c z_erofs_decompress.
 */
import { constants, inflateRawSync, zstdDecompressSync } from 'node:zlib';
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import { CompressionAlg } from './format.ts';

/** Uncompressed pcluster forms, numbered after the algorithms as in erofs-utils (`Z_EROFS_COMPRESSION_*`). */
export const SHIFTED = 16;
export const INTERLACED = 17;
export type PclusterFormat = CompressionAlg | typeof SHIFTED | typeof INTERLACED;

export interface DecompressRequest {
  format: PclusterFormat;
  /** The pcluster's raw bytes. */
  input: Uint8Array;
  /** Bytes of decoded output wanted, counted from the extent's start (`skip` of them are dropped). */
  length: number;
  skip: number;
  /** Block offset of the extent's logical start (interlaced pclusters only). */
  interlacedOffset: number;
  blockSize: number;
  /** Where the pcluster lies, for errors. */
  position: number;
}

/** The decoded bytes `[skip, length)` of a pcluster's extent. */
export function decompressPcluster(rq: DecompressRequest): Uint8Array {
  const { input, length, skip } = rq;
  const what = `Cannot decompress the pcluster at offset ${rq.position}`;
  if (length < skip)
    throw new CorruptInputError(`${what}: skip ${skip} beyond length ${length}`, rq.position);
  if (rq.format === SHIFTED || rq.format === INTERLACED) {
    if (length > input.byteLength) {
      throw new CorruptInputError(
        `${what}: ${length} bytes wanted from an uncompressed pcluster of ${input.byteLength}`,
        rq.position,
      );
    }
    if (rq.format === SHIFTED) return input.slice(skip, length);
    // Interlaced: the data starts at the extent's block offset and wraps around the block.
    const count = length - skip;
    const at = (rq.interlacedOffset + skip) % rq.blockSize;
    const right = Math.min(rq.blockSize - at, count);
    const out = new Uint8Array(count);
    out.set(input.subarray(at, at + right), 0);
    out.set(input.subarray(0, count - right), right);
    return out;
  }
  // 0PADDING: compressed data is right-aligned; leading zeros are padding (no encoder starts with a 0 byte).
  let margin = 0;
  while (margin < input.byteLength && input[margin] === 0) margin++;
  if (margin >= input.byteLength) throw new CorruptInputError(`${what}: it holds only zeros`, rq.position);
  const data = input.subarray(margin);
  let decoded: Uint8Array;
  try {
    switch (rq.format) {
      case CompressionAlg.lz4:
        decoded = lz4DecodeBlock(data, length);
        break;
      case CompressionAlg.deflate:
        decoded = inflateRawSync(data, { finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: 2 ** 30 });
        break;
      case CompressionAlg.zstd:
        decoded = zstdDecompressSync(data);
        break;
      default:
        throw new ErofsOciError('unsupported', `${what}: algorithm ${rq.format} (lzma) is not supported`);
    }
  } catch (error) {
    if (error instanceof ErofsOciError) throw error;
    throw new CorruptInputError(`${what}: ${(error as Error).message}`, rq.position, { cause: error });
  }
  if (decoded.byteLength < length) {
    throw new CorruptInputError(
      `${what}: it decodes to ${decoded.byteLength} bytes, the extent needs ${length}`,
      rq.position,
    );
  }
  return decoded.subarray(skip, length);
}

/**
 * Decodes an LZ4 block (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md) until `want` bytes are
 * out (partial decoding, as LZ4_decompress_safe_partial) or the input ends. Every length and offset is
 * checked: a corrupt block is an error, never a read outside the buffers.
 */
export function lz4DecodeBlock(input: Uint8Array, want: number): Uint8Array {
  const out = new Uint8Array(want);
  let ip = 0;
  let op = 0;
  const end = input.byteLength;
  while (ip < end && op < want) {
    const token = input[ip++] as number;
    let lit = token >> 4;
    if (lit === 15) {
      let b: number;
      do {
        if (ip >= end) throw new Error('LZ4 literal length runs past the input');
        b = input[ip++] as number;
        lit += b;
      } while (b === 255);
    }
    if (ip + lit > end) throw new Error('LZ4 literals run past the input');
    const take = Math.min(lit, want - op);
    out.set(input.subarray(ip, ip + take), op);
    ip += lit;
    op += take;
    if (op >= want || ip >= end) break;
    if (ip + 2 > end) throw new Error('LZ4 match offset runs past the input');
    const offset = (input[ip] as number) | ((input[ip + 1] as number) << 8);
    ip += 2;
    if (offset === 0 || offset > op) throw new Error(`LZ4 match offset ${offset} points before the output`);
    let len = (token & 15) + 4;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (ip >= end) throw new Error('LZ4 match length runs past the input');
        b = input[ip++] as number;
        len += b;
      } while (b === 255);
    }
    const stop = Math.min(op + len, want);
    let from = op - offset;
    if (offset >= len) {
      out.copyWithin(op, from, from + (stop - op));
      op = stop;
    } else {
      while (op < stop) out[op++] = out[from++] as number;
    }
  }
  return op === want ? out : out.subarray(0, op);
}
