/**
 * The files of a local image layout, wherever they live: a directory (`oci:`) or a tar archive
 * (`oci-archive:`, `docker-archive:`). Archives are indexed in place; a compressed archive (gzip or zstd,
 * detected by magic) is first decompressed into a private temporary directory, removed on close.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { type FileHandle, mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createZstdDecompress } from 'node:zlib';
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { readFully } from '../io/files.ts';
import { readTarIndex, resolveMember, type TarMember } from './tar-index.ts';

export interface FileLocation {
  readonly file: string;
  readonly offset: number;
  readonly size: number;
}

export interface LayoutFiles {
  /** For messages: `oci:/path` or `docker-archive:/path`. */
  readonly name: string;
  /** Where the file `path` (relative to the layout root) is, or undefined when it does not exist. */
  locate(path: string): Promise<FileLocation | undefined>;
  close(): Promise<void>;
}

function fsError(action: string, error: unknown): ErofsOciError {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR')
    return new ErofsOciError('not-found', `${action}: no such file`, { cause: error });
  if (code === 'EACCES' || code === 'EPERM')
    return new ErofsOciError('auth', `${action}: permission denied`, { cause: error });
  return new ErofsOciError('io', `${action}: ${code ?? String(error)}`, { cause: error });
}

export async function openDirectoryFiles(dir: string, name: string): Promise<LayoutFiles> {
  try {
    const info = await stat(dir);
    if (!info.isDirectory())
      throw new ErofsOciError('usage', `Cannot open ${name}: ${dir} is not a directory`);
  } catch (error) {
    if (error instanceof ErofsOciError) throw error;
    throw fsError(`Cannot open ${name}`, error);
  }
  return {
    name,
    async locate(path) {
      const file = join(dir, path);
      try {
        const info = await stat(file);
        return info.isFile() ? { file, offset: 0, size: info.size } : undefined;
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
        throw fsError(`Cannot read ${path} in ${name}`, error);
      }
    },
    async close() {},
  };
}

type ArchiveCompression = 'none' | 'gzip' | 'zstd';

function compressionOf(magic: Uint8Array): ArchiveCompression {
  if (magic[0] === 0x1f && magic[1] === 0x8b) return 'gzip';
  if (magic[0] === 0x28 && magic[1] === 0xb5 && magic[2] === 0x2f && magic[3] === 0xfd) return 'zstd';
  return 'none';
}

export async function openArchiveFiles(
  archive: string,
  name: string,
  options: { signal?: AbortSignal } = {},
): Promise<LayoutFiles> {
  throwIfAborted(options.signal);
  let path = archive;
  let tempDir: string | undefined;
  let handle: FileHandle | undefined;
  try {
    try {
      handle = await open(archive, 'r');
    } catch (error) {
      throw fsError(`Cannot open ${name}`, error);
    }
    const magic = Buffer.alloc(4);
    await handle.read(magic, 0, 4, 0);
    const compression = compressionOf(magic);
    if (compression !== 'none') {
      await handle.close();
      handle = undefined;
      tempDir = await mkdtemp(join(tmpdir(), 'erofs-oci-archive-'));
      path = join(tempDir, 'archive.tar');
      try {
        await pipeline(
          createReadStream(archive),
          compression === 'gzip' ? createGunzip() : createZstdDecompress(),
          createWriteStream(path, { mode: 0o600 }),
          { signal: options.signal },
        );
      } catch (error) {
        throwIfAborted(options.signal);
        throw new CorruptInputError(
          `Cannot decompress ${name} (${compression}): ${(error as Error).message}`,
          undefined,
          { cause: error },
        );
      }
      handle = await open(path, 'r');
    }
    const size = (await handle.stat()).size;
    const members = await readTarIndex(handle, size, name, options);
    await handle.close();
    handle = undefined;
    const removeTemp = tempDir;
    return archiveFiles(path, name, members, async () => {
      if (removeTemp !== undefined) await rm(removeTemp, { recursive: true, force: true });
    });
  } catch (error) {
    await handle?.close();
    if (tempDir !== undefined) await rm(tempDir, { recursive: true, force: true });
    throw error;
  }
}

function archiveFiles(
  path: string,
  name: string,
  members: Map<string, TarMember>,
  cleanup: () => Promise<void>,
): LayoutFiles {
  return {
    name,
    async locate(memberName) {
      const member = resolveMember(members, memberName, name);
      return member === undefined ? undefined : { file: path, offset: member.offset, size: member.size };
    },
    close: cleanup,
  };
}

/** Reads a whole small file of a layout; undefined when it does not exist. */
export async function readLayoutFile(
  files: LayoutFiles,
  path: string,
  limit: number,
): Promise<Uint8Array | undefined> {
  const location = await files.locate(path);
  if (location === undefined) return undefined;
  if (location.size > limit) {
    throw new ErofsOciError(
      'corrupt',
      `Cannot read ${path} in ${files.name}: ${location.size} bytes is more than ${limit}`,
    );
  }
  return readLocation(location, 0, location.size, `${path} in ${files.name}`);
}

/** Reads `length` bytes at `offset` within a located file. */
export async function readLocation(
  location: FileLocation,
  offset: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  if (offset < 0 || length < 0 || offset + length > location.size) {
    throw new ErofsOciError(
      'internal',
      `Cannot read ${length} bytes at offset ${offset} of ${what}: it has ${location.size} bytes`,
    );
  }
  let handle: FileHandle;
  try {
    handle = await open(location.file, 'r');
  } catch (error) {
    throw fsError(`Cannot open ${what}`, error);
  }
  try {
    const buffer = Buffer.alloc(length);
    const done = await readFully(handle, buffer, location.offset + offset);
    if (done < length) throw new CorruptInputError(`Cannot read ${what}: the file ends early`, offset + done);
    return buffer;
  } finally {
    await handle.close();
  }
}

/** Streams a located file. */
export function streamLocation(
  location: FileLocation,
  signal: AbortSignal | undefined,
): AsyncIterable<Uint8Array> {
  if (location.size === 0) return (async function* () {})();
  return createReadStream(location.file, {
    start: location.offset,
    end: location.offset + location.size - 1,
    highWaterMark: 1024 * 1024,
    signal,
  });
}
