/**
 * What every part of the reader shares: the image's byte source, its superblock, the extra devices a caller
 * gave, and metadata reads in whole blocks through a small LRU cache, so walking an image costs about one
 * read per metadata block even over a remote source.
 */
import { CorruptInputError, throwIfAborted } from '../errors.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import type { SuperblockInfo } from './superblock.ts';

export class ImageContext {
  readonly source: ByteSource;
  readonly sb: SuperblockInfo;
  /** The extra devices of the device table the caller gave, in table order; undefined if none were. */
  readonly devices: ByteSource[] | undefined;
  readonly blockSize: number;
  readonly blockBits: number;
  /** Metadata may only be read below this byte offset: the primary device's blocks, if within the source. */
  readonly metaLimit: number;
  readonly #cache = new Map<number, Promise<Uint8Array>>();
  readonly #cacheBlocks: number;

  constructor(
    source: ByteSource,
    sb: SuperblockInfo,
    options: { devices?: ByteSource[]; cacheBlocks?: number },
  ) {
    this.source = source;
    this.sb = sb;
    this.devices = options.devices ? [...options.devices] : undefined;
    this.blockSize = sb.blockSize;
    this.blockBits = sb.blockSizeBits;
    this.metaLimit = sb.blocks > 0 ? Math.min(source.size, sb.blocks * sb.blockSize) : source.size;
    this.#cacheBlocks = Math.max(4, options.cacheBlocks ?? 256);
  }

  /** Device ids are masked as in erofs-utils erofs_init_devices: roundup_pow_of_two(devices + 1) - 1. */
  deviceMask(): number {
    const n = this.sb.devices.length;
    return 2 ** Math.ceil(Math.log2(n + 1)) - 1;
  }

  /** `length` bytes of metadata at `position` of the primary image, through the block cache. */
  /** `length` bytes of metadata at `position` of the primary image, through the block cache. */
  async readMeta(
    position: number,
    length: number,
    what: string,
    options: ReadOptions = {},
  ): Promise<Uint8Array> {
    throwIfAborted(options.signal);
    if (position < 0 || length < 0 || position + length > this.metaLimit) {
      throw new CorruptInputError(
        `${what}: ${length} bytes at offset ${position} extend beyond the image (${this.metaLimit} bytes)`,
        position,
      );
    }
    if (length === 0) return new Uint8Array(0);
    const first = Math.floor(position / this.blockSize);
    const last = Math.floor((position + length - 1) / this.blockSize);
    if (first === last) {
      const block = await this.#block(first);
      const at = position - first * this.blockSize;
      return block.subarray(at, at + length);
    }
    const out = new Uint8Array(length);
    const blocks = [];
    for (let b = first; b <= last; b++) blocks.push(this.#block(b));
    let done = 0;
    for (const [i, pending] of blocks.entries()) {
      const block = await pending;
      const from = i === 0 ? position - first * this.blockSize : 0;
      const take = Math.min(block.byteLength - from, length - done);
      out.set(block.subarray(from, from + take), done);
      done += take;
    }
    return out;
  }

  #block(index: number): Promise<Uint8Array> {
    const cached = this.#cache.get(index);
    if (cached) {
      // Re-insert to mark it most recently used.
      this.#cache.delete(index);
      this.#cache.set(index, cached);
      return cached;
    }
    const start = index * this.blockSize;
    const length = Math.min(this.blockSize, this.metaLimit - start);
    // No signal: the read is shared by every caller that wants this block; callers check their own signal.
    const pending = this.source.read(start, length);
    this.#cache.set(index, pending);
    pending.catch(() => this.#cache.delete(index));
    while (this.#cache.size > this.#cacheBlocks) {
      const oldest = this.#cache.keys().next().value as number;
      this.#cache.delete(oldest);
    }
    return pending;
  }
}
