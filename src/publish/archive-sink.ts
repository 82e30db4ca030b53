/**
 * Writes a converted image as an OCI archive (`oci-archive:FILE[:TAG]`): a tar of an OCI image layout, as
 * skopeo writes it. The layout is assembled in a work directory beside FILE (blobs renamed in as they are
 * converted), and once its `index.json` is written it is tarred to a temporary name beside FILE and renamed
 * over it, so FILE is either the old file or the complete archive. The archive holds this image alone.
 */
import { mkdtemp, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ErofsOciError } from '../errors.ts';
import { fileError, temporaryPathFor } from '../io/files.ts';
import { END_OF_ARCHIVE, encodeTarHeader } from '../tar/writer.ts';
import type { Blob } from './documents.ts';
import { LayoutSink, type Transfer } from './layout-sink.ts';

const COPY_BUFFER = 1 << 20;

export class ArchiveSink {
  readonly file: string;
  readonly #tag: string | undefined;
  #layout: LayoutSink | undefined;
  #directory: string | undefined;

  constructor(file: string, tag: string | undefined) {
    this.file = file;
    this.#tag = tag;
  }

  async #open(): Promise<LayoutSink> {
    if (!this.#layout) {
      this.#directory = await mkdtemp(join(dirname(this.file), `.${basename(this.file)}.layout-`)).catch(
        (error) => {
          throw fileError(`Cannot create a work directory beside ${this.file}`, error);
        },
      );
      this.#layout = new LayoutSink(this.#directory, this.#tag);
    }
    return this.#layout;
  }

  async workDirectory(): Promise<string> {
    return (await this.#open()).workDirectory();
  }

  async putFile(
    digest: string,
    size: number,
    path: string,
    signal?: AbortSignal,
    onBytes?: (bytes: number) => void,
  ): Promise<Transfer> {
    return (await this.#open()).putFile(digest, size, path, signal, onBytes);
  }

  async copyBlob(
    descriptor: { digest: string; size: number },
    open: (signal?: AbortSignal) => AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<Transfer> {
    return (await this.#open()).copyBlob(descriptor, open, signal);
  }

  async putManifest(manifest: Blob): Promise<void> {
    await (await this.#open()).putManifest(manifest);
  }

  async putBlob(blob: Blob): Promise<Transfer> {
    return (await this.#open()).putBlob(blob);
  }

  async putRoot(root: Blob, platform?: unknown, signal?: AbortSignal): Promise<void> {
    const layout = await this.#open();
    await layout.putRoot(root, platform);
    await writeLayoutTar(layout.directory, this.file, signal);
  }

  async close(): Promise<void> {
    if (this.#directory) await rm(this.#directory, { recursive: true, force: true });
  }
}

/** Tars `oci-layout`, `index.json` and `blobs/` of a layout (sorted, so the same layout gives the same tar). */
async function writeLayoutTar(layout: string, file: string, signal?: AbortSignal): Promise<void> {
  const entries: { name: string; path?: string }[] = [
    { name: 'oci-layout', path: join(layout, 'oci-layout') },
    { name: 'index.json', path: join(layout, 'index.json') },
    { name: 'blobs/' },
  ];
  for (const algorithm of (await readdir(join(layout, 'blobs'))).sort()) {
    entries.push({ name: `blobs/${algorithm}/` });
    for (const hex of (await readdir(join(layout, 'blobs', algorithm))).sort()) {
      if (!hex.startsWith('.'))
        entries.push({ name: `blobs/${algorithm}/${hex}`, path: join(layout, 'blobs', algorithm, hex) });
    }
  }
  const temporary = temporaryPathFor(file);
  try {
    const out = await open(temporary, 'w', 0o644);
    try {
      const buffer = Buffer.allocUnsafe(COPY_BUFFER);
      for (const entry of entries) {
        signal?.throwIfAborted();
        if (!entry.path) {
          await out.write(encodeTarHeader({ name: entry.name, kind: 'dir' }));
          continue;
        }
        const size = (await stat(entry.path)).size;
        await out.write(encodeTarHeader({ name: entry.name, kind: 'file', size }));
        const input = await open(entry.path, 'r');
        try {
          for (let done = 0; done < size; ) {
            const { bytesRead } = await input.read(buffer, 0, Math.min(COPY_BUFFER, size - done), done);
            if (bytesRead === 0) throw new Error(`${entry.path} shrank while being archived`);
            await out.write(buffer.subarray(0, bytesRead));
            done += bytesRead;
          }
        } finally {
          await input.close();
        }
        const padding = (512 - (size % 512)) % 512;
        if (padding > 0) await out.write(new Uint8Array(padding));
      }
      await out.write(END_OF_ARCHIVE);
      await out.sync();
    } finally {
      await out.close();
    }
    await rename(temporary, file);
  } catch (error) {
    await rm(temporary, { force: true });
    if (error instanceof ErofsOciError || (error as Error)?.name === 'AbortError') throw error;
    throw fileError(`Cannot write ${file}`, error);
  }
}
