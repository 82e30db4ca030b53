/**
 * The two stages of a convert, overlapped: layers are converted `convert` at once (CPU: decompression on
 * the thread pool, tar and EROFS writing and hashing on the main thread), and each converted layer is
 * handed to an upload stage that runs `upload` at once (network and the registry's own work) while the
 * next layers convert. A converted layer waits on disk for its upload, never in memory; at most `backlog`
 * wait, so a slow destination throttles the conversions instead of filling the disk. The first failure
 * of either stage aborts everything still running and is what the pipeline throws.
 */
import { ErofsOciError } from '../errors.ts';

export interface PipelineLimits {
  convert: number;
  upload: number;
  /** Converted layers not yet uploaded, uploads running included. */
  backlog: number;
}

export async function runPipeline<T, C>(
  items: readonly T[],
  limits: PipelineLimits,
  convert: (index: number, item: T, signal: AbortSignal) => Promise<C>,
  upload: (index: number, converted: C, signal: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const controller = new AbortController();
  let failure: { error: unknown } | undefined;
  const fail = (error: unknown) => {
    if (failure) return;
    failure = { error };
    controller.abort(error);
  };
  const onAbort = () => fail(signal?.reason ?? new ErofsOciError('aborted', 'aborted'));
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort, { once: true });
  const uploadSlots = new Semaphore(Math.max(1, limits.upload));
  const backlogSlots = new Semaphore(Math.max(1, limits.backlog));
  const uploads: Promise<void>[] = [];
  let next = 0;
  const converter = async () => {
    while (!failure && next < items.length) {
      const i = next++;
      try {
        const converted = await convert(i, items[i] as T, controller.signal);
        await backlogSlots.acquire(controller.signal);
        uploads.push(
          (async () => {
            try {
              await uploadSlots.acquire(controller.signal);
              try {
                await upload(i, converted, controller.signal);
              } finally {
                uploadSlots.release();
              }
            } catch (error) {
              fail(error);
            } finally {
              backlogSlots.release();
            }
          })(),
        );
      } catch (error) {
        fail(error);
      }
    }
  };
  try {
    const limit = Math.min(Math.max(1, limits.convert), items.length);
    await Promise.all(Array.from({ length: limit }, converter));
    // Uploads started by converters are all in the list once every converter has returned.
    await Promise.all(uploads);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  if (failure) throw failure.error;
}

/** A counting semaphore whose waiters give up when a signal aborts. */
export class Semaphore {
  #free: number;
  readonly #waiters: (() => void)[] = [];

  constructor(count: number) {
    this.#free = count;
  }

  async acquire(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const at = this.#waiters.indexOf(wake);
        if (at >= 0) this.#waiters.splice(at, 1);
        reject(signal.reason);
      };
      const wake = () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      this.#waiters.push(wake);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  release(): void {
    const wake = this.#waiters.shift();
    if (wake) wake();
    else this.#free++;
  }
}
