/**
 * `build`: sources → tree (whiteouts applied) → EROFS image. File data is streamed from the source straight
 * into the image's data area; only metadata is held in memory. The image is written under a temporary name
 * beside the output and renamed into place once complete, so a failure never leaves a partial image.
 */
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  type BlockSize,
  type CompressionOptions,
  type ImageSummary,
  ImageWriter,
  xattrBodySize,
} from '../erofs/writer.ts';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import { TreeBuilder, type WhiteoutMode } from '../fs-tree/apply.ts';
import { EMPTY_CONTENT, type FileContent } from '../fs-tree/tree.ts';
import {
  createZinfoBuilder,
  encodeSpanDigests,
  encodeZinfo,
  SPAN_DIGESTS_SUFFIX,
  type ZinfoBuilder,
  zinfoDigest,
} from '../gzip-index/index.ts';
import { decompress, detectCompression } from '../io/decompress.ts';
import { fileError, temporaryPathFor, writeFileAtomically } from '../io/files.ts';
import { readTar } from '../tar/reader.ts';
import { readDirectory } from './dir-source.ts';
import { copyLowerLinks, type LowerLayer } from './lower-links.ts';
import { Prefetcher } from './prefetch.ts';
import { entryNode, type SourceEntry } from './source-entry.ts';

export type BuildSource =
  | { kind: 'tar'; path: string }
  | { kind: 'tar-stream'; name: string; stream: AsyncIterable<Uint8Array> }
  | { kind: 'dir'; path: string }
  /** A layer opened on demand (a registry or layout blob); several are downloaded ahead of their turn. */
  | { kind: 'lazy'; name: string; open(signal: AbortSignal): AsyncIterable<Uint8Array> };

/**
 * `full`: file data inside the image. `index`: metadata only, file data addressed in the layer's
 * uncompressed tar through device 1 of a device table (512-byte blocks, one tar layer), so that the bytes
 * `[image][uncompressed tar]` form a mountable filesystem, as erofs-utils `--tar=i` writes it.
 */
export type BuildMode =
  | { kind: 'full' }
  /** `zinfo`: also write the gzip layer's random-access index to this file (same download, same pass). */
  | {
      kind: 'index';
      zinfo?: { path: string; span?: number };
      /**
       * Where the declared tar device ends: `stream` (default) the whole uncompressed tar; `entries` the end
       * of the last entry's data, leaving the end-of-archive blocks out, as erofs-utils `--tar=i` / `--oci=i`
       * declare it (a device shorter than the gzip stream inflates to; readers must serve it).
       */
      deviceEnd?: 'stream' | 'entries';
    };

export interface BuildOptions {
  sources: BuildSource[];
  mode?: BuildMode;
  output: string;
  blockSize?: BlockSize;
  /** In-filesystem compression of file data (full mode only). */
  compression?: CompressionOptions;
  /** Build time in seconds (default: `SOURCE_DATE_EPOCH`, else now). File times always come from sources. */
  timestamp?: number;
  /** 16 bytes, or undefined for a random one. */
  uuid?: Uint8Array;
  label?: string;
  /**
   * How whiteouts are treated. Default: `apply` when several sources are stacked, `overlay` for a single
   * tar layer (so it can serve as an overlayfs lower layer).
   */
  whiteouts?: WhiteoutMode;
  signal?: AbortSignal;
  /** Lazy sources transferring at once, the one being applied included (default 3). */
  prefetch?: number;
  onWarning?: (message: string) => void;
  /** Progress of source `index`: bytes read from it so far (compressed bytes for compressed tars). */
  onProgress?: (index: number, bytes: number) => void;
  /**
   * One layer in overlay form: the layers below it (bottom first). Hardlinks of the layer to targets it
   * does not have are resolved in them, the targets copied into the image (see lower-links.ts); without
   * this such a layer is refused (unsupported).
   */
  lowerLayers?: LowerLayer[];
}

export interface BuildSummary extends ImageSummary {
  output: string;
  seconds: number;
  /** Index mode: size of the uncompressed tar the image addresses. */
  tarSize?: number;
}

export function defaultTimestamp(env: NodeJS.ProcessEnv = process.env): number {
  const fromEnv = env.SOURCE_DATE_EPOCH;
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!/^\d+$/.test(fromEnv))
      throw new ErofsOciError('usage', `SOURCE_DATE_EPOCH is not a number of seconds: ${fromEnv}`);
    return Number(fromEnv);
  }
  return Math.floor(Date.now() / 1000);
}

