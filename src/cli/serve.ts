/** `erofs-oci serve [options] SOURCE --listen unix:PATH|tcp:HOST:PORT` */

import { readFile } from 'node:fs/promises';
import { flushCompileCache } from 'node:module';
import { parseArgs } from 'node:util';
import { ErofsOciError } from '../errors.ts';
import type { ChunkIndexLayer, LayerServerConfig } from '../mount/state.ts';
import { type NbdServer, serveNbd } from '../nbd/server.ts';
import { type ImageSource, isDigest, type LayerDescriptor, layerFormat } from '../oci/index.ts';
import { hasChunkIndex } from '../verified/open.ts';
import { type DeviceOptions, type LayerDevice, openLayerDevice } from './device.ts';
import type { CommandIo } from './io.ts';
import {
  joinNegativeLayer,
  openImageFromOptions,
  type RegistryValues,
  registryHelp,
  registryOptions,
  selectLayers,
} from './registry-options.ts';

export const serveHelp = `Usage: erofs-oci serve [options] SOURCE --listen unix:PATH|tcp:HOST:PORT

Exports one layer of SOURCE as a read-only NBD device, read lazily with HTTP range requests.
A read that cannot be served (registry unreachable after retries, see --timeout) fails with EIO; it
never returns bytes it does not have. Once every block of the blob has been fetched its digest is
checked; on a mismatch the cache is dropped and every read fails. Without --cache-dir, blocks fetched
ahead of that check wait for it in an unlinked file in $TMPDIR (at most 1 GiB). A registry that
ignores Range has the blob downloaded once into the cache.
A layer with a chunk index (erofs-oci convert writes one) is served as its EROFS image with every
chunk checked against its SHA-256 before it is served or cached: a chunk that fails is fetched once
more, then its reads fail (EIO) and the log names it. +zstd layers are decompressed chunk by chunk
(lazily with an index; without one fetched whole and checked against org.erofs.uncompressed-digest).

Options:
  --listen ADDR       unix:PATH or tcp:HOST:PORT (required)
  --tarindex META     export [META][uncompressed layer tar]: META is the layer's index-mode image
                      (erofs-oci build --mode index); the tar part is read from the remote blob
  --zinfo FILE        the layer's gzip index (needed with --tarindex for gzip layers)
  --blob-size N, --media-type TYPE
                      with --blob: the layer's size and media type, when already known (from a
                      manifest resolved before, as mount's serving process has them): the manifest is
                      then not fetched (one request less, and registries that count manifest requests
                      as pulls count none); the blob's digest is still verified
  --export-name NAME  NBD export name (default: empty)
  --cache-dir DIR     keep fetched blocks on disk (reused on restart)
  --cache-mib N       memory cache budget (default 64)
  --require-verified  refuse a layer without a chunk index (exit 5)
  --fetch-kib N       fetch unit (default 1024)
  --debug             show the causes of errors
  -h, --help          this help

${registryHelp}`;

export function parseListen(
  value: string,
): { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number } {
  if (value.startsWith('unix:') && value.length > 5) return { kind: 'unix', path: value.slice(5) };
  const tcp = /^tcp:(.+):(\d+)$/.exec(value);
  if (tcp) {
    const port = Number(tcp[2]);
    if (port > 65535) throw new ErofsOciError('usage', `--listen port out of range: ${value}`);
    return { kind: 'tcp', host: (tcp[1] as string).replace(/^\[(.*)\]$/, '$1'), port };
  }
  throw new ErofsOciError('usage', `--listen must be unix:PATH or tcp:HOST:PORT, not ${value}`);
}

function positiveNumber(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0)
    throw new ErofsOciError('usage', `--${name} must be a positive number, not ${value}`);
  return n;
}

/** The layer `--blob`, `--blob-size` and `--media-type` describe, or undefined without the latter two. */
function knownLayer(values: {
  blob?: string | undefined;
  'blob-size'?: string | undefined;
  'media-type'?: string | undefined;
}): LayerDescriptor | undefined {
  const size = values['blob-size'];
  const mediaType = values['media-type'];
  if (size === undefined && mediaType === undefined) return undefined;
  if (values.blob === undefined || size === undefined || mediaType === undefined) {
    throw new ErofsOciError('usage', '--blob-size and --media-type go together, with --blob DIGEST');
  }
  if (!isDigest(values.blob)) throw new ErofsOciError('usage', `--blob is not a digest: ${values.blob}`);
  if (!/^\d+$/.test(size) || !Number.isSafeInteger(Number(size)))
    throw new ErofsOciError('usage', `--blob-size is not a byte count: ${size}`);
  return describedLayer(values.blob, Number(size), mediaType);
}

