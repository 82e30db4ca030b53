/**
 * A layer's image data (its EROFS device) as a byte source whose every byte was checked against the chunk
 * index (erofs-image-spec §3.4.4-3.4.5) before anyone sees it.
 *
 * Reads are answered chunk by chunk: a read's missing chunks are fetched along chunk boundaries, adjacent
 * misses in one range request (up to `maxRequestBytes`), each chunk's on-blob bytes are hashed against its
 * checksum, then decompressed when the layer is `+zstd` (one frame per chunk), and only then cached and
 * served. A chunk that fails its checksum is logged (layer, chunk, blob and image offsets) and fetched
 * once more on its own; failing again, the reads that need it fail with `digest-mismatch` (EIO at the
 * kernel) and nothing of it is kept, so a later read tries the registry again. Other chunks are unaffected.
 *
 * The optional store (src/verified/chunk-store.ts) keeps verified on-blob chunk bytes across restarts; what
 * it hands back is hashed again before it is believed.
 */
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { zstdDecompress } from 'node:zlib';
import {
  type ChunkIndex,
  type ChunkLocation,
  findChunk,
  hashAlgorithm,
  locateChunk,
} from '../chunk-index/index.ts';
import { CorruptInputError, ErofsOciError, raceAbort, throwIfAborted } from '../errors.ts';
import { ReadaheadStreams } from '../io/block-cache/readahead.ts';
import type { ByteSource, Closable, Lending, Loan, ReadOptions } from '../io/byte-source.ts';
import type { ChunkStore } from './chunk-store.ts';

const unzstd = promisify(zstdDecompress);

export interface VerifiedSourceOptions {
  /** The layer for log lines and errors, e.g. `layer 2 (sha256:…)`. */
  name: string;
  /** Budget for decoded chunks kept in memory (default 64 MiB; at least one request's worth is kept). */
  memoryBytes?: number;
  /** Largest single range request when adjacent chunks are missing (default 8 MiB; one chunk at least). */
  maxRequestBytes?: number;
  /**
   * Chunks fetched ahead of a read that continues a sequential stream, at first (default 2; 0 turns
   * readahead off). The window doubles as the stream goes on, up to `maxReadaheadBytes`.
   */
  readaheadChunks?: number;
  /** The widest readahead window of one stream (default 16 MiB, at most a quarter of `memoryBytes`). */
  maxReadaheadBytes?: number;
  /** Verified chunks kept on disk, re-checked when loaded. */
  store?: ChunkStore;
  log?: (line: string) => void;
}

export interface VerifiedStats {
  /** Chunks that passed their checksum (fetched or loaded from the store). */
  verifiedChunks: number;
  /** Checksum failures seen (each retried once). */
  failedChunks: number;
  /** On-blob bytes fetched from the origin. */
  fetchedBytes: number;
  requests: number;
  /** Chunks answered by the disk store. */
  storeHits: number;
}

export interface VerifiedSource extends ByteSource, Closable, Lending {
  readonly index: ChunkIndex;
  readonly stats: VerifiedStats;
}

/**
 * `blob` is the raw layer blob (range reads from the registry); `index` a parsed chunk index whose digest
 * was already checked; `sectionOffset` the first blob byte of the chunk-index section (where the last
 * compressed chunk ends).
 */