export async function build(options: BuildOptions): Promise<BuildSummary> {
  const started = performance.now();
  if (options.sources.length === 0) throw new ErofsOciError('usage', 'no source given');
  const buildTime = options.timestamp ?? defaultTimestamp();
  const whiteouts =
    options.whiteouts ??
    (options.sources.length === 1 && options.sources[0]?.kind !== 'dir' ? 'overlay' : 'apply');
  const mode = options.mode ?? { kind: 'full' };
  const index = mode.kind === 'index';
  const zinfoBuilder =
    mode.kind === 'index' && mode.zinfo
      ? createZinfoBuilder({ span: mode.zinfo.span, spanDigests: true })
      : undefined;
  if (index) {
    if (options.sources.length !== 1 || options.sources[0]?.kind === 'dir') {
      throw new ErofsOciError('usage', 'index mode takes exactly one tar layer');
    }
    if (options.compression) {
      throw new ErofsOciError(
        'usage',
        'index mode cannot compress: its file data stays in the tar (drop --compress or use --mode full)',
      );
    }
    if (options.blockSize !== undefined && options.blockSize !== 512) {
      throw new ErofsOciError('usage', 'index mode uses 512-byte blocks (tar data is 512-byte aligned)');
    }
  }
  const temporary = temporaryPathFor(options.output);
  const writer = ImageWriter.create(temporary, {
    blockSize: index ? 512 : (options.blockSize ?? 4096),
    ...(index ? { externalDevice: {} } : {}),
    ...(options.compression ? { compression: options.compression } : {}),
  });
  const prefetcher = new Prefetcher(
    options.sources.map((s) => (s.kind === 'lazy' ? s : null)),
    {
      concurrency: options.prefetch ?? 3,
      directory: dirname(options.output),
      signal: options.signal,
      onBytes: (index, bytes) => options.onProgress?.(index, bytes),
      // Full mode decompresses lazy layers as they arrive, ahead of their turn; index mode needs the
      // compressed stream for the zinfo and has a single layer.
      ...(index ? {} : { decode: (input, signal) => decompress(input, { signal }) }),
    },
  );
  try {
    const lowerLayers = options.lowerLayers;
    const tree = new TreeBuilder({ whiteouts, deferLowerLinks: lowerLayers !== undefined });
    let tarSize = 0;
    let entriesEnd = 0;
    for (const [sourceIndex, source] of options.sources.entries()) {
      tree.beginLayer();
      const name = sourceName(source);
      const onBytes = (bytes: number) => options.onProgress?.(sourceIndex, bytes);
      const onTarBytes = (bytes: number) => {
        tarSize = bytes;
      };
      const lazy = source.kind === 'lazy' ? prefetcher.stream(sourceIndex) : undefined;
      for await (const entry of entriesOf(source, options, onBytes, onTarBytes, lazy, zinfoBuilder)) {
        throwIfAborted(options.signal);
        if (entry.dataOffset !== undefined) {
          const dataBytes = entry.type === 'file' ? Math.ceil(entry.size / 512) * 512 : 0;
          entriesEnd = Math.max(entriesEnd, entry.dataOffset + dataBytes);
        }
        await addEntry(tree, writer, entry, name, index, options.signal);
      }
    }
    if (tree.lowerLinks.size > 0 && lowerLayers) {
      await copyLowerLinks(tree, lowerLayers, writer, options.signal);
    }
    if (!tree.rootHasAttributes) {
      // Layers rarely carry an entry for the root itself; erofs-utils gives it the build time.
      tree.root.mtime = { sec: buildTime, nsec: 0 };
    }
    const summary = await writer.finish(tree.root, {
      buildTime,
      uuid: options.uuid ?? randomBytes(16),
      label: options.label,
      signal: options.signal,
      ...(index
        ? { externalDeviceSize: mode.deviceEnd === 'entries' ? Math.min(entriesEnd, tarSize) : tarSize }
        : {}),
    });
    if (mode.kind === 'index' && mode.zinfo && zinfoBuilder) {
      const built = zinfoBuilder.result();
      const zinfo = encodeZinfo(built.zinfo);
      await writeFileAtomically(mode.zinfo.path, zinfo);
      // Beside it, not in it: the zinfo stays what SOCI and erofs-utils read (src/gzip-index/span-digests.ts).
      await writeFileAtomically(
        `${mode.zinfo.path}${SPAN_DIGESTS_SUFFIX}`,
        encodeSpanDigests({ zinfo: zinfoDigest(zinfo), spans: built.spanDigests ?? [] }),
      );
    }
    await rename(temporary, options.output);
    return {
      ...summary,
      output: options.output,
      seconds: (performance.now() - started) / 1000,
      ...(index ? { tarSize } : {}),
    };
  } catch (error) {
    writer.discard();
    throw error;
  } finally {
    await prefetcher.close();
  }
}

export function sourceName(source: BuildSource): string {
  return source.kind === 'tar-stream' || source.kind === 'lazy' ? source.name : source.path;
}

