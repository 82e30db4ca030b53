/**
 * Writes a converted image into an OCI image layout directory (`oci:DIR[:TAG]`). Blobs go in first (each
 * under a temporary name, renamed when complete), `index.json` last and atomically, so the layout never
 * names a blob it does not hold. An existing layout keeps its other images; an entry with the same tag is
 * replaced.
 */
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ErofsOciError } from '../errors.ts';
import { fileError, temporaryPathFor, writeFileAtomically } from '../io/files.ts';
import { MediaType } from '../oci/index.ts';
import type { Blob } from './documents.ts';

const REF_NAME = 'org.opencontainers.image.ref.name';

export type Transfer = 'uploaded' | 'exists' | 'mounted';

export class LayoutSink {
  readonly directory: string;
  readonly tag: string | undefined;

  constructor(directory: string, tag: string | undefined) {
    this.directory = directory;
    this.tag = tag;
  }

  /** A directory for work files on the layout's file system, so blobs are renamed in, not copied. */
  async workDirectory(): Promise<string> {
    await mkdir(join(this.directory, 'blobs', 'sha256'), { recursive: true });
    const work = join(this.directory, `.erofs-oci-work-${process.pid}-${Date.now()}`);
    await mkdir(work, { mode: 0o700 });
    return work;
  }

  #path(digest: string): string {
    const [algorithm, hex] = digest.split(':');
    return join(this.directory, 'blobs', algorithm as string, hex as string);
  }

  async #has(digest: string, size: number): Promise<boolean> {
    try {
      return (await stat(this.#path(digest))).size === size;
    } catch {
      return false;
    }
  }

  /** Moves a finished blob file into place. */
  async putFile(
    digest: string,
    size: number,
    path: string,
    _signal?: AbortSignal,
    onBytes?: (bytes: number) => void,
  ): Promise<Transfer> {
    if (await this.#has(digest, size)) {
      await rm(path, { force: true });
      return 'exists';
    }
    await rename(path, this.#path(digest)).catch((error) => {
      throw fileError(`Cannot write blob ${digest} into ${this.directory}`, error);
    });
    onBytes?.(size);
    return 'uploaded';
  }

  async copyBlob(
    descriptor: { digest: string; size: number },
    open: (signal?: AbortSignal) => AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<Transfer> {
    if (await this.#has(descriptor.digest, descriptor.size)) return 'exists';
    const path = this.#path(descriptor.digest);
    await mkdir(dirname(path), { recursive: true });
    await streamToFile(open(signal), temporaryPathFor(path), path);
    return 'uploaded';
  }

  async putManifest(manifest: Blob): Promise<void> {
    await this.putBlob(manifest);
  }

  async putBlob(blob: Blob): Promise<Transfer> {
    if (await this.#has(blob.digest, blob.size)) return 'exists';
    await mkdir(dirname(this.#path(blob.digest)), { recursive: true });
    await writeFileAtomically(this.#path(blob.digest), blob.bytes);
    return 'uploaded';
  }

  /** Names the manifest (or index) in `index.json`: the last step. */
  async putRoot(root: Blob, platform?: unknown): Promise<void> {
    await this.putBlob(root);
    await writeFileAtomically(
      join(this.directory, 'oci-layout'),
      new TextEncoder().encode('{"imageLayoutVersion":"1.0.0"}'),
    );
    let manifests: Record<string, unknown>[] = [];
    try {
      const existing = JSON.parse(await readFile(join(this.directory, 'index.json'), 'utf8')) as {
        manifests?: unknown;
      };
      if (Array.isArray(existing.manifests)) manifests = existing.manifests as Record<string, unknown>[];
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new ErofsOciError('corrupt', `Cannot read ${join(this.directory, 'index.json')}`, {
          cause: error,
        });
      }
    }
    manifests = manifests.filter((m) => {
      const name = (m.annotations as Record<string, string> | undefined)?.[REF_NAME];
      return this.tag === undefined ? m.digest !== root.digest : name !== this.tag;
    });
    manifests.push({
      mediaType: root.mediaType,
      digest: root.digest,
      size: root.size,
      ...(platform ? { platform } : {}),
      ...(this.tag ? { annotations: { [REF_NAME]: this.tag } } : {}),
    });
    const index = { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests };
    await writeFileAtomically(
      join(this.directory, 'index.json'),
      new TextEncoder().encode(JSON.stringify(index)),
    );
  }
}

/** Writes a (verifying) stream to `temporary` and renames it to `path` once the stream has ended. */
export async function streamToFile(
  bytes: AsyncIterable<Uint8Array>,
  temporary: string,
  path: string,
): Promise<void> {
  try {
    const out = await open(temporary, 'w', 0o644);
    try {
      for await (const chunk of bytes) await out.write(chunk);
    } finally {
      await out.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    if (error instanceof ErofsOciError || (error as Error)?.name === 'AbortError') throw error;
    throw fileError(`Cannot write ${path}`, error);
  }
}
