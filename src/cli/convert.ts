/** `erofs-oci convert [options] SOURCE DEST` */
import { parseArgs } from 'node:util';
import { MEDIA_TYPE_EROFS, MEDIA_TYPE_EROFS_LAYER_V1 } from '../chunk-index/index.ts';
import { ErofsOciError } from '../errors.ts';
import { isRootReader, parseSourceReference } from '../oci/index.ts';
import { PushClient } from '../oci/push.ts';
import { ArchiveSink } from '../publish/archive-sink.ts';
import type { ImageSink, LayerReport } from '../publish/convert.ts';
import { type ConvertSummary, convertImage, DEFAULT_CHUNK_SIZE } from '../publish/convert.ts';
import { convertToIndex } from '../publish/convert-index.ts';
import { LayoutSink } from '../publish/layout-sink.ts';
import { RegistrySink } from '../publish/registry-sink.ts';
import { parseBlockSize, parseTimestamp, parseUuid } from './build.ts';
import { ConvertProgress } from './convert-progress.ts';
import type { CommandIo } from './io.ts';
import {
  openImageFromOptions,
  type RegistryValues,
  registryHelp,
  registryOptions,
} from './registry-options.ts';

/** EROFS layers under the OCI layer prefix, which containerd before 2.1 hands to snapshotters as layers. */
const MEDIA_TYPE_OCI_LAYER_EROFS = 'application/vnd.oci.image.layer.v1.erofs';

export const convertHelp = `Usage: erofs-oci convert [options] SOURCE DEST

Publishes SOURCE (any image source build takes) with EROFS-native layers, in the layout of the
erofs/erofs-image-spec draft: one EROFS layer per source layer, in overlay form (as build --layer N),
each with an embedded chunk index (SHA-256 per chunk). The same SOURCE gives the same manifest digest.

Destinations:
  [docker://]HOST[:PORT]/REPO[:TAG]  push to a registry: blobs there are skipped, blobs in the source's
                      repository on the same registry are mounted, uploads are chunked and resumed;
                      the manifest goes last, so the tag never names a missing blob
  oci:DIR[:TAG]       an OCI image layout directory (created when missing; index.json written last)
  oci-archive:FILE[:TAG]  a tar of an OCI layout holding this image, written to a temporary name
                      beside FILE and renamed over it when complete

Hardlinks into lower layers: the target is copied into the layer (its links there one inode), so each
layer stands alone; in the stacked image the link and the lower file are two inodes with the same bytes.
--all-platforms converts every image of the source's index (entries for platform unknown/unknown, such as
attestations, left out) and writes an index; --with-source writes an index listing the source's manifests
(copied to DEST as they are) first and the EROFS ones after them, so one tag serves clients of either kind.
EROFS entries carry erofs in platform os.features.

Options:
  --media-type T      application/vnd.erofs.layer.v1 (default, containerd 2.3+) or application/vnd.erofs
                      (the draft spec; containerd 2.1/2.2), or application/vnd.oci.image.layer.v1.erofs
                      for containerd 1.6/1.7 with erofs-oci snapshotter (older containerd treats only
                      application/vnd.oci.image.layer.* types as layers)
  --compress zstd[:LEVEL]  +zstd layers: one zstd frame per chunk, the index in a trailing skippable frame
  --chunk-size BYTES  chunk of the chunk index (default 1 MiB, rounded up to the block size)
  --timestamp T       build time of every layer (default: the source config's created time)
  --uuid U|clear      volume UUID of every layer (default: derived from the source layer's digest)
  --block-size N      4096 (default), 2048, 1024 or 512
  --jobs N            layers converted at once (default 2)
  --all-platforms     convert every platform of an index (not with --platform); DEST names an index
  --with-source       DEST names an index of the source's manifests and the EROFS ones
  --quiet             no progress and no summary on stderr
  --json              print the manifest digest and the layers as JSON on stdout
  --debug             show the causes of errors
  -h, --help          this help

${registryHelp}`;