export function openVerifiedSource(
  blob: ByteSource,
  index: ChunkIndex,
  sectionOffset: number,
  options: VerifiedSourceOptions,
): VerifiedSource {
  const algorithm = hashAlgorithm(index);
  if (algorithm === undefined) {
    throw new ErofsOciError(
      'unsupported',
      `${options.name}: its chunk index has no checksums to verify with`,
    );
  }
  const chunks = index.entries.map((_, i) => locateChunk(index, i, sectionOffset));
  const memoryBytes = options.memoryBytes ?? 64 * 1024 * 1024;
  const maxRequestBytes = options.maxRequestBytes ?? 8 * 1024 * 1024;
  const log = options.log ?? (() => {});
  const readaheadChunks = options.readaheadChunks ?? 2;
  const chunkBytes = chunks[0]?.uncompressedLength ?? 1;
  /**
   * Sequential streams, several at once (nbdcopy's connections each copy a region; a kernel mount reads
   * several files), recognised by byte distance as in the block cache. The window starts at
   * `readaheadChunks` and doubles per chunk crossed, within a quarter of the memory budget per stream so
   * that chunks read ahead are not evicted before they are read.
   */
  const streams = new ReadaheadStreams();
  const readaheadLimits = {
    initial: readaheadChunks * chunkBytes,
    max: Math.max(
      readaheadChunks * chunkBytes,
      Math.min(options.maxReadaheadBytes ?? 16 * 1024 * 1024, Math.floor(memoryBytes / 4)),
    ),
  };
  const stats: VerifiedStats = {
    verifiedChunks: 0,
    failedChunks: 0,
    fetchedBytes: 0,
    requests: 0,
    storeHits: 0,
  };
  /** Decoded chunks, least recently used first. */
  const memory = new Map<number, Uint8Array>();
  let memoryUsed = 0;
  /**
   * Chunks being fetched or loaded: every read that needs one waits on the same promise. A fetch serves
   * whoever waits on it, so it runs under the source's lifetime, never under one reader's signal: a reader
   * that gives up stops waiting (`raceAbort`) and the fetch goes on for the others.
   */
  const pending = new Map<number, Promise<Uint8Array>>();
  const lifetime = new AbortController();

  /**
   * Chunks with the same checksum and length hold the same bytes (the index is content-addressed, spec
   * §3.4.5): the last of them remembered, so that a twin is answered from memory instead of being fetched,
   * hashed and decompressed again (zeroed or repeated regions of an image).
   */
  const contentKeys = chunks.map((c) => `${Buffer.from(c.checksum).toString('hex')}:${c.uncompressedLength}`);
  const twins = new Map<string, number>();
  const twinInMemory = (i: number): Uint8Array | undefined => {
    const twin = twins.get(contentKeys[i]!);
    return twin === undefined ? undefined : memory.get(twin);
  };

  const remember = (i: number, data: Uint8Array): void => {
    memory.set(i, data);
    twins.set(contentKeys[i]!, i);
    memoryUsed += data.byteLength;
    for (const [key, value] of memory) {
      if (memoryUsed <= memoryBytes || memory.size <= 1) break;
      memory.delete(key);
      memoryUsed -= value.byteLength;
    }
  };

  const matches = (chunk: ChunkLocation, stored: Uint8Array): boolean =>
    createHash(algorithm).update(stored).digest().equals(chunk.checksum);

  const decode = async (chunk: ChunkLocation, stored: Uint8Array): Promise<Uint8Array> => {
    if (index.compression === 'none') return stored;
    let data: Uint8Array;
    try {
      data = await unzstd(stored, { maxOutputLength: Math.max(1, chunk.uncompressedLength) });
    } catch (cause) {
      // The frame matched its checksum: the producer wrote a bad frame. No refetch can help.
      throw new CorruptInputError(
        `${options.name}: chunk ${chunk.index} is not a zstd frame`,
        chunk.blockOffset,
        {
          cause,
        },
      );
    }
    if (data.byteLength !== chunk.uncompressedLength) {
      throw new CorruptInputError(
        `${options.name}: chunk ${chunk.index} decompresses to ${data.byteLength} bytes, the index says ${chunk.uncompressedLength}`,
        chunk.blockOffset,
      );
    }
    return data;
  };

  const where = (chunk: ChunkLocation): string =>
    `chunk ${chunk.index} (blob bytes [${chunk.blockOffset}, ${chunk.blockOffset + chunk.blockLength}), image bytes [${chunk.uncompressedOffset}, ${chunk.uncompressedOffset + chunk.uncompressedLength}))`;

  const fetchRange = async (offset: number, length: number): Promise<Uint8Array> => {
    stats.requests++;
    stats.fetchedBytes += length;
    const bytes = await blob.read(offset, length, { signal: lifetime.signal });
    if (bytes.byteLength !== length) {
      throw new ErofsOciError(
        'io',
        `${options.name}: asked for ${length} bytes at ${offset}, got ${bytes.byteLength}`,
      );
    }
    return bytes;
  };

  /** Checks, decodes, stores and caches one chunk's fetched bytes; a mismatch is retried once alone. */
  const accept = async (chunk: ChunkLocation, stored: Uint8Array): Promise<Uint8Array> => {
    if (!matches(chunk, stored)) {
      stats.failedChunks++;
      log(`${options.name}: ${where(chunk)} fails its checksum; fetching it once more`);
      const again = await fetchRange(chunk.blockOffset, chunk.blockLength);
      if (!matches(chunk, again)) {
        stats.failedChunks++;
        log(`${options.name}: ${where(chunk)} fails its checksum again; reads of it fail (EIO)`);
        throw new ErofsOciError(
          'digest-mismatch',
          `${options.name}: ${where(chunk)} does not match its checksum in the chunk index`,
        );
      }
      stored = again;
    }
    stats.verifiedChunks++;
    const data = await decode(chunk, stored);
    // Verified bytes only reach the store; a store failure costs the cache, never the read.
    await options.store?.put(chunk.checksum, stored).catch((error: Error) => {
      log(`${options.name}: could not store ${where(chunk)}: ${error.message}`);
    });
    return data;
  };

  /** Loads a chunk from the store when it has it and it still matches its checksum. */
  const fromStore = async (chunk: ChunkLocation): Promise<Uint8Array | undefined> => {
    const store = options.store;
    if (store === undefined) return undefined;
    const stored = await store.get(chunk.checksum, chunk.blockLength).catch(() => undefined);
    if (stored === undefined) return undefined;
    if (!matches(chunk, stored)) {
      log(
        `${options.name}: disk cache copy of ${where(chunk)} fails its checksum; dropped and fetched again`,
      );
      await store.delete(chunk.checksum).catch(() => {});
      return undefined;
    }
    stats.storeHits++;
    stats.verifiedChunks++;
    return decode(chunk, stored);
  };

  /** Fetches chunks `first..last` (all missing) in as few requests as `maxRequestBytes` allows. */
  const fetchRun = (first: number, last: number): void => {
    let start = first;
    while (start <= last) {
      let end = start;
      let length = chunks[start]!.blockLength;
      while (end < last && length + chunks[end + 1]!.blockLength <= maxRequestBytes) {
        end++;
        length += chunks[end]!.blockLength;
      }
      const runStart = start;
      const runEnd = end;
      const offset = chunks[runStart]!.blockOffset;
      const request = fetchRange(offset, length);
      for (let i = runStart; i <= runEnd; i++) {
        const chunk = chunks[i]!;
        const promise = request
          .then((bytes) =>
            accept(
              chunk,
              bytes.subarray(chunk.blockOffset - offset, chunk.blockOffset - offset + chunk.blockLength),
            ),
          )
          .then(
            (data) => {
              pending.delete(i);
              remember(i, data);
              return data;
            },
            (error: unknown) => {
              pending.delete(i);
              throw error;
            },
          );
        // A read that gave up on this chunk must not leave an unhandled rejection behind.
        promise.catch(() => {});
        pending.set(i, promise);
      }
      start = end + 1;
    }
  };

  /**
   * The decoded chunks `first..last`: from memory, a fetch under way, the store, or the origin. `signal`
   * ends only this caller's wait.
   */
  const chunkData = async (first: number, last: number, signal?: AbortSignal): Promise<Uint8Array[]> => {
    // Missing chunks not already on their way: try the store first, then fetch the rest in runs.
    const missing: number[] = [];
    for (let i = first; i <= last; i++) {
      if (memory.has(i) || pending.has(i)) continue;
      const twin = twinInMemory(i);
      if (twin !== undefined) remember(i, twin);
      else missing.push(i);
    }
    if (options.store !== undefined && missing.length > 0) {
      const loaded = await raceAbort(Promise.all(missing.map((i) => fromStore(chunks[i]!))), signal);
      for (let k = missing.length - 1; k >= 0; k--) {
        const data = loaded[k];
        if (data !== undefined && !memory.has(missing[k]!)) {
          remember(missing[k]!, data);
        }
      }
    }
    let run: [number, number] | undefined;
    for (let i = first; i <= last; i++) {
      const absent = !memory.has(i) && !pending.has(i);
      if (absent && run !== undefined && run[1] === i - 1) run[1] = i;
      else if (absent) {
        if (run !== undefined) fetchRun(run[0], run[1]);
        run = [i, i];
      }
    }
    if (run !== undefined) fetchRun(run[0], run[1]);
    // Take every chunk (or its promise) now: a promise settles and leaves `pending` while we wait.
    const parts: Array<Uint8Array | Promise<Uint8Array>> = [];
    for (let i = first; i <= last; i++) {
      const cached = memory.get(i);
      if (cached !== undefined) {
        // Refresh its place in the LRU.
        memory.delete(i);
        memory.set(i, cached);
        parts.push(cached);
      } else parts.push(pending.get(i)!);
    }
    return raceAbort(Promise.all(parts), signal);
  };

  /**
   * Buffers of reads that span chunks, lent out and taken back once sent (`lend`), by length (reads come
   * in a few sizes: the kernel's block and readahead sizes); at most `SPARE_BYTES` kept.
   */
  const spare = new Map<number, Uint8Array[]>();
  let spareBytes = 0;
  const SPARE_BYTES = 8 * 1024 * 1024;

  /** The chunks covering [offset, offset + length), read ahead when reads go sequentially. */
  const gather = async (
    offset: number,
    length: number,
    readOptions: ReadOptions,
  ): Promise<{ first: number; parts: Uint8Array[] }> => {
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0)) {
      throw new ErofsOciError('internal', `bad read [${offset}, +${length})`);
    }
    if (offset + length > index.uncompressedSize) {
      throw new ErofsOciError(
        'internal',
        `read [${offset}, +${length}) beyond the ${index.uncompressedSize}-byte image of ${options.name}`,
      );
    }
    throwIfAborted(readOptions.signal);
    const first = findChunk(index, offset);
    const last = findChunk(index, offset + length - 1);
    const parts = chunkData(first, last, readOptions.signal);
    const window = readaheadChunks > 0 ? streams.advance(offset, offset + length, last, readaheadLimits) : 0;
    if (window > 0 && last + 1 < chunks.length) {
      const windowChunks = Math.max(1, Math.round(window / chunkBytes));
      const end = Math.min(chunks.length - 1, last + windowChunks);
      let missing = 0;
      for (let i = last + 1; i <= end; i++) if (!memory.has(i) && !pending.has(i)) missing++;
      // As the kernel's async readahead: refill once half the window is missing, in one go (few, large
      // requests), not a chunk per read as the stream advances. Fetched without the reader's signal (it
      // is not the reader's fetch) and without waiting; a failure there is not reported: the read that
      // needs the chunk fetches it again.
      if (missing > 0 && missing >= Math.max(1, Math.floor(windowChunks / 2))) {
        chunkData(last + 1, end).catch(() => {});
      }
    }
    return { first, parts: await parts };
  };

  return {
    index,
    stats,
    size: index.uncompressedSize,
    async read(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Uint8Array> {
      if (length === 0 && Number.isSafeInteger(offset) && offset >= 0 && offset <= index.uncompressedSize)
        return new Uint8Array(0);
      const { first, parts } = await gather(offset, length, readOptions);
      return assemble(first, parts, offset, length, undefined);
    },
    async lend(offset: number, length: number, readOptions: ReadOptions = {}): Promise<Loan> {
      if (length === 0 && Number.isSafeInteger(offset) && offset >= 0 && offset <= index.uncompressedSize)
        return { bytes: new Uint8Array(0), release: () => {} };
      const { first, parts } = await gather(offset, length, readOptions);
      // A read within one chunk is a view of it (nothing to give back); across chunks, a reused buffer.
      if (parts.length === 1)
        return { bytes: assemble(first, parts, offset, length, undefined), release: () => {} };
      const buffer = spare.get(length)?.pop();
      if (buffer !== undefined) spareBytes -= length;
      const bytes = assemble(first, parts, offset, length, buffer);
      let released = false;
      return {
        bytes,
        release: () => {
          if (released) return;
          released = true;
          if (spareBytes + length > SPARE_BYTES) return;
          spareBytes += length;
          const list = spare.get(length);
          if (list === undefined) spare.set(length, [bytes]);
          else list.push(bytes);
        },
      };
    },
    async close(): Promise<void> {
      lifetime.abort(new ErofsOciError('aborted', `${options.name}: the verified source is closed`));
      memory.clear();
      memoryUsed = 0;
      spare.clear();
      spareBytes = 0;
    },
  };

  function assemble(
    first: number,
    parts: Uint8Array[],
    offset: number,
    length: number,
    into: Uint8Array | undefined,
  ): Uint8Array {
    if (parts.length === 1) {
      const start = offset - chunks[first]!.uncompressedOffset;
      return parts[0]!.subarray(start, start + length);
    }
    const out = into ?? new Uint8Array(length);
    for (let k = 0; k < parts.length; k++) {
      const chunk = chunks[first + k]!;
      const from = Math.max(offset, chunk.uncompressedOffset);
      const to = Math.min(offset + length, chunk.uncompressedOffset + chunk.uncompressedLength);
      out.set(
        parts[k]!.subarray(from - chunk.uncompressedOffset, to - chunk.uncompressedOffset),
        from - offset,
      );
    }
    return out;
  }
}