function entriesOf(
  source: BuildSource,
  options: BuildOptions,
  onBytes: (bytes: number) => void,
  onTarBytes: (bytes: number) => void,
  lazy: AsyncIterable<Uint8Array> | undefined,
  zinfo: ZinfoBuilder | undefined,
): AsyncIterable<SourceEntry> {
  const signal = options.signal;
  if (source.kind === 'dir') return readDirectory(source.path, { signal, onWarning: options.onWarning });
  let raw: AsyncIterable<Uint8Array>;
  let onCompressedBytes: ((n: number) => void) | undefined;
  if (source.kind === 'lazy') {
    // The prefetcher reports the bytes of lazy sources.
    raw = lazy as AsyncIterable<Uint8Array>;
  } else {
    // The zinfo builder may hold on to input chunks longer than the pooled reader allows.
    raw = source.kind === 'tar' ? openTarFile(source.path, signal, zinfo === undefined) : source.stream;
    let total = 0;
    onCompressedBytes = (n) => {
      total += n;
      onBytes(total);
    };
  }
  const tar = zinfo
    ? inflateIndexed(raw, zinfo, onCompressedBytes, signal)
    : source.kind === 'lazy' && options.mode?.kind !== 'index'
      ? raw // decompressed by the prefetcher
      : decompress(raw, { signal, onCompressedBytes });
  return readTar(countBytes(tar, onTarBytes), { signal });
}

/** Gzip only: decompresses while recording zinfo checkpoints (one download, one decompression). */
async function* inflateIndexed(
  raw: AsyncIterable<Uint8Array>,
  builder: ZinfoBuilder,
  onCompressedBytes: ((n: number) => void) | undefined,
  signal: AbortSignal | undefined,
): AsyncGenerator<Uint8Array> {
  let first = true;
  async function* checked(): AsyncGenerator<Uint8Array> {
    for await (const chunk of raw) {
      if (first && chunk.byteLength > 0) {
        first = false;
        const compression = detectCompression(chunk);
        if (compression !== 'gzip') {
          throw new ErofsOciError(
            'usage',
            `--zinfo needs a gzip layer, this one is ${compression === 'none' ? 'uncompressed' : compression}`,
          );
        }
      }
      onCompressedBytes?.(chunk.byteLength);
      yield chunk;
    }
  }
  yield* builder.inflate(checked(), { signal });
}

/**
 * Reads a file in 1 MiB chunks through four rotating buffers. Allocating a fresh buffer per read let dead
 * buffers pile up until a major GC (~70 MB of peak RSS on a 500 MB layer). Contract for consumers: a chunk
 * is only valid until three more have been pulled — the decompressor holds at most the chunk it is
 * decoding plus one peeked ahead, the tar reader only its current chunk, and the image writer copies or
 * writes synchronously.
 */
async function* openTarFile(
  path: string,
  signal: AbortSignal | undefined,
  pooled = true,
): AsyncGenerator<Uint8Array> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    throw fileError(`Cannot open ${path}`, error);
  }
  const pool = Array.from({ length: 4 }, () => Buffer.allocUnsafe(1 << 20));
  try {
    for (let i = 0; ; i++) {
      throwIfAborted(signal);
      const buffer = pooled ? (pool[i % pool.length] as Buffer) : Buffer.allocUnsafe(1 << 20);
      const { bytesRead } = await handle.read(buffer, 0, buffer.byteLength, null);
      if (bytesRead === 0) return;
      yield buffer.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}

/** Passes chunks through, reporting the running total (the uncompressed tar's size, for index mode). */
async function* countBytes(
  input: AsyncIterable<Uint8Array>,
  onTotal: (bytes: number) => void,
): AsyncGenerator<Uint8Array> {
  let total = 0;
  for await (const chunk of input) {
    total += chunk.byteLength;
    onTotal(total);
    yield chunk;
  }
}

async function addEntry(
  tree: TreeBuilder,
  writer: ImageWriter,
  entry: SourceEntry,
  sourceName: string,
  index: boolean,
  signal: AbortSignal | undefined,
): Promise<void> {
  const origin = { source: sourceName, offset: entry.headerOffset };
  const classified = tree.classify(entry.path, origin);
  // Only real entries keep data; a whiteout's body (normally empty) is skipped by the reader.
  let content: FileContent = EMPTY_CONTENT;
  if (entry.type === 'file' && classified.kind === 'entry' && index) {
    if (entry.dataOffset === undefined)
      throw new ErofsOciError('internal', 'index mode needs tar data offsets');
    content = { kind: 'external', size: entry.size, offset: entry.dataOffset };
  } else if (entry.type === 'file' && classified.kind === 'entry') {
    content = await writer.writeFileData(entry.body(), entry.size, xattrBodySize(entry.xattrs), {
      signal,
    });
  }
  const node = entryNode(entry, content);
  tree.add(entry.path, classified, node, origin);
}
