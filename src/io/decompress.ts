/**
 * Decompression of layer streams: gzip (RFC 1952, any number of members) and zstd (RFC 8878, any number of
 * frames, skippable frames included), detected by magic number, streamed through node:zlib with
 * backpressure: at most one input chunk is handed to the decoder at a time and decoded output is only
 * produced as fast as the consumer takes it.
 */
import { createGunzip, createZstdDecompress } from 'node:zlib';
import { CorruptInputError, ErofsOciError, throwIfAborted } from '../errors.ts';

export type Compression = 'gzip' | 'zstd' | 'none';

export interface DecompressOptions {
  signal?: AbortSignal;
  /** Skip detection and decode as this. */
  compression?: Compression;
  /** Called with the size of every compressed chunk taken from the input (for progress reporting). */
  onCompressedBytes?: (n: number) => void;
}

/** Enough bytes for every magic number below (bzip2 needs 10). */
const PEEK_BYTES = 10;
/** Size of the decoded chunks handed to the consumer; bigger chunks mean fewer async steps downstream. */
const OUTPUT_CHUNK_SIZE = 64 * 1024;
/**
 * Decoded bytes the decoder may hold ready before the consumer asks: lets zlib (on the thread pool) work
 * while the consumer works on the previous chunk, with memory bounded by this much.
 */
const DECODE_AHEAD = 1024 * 1024;

const GZIP_MAGIC = [0x1f, 0x8b];
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
/** "BZh" then the block size digit '1'..'9', then the magic of a first block or of the end of stream. */
const BZIP2_MAGIC = [0x42, 0x5a, 0x68];
const BZIP2_BLOCK_MAGIC = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
const BZIP2_EOS_MAGIC = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];

function hasBytes(head: Uint8Array, bytes: readonly number[], at = 0): boolean {
  if (head.byteLength < at + bytes.length) return false;
  return bytes.every((b, i) => head[at + i] === b);
}

/** Zstd skippable frames (RFC 8878 §3.1.2) have magic 0x184D2A50..0x184D2A5F; pzstd output starts with one. */
function isZstdSkippableFrame(head: Uint8Array): boolean {
  return head.byteLength >= 4 && (head[0]! & 0xf0) === 0x50 && hasBytes(head, [0x2a, 0x4d, 0x18], 1);
}

function isBzip2(head: Uint8Array): boolean {
  const level = head[3];
  return (
    hasBytes(head, BZIP2_MAGIC) &&
    level !== undefined &&
    level >= 0x31 &&
    level <= 0x39 &&
    (hasBytes(head, BZIP2_BLOCK_MAGIC, 4) || hasBytes(head, BZIP2_EOS_MAGIC, 4))
  );
}

/**
 * Detects the compression of a stream from its first bytes (at least 10 when the stream has them). Plain
 * input (a tar) is `none`; xz and bzip2 are recognised only to be refused with a clear error.
 */
export function detectCompression(head: Uint8Array): Compression {
  if (hasBytes(head, GZIP_MAGIC)) return 'gzip';
  if (hasBytes(head, ZSTD_MAGIC) || isZstdSkippableFrame(head)) return 'zstd';
  if (hasBytes(head, XZ_MAGIC)) {
    throw new ErofsOciError('unsupported', 'xz-compressed input is not supported (only gzip and zstd are)', {
      hint: 'decompress it first (xz -d) or recompress it with gzip or zstd',
    });
  }
  if (isBzip2(head)) {
    throw new ErofsOciError(
      'unsupported',
      'bzip2-compressed input is not supported (only gzip and zstd are)',
      {
        hint: 'decompress it first (bzip2 -d) or recompress it with gzip or zstd',
      },
    );
  }
  return 'none';
}

/**
 * The input as a queue of non-empty chunks that can be peeked at and pushed back into, so that bytes a
 * decoder did not consume (after the end of a zstd frame) go to the next decoder.
 */
