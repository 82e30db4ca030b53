/** `erofs-oci build [options] SOURCE... OUTPUT` */
import { statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type BuildSource, type BuildSummary, build, sourceName } from '../builder/build.ts';
import { CompressionAlg } from '../erofs/format.ts';
import type { BlockSize, CompressionOptions } from '../erofs/writer.ts';
import { ErofsOciError } from '../errors.ts';
import type { ImageSource, LayerDescriptor } from '../oci/index.ts';
import type { CommandIo } from './io.ts';
import { formatBytes, Progress } from './progress.ts';
import {
  isImageReference,
  joinNegativeLayer,
  openImageFromOptions,
  registryHelp,
  registryOptions,
  selectLayers,
} from './registry-options.ts';

export const buildHelp = `Usage: erofs-oci build [options] SOURCE... OUTPUT

Writes an EROFS image of SOURCE (several tar: sources are stacked in order, whiteouts applied).

Sources:
  [docker://]HOST/REPO[:TAG][@DIGEST]   an image in a registry (docker.io when no host is given)
  oci:DIR[:TAG|@DIGEST], oci-archive:FILE[:TAG], docker-archive:FILE   local image layouts
  tar:FILE            a layer tarball (plain, gzip or zstd, detected by magic); tar:- reads stdin
  dir:PATH            a local directory tree
An image gives all its layers merged, whiteouts applied; --layer/--blob give one layer.

Options:
  --timestamp T       build time in seconds since the epoch (default: $SOURCE_DATE_EPOCH, else now);
                      file times always come from the source
  --uuid U|clear      volume UUID (default: random; clear = all zero)
  --label NAME        volume name (at most 16 bytes)
  --strip-whiteouts   single layer: drop whiteouts instead of keeping them in overlayfs form
  --mode full|index   full (default): file data inside the image; index: metadata only, one tar
                      layer, 512-byte blocks, data addressed in the uncompressed tar so that
                      [image][uncompressed tar] is a mountable filesystem
  --zinfo FILE        index mode, gzip layer: also write its gzip index (zinfo) to FILE in the same pass,
                      and the SHA-256 of each span's uncompressed bytes to FILE.span-sha256 (mount
                      --tarindex --zinfo FILE checks every span it inflates against them)
  --span BYTES        uncompressed bytes between zinfo checkpoints (default 4 MiB)
  --block-size N      4096 (default), 2048, 1024 or 512
  --compress ALG[:LEVEL]  compress file data in the filesystem (full mode): lz4, lz4hc, deflate
                      (Linux 6.6+) or zstd (Linux 6.10+); files that do not shrink stay plain
  --pcluster-size BYTES   physical cluster size for --compress: a multiple of the block size up to
                      1 MiB (default: one block, as mkfs.erofs -C)
  --quiet             no progress and no summary on stderr
  --json              print a JSON summary on stdout
  --debug             show the causes of errors
  -h, --help          this help

${registryHelp}`;

