import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErofsOciError, isErofsOciError } from '../errors.ts';
import type { HttpRequest, HttpResponse, Send } from './http.ts';
import {
  backoffDelay,
  isRetryableStatus,
  isTransientError,
  parseRetryAfter,
  RetryBudget,
  withRetry,
} from './retry.ts';

const policy = { maxAttempts: 4, baseDelayMs: 10, maxDelayMs: 40, timeoutMs: 2000 };

function response(status: number, headers: Record<string, string> = {}): HttpResponse {
  return {
    status,
    url: new URL('http://x/'),
    headers,
    body: {
      async *[Symbol.asyncIterator]() {},
      bytes: async () => new Uint8Array(),
      discard: async () => {},
    },
  };
}

function scripted(steps: (() => HttpResponse)[]): { send: Send; calls: number[] } {
  const calls: number[] = [];
  return {
    calls,
    send: async (_request: HttpRequest) => {
      calls.push(Date.now());
      const step = steps.shift();
      if (!step) throw new Error('no more steps');
      return step();
    },
  };
}

const request: HttpRequest = { method: 'GET', url: new URL('http://registry.test/v2/') };

describe('parseRetryAfter', () => {
  it('reads delta-seconds and HTTP dates', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(
      parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')),
      10_000,
    );
    assert.equal(parseRetryAfter('soon'), undefined);
    assert.equal(parseRetryAfter(undefined), undefined);
  });
});

describe('backoffDelay', () => {
  it('grows exponentially, jittered within [ceiling/2, ceiling], capped', () => {
    assert.equal(
      backoffDelay(policy, 0, () => 0),
      5,
    );
    assert.equal(
      backoffDelay(policy, 0, () => 1),
      10,
    );
    assert.equal(
      backoffDelay(policy, 2, () => 1),
      40,
    );
    assert.equal(
      backoffDelay(policy, 10, () => 1),
      40,
    );
  });
});

describe('isRetryableStatus / isTransientError', () => {
  it('retries 408, 429 and 5xx except 501 and 505', () => {
    assert.deepEqual([408, 429, 500, 502, 503, 504].map(isRetryableStatus), [
      true,
      true,
      true,
      true,
      true,
      true,
    ]);
    assert.deepEqual([400, 401, 404, 416, 501, 505].map(isRetryableStatus), [
      false,
      false,
      false,
      false,
      false,
      false,
    ]);
  });
  it('recognises connection errors by code, also as a cause', () => {
    const reset = Object.assign(new Error('reset'), { code: 'ECONNRESET' });
    assert.ok(isTransientError(reset));
    assert.ok(isTransientError(new Error('wrapped', { cause: reset })));
    assert.ok(!isTransientError(Object.assign(new Error('tls'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' })));
    assert.ok(!isTransientError(new ErofsOciError('io', 'x')));
  });
});

describe('withRetry', () => {
  it('retries 503 and honours Retry-After', async () => {
    const { send, calls } = scripted([() => response(503, { 'retry-after': '1' }), () => response(200)]);
    const result = await withRetry(policy)(send)(request);
    assert.equal(result.status, 200);
    assert.ok(calls[1]! - calls[0]! >= 990, `waited ${calls[1]! - calls[0]!} ms`);
  });

  it('gives up with unavailable after maxAttempts', async () => {
    const { send, calls } = scripted(Array.from({ length: 10 }, () => () => response(500)));
    await assert.rejects(
      withRetry(policy)(send)(request),
      (error) =>
        isErofsOciError(error, 'unavailable') && /HTTP 500 \(gave up after 4 attempts/.test(error.message),
    );
    assert.equal(calls.length, 4);
  });

  it('gives up at once when Retry-After exceeds the time left', async () => {
    const { send, calls } = scripted([() => response(429, { 'retry-after': '60' }), () => response(200)]);
    await assert.rejects(withRetry(policy)(send)(request), /asks to wait 60 s more/);
    assert.equal(calls.length, 1);
  });

  it('does not retry other statuses or non-transient errors', async () => {
    const { send, calls } = scripted([() => response(404)]);
    assert.equal((await withRetry(policy)(send)(request)).status, 404);
    assert.equal(calls.length, 1);
    const failing: Send = async () => {
      throw new Error('bad');
    };
    await assert.rejects(withRetry(policy)(failing)(request), /bad/);
  });

  it('shares one budget across requests', async () => {
    const budget = new RetryBudget(policy, 'Cannot download');
    const { send } = scripted(Array.from({ length: 10 }, () => () => response(503)));
    await assert.rejects(withRetry(policy)(send)({ ...request, retry: budget }), /gave up after 4 attempts/);
    await assert.rejects(budget.wait('again', 0, undefined), /gave up after 4 attempts/);
  });

  it('stops waiting when aborted', async () => {
    const controller = new AbortController();
    const { send } = scripted([() => response(503, { 'retry-after': '1' }), () => response(200)]);
    const pending = withRetry(policy)(send)({ ...request, signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await assert.rejects(pending, (error) => isErofsOciError(error, 'aborted'));
  });
});
