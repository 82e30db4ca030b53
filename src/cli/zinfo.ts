/** `erofs-oci zinfo [--span BYTES] INPUT OUTPUT` (SPEC §2) [mkfs.erofs --gzinfo] */
import { createReadStream } from 'node:fs';
import { parseArgs } from 'node:util';
import { ErofsOciError } from '../errors.ts';
import { buildZinfo, DEFAULT_SPAN, encodeZinfo } from '../gzip-index/index.ts';
import { fileError, writeFileAtomically } from '../io/files.ts';
import type { CommandIo } from './io.ts';
import {
  joinNegativeLayer,
  openImageFromOptions,
  registryHelp,
  registryOptions,
  selectLayers,
} from './registry-options.ts';

export const zinfoHelp = `Usage: erofs-oci zinfo [options] INPUT OUTPUT

Builds a random-access index (zinfo) for a gzip stream: the AWS SOCI version 2 format, as mkfs.erofs
--gzinfo writes it. INPUT is a gzip file, or - for stdin, or with --layer/--blob an image SOURCE
(registry reference or local layout) whose gzip layer is downloaded once and indexed as it streams;
OUTPUT a file, or - for stdout.

Options:
  --span BYTES   uncompressed bytes between checkpoints, at least (default 4M; suffixes K, M, G are
                 KiB, MiB, GiB)
  --json         print a JSON summary (sizes, checkpoints) on stdout; not with OUTPUT -
  --debug        show the causes of errors
  -h, --help     this help

${registryHelp}`;

export async function zinfoCommand(
  args: string[],
  io: Pick<CommandIo, 'stdin' | 'stdout' | 'stderr'> & Partial<CommandIo>,
): Promise<number> {
  const { values, positionals } = parseArgs({
    args: joinNegativeLayer(args),
    allowPositionals: true,
    strict: true,
    options: {
      span: { type: 'string' },
      json: { type: 'boolean' },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      ...registryOptions,
    },
  });
  if (values.help) {
    io.stdout.write(zinfoHelp);
    return 0;
  }
  if (positionals.length !== 2) {
    throw new ErofsOciError('usage', 'zinfo needs an INPUT and an OUTPUT', {
      hint: 'see erofs-oci zinfo --help',
    });
  }
  const [input, output] = positionals as [string, string];
  if (values.json && output === '-') throw new ErofsOciError('usage', '--json cannot be used with OUTPUT -');
  const span = values.span === undefined ? DEFAULT_SPAN : parseSize(values.span);
  const signal = io.signal;

  let result: Awaited<ReturnType<typeof buildZinfo>>;
  if (values.layer !== undefined || values.blob !== undefined) {
    // A registry or layout layer: streamed once, verified against its digest as it arrives.
    const image = await openImageFromOptions(input, values, {
      ...io,
      signal: signal ?? new AbortController().signal,
    } as CommandIo);
    try {
      const [layer] = selectLayers(await image.layers({ signal }), values);
      if (!layer) throw new ErofsOciError('not-found', 'no layer selected');
      if (layer.format.kind !== 'tar' || layer.format.compression !== 'gzip') {
        throw new ErofsOciError('usage', `layer ${layer.digest} (${layer.mediaType}) is not gzip-compressed`);
      }
      result = await buildZinfo(image.openBlob(layer, { signal }), { span, signal });
    } finally {
      await image.close();
    }
  } else {
    const source: AsyncIterable<Uint8Array> = input === '-' ? io.stdin : readFile(input);
    result = await buildZinfo(source, { span, signal });
  }
  const bytes = encodeZinfo(result.zinfo);
  if (output === '-') await writeStream(io.stdout, bytes);
  else await writeFileAtomically(output, bytes);
  if (values.json) {
    io.stdout.write(
      `${JSON.stringify({
        output,
        span,
        checkpoints: result.zinfo.checkpoints.length,
        members: result.members,
        compressedSize: result.compressedSize,
        uncompressedSize: result.uncompressedSize,
        zinfoSize: bytes.byteLength,
      })}\n`,
    );
  }
  return 0;
}

const SUFFIXES: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** `4194304`, `4M`, `64k`, `1G`, with an optional `i`/`iB`/`B`: powers of 1024, as mkfs tools take them. */
export function parseSize(value: string): number {
  const match = /^(\d+)\s*([kmg]?)(?:i?b)?$/i.exec(value.trim());
  const n = match ? Number(match[1]) * SUFFIXES[match[2]!.toLowerCase()]! : Number.NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new ErofsOciError(
      'usage',
      `Invalid --span ${JSON.stringify(value)}: expected a positive size such as 4194304 or 4M`,
    );
  }
  return n;
}

async function* readFile(path: string): AsyncGenerator<Uint8Array> {
  try {
    yield* createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Uint8Array>;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).syscall === undefined) throw error;
    throw fileError(`Cannot read ${path}`, error);
  }
}

/** Writes to OUTPUT.tmp-… beside it and renames on success, so a failure leaves no partial index. */

function writeStream(stream: NodeJS.WritableStream, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(bytes, (error) =>
      error ? reject(fileError('Cannot write the zinfo to stdout', error)) : resolve(),
    );
  });
}
