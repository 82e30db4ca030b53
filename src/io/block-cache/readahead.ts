/**
 * Sequential readahead of the block cache: which blocks to fetch ahead of a read that continues a stream,
 * within what the memory budget can hold until they are read.
 */
import type { BlockGrid } from '../block-grid.ts';

export interface ReadaheadLimits {
  /** The window a stream starts with once a second read continues it, in bytes. */
  initial: number;
  /** The widest window, in bytes. */
  max: number;
}

export class Readahead {
  readonly #grid: BlockGrid;
  readonly #limits: ReadaheadLimits | false;
  readonly #streams = new ReadaheadStreams();
  /**
   * Blocks readahead started that no read has asked for since. Bounded by half the memory budget, so
   * that reading ahead (of several streams, of readers slower than the origin) never evicts the blocks it
   * fetched before they are read, or before the running hash takes them.
   */
  readonly #unread = new Set<number>();
  readonly #unreadLimit: number;
  /**
   * A bit per block: read through, then evicted. Readahead stops at such a block: its reader has it (in
   * the kernel's page cache above), so a stream that runs into another stream's region (nbdcopy's threads
   * copy neighbouring regions) would only fetch it again for nothing. A read of such a block shows that
   * its reader no longer has it (a page cache dropped): the run of such blocks it starts is cleared.
   */
  readonly #consumed: Uint8Array;

  constructor(grid: BlockGrid, limits: ReadaheadLimits | false, memoryBudget: number) {
    this.#grid = grid;
    this.#limits = limits;
    this.#unreadLimit = Math.max(1, Math.floor(memoryBudget / 2 / grid.blockSize));
    this.#consumed = new Uint8Array(Math.ceil(grid.count / 8));
  }

  /** A read asked for `block`: it no longer counts against the readahead still unread. */
  asked(block: number): void {
    this.#unread.delete(block);
  }

  /** `block` left memory, read through (`readThrough`: its reader keeps it) or not. */
  evicted(block: number, readThrough: boolean): void {
    if (readThrough) this.#setConsumed(block, true);
    this.#unread.delete(block);
  }

  /** Forgets the readahead in flight (the cached bytes are dropped). */
  clear(): void {
    this.#unread.clear();
  }

  /**
   * Records a read of bytes [offset, end) in blocks `first..last`; returns the blocks to fetch ahead of it
   * (none unless it continues a stream), each of which the caller then hands to `started`.
   */
  plan(
    offset: number,
    end: number,
    first: number,
    last: number,
    isAvailable: (block: number) => boolean,
  ): number[] {
    if (!this.#limits) return [];
    const count = this.#grid.count;
    const window = this.#streams.advance(offset, end, last, this.#limits);
    // No wider than the readahead the memory budget allows, so that refills stay whole (see #unread).
    const windowBlocks = Math.min(this.#unreadLimit, Math.ceil(window / this.#grid.blockSize));
    const until = Math.min(count - 1, last + windowBlocks);
    let reread = false;
    for (let block = first; block <= last; block++) reread ||= this.#isConsumed(block);
    for (let block = first; reread && block < count && (block <= last || this.#isConsumed(block)); block++)
      this.#setConsumed(block, false);
    if (window === 0) return [];
    const missing: number[] = [];
    for (let block = last + 1; block <= until; block++) {
      if (this.#isConsumed(block)) break;
      if (!isAvailable(block)) missing.push(block);
    }
    // As the kernel's async readahead: refill when at least half the window is missing, in one go, rather
    // than a block at a time as the stream advances.
    if (missing.length === 0 || missing.length < Math.max(1, Math.floor(windowBlocks / 2))) return [];
    const allowed = this.#unreadLimit - this.#unread.size;
    if (allowed <= 0) return [];
    if (missing.length > allowed) missing.length = allowed;
    return missing;
  }

  /** A block `plan` chose is on its way; until a read asks for it, it counts as unread readahead. */
  started(block: number, loading: Promise<unknown>): void {
    this.#unread.add(block);
    loading.catch(() => {
      // A failed prefetch is not an error of any read; a read of the block fetches it again.
      this.#unread.delete(block);
    });
  }

  #isConsumed(block: number): boolean {
    return ((this.#consumed[block >> 3] as number) & (1 << (block & 7))) !== 0;
  }

  #setConsumed(block: number, on: boolean): void {
    const byte = this.#consumed[block >> 3] as number;
    const bit = 1 << (block & 7);
    this.#consumed[block >> 3] = on ? byte | bit : byte & ~bit;
  }
}

/**
 * Recently seen sequential streams (several readers, e.g. NBD connections, may each stream through a
 * different region). A read continues a stream when it starts near the stream's end, in bytes: within
 * `GAP` of it, or within the stream's window once it has one (readers with several requests in flight
 * arrive slightly out of order). Crossing into a further block grows the window. Any other read starts a
 * new stream, without readahead until a second read continues it. Nearness is in bytes, not blocks: reads
 * that hop through an object in steps smaller than a block (one small file of each of many directories,
 * when a layer's files are not stored in the order they are read) touch consecutive blocks without being
 * a stream, and reading ahead of them fills the memory cache with blocks evicted before they are used.
 */
export class ReadaheadStreams {
  /** How far from a stream's end a read may start and still continue it, window or not. */
  static readonly GAP = 128 * 1024;
  #streams: { end: number; block: number; window: number }[] = [];

  /** Records a read of bytes [offset, end), whose last block is `last`; returns the stream's window in bytes. */
  advance(offset: number, end: number, last: number, limits: ReadaheadLimits): number {
    const index = this.#streams.findIndex((s) => {
      const reach = Math.max(s.window, ReadaheadStreams.GAP);
      return offset >= s.end - reach && offset <= s.end + reach;
    });
    let stream: { end: number; block: number; window: number };
    if (index >= 0) {
      stream = this.#streams[index] as { end: number; block: number; window: number };
      this.#streams.splice(index, 1);
      // Grow once per block boundary crossed, not per small read within one block.
      if (last > stream.block)
        stream.window = stream.window === 0 ? limits.initial : Math.min(limits.max, stream.window * 2);
      stream.end = Math.max(stream.end, end);
      stream.block = Math.max(stream.block, last);
    } else {
      // A lone read (even at offset 0, where filesystems keep their superblock) is no stream yet.
      stream = { end, block: last, window: 0 };
    }
    this.#streams.unshift(stream);
    if (this.#streams.length > 16) this.#streams.pop();
    return stream.window;
  }
}
