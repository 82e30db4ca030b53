/**
 * The block cache's way to the origin: one range fetch at a time per fetch slot, retried with exponential
 * backoff where another attempt can help, its bytes handed on in order as they arrive.
 */
import { ErofsOciError, isErofsOciError } from '../../errors.ts';
import { delay } from './deferred.ts';
import { FetchSlots } from './fetch-slots.ts';

/**
 * Fetches exactly `length` bytes at `offset` of the underlying object and resolves with them; or, when it
 * can stream, hands them to `sink` in order as they arrive and resolves with an empty array (so that a
 * multi-block fetch delivers each block as soon as its bytes are in, rather than when the whole range is).
 */
export type RangeFetch = (
  offset: number,
  length: number,
  signal?: AbortSignal,
  sink?: (chunk: Uint8Array) => void,
) => Promise<Uint8Array>;

export type FetchPriority = 'demand' | 'readahead';

/** Errors that another attempt cannot fix. */
const PERMANENT = new Set(['digest-mismatch', 'not-found', 'auth', 'aborted', 'usage', 'unsupported']);

export interface RangeFetcherOptions {
  /** Fetches in progress at once. */
  parallel: number;
  /** Retries of a failed fetch (so up to retries + 1 attempts). */
  retries: number;
  /** Delay before the first retry; doubles each time. */
  retryDelayMs: number;
  /** Aborted when the cache closes. */
  signal: AbortSignal;
  /** Throws when no fetch should start any more (the cache closed, the object failed verification). */
  throwIfStopped(): void;
  /** Counts calls of the fetch function, retries, bytes. */
  stats: { fetches: number; retries: number; bytesFetched: number };
}

export class RangeFetcher {
  readonly #fetch: RangeFetch;
  readonly #options: RangeFetcherOptions;
  readonly #slots: FetchSlots;

  constructor(fetch: RangeFetch, options: RangeFetcherOptions) {
    this.#fetch = fetch;
    this.#options = options;
    this.#slots = new FetchSlots(options.parallel);
  }

  /**
   * One range fetch with retries, inside a fetch slot: its bytes go to `sink` in order (a retry continues
   * where the broken attempt stopped). Resolves with what the fetch function returned (for whole answers).
   */
  async fetch(
    offset: number,
    length: number,
    priority: FetchPriority,
    sink: (chunk: Uint8Array) => void,
  ): Promise<Uint8Array> {
    const { retries, retryDelayMs, signal, stats } = this.#options;
    await this.#slots.acquire(priority);
    let delivered = 0;
    const take = (chunk: Uint8Array) => {
      const room = length - delivered;
      const part = chunk.byteLength > room ? chunk.subarray(0, room) : chunk;
      delivered += part.byteLength;
      stats.bytesFetched += part.byteLength;
      if (part.byteLength > 0) sink(part);
    };
    try {
      for (let attempt = 0; ; attempt++) {
        this.#options.throwIfStopped();
        stats.fetches++;
        try {
          const from = delivered;
          const result = await this.#fetch(offset + from, length - from, signal, take);
          if (result.byteLength > 0 && delivered === from && result.byteLength === length - from)
            take(result);
          if (delivered !== length || (result.byteLength > 0 && delivered - from !== result.byteLength)) {
            throw new ErofsOciError(
              'io',
              `the fetch returned ${result.byteLength || delivered - from} bytes instead of ${length - from}`,
            );
          }
          return result;
        } catch (error) {
          const permanent = isErofsOciError(error) && PERMANENT.has(error.code);
          const stopped = signal.aborted;
          if (permanent || attempt >= retries || stopped) {
            // Not retried (or not at all): the error as it is says enough.
            if (isErofsOciError(error) && (permanent || stopped || attempt === 0)) throw error;
            const reason = error instanceof Error ? error.message : String(error);
            const code = isErofsOciError(error) ? error.code : 'io';
            throw new ErofsOciError(
              code,
              `Cannot fetch ${length - delivered} bytes at offset ${offset + delivered} after ${attempt + 1} attempts: ${reason}`,
              { cause: error },
            );
          }
          stats.retries++;
          await delay(retryDelayMs * 2 ** attempt * (0.5 + Math.random() / 2), signal);
        }
      }
    } finally {
      this.#slots.release();
    }
  }
}
