/**
 * The memory half of the block cache: blocks within a byte budget, evicting blocks read through before
 * blocks read in part, least recently used first within each.
 */
import type { BlockGrid } from '../block-grid.ts';
import type { BlockPool } from './block-pool.ts';
import { ReadCoverage } from './read-coverage.ts';

/** Told of each block leaving memory to make room, and whether every byte of it had been read. */
export type Evicted = (block: number, bytes: Uint8Array, readThrough: boolean) => void;

export class MemoryLru {
  readonly #budget: number;
  readonly #evicted: Evicted;
  /** Blocks in memory, least recently used first (Map keeps insertion order). */
  readonly #blocks = new Map<number, Uint8Array>();
  #bytes = 0;
  /** Which parts of the blocks in memory reads have asked for (for eviction: see `put`). */
  readonly #coverage: ReadCoverage;

  readonly #pool: BlockPool | null;

  /** With a pool, the blocks held count as references to their buffers (see block-pool.ts). */
  constructor(grid: BlockGrid, budget: number, evicted: Evicted, pool: BlockPool | null = null) {
    this.#pool = pool;
    this.#budget = budget;
    this.#evicted = evicted;
    this.#coverage = new ReadCoverage(grid, (block) => this.#blocks.has(block));
  }

  /** Bytes held. */
  get bytes(): number {
    return this.#bytes;
  }

  has(block: number): boolean {
    return this.#blocks.has(block);
  }

  /** The block's bytes without counting as a use (for the running hash, which is no reader). */
  peek(block: number): Uint8Array | undefined {
    return this.#blocks.get(block);
  }

  /** The block's bytes, now the most recently used. */
  get(block: number): Uint8Array | undefined {
    const bytes = this.#blocks.get(block);
    if (bytes) {
      this.#blocks.delete(block);
      this.#blocks.set(block, bytes);
    }
    return bytes;
  }

  /** Keeps a block, evicting others beyond the budget; false (and nothing kept) when it alone exceeds it. */
  put(block: number, bytes: Uint8Array): boolean {
    if (bytes.byteLength > this.#budget) return false;
    const old = this.#blocks.get(block);
    if (old) {
      this.#blocks.delete(block);
      this.#bytes -= old.byteLength;
      if (old !== bytes) this.#pool?.release(old);
    }
    if (old !== bytes) this.#pool?.retain(bytes);
    this.#blocks.set(block, bytes);
    this.#bytes += bytes.byteLength;
    if (this.#bytes <= this.#budget) return true;
    // Blocks every byte of which has been read go first, least recently used first: the reader (the
    // kernel's page cache, above an NBD or FUSE device) keeps what it read, while a block read in part
    // still holds what it will ask for next (other files that share the block). Then plain LRU.
    for (const pass of ['read', 'any'] as const) {
      for (const [victim, victimBytes] of this.#blocks) {
        if (this.#bytes <= this.#budget) return true;
        const readThrough = this.#coverage.isComplete(victim);
        if (pass === 'read' && !readThrough) continue;
        this.#blocks.delete(victim);
        this.#coverage.forget(victim);
        this.#bytes -= victimBytes.byteLength;
        this.#evicted(victim, victimBytes, readThrough);
        this.#pool?.release(victimBytes);
      }
    }
    return true;
  }

  /** Records that a read covered bytes [offset, offset + length) (of the blocks held). */
  markRead(offset: number, length: number): void {
    this.#coverage.mark(offset, length);
  }

  clear(): void {
    for (const bytes of this.#blocks.values()) this.#pool?.release(bytes);
    this.#blocks.clear();
    this.#coverage.clear();
    this.#bytes = 0;
  }
}
