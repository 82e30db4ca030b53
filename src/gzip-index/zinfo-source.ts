/**
 * Random access to the uncompressed bytes of a gzip blob through its zinfo (SPEC §2 `serve --zinfo`, §3).
 *
 * The unit of work is a span: the uncompressed bytes from one checkpoint to the next. A span is inflated
 * whole by native zlib, starting from its checkpoint (its window as the zlib dictionary, and a synthetic
 * alignment prefix when the checkpoint is not byte-aligned: see realign.ts), reading the compressed range
 * in bounded chunks with one read ahead. Whole spans buy two things:
 *  - nothing is returned before the span has been checked against the index: it must inflate without
 *    error to exactly the next checkpoint's offset and end with the next checkpoint's window (or a member
 *    trailer and header that end where the next checkpoint starts), so a zinfo that does not belong to the
 *    blob fails with `corrupt` instead of yielding wrong bytes;
 *  - spans are cached (LRU, bounded by `cacheBytes`), and concurrent reads of one span share one
 *    inflation, so sequential small reads inflate every byte once. erofs-utils (lib/gzran.c
 *    `erofs_gzran_ios_vfpread`) inflates from the checkpoint up to the offset on every read: for 32 KiB
 *    sequential reads over 4 MiB spans that is about 64 times the data; here it is once (docs/gzip-index.md).
 *
 * Gzip members are followed across: when a deflate stream ends inside a span (indexes that, unlike ours
 * and erofs-utils', do not put a checkpoint at every member start), its trailer is checked and inflation
 * continues after the next member's header.
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { CorruptInputError, ErofsOciError, raceAbort, throwIfAborted } from '../errors.ts';
import type { ByteSource, ReadOptions } from '../io/byte-source.ts';
import { checkHeaderLength, gzipTrailer, parseGzipHeader } from './gzip-header.ts';
import { RawInflateSession } from './raw-inflate.ts';
import { alignmentPrefix } from './realign.ts';
import { validateZinfo, WINDOW_SIZE, type Zinfo, type ZinfoCheckpoint } from './zinfo.ts';

export interface ZinfoSourceOptions {
  /**
   * Size of the uncompressed data, when the caller knows it (a tar index records it). Without it, opening
   * inflates the last span to learn it (the gzip ISIZE field is only the last member's size modulo 2^32).
   */
  uncompressedSize?: number;
  /** Bytes of inflated spans kept; default 64 MiB (16 spans of 4 MiB). */
  cacheBytes?: number;
  /** Compressed bytes per read of the blob; default 512 KiB. */
  readChunkBytes?: number;
  /** Spans inflating to more than this are refused as unsupported (memory bound); default 256 MiB. */
  maxSpanBytes?: number;
  /** Inflate the next span in the background when a read reaches the second half of a span; default true. */
  prefetch?: boolean;
  /**
   * SHA-256 of each span's uncompressed bytes (src/gzip-index/span-digests.ts), one per checkpoint: every
   * span inflated is checked against its digest before any of it is returned or cached, and a mismatch
   * fails the reads that need it with `digest-mismatch`.
   */
  spanDigests?: readonly Uint8Array[];
  signal?: AbortSignal;
}

export interface ZinfoSourceStats {
  /** Spans inflated (each at most once while it stays cached). */
  spansInflated: number;
  /** Uncompressed bytes produced by zlib. */
  bytesInflated: number;
  /** Bytes read from the compressed blob. */
  compressedBytesRead: number;
  /** Span lookups served from the cache or from an inflation already under way. */
  cacheHits: number;
}

export interface ZinfoSource extends ByteSource {
  readonly stats: Readonly<ZinfoSourceStats>;
}

const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024;
const DEFAULT_READ_CHUNK_BYTES = 512 * 1024;
const DEFAULT_MAX_SPAN_BYTES = 256 * 1024 * 1024;

