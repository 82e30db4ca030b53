/**
 * Without a disk cache: a private temporary file (see `DiskCache.openTemporary`) for blocks evicted from
 * memory before the running hash took them, so that the hash finds them when it gets there. Without it,
 * a copy of the whole object by readers working on several regions at once (nbdcopy's threads) evicts
 * the later regions' blocks while the hash is still in the first, and ends unverified. Opened at the
 * first block kept, closed once the verdict is in, and bounded: random reads far ahead of the hash must
 * not fill the temporary directory (often memory, on tmpfs) with the object.
 */
import type { BlockGrid } from '../block-grid.ts';
import { DiskCache } from './disk-cache.ts';

const MiB = 1 << 20;
/** Most bytes kept by default: enough for a copy by nbdcopy's threads, which work 128 MiB apart. */
export const HASH_SPILL_BYTES = 1024 * MiB;

export interface HashSpillOptions {
  grid: BlockGrid;
  /** Most bytes to keep. Default `HASH_SPILL_BYTES`. */
  maxBytes?: number;
  /** Whether the running hash still needs the block (checked again once the file is open). */
  needs(block: number): boolean;
  log(line: string): void;
}

export class HashSpill {
  readonly #options: HashSpillOptions;
  readonly #maxBytes: number;
  #file: Promise<DiskCache | null> | null = null;
  #bytes = 0;
  #closed = false;

  constructor(options: HashSpillOptions) {
    this.#options = options;
    this.#maxBytes = options.maxBytes ?? HASH_SPILL_BYTES;
  }

  /**
   * Keeps `bytes` of `block` for the running hash, unless the bound is reached or the file is closed;
   * resolves (never rejects) once the bytes are no longer needed.
   */
  keep(block: number, bytes: Uint8Array): Promise<void> {
    if (this.#closed || this.#bytes + bytes.byteLength > this.#maxBytes) return Promise.resolve();
    this.#bytes += bytes.byteLength;
    this.#file ??= DiskCache.openTemporary(this.#options.grid).catch((error: unknown) => {
      this.#options.log(
        `cannot keep blocks for the digest check in a temporary file (${(error as Error).message}): the check waits for them to be fetched again`,
      );
      return null;
    });
    return this.#file.then((file) => {
      if (file && !this.#closed && this.#options.needs(block)) return file.store(block, bytes);
    });
  }

  /** The block's bytes if kept (a promise: the file may still be opening), else undefined. */
  lookup(block: number): Promise<Uint8Array | null> | undefined {
    if (this.#file === null || this.#closed) return undefined;
    return this.#file.then((file) =>
      file?.has(block) ? file.load(block, this.#options.grid.length(block)) : null,
    );
  }

  /** Closes (and so frees) the file; nothing is kept from then on. */
  async close(): Promise<void> {
    this.#closed = true;
    const file = this.#file;
    this.#file = null;
    await (file ?? Promise.resolve(null))
      .then((f) => f?.close())
      .catch(() => {
        // Nothing outlives the process: the file is unlinked already.
      });
  }
}