export async function convertCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      'media-type': { type: 'string' },
      compress: { type: 'string' },
      'chunk-size': { type: 'string' },
      timestamp: { type: 'string' },
      uuid: { type: 'string' },
      'block-size': { type: 'string' },
      jobs: { type: 'string' },
      'all-platforms': { type: 'boolean' },
      'with-source': { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
      json: { type: 'boolean' },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      ...registryOptions,
    },
  });
  if (values.help) {
    io.stdout.write(convertHelp);
    return 0;
  }
  if (positionals.length !== 2) {
    throw new ErofsOciError('usage', 'convert needs a SOURCE and a DEST', {
      hint: 'see erofs-oci convert --help',
    });
  }
  if (values.layer !== undefined || values.blob !== undefined) {
    throw new ErofsOciError('usage', 'convert converts every layer; --layer and --blob do not apply');
  }
  const [sourceArg, destArg] = positionals as [string, string];
  const allPlatforms = values['all-platforms'] ?? false;
  const withSource = values['with-source'] ?? false;
  if (allPlatforms && values.platform !== undefined) {
    throw new ErofsOciError('usage', '--all-platforms and --platform exclude each other');
  }
  const mediaType = values['media-type'] ?? MEDIA_TYPE_EROFS_LAYER_V1;
  if (![MEDIA_TYPE_EROFS_LAYER_V1, MEDIA_TYPE_EROFS, MEDIA_TYPE_OCI_LAYER_EROFS].includes(mediaType)) {
    throw new ErofsOciError(
      'usage',
      `--media-type must be ${MEDIA_TYPE_EROFS_LAYER_V1}, ${MEDIA_TYPE_EROFS} or ${MEDIA_TYPE_OCI_LAYER_EROFS}`,
    );
  }
  const zstdLevel = values.compress === undefined ? undefined : parseCompress(values.compress);
  const chunkSize =
    values['chunk-size'] === undefined
      ? DEFAULT_CHUNK_SIZE
      : parsePositive(values['chunk-size'], '--chunk-size');
  const concurrency = values.jobs === undefined ? 2 : parsePositive(values.jobs, '--jobs');
  let password: string | undefined;
  if (values['password-stdin']) password = (await readAll(io.stdin)).replace(/\r?\n$/, '');
  const sink = await openDestination(destArg, sourceArg, values, password, io);
  const image = await openImageFromOptions(sourceArg, { ...values, password }, io);
  try {
    const toIndex = allPlatforms || withSource;
    if (toIndex && !isRootReader(image)) {
      throw new ErofsOciError(
        'usage',
        `--all-platforms and --with-source need an image source, not ${sourceArg}`,
      );
    }
    // Per-layer progress knows the layers up front only for one image.
    const layers = toIndex ? [] : await image.layers({ signal: io.signal });
    const progress =
      values.quiet || !io.stderrIsTty || toIndex
        ? undefined
        : new ConvertProgress(
            io.stderr,
            layers.map((l) => ({ name: l.digest.slice(0, 19), size: l.size })),
          );
    const options = {
      chunkSize,
      zstdLevel,
      mediaType,
      blockSize: values['block-size'] === undefined ? undefined : parseBlockSize(values['block-size']),
      timestamp: values.timestamp === undefined ? undefined : parseTimestamp(values.timestamp),
      uuid: values.uuid === undefined ? undefined : parseUuid(values.uuid),
      concurrency,
      signal: io.signal,
      ...(progress
        ? {
            onLayerProgress: (i: number, bytes: number) => progress.converting(i, bytes),
            onLayerConverted: (i: number, size: number) => progress.converted(i, size),
            onLayerUpload: (i: number, bytes: number) => progress.uploading(i, bytes),
            onLayerDone: (i: number, layer: LayerReport) => progress.done(i, layer),
          }
        : {}),
    };
    const summary =
      toIndex && isRootReader(image)
        ? await convertToIndex(image, sink, { ...options, allPlatforms, withSource })
        : await convertImage(image, sink, options);
    progress?.finish();
    report(summary, destArg, values, io);
  } finally {
    await image.close();
    await sink.close();
  }
  return 0;
}

function report(
  summary: ConvertSummary,
  dest: string,
  values: { json?: boolean; quiet?: boolean },
  io: CommandIo,
) {
  if (values.json) {
    io.stdout.write(
      `${JSON.stringify({
        manifest: summary.manifest.digest,
        mediaType: summary.manifest.mediaType,
        layers: summary.layers,
        ...(summary.images ? { images: summary.images } : {}),
        seconds: Number(summary.seconds.toFixed(3)),
      })}\n`,
    );
  }
  if (!values.quiet) {
    io.stderr.write(
      `${dest}: ${summary.manifest.digest}, ${summary.layers.length} layers in ${summary.seconds.toFixed(2)} s\n`,
    );
  }
}

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function openDestination(
  dest: string,
  source: string,
  values: RegistryValues,
  password: string | undefined,
  io: CommandIo,
): Promise<ImageSink & { close(): Promise<void> }> {
  const reference = parseSourceReference(dest);
  if (reference.kind === 'oci' && reference.digest === undefined) {
    const sink = new LayoutSink(reference.path, reference.tag);
    return Object.assign(sink, { close: async () => {} });
  }
  if (reference.kind === 'oci-archive') return new ArchiveSink(reference.path, reference.tag);
  if (reference.kind !== 'registry' || reference.digest !== undefined) {
    throw new ErofsOciError(
      'usage',
      `destination ${dest} must be [docker://]HOST/REPO[:TAG], oci:DIR[:TAG] or oci-archive:FILE[:TAG]`,
    );
  }
  let mountFrom: string | undefined;
  try {
    const from = parseSourceReference(source);
    if (from.kind === 'registry' && from.registry === reference.registry) mountFrom = from.repository;
  } catch {
    // a source that is not a reference has nothing to mount from
  }
  const client = await PushClient.open(reference.registry, reference.repository, {
    auth: {
      ...(values.authfile === undefined ? {} : { authFile: values.authfile }),
      ...(values.username === undefined ? {} : { username: values.username }),
      ...(password === undefined ? {} : { password }),
    },
    insecure: values.insecure ?? false,
    ...(values['ca-file'] === undefined ? {} : { caFile: values['ca-file'] }),
    ...(values.timeout === undefined ? {} : { timeoutMs: Number(values.timeout) * 1000 }),
    mountFrom,
    signal: io.signal,
  });
  const sink = new RegistrySink(client, reference.tag);
  return Object.assign(sink, { close: () => client.close() });
}

export function parseCompress(value: string): number {
  const m = /^zstd(?::(-?\d+))?$/.exec(value);
  if (!m) throw new ErofsOciError('usage', `--compress takes zstd[:LEVEL], not ${value}`);
  const level = m[1] === undefined ? 3 : Number(m[1]);
  if (level < -7 || level > 22) throw new ErofsOciError('usage', `zstd level ${level} is outside -7..22`);
  return level;
}

function parsePositive(value: string, what: string): number {
  if (!/^\d+$/.test(value) || Number(value) <= 0)
    throw new ErofsOciError('usage', `${what} takes a positive integer, not ${value}`);
  return Number(value);
}
