import { constants } from 'node:fs';
import {
  chmod,
  type FileHandle,
  mkdir,
  mkdtemp,
  open,
  rmdir,
  unlink,
  writeFile,
  rename,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isErofsOciError } from '../../errors.ts';
import type { BlockGrid } from '../block-grid.ts';
import { crc32c } from '../crc32c.ts';
import { readFully } from '../files.ts';
import {
  type CachePaths,
  type CacheRecord,
  cachePaths,
  fsError,
  readRecord,
  takeLock,
} from './disk-record.ts';

/**
 * The on-disk half of the block cache. Its layout (`cacheDir`, mode 0700), per `cacheId`, under the
 * SHA-256 of the id:
 * - `KEY.data`: a sparse file of the source's size, blocks written at their offsets (0600);
 * - `KEY.json`: which blocks the data file holds, each with its CRC-32C, and whether the whole object was
 *   verified against its digest, rewritten atomically (0600) after the data file is synced, so a block is
 *   listed only once its bytes are durable; a block whose bytes do not match its checksum on reading is
 *   fetched again;
 * - `KEY.lock`: the pid of the process using the entry; a second live process is refused.
 *
 * Or, without paths, a private temporary file (unlinked as soon as it is open, so nothing outlives the
 * process): for a whole download too large for memory, or for blocks kept for the running hash.
 */
export class DiskCache {
  readonly #data: FileHandle;
  readonly #paths: CachePaths | null;
  readonly #base: Omit<CacheRecord, 'blocks'>;
  readonly #grid: BlockGrid;
  /** Blocks whose bytes are in the data file (written, maybe not yet synced), with their checksums. */
  readonly #present = new Map<number, number>();
  /** Blocks being written: they count as present, and loading one waits for its write. */
  readonly #writing = new Map<number, Promise<void>>();
  #verified = false;
  #dirty = false;
  #flushTimer: NodeJS.Timeout | null = null;
  #flushing: Promise<void> = Promise.resolve();
  #closed = false;
  #discarded = false;

  private constructor(
    data: FileHandle,
    paths: CachePaths | null,
    base: Omit<CacheRecord, 'blocks'>,
    grid: BlockGrid,
  ) {
    this.#data = data;
    this.#paths = paths;
    this.#base = base;
    this.#grid = grid;
  }

