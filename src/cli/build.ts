/** `erofs-oci build [options] SOURCE... OUTPUT` */
import { parseArgs } from 'node:util';
import { build, type BuildSource } from '../build/build.ts';
import type { BlockSize } from '../erofs/writer.ts';
import { ErofsOciError } from '../errors.ts';
import type { CommandIo } from './io.ts';
import { formatBytes, Progress } from './progress.ts';

export const buildHelp = `Usage: erofs-oci build [options] SOURCE... OUTPUT

Writes an EROFS image of SOURCE (several tar: sources are stacked in order, whiteouts applied).

Sources:
  tar:FILE            a layer tarball (plain, gzip or zstd, detected by magic); tar:- reads stdin
  dir:PATH            a local directory tree

Options:
  --timestamp T       build time in seconds since the epoch (default: $SOURCE_DATE_EPOCH, else now);
                      file times always come from the source
  --uuid U|clear      volume UUID (default: random; clear = all zero)
  --label NAME        volume name (at most 16 bytes)
  --strip-whiteouts   single layer: drop whiteouts instead of keeping them in overlayfs form
  --mode full|index   full (default): file data inside the image; index: metadata only, one tar
                      layer, 512-byte blocks, data addressed in the uncompressed tar so that
                      [image][uncompressed tar] is a mountable filesystem
  --block-size N      4096 (default), 2048, 1024 or 512
  --quiet             no progress and no summary on stderr
  --json              print a JSON summary on stdout
  --debug             show the causes of errors
  -h, --help          this help
`;

export async function buildCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      timestamp: { type: 'string' },
      uuid: { type: 'string' },
      label: { type: 'string' },
      'strip-whiteouts': { type: 'boolean' },
      mode: { type: 'string' },
      'block-size': { type: 'string' },
      quiet: { type: 'boolean', short: 'q' },
      json: { type: 'boolean' },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
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
  const sources = positionals.slice(0, -1).map((s) => parseBuildSource(s, io));
  if (sources.filter((s) => s.kind === 'tar-stream').length > 1)
    throw new ErofsOciError('usage', 'only one source can read stdin');
  const blockSize = values['block-size'] === undefined ? undefined : parseBlockSize(values['block-size']);
  const mode = values.mode ?? 'full';
  if (mode !== 'full' && mode !== 'index')
    throw new ErofsOciError('usage', `--mode must be full or index, not ${mode}`);
  const progress =
    values.quiet || !io.stderrIsTty ? undefined : new Progress(io.stderr, sources.map(sourceName));
  const summary = await build({
    sources,
    output,
    mode: { kind: mode },
    blockSize,
    timestamp: values.timestamp === undefined ? undefined : parseTimestamp(values.timestamp),
    uuid: values.uuid === undefined ? undefined : parseUuid(values.uuid),
    label: values.label,
    whiteouts: values['strip-whiteouts'] ? 'strip' : undefined,
    signal: io.signal,
    onWarning: (message) => io.stderr.write(`erofs-oci: warning: ${message}\n`),
    onProgress: progress ? (index, bytes) => progress.update(index, bytes) : undefined,
  });
  progress?.done();
  if (values.json) {
    io.stdout.write(
      `${JSON.stringify({
        output: summary.output,
        layers: sources.map((s) => ({ source: sourceName(s) })),
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
  return 0;
}

function sourceName(source: BuildSource): string {
  return source.kind === 'tar-stream' ? source.name : source.path;
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
  throw new ErofsOciError('unsupported', `source ${JSON.stringify(value)} is not supported yet by build`, {
    hint: 'use tar:FILE or dir:PATH',
  });
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