export async function buildCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: joinNegativeLayer(args),
    allowPositionals: true,
    strict: true,
    options: {
      timestamp: { type: 'string' },
      uuid: { type: 'string' },
      label: { type: 'string' },
      'strip-whiteouts': { type: 'boolean' },
      mode: { type: 'string' },
      zinfo: { type: 'string' },
      span: { type: 'string' },
      'block-size': { type: 'string' },
      compress: { type: 'string' },
      'pcluster-size': { type: 'string' },
      quiet: { type: 'boolean', short: 'q' },
      json: { type: 'boolean' },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      ...registryOptions,
    },
  });
  if (values.help) {
    io.stdout.write(buildHelp);
    return 0;
  }
  if (positionals.length < 2)
    throw new ErofsOciError('usage', 'build needs at least one SOURCE and an OUTPUT', {
      hint: 'see erofs-oci build --help',
    });
  const output = positionals[positionals.length - 1] as string;
  const sourceArgs = positionals.slice(0, -1);
  const images = sourceArgs.filter(isImageReference);
  if (images.length > 0 && sourceArgs.length > 1) {
    throw new ErofsOciError('usage', 'an image source cannot be combined with other sources');
  }
  let image: ImageSource | undefined;
  let layers: LayerDescriptor[] = [];
  let sources: BuildSource[];
  try {
    if (images.length === 1) {
      image = await openImageFromOptions(images[0] as string, values, io);
      layers = selectLayers(await image.layers({ signal: io.signal }), values);
      for (const layer of layers) {
        if (layer.format.kind !== 'tar') {
          throw new ErofsOciError(
            'unsupported',
            `layer ${layer.digest} (${layer.mediaType}) is already EROFS, not a tar layer`,
          );
        }
      }
      const source = image;
      sources = layers.map((layer) => ({
        kind: 'lazy',
        name: layer.digest,
        open: (signal: AbortSignal) => source.openBlob(layer, { signal }),
      }));
    } else {
      if (values.layer !== undefined || values.blob !== undefined) {
        throw new ErofsOciError('usage', '--layer and --blob select layers of an image source');
      }
      sources = sourceArgs.map((s) => parseBuildSource(s, io));
    }
    if (sources.filter((s) => s.kind === 'tar-stream').length > 1) {
      throw new ErofsOciError('usage', 'only one source can read stdin');
    }
    const blockSize = values['block-size'] === undefined ? undefined : parseBlockSize(values['block-size']);
    const mode = values.mode ?? 'full';
    if (mode !== 'full' && mode !== 'index')
      throw new ErofsOciError('usage', `--mode must be full or index, not ${mode}`);
    if (values['pcluster-size'] !== undefined && values.compress === undefined)
      throw new ErofsOciError('usage', '--pcluster-size goes with --compress');
    const compression =
      values.compress === undefined
        ? undefined
        : parseCompress(values.compress, values['pcluster-size'], blockSize ?? 4096);
    if (compression && mode === 'index') {
      throw new ErofsOciError(
        'usage',
        'index mode cannot compress: its file data stays in the tar (drop --compress or use --mode full)',
      );
    }
    if (mode !== 'index' && values.zinfo !== undefined)
      throw new ErofsOciError('usage', '--zinfo goes with --mode index');
    const progress =
      values.quiet || !io.stderrIsTty
        ? undefined
        : new Progress(
            io.stderr,
            sources.map((source, i) => ({
              name: sourceName(source),
              total: layers[i]?.size ?? totalOf(source),
            })),
          );
    // An image without --layer/--blob is merged even when it has one layer; one selected layer keeps its
    // whiteouts in overlay form (SPEC §2).
    const whiteouts = values['strip-whiteouts']
      ? 'strip'
      : image && values.layer === undefined && values.blob === undefined
        ? 'apply'
        : undefined;
    const summary = await build({
      sources,
      output,
      mode:
        mode === 'full'
          ? { kind: 'full' }
          : {
              kind: 'index',
              ...(values.zinfo === undefined
                ? {}
                : {
                    zinfo: {
                      path: values.zinfo,
                      ...(values.span === undefined ? {} : { span: parseSpan(values.span) }),
                    },
                  }),
            },
      blockSize,
      ...(compression ? { compression } : {}),
      timestamp: values.timestamp === undefined ? undefined : parseTimestamp(values.timestamp),
      uuid: values.uuid === undefined ? undefined : parseUuid(values.uuid),
      label: values.label,
      whiteouts,
      signal: io.signal,
      onWarning: (message) => io.stderr.write(`erofs-oci: warning: ${message}\n`),
      onProgress: progress ? (index, bytes) => progress.update(index, bytes) : undefined,
    });
    progress?.done();
    report(summary, sources, layers, values, io);
  } finally {
    await image?.close();
  }
  return 0;
}

function report(
  summary: BuildSummary,
  sources: BuildSource[],
  layers: LayerDescriptor[],
  values: { json?: boolean; quiet?: boolean },
  io: CommandIo,
): void {
  if (values.json) {
    io.stdout.write(
      `${JSON.stringify({
        output: summary.output,
        layers: sources.map((s, i) => ({
          source: sourceName(s),
          ...(layers[i]
            ? { digest: layers[i].digest, size: layers[i].size, mediaType: layers[i].mediaType }
            : {}),
        })),
        inodes: summary.inodes,
        blockSize: summary.blockSize,
        blocks: summary.blocks,
        imageSize: summary.bytes,
        ...(summary.tarSize === undefined ? {} : { tarSize: summary.tarSize }),
        seconds: Number(summary.seconds.toFixed(3)),
      })}\n`,
    );
  }
  if (!values.quiet) {
    io.stderr.write(
      `${summary.output}: ${summary.inodes} inodes, ${formatBytes(summary.bytes)} in ${summary.seconds.toFixed(2)} s\n`,
    );
  }
}