  static async open(dir: string, cacheId: string, grid: BlockGrid): Promise<DiskCache> {
    const { size, blockSize } = grid;
    const action = `Cannot open the disk cache in ${dir}`;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
    } catch (error) {
      throw fsError(action, error);
    }
    const paths = cachePaths(dir, cacheId);
    await takeLock(paths.lock, `${action} for ${cacheId}`);
    const anchors = [...grid.anchors];
    const base = { format: 'erofs-oci-block-cache', version: 1, cacheId, size, blockSize, anchors } as const;
    let data: FileHandle | undefined;
    try {
      const record = await readRecord(paths.record);
      const reusable =
        record !== null &&
        record.cacheId === cacheId &&
        record.size === size &&
        record.blockSize === blockSize &&
        JSON.stringify(record.anchors ?? []) === JSON.stringify(anchors) &&
        Array.isArray(record.blocks);
      data = await open(paths.data, constants.O_RDWR | constants.O_CREAT, 0o600);
      await data.chmod(0o600);
      if (!reusable) {
        await data.truncate(0);
        await unlink(paths.record).catch(() => {
          // No record (or an unreadable one we are replacing): nothing to remove.
        });
      }
      await data.truncate(size);
      const cache = new DiskCache(data, paths, base, grid);
      if (reusable && record) {
        for (const entry of record.blocks) {
          if (Array.isArray(entry) && Number.isInteger(entry[0]) && Number.isInteger(entry[1])) {
            cache.#present.set(entry[0], entry[1]);
          }
        }
        cache.#verified = record.verified === true;
      }
      return cache;
    } catch (error) {
      await data?.close().catch(() => {});
      await unlink(paths.lock).catch(() => {});
      throw isErofsOciError(error) ? error : fsError(action, error);
    }
  }

  /** A private file in the system's temporary directory, gone when closed (or when the process dies). */
  static async openTemporary(grid: BlockGrid): Promise<DiskCache> {
    const { size, blockSize } = grid;
    const action = `Cannot create a temporary file in ${tmpdir()} for a ${size}-byte download`;
    let dir: string | undefined;
    try {
      dir = await mkdtemp(join(tmpdir(), 'erofs-oci-blob-'));
      const path = join(dir, 'data');
      const data = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
      await unlink(path);
      await rmdir(dir);
      dir = undefined;
      try {
        await data.truncate(size);
      } catch (error) {
        await data.close();
        throw error;
      }
      const base = { format: 'erofs-oci-block-cache', version: 1, cacheId: '', size, blockSize } as const;
      return new DiskCache(data, null, base, grid);
    } catch (error) {
      if (dir !== undefined) await rmdir(dir).catch(() => {});
      throw fsError(action, error);
    }
  }

  /** Whether the entry holds every block and verified them in an earlier run. */
  get verified(): boolean {
    return this.#verified;
  }

  get count(): number {
    return this.#present.size;
  }

  blocks(): Iterable<number> {
    return this.#present.keys();
  }

  has(block: number): boolean {
    return this.#present.has(block) || this.#writing.has(block);
  }

  /** The block's bytes, or null when they are unreadable or do not match their checksum. */
  async load(block: number, length: number): Promise<Uint8Array | null> {
    await this.#writing.get(block);
    const expected = this.#present.get(block);
    if (expected === undefined || this.#closed || this.#discarded) return null;
    const bytes = new Uint8Array(length);
    try {
      const done = await readFully(this.#data, bytes, this.#grid.start(block));
      // A temporary file lives as long as this process: no checksums needed for its blocks.
      if (done === length && (this.#paths === null || crc32c(bytes) === expected)) return bytes;
    } catch {
      // An unreadable cache block is a cache miss: the caller fetches the bytes again.
    }
    this.#present.delete(block);
    // Its replacement is fetched again: the entry is no longer known to match the digest as a whole.
    this.#verified = false;
    this.#dirty = true;
    return null;
  }

  /**
   * Writes a fetched block in the background; the record lists it after the next sync. Resolves (never
   * rejects) once the bytes are no longer needed.
   */
  store(block: number, bytes: Uint8Array): Promise<void> {
    if (this.#closed || this.#discarded || this.has(block)) return Promise.resolve();
    const write = this.#write(block, bytes);
    this.#writing.set(block, write);
    void write.finally(() => {
      if (this.#writing.get(block) === write) this.#writing.delete(block);
    });
    return write;
  }

  async #write(block: number, bytes: Uint8Array): Promise<void> {
    try {
      let done = 0;
      while (done < bytes.byteLength) {
        const { bytesWritten } = await this.#data.write(
          bytes,
          done,
          bytes.byteLength - done,
          this.#grid.start(block) + done,
        );
        done += bytesWritten;
      }
      if (!this.#closed && !this.#discarded) {
        this.#present.set(block, this.#paths === null ? 0 : crc32c(bytes));
        this.#dirty = true;
        this.#scheduleFlush();
      }
    } catch {
      // A block that cannot be written (disk full) stays uncached; reads fetch it again.
    }
  }

  /** Records that every block matched the object's digest, so a reopened entry is not hashed again. */
  markVerified(): void {
    if (this.#verified || this.#closed || this.#discarded) return;
    this.#verified = true;
    this.#dirty = true;
    this.#scheduleFlush();
  }

  /** Forgets every block and removes the entry's files (its bytes failed verification); keeps the lock. */
  async discard(): Promise<void> {
    if (this.#discarded) return;
    this.#discarded = true;
    this.#present.clear();
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    await Promise.allSettled(this.#writing.values());
    await this.#flushing;
    if (this.#paths === null) {
      await this.#data.truncate(0).catch(() => {
        // The file is already unlinked: its space comes back when it is closed.
      });
      return;
    }
    for (const path of [this.#paths.record, this.#paths.data]) {
      await unlink(path).catch(() => {
        // Already gone, or not ours to remove: either way no reader can use it any more.
      });
    }
  }

  #scheduleFlush(): void {
    if (this.#flushTimer || this.#paths === null) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = null;
      this.#flushing = this.#flushing
        .then(() => this.#flush())
        .catch(() => {
          // The record stays as it was; the blocks are listed at the next successful flush.
        });
    }, 500);
  }

  /** Syncs the data file, then atomically replaces the record with what the data file now holds. */
  async #flush(): Promise<void> {
    if (!this.#dirty || this.#paths === null || this.#discarded) return;
    this.#dirty = false;
    const blocks: [number, number][] = [...this.#present].sort((a, b) => a[0] - b[0]);
    await this.#data.datasync();
    if (this.#discarded) return;
    const record: CacheRecord = { ...this.#base, blocks, verified: this.#verified };
    const temporary = `${this.#paths.record}.${process.pid}.tmp`;
    await writeFile(temporary, JSON.stringify(record), { mode: 0o600 });
    await rename(temporary, this.#paths.record);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await Promise.allSettled(this.#writing.values());
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    this.#closed = true;
    await this.#flushing;
    await this.#flush().catch(() => {
      // Unlisted blocks are fetched again next time; closing must still release the file and the lock.
    });
    await this.#data.close();
    if (this.#paths) await unlink(this.#paths.lock).catch(() => {});
  }
}
