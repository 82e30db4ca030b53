import type { BlockGrid } from '../block-grid.ts';

/**
 * Which 4 KiB pages of each block reads have covered, to tell blocks read through (the reader keeps
 * them in its own cache) from blocks still partly unread.
 */
export class ReadCoverage {
  static readonly PAGE = 4096;
  readonly #grid: BlockGrid;
  /** Whether a block is kept (in memory): only those are tracked, the others have nothing to evict. */
  readonly #kept: (block: number) => boolean;
  /** Per block: a bit per page, and how many pages are still unread. */
  readonly #blocks = new Map<number, { bits: Uint8Array; unread: number }>();

  constructor(grid: BlockGrid, kept: (block: number) => boolean) {
    this.#grid = grid;
    this.#kept = kept;
  }

  /** Records a read of the kept blocks it covers. */
  mark(offset: number, length: number): void {
    if (length === 0) return;
    const end = offset + length;
    for (let block = this.#grid.blockOf(offset); block <= this.#grid.blockOf(end - 1); block++) {
      if (!this.#kept(block)) continue;
      const start = this.#grid.start(block);
      const pages = Math.ceil(this.#grid.length(block) / ReadCoverage.PAGE);
      let entry = this.#blocks.get(block);
      if (!entry) {
        entry = { bits: new Uint8Array(Math.ceil(pages / 8)), unread: pages };
        this.#blocks.set(block, entry);
      }
      const firstPage = Math.floor((Math.max(offset, start) - start) / ReadCoverage.PAGE);
      const lastPage = Math.floor(
        (Math.min(end, start + this.#grid.length(block)) - 1 - start) / ReadCoverage.PAGE,
      );
      for (let page = firstPage; page <= lastPage && entry.unread > 0; page++) {
        const bit = 1 << (page & 7);
        const byte = page >> 3;
        if ((entry.bits[byte] as number) & bit) continue;
        entry.bits[byte] = (entry.bits[byte] as number) | bit;
        entry.unread--;
      }
    }
  }

  isComplete(block: number): boolean {
    return this.#blocks.get(block)?.unread === 0;
  }

  forget(block: number): void {
    this.#blocks.delete(block);
  }

  clear(): void {
    this.#blocks.clear();
  }
}
