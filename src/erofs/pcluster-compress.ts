/**
 * Cutting a file into physical clusters for the writer: each pcluster holds as much input as its
 * compressed form fits into `pclusterSize` bytes (LZ4 fills it directly; deflate and zstd through node:zlib
 * with the input shrunk until the output fits), right-aligned with zeros in front (0PADDING). A pcluster that
 * does not save a block is stored raw, one block of input per pcluster, as mkfs.erofs does.
 */
import { constants, deflateRawSync, zstdCompressSync } from 'node:zlib';
import { ErofsOciError } from '../errors.ts';
import { CompressionAlg } from './format.ts';
import { lz4CompressDestSize } from './lz4-encode.ts';
import { lz4hcCompressDestSize } from './lz4hc-encode.ts';
import type { PclusterExtent } from './zindex-writer.ts';

export interface CompressOptions {
  alg: CompressionAlg;
  /** The encoder's level; for lz4, a level selects the HC encoder (lz4hc-encode.ts). */
  level?: number;
  blockSize: number;
  /** Bytes per physical cluster: a multiple of the block size, at most 1 MiB. */
  pclusterSize: number;
}

/**
 * The Zstandard window (log2) for a pcluster size: as mkfs.erofs, 8 pclusters up to the 1 MiB the kernel
 * allows (`Z_EROFS_ZSTD_MAX_DICT_SIZE`). Recorded in the superblock's zstd configuration.
 */
export function zstdWindowLog(pclusterSize: number): number {
  return Math.min(20, Math.floor(Math.log2(pclusterSize * 8)));
}

/** DEFLATE's window (log2): node:zlib's default, the largest the format (and the kernel) allows. */
export const DEFLATE_WINDOW_BITS = 15;

export interface CompressedFile {
  /** Extents from offset 0, `pblk` counted from the file's first pcluster block (0). */
  extents: PclusterExtent[];
  /** The pclusters' bytes, back to back (`blocks * blockSize` each). */
  pclusters: Uint8Array[];
  blocks: number;
}

/** Compressed bytes of a prefix of `input` within `capacity`, and how much input they hold. */
function compressPrefix(
  input: Uint8Array,
  capacity: number,
  options: CompressOptions,
  ratio: number,
): { output: Uint8Array; consumed: number } {
  if (options.alg === CompressionAlg.lz4) {
    return options.level === undefined
      ? lz4CompressDestSize(input, capacity)
      : lz4hcCompressDestSize(input, capacity, options.level);
  }
  const encode = (data: Uint8Array): Uint8Array => {
    if (options.alg === CompressionAlg.deflate) return deflateRawSync(data, { level: options.level ?? 1 });
    if (options.alg === CompressionAlg.zstd) {
      return zstdCompressSync(data, {
        params: {
          [constants.ZSTD_c_compressionLevel]: options.level ?? 3,
          [constants.ZSTD_c_windowLog]: zstdWindowLog(options.pclusterSize),
          [constants.ZSTD_c_contentSizeFlag]: 0,
          [constants.ZSTD_c_checksumFlag]: 0,
        },
      });
    }
    throw new ErofsOciError('unsupported', `Cannot compress with algorithm ${options.alg}`);
  };
  // Start from the ratio the previous pcluster had (4x at first) and shrink until the output fits.
  let take = Math.min(
    input.byteLength,
    Math.max(options.blockSize, Math.floor((capacity * ratio) / options.blockSize) * options.blockSize),
  );
  for (;;) {
    const output = encode(input.subarray(0, take));
    if (output.byteLength <= capacity) return { output, consumed: take };
    if (take <= options.blockSize) return { output: new Uint8Array(0), consumed: 0 };
    take = Math.max(
      options.blockSize,
      Math.floor((take * capacity) / output.byteLength / options.blockSize) * options.blockSize -
        options.blockSize,
    );
  }
}

export function compressFile(data: Uint8Array, options: CompressOptions): CompressedFile {
  const bs = options.blockSize;
  const extents: PclusterExtent[] = [];
  const pclusters: Uint8Array[] = [];
  let at = 0;
  let pblk = 0;
  let clusterofs = 0;
  let ratio = 4;
  while (at < data.byteLength) {
    const rest = data.subarray(at);
    const { output, consumed } = compressPrefix(rest, options.pclusterSize, options, ratio);
    if (consumed > 0 && output.byteLength > 0)
      ratio = Math.min(16, Math.max(1, consumed / output.byteLength));
    const blocks = Math.ceil(output.byteLength / bs);
    // Compressed only if it saves a block and (without tail packing) crosses an lcluster end; and only if
    // its first byte is not 0, which 0PADDING readers take for padding (a deflate stream may start with a
    // non-final stored block).
    if (consumed > 0 && output[0] !== 0 && blocks < Math.ceil(consumed / bs) && clusterofs + consumed >= bs) {
      const pcluster = new Uint8Array(blocks * bs);
      pcluster.set(output, pcluster.byteLength - output.byteLength);
      extents.push({ length: consumed, raw: false, pblk, blocks });
      pclusters.push(pcluster);
      pblk += blocks;
      at += consumed;
      clusterofs = (clusterofs + consumed) % bs;
      continue;
    }
    // Raw: one block of input per pcluster (shifted: the pcluster starts with the extent's first byte),
    // over the input the attempt covered but its last block, which the next attempt starts with (as
    // mkfs.erofs: incompressible data is not compressed again block by block).
    const rawBlocks = Math.max(1, Math.floor(consumed / bs) - 1);
    for (let i = 0; i < rawBlocks && at < data.byteLength; i++) {
      const length = Math.min(bs, data.byteLength - at);
      const pcluster = new Uint8Array(bs);
      pcluster.set(data.subarray(at, at + length));
      extents.push({ length, raw: true, pblk, blocks: 1 });
      pclusters.push(pcluster);
      pblk += 1;
      at += length;
      clusterofs = (clusterofs + length) % bs;
    }
  }
  return { extents, pclusters, blocks: pblk };
}
