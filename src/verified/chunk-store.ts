/**
 * Verified chunks on disk: `DIR/chunks/<hex checksum>`, each file a chunk's on-blob bytes (the zstd frame
 * for `+zstd` layers), content-addressed by the checksum the chunk index gives it, so layers that share a
 * chunk share its file. Only bytes that matched their checksum are put here (src/verified/chunk-source.ts),
 * written to a temporary name and renamed (not synced: a torn file fails its check and is refetched); the directory is 0700 and files 0600. Nothing read back is
 * trusted: the source hashes it again before serving it, and drops what fails.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface ChunkStore {
  /** The stored bytes of the chunk with this checksum, or undefined; `length` is what it must hold. */
  get(checksum: Uint8Array, length: number): Promise<Uint8Array | undefined>;
  put(checksum: Uint8Array, bytes: Uint8Array): Promise<void>;
  delete(checksum: Uint8Array): Promise<void>;
}

export async function openChunkStore(cacheDir: string): Promise<ChunkStore> {
  const dir = join(cacheDir, 'chunks');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const path = (checksum: Uint8Array): string => join(dir, Buffer.from(checksum).toString('hex'));
  return {
    async get(checksum, length) {
      let bytes: Buffer;
      try {
        bytes = await readFile(path(checksum));
      } catch {
        return undefined;
      }
      return bytes.byteLength === length ? bytes : undefined;
    },
    async put(checksum, bytes) {
      const target = path(checksum);
      const temp = `${target}.${randomBytes(6).toString('hex')}.tmp`;
      try {
        await writeFile(temp, bytes, { mode: 0o600, flag: 'wx' });
        await rename(temp, target);
      } catch (error) {
        await rm(temp, { force: true });
        throw error;
      }
    },
    async delete(checksum) {
      await rm(path(checksum), { force: true });
    },
  };
}