class InputQueue {
  readonly #iterator: AsyncIterator<Uint8Array>;
  readonly #signal: AbortSignal | undefined;
  readonly #onBytes: ((n: number) => void) | undefined;
  readonly #pending: Uint8Array[] = [];
  #done = false;

  constructor(input: AsyncIterable<Uint8Array>, options: DecompressOptions) {
    this.#iterator = input[Symbol.asyncIterator]();
    this.#signal = options.signal;
    this.#onBytes = options.onCompressedBytes;
  }

  async #pull(): Promise<Uint8Array | null> {
    while (!this.#done) {
      throwIfAborted(this.#signal);
      const result = await this.#iterator.next();
      if (result.done) {
        this.#done = true;
        break;
      }
      if (result.value.byteLength > 0) {
        this.#onBytes?.(result.value.byteLength);
        return result.value;
      }
    }
    return null;
  }

  /** The next chunk, or null at the end of the input. */
  async next(): Promise<Uint8Array | null> {
    return this.#pending.shift() ?? (await this.#pull());
  }

  unshift(chunk: Uint8Array): void {
    if (chunk.byteLength > 0) this.#pending.unshift(chunk);
  }

  /** Up to `n` bytes from the front of the input (fewer only at its end), without consuming them. */
  async peek(n: number): Promise<Uint8Array> {
    let buffered = this.#pending.reduce((sum, c) => sum + c.byteLength, 0);
    while (buffered < n) {
      const chunk = await this.#pull();
      if (chunk === null) break;
      this.#pending.push(chunk);
      buffered += chunk.byteLength;
    }
    const first = this.#pending[0];
    if (first !== undefined && first.byteLength >= n) return first.subarray(0, n);
    return Buffer.concat(this.#pending).subarray(0, n);
  }

  /** Stops the underlying iterator early (when the consumer stopped, or on error). */
  async close(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#iterator.return?.();
  }
}

type Decoder = ReturnType<typeof createGunzip> | ReturnType<typeof createZstdDecompress>;

interface DecoderRun {
  /** Compressed bytes the decoder consumed. */
  consumed: number;
}

/** Describes a zlib/zstd failure as a corrupt-input error at a compressed offset. */
function decodeError(
  error: unknown,
  compression: Exclude<Compression, 'none'>,
  at: number,
  total: number,
): ErofsOciError {
  if (error instanceof ErofsOciError) return error;
  const code = (error as { code?: unknown }).code;
  const message = error instanceof Error ? error.message : String(error);
  if (code === 'Z_BUF_ERROR' && /unexpected end of file/.test(message)) {
    const what = `${compression} stream is truncated after ${total} compressed bytes`;
    return new CorruptInputError(what, undefined, { cause: error });
  }
  if (typeof code === 'string' && (code.startsWith('Z_') || code.startsWith('ZSTD_'))) {
    const what = `${compression} data is corrupt at about compressed byte ${at}: ${message}`;
    return new CorruptInputError(what, undefined, { cause: error });
  }
  return new ErofsOciError('internal', `${compression} decoder failed at compressed byte ${at}: ${message}`, {
    cause: error,
  });
}

/**
 * Runs one decoder over the input until it ends: until the input ends (gzip: all members) or, for zstd,
 * until a frame ends inside a chunk. Bytes it did not consume are pushed back into `input`.
 *
 * Chunks are written one at a time, the next only after the decoder has consumed the previous one, and
 * output is read with `read()` only when the consumer asks for more: memory stays bounded by one input
 * chunk plus `DECODE_AHEAD` decoded bytes, whatever the compression ratio.
 */
async function* runDecoder(
  decoder: Decoder,
  input: InputQueue,
  compression: Exclude<Compression, 'none'>,
  base: number,
  signal: AbortSignal | undefined,
): AsyncGenerator<Uint8Array, DecoderRun> {
  let wake: (() => void) | null = null;
  const notify = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };
  let failure: unknown = null;
  let ended = false;
  let fed = 0;
  let lastChunk: Uint8Array | null = null;
  let writing = false;
  let stopped = false; // input ended or the decoder stopped consuming
  const onEnd = (): void => {
    ended = true;
    notify();
  };
  const onError = (error: unknown): void => {
    failure ??= error;
    notify();
  };
  decoder.on('readable', notify);
  decoder.on('end', onEnd);
  decoder.on('error', onError);
  signal?.addEventListener('abort', notify);
  try {
    for (;;) {
      if (failure !== null) throw decodeError(failure, compression, base + decoder.bytesWritten, base + fed);
      throwIfAborted(signal);
      const out = decoder.read() as Uint8Array | null;
      if (out !== null) {
        yield out;
        continue;
      }
      if (ended) break;
      if (!stopped && !writing) {
        const chunk = await input.next();
        if (chunk === null) {
          stopped = true;
          decoder.end();
        } else {
          lastChunk = chunk;
          fed += chunk.byteLength;
          writing = true;
          decoder.write(chunk, () => {
            writing = false;
            // A decoder that returns without consuming all of a chunk has reached the end of its stream
            // (node:zlib then ends the readable side): the rest of the chunk belongs to what follows.
            if (decoder.bytesWritten < fed) stopped = true;
            notify();
          });
        }
        continue;
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    }
  } finally {
    decoder.off('readable', notify);
    decoder.off('end', onEnd);
    decoder.off('error', onError);
    signal?.removeEventListener('abort', notify);
    if (!ended) decoder.destroy();
  }
  const consumed = decoder.bytesWritten;
  if (consumed < fed && lastChunk !== null)
    input.unshift(lastChunk.subarray(lastChunk.byteLength - (fed - consumed)));
  return { consumed };
}

/**
 * Node's gunzip stops at trailing zero bytes (tape padding, which gzip(1) ignores too); anything else after
 * the last member is an error, as it is for Go's gzip reader.
 */
async function expectOnlyZeros(input: InputQueue, at: number): Promise<void> {
  let offset = at;
  for (let chunk = await input.next(); chunk !== null; chunk = await input.next()) {
    const nonZero = chunk.findIndex((b) => b !== 0);
    if (nonZero >= 0) {
      throw new CorruptInputError(
        `gzip stream is followed by garbage at compressed byte ${offset + nonZero} (not another gzip member)`,
      );
    }
    offset += chunk.byteLength;
  }
}

async function* decode(
  input: InputQueue,
  compression: Exclude<Compression, 'none'>,
  signal: AbortSignal | undefined,
): AsyncGenerator<Uint8Array> {
  let base = 0;
  for (;;) {
    // zlib classes pass their options on to the Transform constructor, though @types/node does not say so.
    const streamOptions = { chunkSize: OUTPUT_CHUNK_SIZE, readableHighWaterMark: DECODE_AHEAD };
    const decoder =
      compression === 'gzip' ? createGunzip(streamOptions) : createZstdDecompress(streamOptions);
    const run = yield* runDecoder(decoder, input, compression, base, signal);
    base += run.consumed;
    // gunzip itself continues across members; when it stops, only padding may follow.
    if (compression === 'gzip') return await expectOnlyZeros(input, base);
    // node's zstd decoder stops at the end of a frame that ends inside a chunk; start one for the next frame.
    const next = await input.peek(1);
    if (next.byteLength === 0) return;
  }
}

/**
 * Decompresses a stream. The compression is detected from the first bytes unless `options.compression`
 * names it; plain input is passed through unchanged (same chunks). Corrupt or truncated input fails with a
 * `CorruptInputError` naming the compressed offset; xz and bzip2 fail as `unsupported`.
 */
export async function* decompress(
  input: AsyncIterable<Uint8Array>,
  options: DecompressOptions = {},
): AsyncGenerator<Uint8Array> {
  const queue = new InputQueue(input, options);
  try {
    const compression = options.compression ?? detectCompression(await queue.peek(PEEK_BYTES));
    if (compression === 'none') {
      for (let chunk = await queue.next(); chunk !== null; chunk = await queue.next()) yield chunk;
      return;
    }
    yield* decode(queue, compression, options.signal);
  } finally {
    await queue.close();
  }
}
