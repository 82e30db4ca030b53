/**
 * Compression on worker threads: segments of files (a few MiB each, cut at fixed offsets) are compressed
 * independently, so the result depends only on the input and the options, never on which worker ran
 * first; the writer consumes results in submission order. At most `2 × workers` segments are in flight:
 * `compress` waits for a free slot, which holds back the reader of the source (bounded memory).
 * With 0 workers segments are compressed on the calling thread (same bytes).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { ErofsOciError } from '../errors.ts';
import { type CompressOptions, compressFile } from './pcluster-compress.ts';
import type { PclusterExtent } from './zindex-writer.ts';

export interface CompressedSegment {
  /** Extents from the segment's start, `pblk` counted from its first pcluster block. */
  extents: PclusterExtent[];
  /** The pclusters, back to back: `blocks` blocks. */
  bytes: Uint8Array;
  blocks: number;
}

interface Pending {
  resolve(segment: CompressedSegment): void;
  reject(error: Error): void;
}

export function defaultCompressWorkers(): number {
  return Math.max(1, Math.min(availableParallelism(), 8));
}

export class CompressPool {
  readonly #workers: Worker[] = [];
  readonly #idle: Worker[] = [];
  readonly #pending = new Map<number, Pending>();
  readonly #waiting: (() => void)[] = [];
  readonly #limit: number;
  #inFlight = 0;
  #nextId = 0;
  #failed: Error | null = null;

  constructor(workers: number) {
    this.#limit = Math.max(1, workers * 2);
    for (let i = 0; i < workers; i++) {
      const worker = new Worker(new URL('./compress-worker.ts', import.meta.url));
      worker.unref();
      worker.on('message', (message: { id: number; error?: string } & CompressedSegment) => {
        const pending = this.#pending.get(message.id);
        this.#pending.delete(message.id);
        this.#release(worker);
        if (!pending) return;
        if (message.error !== undefined) {
          pending.reject(new ErofsOciError('internal', `compression failed: ${message.error}`));
        } else {
          pending.resolve({ extents: message.extents, bytes: message.bytes, blocks: message.blocks });
        }
      });
      worker.on('error', (error) => this.#fail(error));
      this.#workers.push(worker);
      this.#idle.push(worker);
    }
  }

  /** Waits for a free slot, then starts compressing `data` (a copy goes to the worker). */
  async compress(data: Uint8Array, options: CompressOptions): Promise<{ done: Promise<CompressedSegment> }> {
    if (this.#workers.length === 0) {
      const file = compressFile(data, options);
      const bytes = new Uint8Array(file.blocks * options.blockSize);
      let at = 0;
      for (const p of file.pclusters) {
        bytes.set(p, at);
        at += p.byteLength;
      }
      return { done: Promise.resolve({ extents: file.extents, bytes, blocks: file.blocks }) };
    }
    while (this.#inFlight >= this.#limit) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    if (this.#failed) throw this.#failed;
    this.#inFlight++;
    const id = this.#nextId++;
    const result = new Promise<CompressedSegment>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
    });
    result.catch(() => {});
    this.#queue.push({ id, data, options });
    this.#dispatch();
    return { done: result };
  }

  readonly #queue: { id: number; data: Uint8Array; options: CompressOptions }[] = [];

  #dispatch(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      const worker = this.#idle.pop() as Worker;
      const job = this.#queue.shift() as { id: number; data: Uint8Array; options: CompressOptions };
      worker.ref();
      worker.postMessage(job);
    }
  }

  #release(worker: Worker): void {
    worker.unref();
    this.#idle.push(worker);
    this.#inFlight--;
    this.#waiting.shift()?.();
    this.#dispatch();
  }

  #fail(error: Error): void {
    this.#failed ??= new ErofsOciError('internal', `compression worker failed: ${error.message}`, {
      cause: error,
    });
    for (const pending of this.#pending.values()) pending.reject(this.#failed);
    this.#pending.clear();
    for (const wake of this.#waiting.splice(0)) wake();
  }

  close(): void {
    for (const worker of this.#workers) void worker.terminate();
    this.#workers.length = 0;
  }
}