/** A layer known by its descriptor's fields, without the manifest that lists it. */
function describedLayer(
  digest: string,
  size: number,
  mediaType: string,
  annotations?: Record<string, string>,
  chunkIndex?: ChunkIndexLayer,
): LayerDescriptor {
  return {
    digest,
    size,
    mediaType,
    format: layerFormat(mediaType),
    ...(annotations ? { annotations } : {}),
    ...(chunkIndex ? { chunkIndex } : {}),
  };
}

export async function serveCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: joinNegativeLayer(args),
    allowPositionals: true,
    options: {
      listen: { type: 'string' },
      tarindex: { type: 'string' },
      zinfo: { type: 'string' },
      'export-name': { type: 'string' },
      'blob-size': { type: 'string' },
      'media-type': { type: 'string' },
      'cache-dir': { type: 'string' },
      'cache-mib': { type: 'string' },
      'fetch-kib': { type: 'string' },
      'require-verified': { type: 'boolean' },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      ...registryOptions,
    },
  });
  if (values.help) {
    io.stdout.write(serveHelp);
    return 0;
  }
  if (positionals.length !== 1)
    throw new ErofsOciError('usage', 'serve takes one SOURCE', { hint: 'see erofs-oci serve --help' });
  if (values.listen === undefined)
    throw new ErofsOciError('usage', 'serve needs --listen unix:PATH or tcp:HOST:PORT');
  const listen = parseListen(values.listen);
  const cacheMib = positiveNumber('cache-mib', values['cache-mib']);
  const fetchKib = positiveNumber('fetch-kib', values['fetch-kib']);
  const log = (line: string) => io.stderr.write(`${new Date().toISOString()} ${line}\n`);
  const known = knownLayer(values);
  const image = await openImageFromOptions(positionals[0] as string, values, io);
  try {
    let layer = known;
    if (layer === undefined) {
      const all = await image.layers({ signal: io.signal });
      if (values.layer === undefined && values.blob === undefined && all.length !== 1) {
        throw new ErofsOciError(
          'usage',
          `${image.name} has ${all.length} layers: choose one with --layer N or --blob DIGEST`,
        );
      }
      [layer] = selectLayers(all, values);
    }
    if (!layer) throw new ErofsOciError('not-found', 'no layer selected');
    if (values['require-verified'] && !hasChunkIndex(layer)) {
      throw new ErofsOciError(
        'corrupt',
        `layer ${layer.digest} has no chunk index: its bytes cannot be verified before they are served`,
        { hint: 'convert the image with erofs-oci convert, or serve without --require-verified' },
      );
    }
    await serveLayers(
      image,
      [
        {
          layer,
          listen,
          exportName: values['export-name'] ?? '',
          device: {
            ...(values.tarindex === undefined ? {} : { tarIndex: values.tarindex }),
            ...(values.zinfo === undefined ? {} : { zinfo: values.zinfo }),
            ...(values['cache-dir'] === undefined ? {} : { cacheDir: values['cache-dir'] }),
            ...(cacheMib === undefined ? {} : { cacheBytes: Math.floor(cacheMib * 2 ** 20) }),
            ...(fetchKib === undefined ? {} : { fetchBlockSize: Math.floor(fetchKib * 1024) }),
          },
        },
      ],
      io,
      log,
    );
  } finally {
    await image.close();
  }
  return 0;
}

interface ServedLayer {
  layer: LayerDescriptor;
  listen: ReturnType<typeof parseListen>;
  exportName: string;
  device: Omit<DeviceOptions, 'log' | 'signal'>;
}

/**
 * Serves each layer's device on its own listener until SIGINT/SIGTERM (the CLI turns them into an abort),
 * then finishes in-flight replies. Every device is opened before any listener starts, so a client never
 * finds some layers served and the process then failing on another.
 */
