/** Small file helpers shared by commands: errors named the way users read them, atomic writes. */
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ErofsOciError } from '../errors.ts';

/** Maps a Node file-system error to our error type: `Cannot open x: no such file or directory`. */
export function fileError(action: string, error: unknown): ErofsOciError {
  const code = (error as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT')
    return new ErofsOciError('not-found', `${action}: no such file or directory`, { cause: error });
  if (code === 'EACCES' || code === 'EPERM') {
    return new ErofsOciError('auth', `${action}: permission denied`, { cause: error });
  }
  if (code === 'EISDIR') return new ErofsOciError('usage', `${action}: it is a directory`, { cause: error });
  return new ErofsOciError('io', `${action}: ${(error as Error)?.message ?? String(error)}`, {
    cause: error,
  });
}

/**
 * Reads into `buffer` from `position` until it is full or the file ends (pread may return fewer bytes than
 * asked); resolves with how many bytes it read. What a short read means is the caller's to say.
 */
export async function readFully(handle: FileHandle, buffer: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < buffer.byteLength) {
    const { bytesRead } = await handle.read(buffer, done, buffer.byteLength - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** A hidden name beside `path` for writing it before it is complete. */
export function temporaryPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
}

/** Writes `path` under a temporary name and renames it into place, so readers never see half a file. */
export async function writeFileAtomically(path: string, bytes: Uint8Array, mode = 0o644): Promise<void> {
  const temporary = temporaryPathFor(path);
  try {
    const handle = await open(temporary, 'w', mode);
    try {
      await handle.writeFile(bytes);
    } finally {
      await handle.close();
    }
    await rename(temporary, path);
  } catch (error) {
    // The temporary file may not exist (open failed); its absence is what we want anyway.
    await rm(temporary, { force: true });
    throw fileError(`Cannot write ${path}`, error);
  }
}
