/**
 * Builds a zinfo (SPEC §3) for a gzip stream in the same pass that decompresses it.
 *
 * Two decoders read the same input: native zlib (node:zlib Gunzip, in the libuv thread pool) produces the
 * bytes and checks every member's CRC-32, and the JavaScript `DeflateScanner` (on the main thread, at the
 * same time) finds the block boundaries that zlib's `inflate(Z_BLOCK)` would report. Checkpoints are placed
 * as erofs-utils 1.9 places them (lib/gzran.c `erofs_gzran_builder_read`): at the first boundary after each
 * member header, then at the first boundary after more than `span` bytes of output since the previous
 * checkpoint, never after a final block. A checkpoint's window is taken from the native output as it
 * streams by. See docs/gzip-index.md for the measurements behind this design.
 */
import { createHash, type Hash } from 'node:crypto';
import { once } from 'node:events';
import { addAbortSignal } from 'node:stream';
import { setImmediate as setImmediatePromise } from 'node:timers/promises';
import { createGunzip, type ZlibOptions } from 'node:zlib';
import { abortedError, CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { type BlockBoundary, DeflateScanner } from './deflate-scanner.ts';
import { WINDOW_SIZE, type Zinfo, type ZinfoCheckpoint } from './zinfo.ts';

/** erofs-utils (lib/tar.c) and soci-snapshotter both default to 4 MiB spans. */
export const DEFAULT_SPAN = 4 * 1024 * 1024;

/** Output chunk size of the native decoder: one thread-pool job can then inflate a whole scan slice. */
const NATIVE_CHUNK_SIZE = 4 * 1024 * 1024;
/** Compressed bytes scanned between two turns of the event loop (well under 1 ms of scanning). */
const SCAN_SLICE = 64 * 1024;
/** Compressed bytes handed to zlib at a time (a thread-pool job of a few milliseconds). */
const ZLIB_PIECE = 1024 * 1024;

export interface ZinfoBuilderOptions {
  /** Uncompressed bytes between checkpoints (a lower bound); default 4 MiB. */
  span?: number;
  /** Also hash each span's uncompressed bytes (SHA-256, src/gzip-index/span-digests.ts). */
  spanDigests?: boolean;
}

export interface ZinfoBuildResult {
  zinfo: Zinfo;
  compressedSize: number;
  uncompressedSize: number;
  members: number;
  /** SHA-256 of each span's uncompressed bytes, one per checkpoint, when asked for. */
  spanDigests?: Uint8Array[];
}

export interface ZinfoBuilder {
  /**
   * Decompresses `source` (a gzip stream, any number of members), yielding the uncompressed bytes with
   * backpressure, and returns the finished index. Throws `CorruptInputError` for corrupt or truncated
   * input and for data after the last member. The yielded chunks are also read for checkpoint windows
   * after they are yielded: consumers must not modify them. One builder indexes one stream.
   */
  inflate(
    source: AsyncIterable<Uint8Array>,
    options?: { signal?: AbortSignal },
  ): AsyncGenerator<Uint8Array, ZinfoBuildResult, undefined>;
  /** The finished index; throws until `inflate` has run to its end. */
  result(): ZinfoBuildResult;
}

export function createZinfoBuilder(options: ZinfoBuilderOptions = {}): ZinfoBuilder {
  const span = options.span ?? DEFAULT_SPAN;
  if (!Number.isSafeInteger(span) || span <= 0) {
    throw new ErofsOciError('usage', `Invalid span ${span}: expected a positive number of bytes`);
  }
  let started = false;
  let finished: ZinfoBuildResult | undefined;

  return {
    async *inflate(source, { signal } = {}) {
      if (started) throw new ErofsOciError('internal', 'a zinfo builder indexes one stream only');
      started = true;
      throwIfAborted(signal);
      const checkpoints: ZinfoCheckpoint[] = [];
      /** Checkpoints found by the scanner whose window the native output has not yet passed. */
      const pending: ZinfoCheckpoint[] = [];
      let lastOut = 0;
      const scanner = new DeflateScanner((b: BlockBoundary) => {
        if (!b.memberStart && b.out - lastOut <= span) return;
        const checkpoint = { in: b.in, out: b.out, bits: b.bits, window: new Uint8Array(WINDOW_SIZE) };
        checkpoints.push(checkpoint);
        pending.push(checkpoint);
        lastOut = b.out;
      });
      let summary: ReturnType<DeflateScanner['finish']> | undefined;

      // The scanner sees every byte before zlib does, and zlib only gets the bytes the scanner has fully
      // consumed: so every boundary is known before the native output reaches it, and the last 32 KiB of
      // output are all a window ever needs.
      const gunzip = createGunzip({
        chunkSize: NATIVE_CHUNK_SIZE,
        // Queue several slices for zlib, so that it never waits for the scanner to hand over the next one.
        writableHighWaterMark: 2 * ZLIB_PIECE,
        readableHighWaterMark: 4 * NATIVE_CHUNK_SIZE,
      } as ZlibOptions);
      if (signal) addAbortSignal(signal, gunzip);
      let written = 0;
      const held: Uint8Array[] = [];
      let heldStart = 0;
      /** Hands zlib the input bytes up to stream offset `upTo` as one piece, waiting while its queue is full. */
      const release = async (upTo: number): Promise<void> => {
        const pieces: Uint8Array[] = [];
        while (written < upTo) {
          const chunk = held[0]!;
          const to = Math.min(chunk.byteLength, upTo - heldStart);
          pieces.push(chunk.subarray(written - heldStart, to));
          written = heldStart + to;
          if (to === chunk.byteLength) {
            held.shift();
            heldStart += chunk.byteLength;
          }
        }
        if (pieces.length === 0) return;
        if (!gunzip.write(pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces)))
          await settled(gunzip, 'drain');
      };
      // The scanner runs on this thread and zlib in the thread pool, but zlib needs this thread to start
      // each job: so the scanner works in short slices with a turn of the event loop after each, and zlib
      // gets pieces of up to ZLIB_PIECE bytes or an input chunk, each a job that overlaps several slices.
      const input = source[Symbol.asyncIterator]();
      const writer = (async () => {
        try {
          for (;;) {
            const next = await input.next();
            if (next.done) break;
            const chunk = next.value;
            for (let at = 0; at < chunk.byteLength && !gunzip.destroyed; at += SCAN_SLICE) {
              const slice = chunk.subarray(at, at + SCAN_SLICE);
              held.push(slice);
              scanner.feed(slice);
              if (scanner.consumedBytes - written >= ZLIB_PIECE) await release(scanner.consumedBytes);
              await setImmediatePromise();
            }
            if (gunzip.destroyed) return;
            // The next input may be slow to come (a network): let zlib have what this chunk completed.
            await release(scanner.consumedBytes);
          }
          summary = scanner.finish();
          await release(summary.compressedSize);
          gunzip.end();
        } catch (error) {
          // Reported by the iteration of gunzip below, which this makes fail.
          gunzip.destroy(error as Error);
        }
      })();

      // The last WINDOW_SIZE bytes of output, as the chunks that hold them (never copied or modified).
      const recent: Uint8Array[] = [];
      let recentBytes = 0;
      let total = 0;
      // Span digests: the checkpoints are known before the output reaches them (see above), so each
      // output chunk is split where a checkpoint falls and hashed into its span.
      const spanDigests: Uint8Array[] | undefined = options.spanDigests ? [] : undefined;
      let spanHash: Hash | undefined;
      const hashSpans = (chunk: Uint8Array, at: number): void => {
        const digests = spanDigests!;
        let from = 0;
        for (;;) {
          // The checkpoint that starts the next span: checkpoint 0 until the first span has begun.
          const next = checkpoints[spanHash ? digests.length + 1 : 0];
          if (next === undefined || next.out > at + chunk.byteLength) break;
          const cut = next.out - at;
          if (spanHash) {
            spanHash.update(chunk.subarray(from, cut));
            digests.push(spanHash.digest());
          }
          spanHash = createHash('sha256');
          from = cut;
        }
        spanHash?.update(chunk.subarray(from));
      };
      try {
        for await (const chunk of gunzip as AsyncIterable<Uint8Array>) {
          const end = total + chunk.byteLength;
          if (spanDigests) hashSpans(chunk, total);
          while (pending.length > 0 && pending[0]!.out <= end) {
            const checkpoint = pending.shift()!;
            fillWindow(checkpoint.window, checkpoint.out, [...recent, chunk], total - recentBytes);
          }
          recent.push(chunk);
          recentBytes += chunk.byteLength;
          while (recentBytes - recent[0]!.byteLength >= WINDOW_SIZE)
            recentBytes -= recent.shift()!.byteLength;
          total = end;
          yield chunk;
        }
      } catch (error) {
        throw nativeError(error, signal);
      } finally {
        if (!gunzip.readableEnded) {
          // Stopped early (error, abort, or the consumer left): the writer may be waiting for input that
          // never comes, so close the input instead of waiting for the writer.
          gunzip.destroy();
          input.return?.().catch(() => {});
        } else {
          await writer;
        }
      }
      // Checkpoints at the very end (after empty members) have seen no output chunk go past them.
      while (pending.length > 0 && pending[0]!.out <= total) {
        const checkpoint = pending.shift()!;
        fillWindow(checkpoint.window, checkpoint.out, recent, total - recentBytes);
      }
      if (!summary) throw new ErofsOciError('internal', 'gzip index: the input ended without a scan summary');
      // Both decoders read the same bytes; they can only disagree through a bug in the scanner.
      if (summary.uncompressedSize !== total || pending.length > 0) {
        throw new ErofsOciError(
          'internal',
          `gzip index: the block scanner counted ${summary.uncompressedSize} bytes, zlib produced ${total}`,
        );
      }
      if (spanDigests) {
        // Checkpoints at the very end (after empty members) start empty spans.
        hashSpans(new Uint8Array(0), total);
        if (spanHash) spanDigests.push(spanHash.digest());
        if (spanDigests.length !== checkpoints.length) {
          throw new ErofsOciError(
            'internal',
            `gzip index: ${spanDigests.length} span digests for ${checkpoints.length} checkpoints`,
          );
        }
      }
      finished = {
        zinfo: { spanSize: span, checkpoints },
        compressedSize: summary.compressedSize,
        uncompressedSize: total,
        members: summary.members,
        ...(spanDigests ? { spanDigests } : {}),
      };
      return finished;
    },
    result() {
      if (!finished)
        throw new ErofsOciError('internal', 'the zinfo is not built yet: run inflate() to its end');
      return finished;
    },
  };
}

