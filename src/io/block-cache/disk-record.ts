/**
 * The files of a disk cache entry (see the layout in disk-cache.ts): where they are, the record
 * that lists the durable blocks, the lock that keeps a second process out, and `readCachedHead`, which
 * reads an entry's first bytes without opening it.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErofsOciError } from '../../errors.ts';
import { BlockGrid } from '../block-grid.ts';
import { crc32c } from '../crc32c.ts';
import { readFully } from '../files.ts';
import { isProcessAlive as isAlive } from '../process.ts';

export interface CacheRecord {
  format: 'erofs-oci-block-cache';
  version: 1;
  cacheId: string;
  size: number;
  blockSize: number;
  /** Offsets that start a block besides multiples of the block size (absent in older records: none). */
  anchors?: number[];
  /** [block index, CRC-32C of its bytes] for every block the data file holds durably. */
  blocks: [number, number][];
  /** The data file holds every block and they matched the object's digest (absent in older records). */
  verified?: boolean;
}

export interface CachePaths {
  data: string;
  record: string;
  lock: string;
}

export function cachePaths(dir: string, cacheId: string): CachePaths {
  const key = createHash('sha256').update(cacheId).digest('hex').slice(0, 40);
  return { data: join(dir, `${key}.data`), record: join(dir, `${key}.json`), lock: join(dir, `${key}.lock`) };
}

/**
 * The first `length` bytes of the object, read from its disk cache entry when the entry holds all of them
 * intact (every block listed, every checksum right), else null. For learning an object's layout before the
 * cache is opened (the layout decides where blocks are cut), without asking the origin: a server restarted
 * while the origin is unreachable still starts. Takes no lock: the record is replaced atomically and only
 * blocks it lists, which are durable, are read.
 */
export async function readCachedHead(
  cacheDir: string,
  cacheId: string,
  size: number,
  length: number,
): Promise<Uint8Array | null> {
  const paths = cachePaths(cacheDir, cacheId);
  const record = await readRecord(paths.record);
  if (record === null || record.cacheId !== cacheId || record.size !== size || !Array.isArray(record.blocks))
    return null;
  let grid: BlockGrid;
  try {
    grid = new BlockGrid(size, record.blockSize, record.anchors ?? []);
  } catch {
    // A record no cache of ours would have written: not one to read from.
    return null;
  }
  const end = Math.min(length, size);
  const checksums = new Map(record.blocks.filter(Array.isArray).map(([block, crc]) => [block, crc]));
  const last = end === 0 ? -1 : grid.blockOf(end - 1);
  const span = last < 0 ? 0 : grid.end(last);
  for (let block = 0; block <= last; block++) if (!checksums.has(block)) return null;
  let data: FileHandle | undefined;
  try {
    data = await open(paths.data, 'r');
    const bytes = new Uint8Array(span);
    if ((await readFully(data, bytes, 0)) < span) return null;
    for (let block = 0; block <= last; block++) {
      if (crc32c(bytes.subarray(grid.start(block), grid.end(block))) !== checksums.get(block)) return null;
    }
    return bytes.subarray(0, end);
  } catch {
    // Unreadable: the caller asks the origin instead.
    return null;
  } finally {
    await data?.close();
  }
}

export async function readRecord(path: string): Promise<CacheRecord | null> {
  try {
    const record = JSON.parse(await readFile(path, 'utf8')) as CacheRecord;
    return record?.format === 'erofs-oci-block-cache' && record.version === 1 ? record : null;
  } catch {
    // Missing or unparsable (e.g. written by a crashed process): start the entry afresh.
    return null;
  }
}

/**
 * Whether the disk cache entry of `cacheId` in `dir` holds the whole object and it matched its digest, as
 * its record says (for `list`; takes no lock, the record is replaced atomically).
 */
export async function isCacheVerified(dir: string, cacheId: string): Promise<boolean> {
  return (await readRecord(cachePaths(dir, cacheId).record))?.verified === true;
}

/** Creates `path` holding our pid; takes over a lock whose process is gone. */
export async function takeLock(path: string, action: string): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(action, error);
    }
    const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
      throw new ErofsOciError('usage', `${action}: it is in use by process ${pid}`, {
        hint: 'give each server its own --cache-dir, or stop the other one',
      });
    }
    if (pid === process.pid)
      throw new ErofsOciError('usage', `${action}: it is already open in this process`);
    await unlink(path).catch(() => {});
  }
  throw new ErofsOciError('io', `${action}: cannot take the lock ${path}`);
}

export function fsError(action: string, error: unknown): ErofsOciError {
  const code = (error as NodeJS.ErrnoException)?.code;
  const reason = (error as Error)?.message ?? String(error);
  if (code === 'EACCES' || code === 'EPERM')
    return new ErofsOciError('auth', `${action}: permission denied`, { cause: error });
  return new ErofsOciError('io', `${action}: ${reason}`, { cause: error });
}