export async function openZinfoSource(
  blob: ByteSource,
  zinfo: Zinfo,
  options: ZinfoSourceOptions = {},
): Promise<ZinfoSource> {
  throwIfAborted(options.signal);
  validateZinfo(zinfo, blob.size);
  const cacheBytes = options.cacheBytes ?? DEFAULT_CACHE_BYTES;
  const readChunkBytes = options.readChunkBytes ?? DEFAULT_READ_CHUNK_BYTES;
  const maxSpanBytes = options.maxSpanBytes ?? DEFAULT_MAX_SPAN_BYTES;
  const prefetch = options.prefetch ?? true;
  for (const [name, value] of [
    ['cacheBytes', cacheBytes],
    ['readChunkBytes', readChunkBytes],
    ['maxSpanBytes', maxSpanBytes],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < (name === 'cacheBytes' ? 0 : 1)) {
      throw new ErofsOciError('usage', `Invalid zinfo source option ${name}: ${value}`);
    }
  }
  const checkpoints = zinfo.checkpoints;
  const last = checkpoints.length - 1;
  const spanDigests = options.spanDigests;
  if (spanDigests !== undefined && spanDigests.length !== checkpoints.length) {
    throw new CorruptInputError(
      `Cannot open gzip blob through zinfo: ${spanDigests.length} span digests for ${checkpoints.length} checkpoints`,
    );
  }
  const lastOut = checkpoints[last]!.out;
  let size = options.uncompressedSize;
  if (size !== undefined && (!Number.isSafeInteger(size) || size < lastOut)) {
    throw new CorruptInputError(
      `Cannot open gzip blob through zinfo: uncompressed size ${size} is before the last checkpoint (offset ${lastOut})`,
    );
  }

  const stats: ZinfoSourceStats = {
    spansInflated: 0,
    bytesInflated: 0,
    compressedBytesRead: 0,
    cacheHits: 0,
  };
  const cache = new Map<number, Uint8Array>();
  let cachedBytes = 0;
  const inflight = new Map<number, Promise<Uint8Array>>();

  const spanLength = (i: number): number | undefined =>
    i < last
      ? checkpoints[i + 1]!.out - checkpoints[i]!.out
      : size === undefined
        ? undefined
        : size - lastOut;

  function span(i: number, signal: AbortSignal | undefined): Promise<Uint8Array> {
    const cached = cache.get(i);
    if (cached) {
      stats.cacheHits++;
      cache.delete(i);
      cache.set(i, cached);
      return Promise.resolve(cached);
    }
    const running = inflight.get(i);
    if (running) {
      stats.cacheHits++;
      return running;
    }
    // The last span is inflated to the stream's end even when the caller declared a size: a declared size
    // may stop short of the stream (erofs-utils' index images leave the tar's end-of-archive blocks out of
    // the device), and the bytes past it are served by no read but still checked against the trailer.
    const declared = i === last ? spanLength(i) : undefined;
    const task = inflateSpan(
      {
        blob,
        checkpoints,
        index: i,
        expected: i === last ? undefined : spanLength(i),
        readChunkBytes,
        maxSpanBytes,
        stats,
      },
      signal,
    ).then(
      (inflated) => {
        inflight.delete(i);
        const want = spanDigests?.[i];
        if (want !== undefined && !createHash('sha256').update(inflated).digest().equals(want)) {
          throw new ErofsOciError(
            'digest-mismatch',
            `gzip blob span ${i} (uncompressed bytes [${checkpoints[i]!.out}, ${checkpoints[i]!.out + inflated.byteLength})) does not match its SHA-256 in the span digests`,
          );
        }
        if (declared !== undefined && inflated.byteLength < declared) {
          throw new CorruptInputError(
            `Cannot read gzip blob from zinfo checkpoint ${i}: it inflates to ${inflated.byteLength} bytes (up to uncompressed offset ${lastOut + inflated.byteLength}), short of the ${size} declared; the zinfo does not belong to this blob or the blob is corrupt`,
          );
        }
        const data = declared === undefined ? inflated : inflated.subarray(0, declared);
        if (data.byteLength <= cacheBytes) {
          cache.set(i, data);
          cachedBytes += data.byteLength;
          for (const [key, value] of cache) {
            if (cachedBytes <= cacheBytes) break;
            cache.delete(key);
            cachedBytes -= value.byteLength;
          }
        }
        return data;
      },
      (error: unknown) => {
        inflight.delete(i);
        throw error;
      },
    );
    inflight.set(i, task);
    return task;
  }

  if (size === undefined) {
    // The signal of `open` must not cancel a shared inflation later reads may join: it only stops waiting.
    const tail = await raceAbort(span(last, undefined), options.signal);
    size = lastOut + tail.byteLength;
  }
  const totalSize = size;

  /** The span holding `offset`: the last checkpoint at or before it (empty spans are never chosen). */
  function spanIndex(offset: number): number {
    let lo = 0;
    let hi = last;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (checkpoints[mid]!.out <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  return {
    size: totalSize,
    stats,
    async read(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Uint8Array> {
      const { signal } = readOptions;
      throwIfAborted(signal);
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw new ErofsOciError(
          'internal',
          `Cannot read gzip blob through zinfo: invalid range ${offset}+${length}`,
        );
      }
      if (offset + length > totalSize) {
        throw new ErofsOciError(
          'internal',
          `Cannot read ${length} bytes at offset ${offset} through zinfo: the uncompressed data has ${totalSize} bytes`,
        );
      }
      const result = new Uint8Array(length);
      if (length === 0) return result;
      const end = offset + length;
      const first = spanIndex(offset);
      const lastNeeded = spanIndex(end - 1);
      const needed: number[] = [];
      for (let i = first; i <= lastNeeded; i++) {
        if (spanLength(i) !== 0) needed.push(i);
      }
      const datas = await raceAbort(Promise.all(needed.map((i) => span(i, undefined))), signal);
      for (const [k, i] of needed.entries()) {
        const data = datas[k]!;
        const start = checkpoints[i]!.out;
        const lo = Math.max(offset, start);
        const hi = Math.min(end, start + data.byteLength);
        result.set(data.subarray(lo - start, hi - start), lo - offset);
      }
      if (prefetch && lastNeeded < last) {
        const start = checkpoints[lastNeeded]!.out;
        const next = lastNeeded + 1;
        if (end - start >= (spanLength(lastNeeded) ?? 0) / 2 && !cache.has(next) && !inflight.has(next)) {
          // Read-ahead only: a failure here is reported by the read that needs the span, which retries it.
          span(next, undefined).catch(() => {});
        }
      }
      return result;
    },
  };
}

/**
 * Reads the compressed range [start, end) of the blob in chunks of at most `chunkBytes`, one chunk read
 * ahead, with a position that can be moved back within the bytes already handed out (where a deflate
 * stream ended) and small exact reads for trailers and headers.
 */
class BlobCursor {
  readonly #blob: ByteSource;
  readonly #end: number;
  readonly #chunkBytes: number;
  readonly #signal: AbortSignal | undefined;
  readonly #stats: ZinfoSourceStats;
  /** Buffered bytes, `#buf[0]` at offset `#bufStart`; `#pos` is the next offset to hand out. */
  #buf: Uint8Array = new Uint8Array(0);
  #bufStart: number;
  #pos: number;
  #fetched: number;
  #ahead: Promise<Uint8Array> | undefined;

  constructor(
    blob: ByteSource,
    start: number,
    end: number,
    chunkBytes: number,
    signal: AbortSignal | undefined,
    stats: ZinfoSourceStats,
  ) {
    this.#blob = blob;
    this.#end = end;
    this.#chunkBytes = chunkBytes;
    this.#signal = signal;
    this.#stats = stats;
    this.#bufStart = start;
    this.#pos = start;
    this.#fetched = start;
  }

  get position(): number {
    return this.#pos;
  }

  get atEnd(): boolean {
    return this.#pos >= this.#end;
  }

  #fetchNext(): Promise<Uint8Array> | undefined {
    if (this.#fetched >= this.#end) return undefined;
    const at = this.#fetched;
    const n = Math.min(this.#chunkBytes, this.#end - at);
    this.#fetched += n;
    this.#stats.compressedBytesRead += n;
    const p = this.#blob.read(at, n, { signal: this.#signal });
    // Awaited by #more; a rejection seen first there must not count as unhandled here.
    p.catch(() => {});
    return p;
  }

  /** Appends the next chunk to the buffer (dropping bytes before the position). False at the end. */
  async #more(): Promise<boolean> {
    const next = this.#ahead ?? this.#fetchNext();
    if (!next) return false;
    const chunk = await next;
    this.#ahead = this.#fetchNext();
    const keep = this.#buf.subarray(this.#pos - this.#bufStart);
    if (keep.byteLength === 0) this.#buf = chunk;
    else {
      const joined = new Uint8Array(keep.byteLength + chunk.byteLength);
      joined.set(keep, 0);
      joined.set(chunk, keep.byteLength);
      this.#buf = joined;
    }
    this.#bufStart = this.#pos;
    return true;
  }

  #available(): number {
    return this.#bufStart + this.#buf.byteLength - this.#pos;
  }

  /** The next bytes (everything buffered, else the next chunk), or undefined at the end of the range. */
  async take(): Promise<{ offset: number; bytes: Uint8Array } | undefined> {
    if (this.#available() === 0 && !(await this.#more())) return undefined;
    const offset = this.#pos;
    const bytes = this.#buf.subarray(offset - this.#bufStart);
    this.#pos += bytes.byteLength;
    return { offset, bytes };
  }

  /** Moves the position back to `offset`, which must be within the bytes of the last `take`. */
  rewind(offset: number): void {
    if (offset < this.#bufStart || offset > this.#pos) {
      throw new ErofsOciError(
        'internal',
        `zinfo reader: cannot rewind to ${offset} (buffer at ${this.#bufStart})`,
      );
    }
    this.#pos = offset;
  }

  /** At least `n` bytes from the position (fewer only at the end of the range), without consuming them. */
  async peek(n: number): Promise<Uint8Array> {
    while (this.#available() < n && (await this.#more())) {}
    const from = this.#pos - this.#bufStart;
    return this.#buf.subarray(from, from + Math.max(n, this.#available()));
  }

  skip(n: number): void {
    this.#pos += n;
  }
}

interface SpanJob {
  blob: ByteSource;
  checkpoints: readonly ZinfoCheckpoint[];
  index: number;
  /** Uncompressed length, when known (every span but the last, and the last given the total size). */
  expected: number | undefined;
  readChunkBytes: number;
  maxSpanBytes: number;
  stats: ZinfoSourceStats;
}

/** Inflates span `index` whole and checks it against the index (see the module comment). */
async function inflateSpan(job: SpanJob, signal: AbortSignal | undefined): Promise<Uint8Array> {
  const { blob, checkpoints, index, expected, maxSpanBytes, stats } = job;
  const c = checkpoints[index]!;
  const next = checkpoints[index + 1];
  const where = `zinfo checkpoint ${index} (compressed offset ${c.in}, bit offset ${c.bits}, uncompressed offset ${c.out})`;
  const mismatch = (why: string, offset?: number) =>
    new CorruptInputError(
      `Cannot read gzip blob from ${where}: ${why}; the zinfo does not belong to this blob or the blob is corrupt`,
      offset,
    );
  if (expected !== undefined && expected > maxSpanBytes) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot read gzip blob from ${where}: the span holds ${expected} bytes, more than the ${maxSpanBytes} supported`,
    );
  }
  stats.spansInflated++;
  const start = index === 0 ? 0 : c.bits === 0 ? c.in : c.in - 1;
  const end = next ? next.in : blob.size;
  const cursor = new BlobCursor(blob, start, end, job.readChunkBytes, signal, stats);

  // Checkpoint 0 must sit right after the first member's header: a cheap first test of a blob/zinfo pair.
  const memberHeader = async (what: string): Promise<number> => {
    try {
      return await readMemberHeader(cursor, what);
    } catch (error) {
      if (error instanceof CorruptInputError) throw mismatch(error.message, error.offset);
      throw error;
    }
  };
  if (index === 0) {
    const headerEnd = await memberHeader('the gzip header');
    if (headerEnd !== c.in || c.bits !== 0) {
      throw mismatch(`the blob's first gzip header ends at offset ${headerEnd}`);
    }
  }

  const out = new OutputCollector(expected, maxSpanBytes, () =>
    mismatch(`it inflates to more than ${expected} bytes`),
  );
  let session = new RawInflateSession(c.window);
  /** Where the current deflate stream's output starts in `out`, and whether its member began in this span. */
  let memberStart = 0;
  let memberBeganHere = index === 0;
  let firstFeed = c.bits !== 0;
  try {
    for (;;) {
      const piece = await cursor.take();
      if (!piece) break;
      let feed = piece.bytes;
      /** Stream offset of feed[k] is piece.offset + k - shift. */
      let shift = 0;
      if (firstFeed) {
        firstFeed = false;
        const prefix = alignmentPrefix(c.bits, piece.bytes[0]!);
        feed = new Uint8Array(prefix.byteLength + piece.bytes.byteLength - 1);
        feed.set(prefix, 0);
        feed.set(piece.bytes.subarray(1), prefix.byteLength);
        shift = prefix.byteLength - 1;
      }
      let step: Awaited<ReturnType<RawInflateSession['write']>>;
      try {
        step = await session.write(feed);
      } catch (error) {
        throw mismatch(`zlib: ${(error as Error).message}`, piece.offset);
      }
      for (const chunk of step.output) out.push(chunk);
      if (step.consumed === undefined) continue;

      // The deflate stream ended: a member trailer follows, then the end of the blob or another member.
      cursor.rewind(piece.offset + step.consumed - shift);
      const trailerAt = cursor.position;
      const trailerBytes = await cursor.peek(gzipTrailer.size);
      if (trailerBytes.byteLength < gzipTrailer.size)
        throw mismatch('the gzip trailer is cut off', trailerAt);
      const trailer = gzipTrailer.decode(trailerBytes);
      if (memberBeganHere) {
        const member = out.view(memberStart);
        if (trailer.isize !== member.byteLength % 2 ** 32 || trailer.crc32 !== crc32(member)) {
          throw mismatch('a gzip member does not match its trailer (CRC-32 or size)', trailerAt);
        }
      }
      cursor.skip(gzipTrailer.size);
      session.close();
      if (cursor.atEnd) {
        if (next) throw mismatch(`the gzip stream ends at offset ${cursor.position}`, cursor.position);
        return out.finish(() =>
          mismatch(
            `it inflates to ${out.length} bytes (up to uncompressed offset ${c.out + out.length}), not ${expected}`,
          ),
        );
      }
      const headerEnd = await memberHeader(`the gzip member header at offset ${cursor.position}`);
      if (next && headerEnd >= next.in) {
        // A member starting exactly at the next checkpoint (erofs-utils puts one at every member start).
        if (headerEnd !== next.in || next.bits !== 0) {
          throw mismatch(
            `a gzip member header ends at offset ${headerEnd}, past the next checkpoint`,
            headerEnd,
          );
        }
        return out.finish(() =>
          mismatch(
            `it inflates to ${out.length} bytes (up to uncompressed offset ${c.out + out.length}), not ${expected}`,
          ),
        );
      }
      session = new RawInflateSession(undefined);
      memberStart = out.length;
      memberBeganHere = true;
    }
  } finally {
    session.close();
    stats.bytesInflated += out.length;
  }
  // The compressed range is used up without the deflate stream ending.
  if (!next) throw mismatch('the blob ends inside a deflate stream', blob.size);
  const data = out.finish(() =>
    mismatch(`it inflates to ${out.length} bytes before the next checkpoint, not ${expected}`),
  );
  // The next checkpoint's window must be the output before it: compare the part this pass produced (window
  // bytes from before a member start are arbitrary in erofs-utils' files).
  const own = Math.min(WINDOW_SIZE, data.byteLength - memberStart);
  const window = next.window.subarray(WINDOW_SIZE - own);
  const produced = data.subarray(data.byteLength - own);
  if (Buffer.compare(window, produced) !== 0) {
    throw mismatch(`the window of checkpoint ${index + 1} differs from the inflated data before it`, next.in);
  }
  return data;
}

/** Parses the member header at the cursor, consumes it and returns the offset where it ends. */
async function readMemberHeader(cursor: BlobCursor, what: string): Promise<number> {
  let want = 10;
  for (;;) {
    const bytes = await cursor.peek(want);
    const end = parseGzipHeader(bytes, 0, cursor.position, what);
    if (end >= 0) {
      cursor.skip(end);
      return cursor.position;
    }
    if (bytes.byteLength < want)
      throw new CorruptInputError(`Cannot parse ${what}: the blob ends inside it`, cursor.position);
    checkHeaderLength(bytes.byteLength, cursor.position);
    want = bytes.byteLength + 4096;
  }
}

/** The output of one span: into a buffer of the expected size, or into chunks while the size is unknown. */
class OutputCollector {
  readonly #expected: number | undefined;
  readonly #max: number;
  readonly #overflow: () => Error;
  /** `#flat[0..#flatLength)` then `#chunks` hold the output. */
  #flat: Uint8Array;
  #flatLength = 0;
  #chunks: Uint8Array[] = [];
  length = 0;

  constructor(expected: number | undefined, max: number, overflow: () => Error) {
    this.#expected = expected;
    this.#max = max;
    this.#overflow = overflow;
    this.#flat = new Uint8Array(expected ?? 0);
  }

  push(chunk: Uint8Array): void {
    const end = this.length + chunk.byteLength;
    if (this.#expected !== undefined) {
      if (end > this.#expected) throw this.#overflow();
      this.#flat.set(chunk, this.length);
      this.#flatLength = end;
    } else {
      if (end > this.#max) {
        throw new ErofsOciError(
          'unsupported',
          `Cannot read gzip blob through zinfo: the last span holds more than ${this.#max} bytes`,
        );
      }
      this.#chunks.push(chunk);
    }
    this.length = end;
  }

  /** The bytes from `from` on (for member checks). */
  view(from: number): Uint8Array {
    this.#flatten();
    return this.#flat.subarray(from, this.length);
  }

  finish(short: () => Error): Uint8Array {
    if (this.#expected !== undefined && this.length !== this.#expected) throw short();
    this.#flatten();
    return this.#flat.subarray(0, this.length);
  }

  #flatten(): void {
    if (this.#chunks.length === 0) return;
    const joined = new Uint8Array(this.length);
    joined.set(this.#flat.subarray(0, this.#flatLength), 0);
    let at = this.#flatLength;
    for (const chunk of this.#chunks) {
      joined.set(chunk, at);
      at += chunk.byteLength;
    }
    this.#flat = joined;
    this.#flatLength = at;
    this.#chunks = [];
  }
}