/**
 * Builds the index of a gzip stream, discarding the uncompressed bytes. For the `zinfo` command and for
 * callers that do not otherwise need the data.
 */
export async function buildZinfo(
  source: AsyncIterable<Uint8Array>,
  options: ZinfoBuilderOptions & { signal?: AbortSignal } = {},
): Promise<ZinfoBuildResult> {
  const builder = createZinfoBuilder(options);
  const run = builder.inflate(source, { signal: options.signal });
  for (;;) {
    const step = await run.next();
    if (step.done) return step.value;
  }
}

/**
 * Copies the WINDOW_SIZE bytes before stream offset `at` into `window` (left zero before offset 0) from
 * consecutive `chunks`, the first starting at stream offset `chunksStart`.
 */
function fillWindow(
  window: Uint8Array,
  at: number,
  chunks: readonly Uint8Array[],
  chunksStart: number,
): void {
  const from = at - WINDOW_SIZE;
  let chunkStart = chunksStart;
  for (const chunk of chunks) {
    const chunkEnd = chunkStart + chunk.byteLength;
    const lo = Math.max(from, chunkStart);
    const hi = Math.min(at, chunkEnd);
    if (lo < hi) window.set(chunk.subarray(lo - chunkStart, hi - chunkStart), lo - from);
    chunkStart = chunkEnd;
  }
}

/** Resolves on `event`, or when the stream closes first (destroyed: the caller's loop then stops). */
async function settled(stream: NodeJS.EventEmitter, event: string): Promise<void> {
  const controller = new AbortController();
  try {
    await Promise.race([
      once(stream, event, { signal: controller.signal }),
      once(stream, 'close', { signal: controller.signal }),
    ]);
  } catch (error) {
    // once() rejects on an 'error' event; the consumer sees that error through its own iteration.
    if ((error as Error).name !== 'AbortError') return;
  } finally {
    controller.abort();
  }
}

function nativeError(error: unknown, signal: AbortSignal | undefined): unknown {
  if (error instanceof ErofsOciError) return error;
  if (signal?.aborted) return abortedError(signal);
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && code.startsWith('Z_')) {
    return new CorruptInputError(`Cannot decompress gzip stream: ${(error as Error).message}`, undefined, {
      cause: error,
    });
  }
  return error;
}
