/**
 * How a block cache cuts an object into blocks: `blockSize` bytes each from offset 0, except that every
 * anchor starts a new block (the block before it ends short). Anchors let a cache that knows the object's
 * layout fetch what is read first alone and in one piece: for an EROFS image, the superblock (anchor at
 * 4 KiB: the mount's first read fetches 4 KiB, not a whole block of file data) and the metadata area
 * (anchor at `meta_blkaddr`: the directories a `find` walks start a block instead of straddling two).
 */
import { ErofsOciError } from '../errors.ts';

interface Segment {
  /** First byte of the segment (0 or an anchor). */
  start: number;
  end: number;
  /** Index of its first block. */
  firstBlock: number;
}

export class BlockGrid {
  readonly size: number;
  readonly blockSize: number;
  /** The anchors in use: sorted, inside (0, size), without duplicates. */
  readonly anchors: readonly number[];
  readonly count: number;
  readonly #segments: Segment[] = [];

  constructor(size: number, blockSize: number, anchors: readonly number[] = []) {
    if (!Number.isSafeInteger(size) || size < 0)
      throw new ErofsOciError('usage', `Cannot cut blocks: invalid size ${size}`);
    if (!Number.isSafeInteger(blockSize) || blockSize < 512)
      throw new ErofsOciError('usage', `Cannot cut blocks: block size ${blockSize} is below 512 bytes`);
    for (const anchor of anchors) {
      if (!Number.isSafeInteger(anchor))
        throw new ErofsOciError('usage', `Cannot cut blocks: invalid anchor ${anchor}`);
    }
    this.size = size;
    this.blockSize = blockSize;
    this.anchors = [...new Set(anchors)].filter((a) => a > 0 && a < size).sort((a, b) => a - b);
    const starts = [0, ...this.anchors];
    let block = 0;
    for (const [i, start] of starts.entries()) {
      const end = starts[i + 1] ?? size;
      this.#segments.push({ start, end, firstBlock: block });
      block += Math.ceil((end - start) / blockSize);
    }
    this.count = block;
  }

  /** The block holding byte `offset` (`offset` < size). */
  blockOf(offset: number): number {
    const segment = this.#segmentAt(offset);
    return segment.firstBlock + Math.floor((offset - segment.start) / this.blockSize);
  }

  /** Offset of the first byte of `block`. */
  start(block: number): number {
    const segment = this.#segmentOf(block);
    return segment.start + (block - segment.firstBlock) * this.blockSize;
  }

  length(block: number): number {
    const segment = this.#segmentOf(block);
    const start = segment.start + (block - segment.firstBlock) * this.blockSize;
    return Math.min(this.blockSize, segment.end - start);
  }

  /** Offset just past `block`. */
  end(block: number): number {
    return this.start(block) + this.length(block);
  }

  #segmentAt(offset: number): Segment {
    // Binary search: the last segment starting at or before `offset`. There are few (one per anchor).
    let low = 0;
    let high = this.#segments.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if ((this.#segments[mid] as Segment).start <= offset) low = mid;
      else high = mid - 1;
    }
    return this.#segments[low] as Segment;
  }

  #segmentOf(block: number): Segment {
    let low = 0;
    let high = this.#segments.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if ((this.#segments[mid] as Segment).firstBlock <= block) low = mid;
      else high = mid - 1;
    }
    return this.#segments[low] as Segment;
  }
}
