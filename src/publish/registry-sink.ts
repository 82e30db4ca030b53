/**
 * Writes a converted image into a registry repository: blobs pushed as they are converted (skipped when
 * there, mounted from the source repository when it has them, else uploaded in resumable chunks), the
 * manifest `PUT` last, so the tag never names a blob the registry lacks.
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PushClient } from '../oci/push.ts';
import type { Blob } from './documents.ts';
import { streamToFile, type Transfer } from './layout-sink.ts';

export class RegistrySink {
  readonly #client: PushClient;
  readonly #tag: string | undefined;

  constructor(client: PushClient, tag: string | undefined) {
    this.#client = client;
    this.#tag = tag;
  }

  async workDirectory(): Promise<string> {
    return mkdtemp(join(tmpdir(), 'erofs-oci-convert-'));
  }

  async putFile(
    digest: string,
    size: number,
    path: string,
    signal?: AbortSignal,
    onBytes?: (bytes: number) => void,
  ): Promise<Transfer> {
    const handle = await open(path, 'r');
    try {
      return await this.#client.putBlob(digest, size, { kind: 'file', handle }, signal, onBytes);
    } finally {
      await handle.close();
      await rm(path, { force: true });
    }
  }

  async copyBlob(
    descriptor: { digest: string; size: number },
    open: (signal?: AbortSignal) => AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<Transfer> {
    if (await this.#client.hasBlob(descriptor.digest, descriptor.size, signal)) return 'exists';
    const directory = await mkdtemp(join(tmpdir(), 'erofs-oci-copy-'));
    try {
      const path = join(directory, 'blob');
      await streamToFile(open(signal), `${path}.tmp`, path);
      return await this.putFile(descriptor.digest, descriptor.size, path, signal);
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  }

  async putManifest(manifest: Blob, signal?: AbortSignal): Promise<void> {
    await this.#client.putManifest(manifest.digest, manifest.mediaType, manifest.bytes, signal);
  }

  putBlob(blob: Blob, signal?: AbortSignal): Promise<Transfer> {
    return this.#client.putBlob(blob.digest, blob.size, { kind: 'bytes', bytes: blob.bytes }, signal);
  }

  async putRoot(root: Blob, _platform?: unknown, signal?: AbortSignal): Promise<void> {
    await this.#client.putManifest(this.#tag ?? root.digest, root.mediaType, root.bytes, signal);
  }
}