async function serveLayers(
  image: ImageSource,
  layers: ServedLayer[],
  io: CommandIo,
  log: (line: string) => void,
): Promise<void> {
  const devices: LayerDevice[] = [];
  const servers: NbdServer[] = [];
  try {
    const opened = await Promise.allSettled(
      layers.map((entry) => openLayerDevice(image, entry.layer, { ...entry.device, log, signal: io.signal })),
    );
    for (const result of opened) if (result.status === 'fulfilled') devices.push(result.value);
    const failed = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    for (const [i, entry] of layers.entries()) {
      const device = devices[i] as LayerDevice;
      const server = await serveNbd(device.source, {
        listen: entry.listen,
        exportName: entry.exportName,
        description: `${image.name} ${device.description}`,
        log,
      });
      servers.push(server);
      log(`serving ${device.description} (${device.source.size} bytes) of ${image.name} on ${server.uri}`);
    }
    // A server may well end by a signal or a kill, never reaching the exit that writes the compile cache
    // (bin/erofs-oci.js): write it now, so that the next server starts from it.
    flushCompileCache?.();
    await new Promise<void>((resolve) => {
      if (io.signal.aborted) resolve();
      io.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    log('stopping: finishing in-flight requests');
  } finally {
    await Promise.allSettled(servers.map((server) => server.close()));
    for (const device of devices) {
      log(`stopped ${device.description}; ${device.summary()}`);
    }
    await Promise.allSettled(devices.map((device) => device.close()));
  }
}

const MiB = 2 ** 20;

/**
 * Memory cache of each layer of a mount's serving process: 32 MiB while the mount has up to four layers,
 * then a share of 128 MiB, at least 16 MiB. Half of serve's default: every layer of a mount has its disk
 * cache behind the memory one (what leaves memory is read from disk, not fetched again, and the kernel's
 * page cache keeps the disk cache's hot pages anyway). Measured on a 4-layer, 248 MB mount after reading
 * every file: 282–314 MB resident instead of 353 MB, reading no slower.
 */
export function layerMemoryBudget(layers: number): number {
  return Math.max(16 * MiB, Math.min(32 * MiB, Math.floor((128 * MiB) / Math.max(1, layers))));
}

/**
 * `erofs-oci serve-layers CONFIG.json` (internal: started by `mount` and `reattach`, not listed in the
 * help): the serving process of one lazy mount, serving every layer of the config (src/mount/state.ts
 * `LayerServerConfig`) on its own unix socket, with one registry client for all. A password, when the
 * mount used `--username`, comes on stdin.
 */
export async function serveLayersCommand(args: string[], io: CommandIo): Promise<number> {
  if (args.length !== 1 || args[0]?.startsWith('-'))
    throw new ErofsOciError('usage', 'serve-layers takes one CONFIG.json (it is started by mount)');
  const path = args[0] as string;
  let config: LayerServerConfig;
  try {
    config = JSON.parse(await readFile(path, 'utf8')) as LayerServerConfig;
  } catch (error) {
    throw new ErofsOciError('usage', `Cannot read the server config ${path}: ${(error as Error).message}`);
  }
  if (typeof config?.source !== 'string' || !Array.isArray(config.layers) || config.layers.length === 0)
    throw new ErofsOciError('usage', `Cannot use the server config ${path}: no source or no layers`);
  const r = config.registry ?? {};
  const values: RegistryValues = {
    ...(r.authfile === undefined ? {} : { authfile: r.authfile }),
    ...(r.username === undefined ? {} : { username: r.username, 'password-stdin': true }),
    ...(r.insecure === undefined ? {} : { insecure: r.insecure }),
    ...(r.caFile === undefined ? {} : { 'ca-file': r.caFile }),
    ...(r.timeout === undefined ? {} : { timeout: r.timeout }),
  };
  const log = (line: string) => io.stderr.write(`${new Date().toISOString()} ${line}\n`);
  const image = await openImageFromOptions(config.source, values, io);
  try {
    await serveLayers(
      image,
      config.layers.map((layer) => ({
        layer: describedLayer(layer.digest, layer.size, layer.mediaType, layer.annotations, layer.chunkIndex),
        listen: { kind: 'unix', path: layer.socket },
        exportName: '',
        device: {
          cacheDir: layer.cacheDir,
          cacheBytes: layerMemoryBudget(config.layers.length),
          ...(layer.tarIndex === undefined ? {} : { tarIndex: layer.tarIndex }),
          ...(layer.zinfo === undefined ? {} : { zinfo: layer.zinfo }),
        },
      })),
      io,
      log,
    );
  } finally {
    await image.close();
  }
  return 0;
}
