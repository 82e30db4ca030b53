/**
 * Retries (SPEC §1 "Transient failures"): connection errors, 408, 429 and 5xx are retried with exponential
 * backoff and full jitter, honouring `Retry-After`, bounded both in attempts and in total time. When the
 * budget is spent the error is 'unavailable' (SPEC §4 exit 7). One budget can span several requests: a
 * download that resumes after a cut draws on the same budget, so a flapping server cannot loop forever.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ErofsOciError } from '../errors.ts';
import { displayUrl, errorText, header, type Layer, type RetryBudgetLike } from './http.ts';

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  readonly maxAttempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /** No new attempt starts after this long since the first; SPEC keeps "unreachable" under a minute. */
  readonly timeoutMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 6,
  baseDelayMs: 250,
  maxDelayMs: 8_000,
  timeoutMs: 30_000,
};

/** Connection-level failures worth another attempt. TLS and DNS answers are not: they will not change. */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTDOWN',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

export function isTransientError(error: unknown): boolean {
  if (error instanceof ErofsOciError) return false;
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
  }
  return false;
}

export function isRetryableStatus(status: number): boolean {
  // 501 Not Implemented and 505 HTTP Version Not Supported will not get better by asking again.
  return (
    status === 408 || status === 429 || (status >= 500 && status <= 599 && status !== 501 && status !== 505)
  );
}

/** `Retry-After` as milliseconds from `now`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

/** Exponential backoff with full jitter (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/). */
export function backoffDelay(policy: RetryPolicy, retry: number, random = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** retry);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

export class RetryBudget implements RetryBudgetLike {
  readonly policy: RetryPolicy;
  readonly what: string;
  readonly #started = Date.now();
  #attempts = 1;

  constructor(policy: RetryPolicy, what: string) {
    this.policy = policy;
    this.what = what;
  }

  get attempts(): number {
    return this.#attempts;
  }

  /**
   * Waits before the next attempt after a failure described by `reason`, or throws 'unavailable' when the
   * attempts or the time are used up (a `Retry-After` beyond the time left ends it at once).
   */
  async wait(
    reason: string,
    retryAfterMs: number | undefined,
    signal: AbortSignal | undefined,
    cause?: unknown,
  ): Promise<void> {
    const elapsed = Date.now() - this.#started;
    const delay = retryAfterMs ?? backoffDelay(this.policy, this.#attempts - 1);
    const giveUp = (why: string) =>
      new ErofsOciError(
        'unavailable',
        `${this.what}: ${reason} (gave up after ${this.#attempts} attempt${this.#attempts === 1 ? '' : 's'} in ${(elapsed / 1000).toFixed(1)} s${why})`,
        { cause },
      );
    if (this.#attempts >= this.policy.maxAttempts) throw giveUp('');
    if (elapsed + delay > this.policy.timeoutMs) {
      throw giveUp(
        retryAfterMs !== undefined
          ? `; the server asks to wait ${Math.ceil(retryAfterMs / 1000)} s more`
          : '',
      );
    }
    this.#attempts++;
    try {
      await sleep(delay, undefined, { signal });
    } catch (error) {
      throw new ErofsOciError('aborted', `${this.what}: aborted`, { cause: signal?.reason ?? error });
    }
  }
}

/** Retries transient failures of one request; a request may bring the budget of a longer operation. */
export function withRetry(policy: RetryPolicy): Layer {
  return (next) => async (request) => {
    const budget =
      request.retry ?? new RetryBudget(policy, `Cannot ${request.method} ${displayUrl(request.url)}`);
    for (;;) {
      let response: Awaited<ReturnType<typeof next>>;
      try {
        response = await next(request);
      } catch (error) {
        if (request.signal?.aborted || !isTransientError(error)) throw error;
        await budget.wait(errorText(error), undefined, request.signal, error);
        continue;
      }
      if (!isRetryableStatus(response.status)) return response;
      const retryAfter = parseRetryAfter(header(response, 'retry-after'));
      await response.body.discard();
      await budget.wait(`HTTP ${response.status}`, retryAfter, request.signal);
    }
  };
}
