/**
 * A byte source over a local file (an EROFS image, a layer tarball, a metadata file). Reads are positional
 * (`pread`), so any number may be in flight on one handle.
 */
import { open } from 'node:fs/promises';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource, Closable, ReadOptions } from './byte-source.ts';

export interface OpenFileSourceOptions {
  signal?: AbortSignal;
}

export type FileSource = ByteSource & Closable & { readonly path: string };

export async function openFileSource(path: string, options: OpenFileSourceOptions = {}): Promise<FileSource> {
  throwIfAborted(options.signal);
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    throw fsError(`Cannot open ${path}`, error);
  }
  let size: number;
  try {
    const stat = await handle.stat();
    if (stat.isDirectory()) throw new ErofsOciError('usage', `Cannot read ${path}: it is a directory`);
    size = stat.size;
  } catch (error) {
    await handle.close();
    if (error instanceof ErofsOciError) throw error;
    throw fsError(`Cannot stat ${path}`, error);
  }
  let closed = false;

  return {
    path,
    size,
    async read(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Uint8Array> {
      throwIfAborted(readOptions.signal);
      if (closed) throw new ErofsOciError('internal', `Cannot read ${path}: the file source is closed`);
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw new ErofsOciError(
          'internal',
          `Cannot read ${path}: invalid range offset ${offset} length ${length}`,
        );
      }
      if (offset + length > size) {
        throw new ErofsOciError(
          'corrupt',
          `Cannot read ${length} bytes at offset ${offset} of ${path}: the file has ${size} bytes`,
        );
      }
      const buffer = new Uint8Array(length);
      let done = 0;
      // pread may return fewer bytes than asked (large reads, signals); loop until the range is filled.
      while (done < length) {
        throwIfAborted(readOptions.signal);
        let bytesRead: number;
        try {
          ({ bytesRead } = await handle.read(buffer, done, length - done, offset + done));
        } catch (error) {
          throw fsError(`Cannot read ${path} at offset ${offset + done}`, error);
        }
        if (bytesRead === 0) {
          // The file shrank after it was opened.
          throw new ErofsOciError(
            'corrupt',
            `Cannot read ${path} at offset ${offset + done}: unexpected end of file (expected ${size} bytes)`,
          );
        }
        done += bytesRead;
      }
      return buffer;
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await handle.close();
    },
  };
}

function fsError(action: string, error: unknown): ErofsOciError {
  const code = (error as NodeJS.ErrnoException)?.code;
  const reason = (error as Error)?.message ?? String(error);
  if (code === 'ENOENT') return new ErofsOciError('not-found', `${action}: no such file`, { cause: error });
  if (code === 'EACCES' || code === 'EPERM') {
    return new ErofsOciError('auth', `${action}: permission denied`, { cause: error });
  }
  if (code === 'EISDIR') return new ErofsOciError('usage', `${action}: it is a directory`, { cause: error });
  return new ErofsOciError('io', `${action}: ${reason}`, { cause: error });
}