export function parseBuildSource(value: string, io: CommandIo): BuildSource {
  if (value.startsWith('tar:')) {
    const path = value.slice(4);
    if (path === '-') return { kind: 'tar-stream', name: 'stdin', stream: io.stdin };
    if (path === '') throw new ErofsOciError('usage', 'tar: needs a file name');
    return { kind: 'tar', path };
  }
  if (value.startsWith('dir:')) {
    const path = value.slice(4);
    if (path === '') throw new ErofsOciError('usage', 'dir: needs a directory');
    return { kind: 'dir', path };
  }
  throw new ErofsOciError('usage', `unknown source ${JSON.stringify(value)}`);
}

export function parseBlockSize(value: string | undefined): BlockSize {
  if (value === undefined) return 4096;
  const n = Number(value);
  if (n !== 512 && n !== 1024 && n !== 2048 && n !== 4096) {
    throw new ErofsOciError('usage', `--block-size must be 512, 1024, 2048 or 4096, not ${value}`);
  }
  return n;
}

export function parseTimestamp(value: string): number {
  if (/^\d+$/.test(value)) return Number(value);
  const parsed = Date.parse(value);
  if (Number.isNaN(parsed))
    throw new ErofsOciError('usage', `--timestamp is neither seconds nor a date: ${value}`);
  return Math.floor(parsed / 1000);
}

export function parseUuid(value: string): Uint8Array {
  if (value === 'clear') return new Uint8Array(16);
  const hex = value.replaceAll('-', '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new ErofsOciError('usage', `--uuid is not a UUID: ${value}`);
  return Buffer.from(hex, 'hex');
}

function totalOf(source: BuildSource): number | undefined {
  if (source.kind !== 'tar') return undefined;
  try {
    return statSync(source.path).size;
  } catch {
    return undefined; // missing files are reported by the build itself
  }
}

export function parseSpan(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0)
    throw new ErofsOciError('usage', `--span must be a positive number of bytes, not ${value}`);
  return n;
}

const LEVELS: Record<string, { alg: CompressionAlg; min: number; max: number; default?: number }> = {
  lz4: { alg: CompressionAlg.lz4, min: 0, max: 0 },
  // lz4hc: the same LZ4 block format from the HC encoder (a level selects it; 0 is its default, 9).
  lz4hc: { alg: CompressionAlg.lz4, min: 0, max: 12, default: 9 },
  deflate: { alg: CompressionAlg.deflate, min: 0, max: 9, default: 1 },
  zstd: { alg: CompressionAlg.zstd, min: -7, max: 22, default: 3 },
};

/** `--compress ALG[:LEVEL]` and `--pcluster-size BYTES`. */
export function parseCompress(
  value: string,
  pclusterSize: string | undefined,
  blockSize: number,
): CompressionOptions {
  const [name = '', levelText, ...rest] = value.split(':');
  const spec = LEVELS[name];
  if (!spec || rest.length > 0) {
    throw new ErofsOciError(
      'usage',
      `--compress must be lz4, lz4hc, deflate or zstd, with an optional :LEVEL, not ${value}`,
    );
  }
  let level = spec.default;
  if (levelText !== undefined) {
    const n = Number(levelText);
    if (!/^-?\d+$/.test(levelText) || n < spec.min || n > spec.max) {
      throw new ErofsOciError('usage', `${name} level must be ${spec.min}..${spec.max}, not ${levelText}`);
    }
    level = n;
  }
  const size = pclusterSize === undefined ? blockSize : Number(pclusterSize);
  if (!Number.isSafeInteger(size) || size < blockSize || size % blockSize !== 0 || size > 1024 * 1024) {
    throw new ErofsOciError(
      'usage',
      `--pcluster-size must be a multiple of the block size (${blockSize}) up to 1 MiB, not ${pclusterSize}`,
    );
  }
  return {
    alg: spec.alg,
    pclusterSize: size,
    ...(level === undefined ? {} : { level: name === 'lz4hc' && level === 0 ? 9 : level }),
  };
}
