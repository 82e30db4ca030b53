/** Origins and helpers for the block cache's tests (src/io/block-cache*.test.ts). */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErofsOciError } from '../src/errors.ts';
import type { RangeFetch, WholeFetch } from '../src/io/block-cache.ts';

export interface Origin {
  fetch: RangeFetch;
  /** Every fetch asked for, in order. */
  calls: [number, number][];
}

/**
 * A range fetch over `bytes` that records its calls and answers after a random short delay. With `stream`,
 * it hands the bytes to the sink in chunks of that many bytes, pausing between them, as the registry
 * client does with a response body.
 */
export function origin(
  bytes: Uint8Array,
  options: { jitter?: () => number; fail?: (call: number) => Error | null; stream?: number } = {},
): Origin {
  const calls: [number, number][] = [];
  return {
    calls,
    async fetch(offset, length, signal, sink) {
      const call = calls.length;
      calls.push([offset, length]);
      const wait = options.jitter?.() ?? 0;
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      else await Promise.resolve();
      if (signal?.aborted) throw new ErofsOciError('aborted', 'aborted');
      const failure = options.fail?.(call);
      if (failure) throw failure;
      if (offset < 0 || length < 0 || offset + length > bytes.byteLength)
        throw new Error(`fetch out of range ${offset}+${length}`);
      if (options.stream === undefined || sink === undefined) return bytes.slice(offset, offset + length);
      for (let at = offset; at < offset + length; at += options.stream) {
        sink(bytes.subarray(at, Math.min(offset + length, at + options.stream)));
        await new Promise((resolve) => setImmediate(resolve));
      }
      return new Uint8Array(0);
    },
  };
}

/** Random bytes as a plain Uint8Array (what the cache returns), so deep equality compares bytes only. */
export function random(length: number): Uint8Array {
  return new Uint8Array(randomBytes(length));
}

export const unavailable = () => new ErofsOciError('unavailable', 'registry returned 503');

export async function withDir(run: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'block-cache-'));
  try {
    await run(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function digestOf(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** `bytes` with the byte at `at` inverted. */
export function flipped(bytes: Uint8Array, at: number): Uint8Array {
  const copy = bytes.slice();
  copy[at] = (copy[at] as number) ^ 0xff;
  return copy;
}

/** Ranges of `[0, size)` that `ranges` leave uncovered, as a count of bytes. */
export function uncovered(size: number, ranges: [number, number][]): number {
  const covered = new Uint8Array(size);
  for (const [offset, length] of ranges) covered.fill(1, offset, offset + length);
  return covered.reduce((n, c) => n + (c === 0 ? 1 : 0), 0);
}

export interface WholeOrigin extends Origin {
  whole: WholeFetch;
  downloads: number;
}

/**
 * An origin that ignores ranges, like an HTTP server answering 200 to `Range`: a range fetch returns the
 * right bytes but is marked as answered whole, and `whole.fetch` streams the object in `chunk`-byte pieces,
 * the first `breaks` downloads breaking after `breakAfter` bytes.
 */
export function wholeOrigin(
  bytes: Uint8Array,
  options: { chunk?: number; breaks?: number; breakAfter?: number } = {},
): WholeOrigin {
  const marked = new WeakSet<Uint8Array>();
  const ranged = origin(bytes, { jitter: () => 1 });
  const result: WholeOrigin = {
    calls: ranged.calls,
    downloads: 0,
    async fetch(offset, length, signal) {
      const got = await ranged.fetch(offset, length, signal);
      marked.add(got);
      return got;
    },
    whole: {
      answeredWhole: (got) => marked.has(got),
      async *fetch(signal) {
        const download = result.downloads++;
        const chunk = options.chunk ?? 777;
        for (let at = 0; at < bytes.byteLength; at += chunk) {
          await new Promise((resolve) => setTimeout(resolve, 0));
          if (signal.aborted) throw new ErofsOciError('aborted', 'aborted');
          if (download < (options.breaks ?? 0) && at >= (options.breakAfter ?? 0))
            throw new ErofsOciError('unavailable', 'the connection broke');
          yield bytes.slice(at, at + chunk);
        }
      },
    },
  };
  return result;
}
