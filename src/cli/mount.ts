/** `erofs-oci mount`, `umount`, `list`, `reattach`: lazy mounts straight from a registry. */
import { existsSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ErofsOciError } from '../errors.ts';
import {
  healthOf,
  isAlive,
  type LayerPlan,
  mountLazy,
  reattachLazy,
  unmountLazy,
} from '../mount/lazy-mount.ts';
import { listRecords, type RegistrySettings, stateRoot } from '../mount/state.ts';
import { verificationState } from '../mount/verification.ts';
import { formatPlatform, isRangeReader, type LayerDescriptor, parseSourceReference } from '../oci/index.ts';
import { hasChunkIndex, readVerifiedChunkIndex } from '../verified/open.ts';
import { chunkIndexLayer, indexBlobReader } from './device.ts';
import type { CommandIo } from './io.ts';
import {
  joinNegativeLayer,
  openImageFromOptions,
  type RegistryValues,
  registryHelp,
  registryOptions,
  selectLayers,
} from './registry-options.ts';

const cli = fileURLToPath(new URL('../../bin/erofs-oci.js', import.meta.url));

export const mountHelp = `Usage: erofs-oci mount [options] SOURCE MOUNTPOINT

Mounts an image lazily: nothing is downloaded up front beyond what is read. EROFS-native images (layers
of type application/vnd.erofs.layer.v1 or any type ending .erofs): every layer is its own EROFS mount,
stacked read-only with overlayfs (top layer first); --layer/--blob mount one. A gzip layer is mounted
from its local index (--tarindex META --zinfo FILE, made by
erofs-oci build --mode index --zinfo FILE SOURCE --layer N META) plus the remote blob.
Two background processes per mount, a server for the layers and a holder of their devices, log under
the state directory ($EROFS_OCI_STATE_DIR, default /run/erofs-oci); if the server dies, erofs-oci
reattach brings it back without unmounting. Needs root.

Options:
  --upper DIR         make the mount writable: overlayfs upper dir (work dir DIR.work is created beside it)
  --tarindex META     index-mode image of the selected gzip layer
  --zinfo FILE        the layer's gzip index
  --backend B         fuse (a FUSE file per layer, file-backed EROFS mount; no NBD driver needed),
                      nbd (/dev/nbdX through nbd-client), or auto (default: nbd when /dev/nbd0 exists)
  --io-timeout SECONDS  how long reads wait for a dead server to be reattached (default 300)
  --require-verified  refuse layers without a chunk index (exit 5): every byte served is then checked
                      against a chunk digest before the kernel sees it
  --debug             show the causes of errors
  -h, --help          this help

${registryHelp}`;

function pinnedSource(source: string, manifestDigest: string): string {
  const ref = parseSourceReference(source);
  switch (ref.kind) {
    case 'registry':
      return `${ref.registry}/${ref.repository}@${manifestDigest}`;
    case 'oci':
      return `oci:${ref.path}@${manifestDigest}`;
    default:
      return source;
  }
}

function registrySettings(values: RegistryValues): RegistrySettings {
  return {
    ...(values.authfile === undefined ? {} : { authfile: resolve(values.authfile) }),
    ...(values.username === undefined ? {} : { username: values.username, passwordStdin: true }),
    ...(values.insecure ? { insecure: true } : {}),
    ...(values['ca-file'] === undefined ? {} : { caFile: resolve(values['ca-file']) }),
    ...(values.timeout === undefined ? {} : { timeout: values.timeout }),
  };
}

async function readPassword(io: CommandIo, wanted: boolean): Promise<string | undefined> {
  if (!wanted) return undefined;
  const chunks: Uint8Array[] = [];
  for await (const chunk of io.stdin) chunks.push(chunk);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

function isErofsLayer(layer: LayerDescriptor): boolean {
  return layer.format.kind === 'erofs';
}

export async function mountCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: joinNegativeLayer(args),
    allowPositionals: true,
    options: {
      upper: { type: 'string' },
      tarindex: { type: 'string' },
      zinfo: { type: 'string' },
      backend: { type: 'string' },
      'io-timeout': { type: 'string' },
      debug: { type: 'boolean' },
      'require-verified': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      ...registryOptions,
    },
  });
  if (values.help) {
    io.stdout.write(mountHelp);
    return 0;
  }
  if (positionals.length !== 2)
    throw new ErofsOciError('usage', 'mount takes SOURCE and MOUNTPOINT', {
      hint: 'see erofs-oci mount --help',
    });
  const [source, target] = positionals as [string, string];
  const backendName = values.backend ?? 'auto';
  if (!['auto', 'fuse', 'nbd'].includes(backendName))
    throw new ErofsOciError('usage', `--backend must be auto, fuse or nbd, not ${backendName}`);
  const backend =
    backendName === 'auto' ? (existsSync('/dev/nbd0') ? 'nbd' : 'fuse') : (backendName as 'fuse' | 'nbd');
  if (backend === 'nbd' && !existsSync('/dev/nbd0')) {
    throw new ErofsOciError('unsupported', 'this kernel has no NBD devices (/dev/nbd0): use --backend fuse', {
      hint: 'modprobe nbd, if the module exists',
    });
  }
  if (backend === 'fuse' && !existsSync('/dev/fuse'))
    throw new ErofsOciError('unsupported', 'this kernel has no FUSE (/dev/fuse)');
  const ioTimeout = values['io-timeout'] === undefined ? 300 : Number(values['io-timeout']);
  if (!Number.isFinite(ioTimeout) || ioTimeout <= 0)
    throw new ErofsOciError('usage', `--io-timeout is not a number of seconds: ${values['io-timeout']}`);
  const mountpoint = await realpath(target).catch(() => {
    throw new ErofsOciError('not-found', `mount point ${target} does not exist`);
  });
  if (process.getuid?.() !== 0) throw new ErofsOciError('auth', 'mount needs root');

  // Read before the image is opened: openImageFromOptions consumes stdin for --password-stdin too.
  const password = values['password-stdin'] ? await readPassword(io, true) : undefined;
  const image = await openImageFromOptions(
    source,
    { ...values, 'password-stdin': false, ...(password === undefined ? {} : { password }) } as RegistryValues,
    io,
  );
  try {
    const manifest = await image.manifest({ signal: io.signal });
    const all = await image.layers({ signal: io.signal });
    const selected = selectLayers(all, values);
    const layers: LayerPlan[] = selected.map((layer) => {
      const index = all.indexOf(layer);
      if (isErofsLayer(layer)) {
        if (values['require-verified'] && !hasChunkIndex(layer)) {
          throw new ErofsOciError(
            'corrupt',
            `layer ${index} (${layer.digest}) has no chunk index: its bytes cannot be verified before they are served`,
            { hint: 'convert the image with erofs-oci convert, or mount without --require-verified' },
          );
        }
        return {
          index,
          digest: layer.digest,
          mediaType: layer.mediaType,
          size: layer.size,
          kind: 'erofs',
          ...(layer.annotations === undefined ? {} : { annotations: { ...layer.annotations } }),
          ...(layer.chunkIndex === undefined ? {} : { chunkIndex: chunkIndexLayer(layer.chunkIndex) }),
          verification: hasChunkIndex(layer) ? 'chunk-verified' : 'whole-blob',
        };
      }
      if (values.tarindex === undefined) {
        throw new ErofsOciError(
          'usage',
          `layer ${index} (${layer.mediaType}) is not EROFS: a tar layer is mounted from its index`,
          {
            hint: `erofs-oci build --mode index --zinfo LAYER.zinfo ${source} --layer ${index} LAYER.meta, then mount with --layer ${index} --tarindex LAYER.meta --zinfo LAYER.zinfo`,
          },
        );
      }
      if (selected.length !== 1)
        throw new ErofsOciError('usage', '--tarindex mounts one layer: add --layer N or --blob DIGEST');
      return {
        index,
        digest: layer.digest,
        mediaType: layer.mediaType,
        size: layer.size,
        kind: 'hybrid',
        tarIndex: resolve(values.tarindex),
        ...(values.zinfo === undefined ? {} : { zinfo: resolve(values.zinfo) }),
      };
    });
    // Chunk indexes are checked against their digests here, before anything is started: a wrong index is
    // a refused mount (exit 5) naming the layer, not a server that fails to start.
    if (isRangeReader(image)) {
      const reader = image;
      await Promise.all(
        selected.filter(hasChunkIndex).map((layer) =>
          readVerifiedChunkIndex(
            {
              size: layer.size,
              read: (offset, length, options) =>
                reader.readRange(layer.digest, offset, length, options ?? {}),
            },
            layer,
            {
              name: `layer ${all.indexOf(layer)} (${layer.digest})`,
              signal: io.signal,
              readIndexBlob: indexBlobReader(reader),
            },
          ),
        ),
      );
    }
    const record = await mountLazy({
      source,
      pinnedSource: pinnedSource(source, manifest.digest),
      manifestDigest: manifest.digest,
      platform: formatPlatform(image.platform),
      mountpoint,
      layers,
      registry: registrySettings(values),
      ...(password === undefined ? {} : { password }),
      ...(values.upper === undefined ? {} : { upper: resolve(values.upper) }),
      backend,
      ioTimeoutMs: ioTimeout * 1000,
      stateRoot: stateRoot(),
      cli,
      signal: io.signal,
    });
    io.stderr.write(`${mountpoint}: ${record.layers.length} layer(s) of ${source} mounted (${backend})\n`);
  } finally {
    await image.close();
  }
  return 0;
}

export async function umountCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { debug: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    io.stdout.write(
      'Usage: erofs-oci umount MOUNTPOINT\n\nUnmounts a lazy mount, stops its processes, removes its record. Idempotent.\n',
    );
    return 0;
  }
  if (positionals.length !== 1) throw new ErofsOciError('usage', 'umount takes one MOUNTPOINT');
  const mountpoint = await realpath(positionals[0] as string).catch(() => resolve(positionals[0] as string));
  const done = await unmountLazy(mountpoint, stateRoot());
  if (!done) io.stderr.write(`${mountpoint}: not an erofs-oci mount (nothing to do)\n`);
  return 0;
}

export async function listCommand(args: string[], io: CommandIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { json: { type: 'boolean' }, debug: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    io.stdout.write('Usage: erofs-oci list [--json]\n\nLists lazy mounts with their processes and health.\n');
    return 0;
  }
  const root = stateRoot();
  const records = await listRecords(root);
  const rows = await Promise.all(
    records.map(async (r) => ({
      mountpoint: r.mountpoint,
      source: r.source,
      pinnedSource: r.pinnedSource,
      backend: r.backend,
      health: healthOf(r, root),
      // One serving process serves every layer of a mount (restarted as one by reattach): listed once.
      pids: [...new Set(r.layers.map((l) => l.serverPid))],
      // One holder process serves every FUSE device of a mount: its pid is listed once.
      devicePids: [...new Set(r.layers.map((l) => l.devicePid).filter((p) => p > 0))],
      layers: await Promise.all(
        r.layers.map(async (l) => ({
          index: l.index,
          digest: l.digest,
          kind: l.kind,
          // chunk-verified: every chunk checked before it is served; whole-blob: the blob digest is checked
          // once every block has been fetched (not yet verified until then).
          verification: l.verification ?? 'whole-blob',
          // Where that stands now: chunk-verified, whole-blob-verified or not-yet-verified.
          verificationState: await verificationState(root, r.mountpoint, {
            ...l,
            verification: l.verification ?? 'whole-blob',
          }),
          device: l.device,
          serverPid: l.serverPid,
          serverAlive: isAlive(l.serverPid),
          devicePid: l.devicePid,
        })),
      ),
    })),
  );
  if (values.json) {
    io.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return 0;
  }
  for (const row of rows) {
    io.stdout.write(
      `${row.mountpoint}\t${row.source}\t${row.backend}\t${row.health}\tservers ${row.pids.join(',')}\tdevices ${row.devicePids.join(',')}\n`,
    );
  }
  return 0;
}

export async function reattachCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      all: { type: 'boolean' },
      username: { type: 'string' },
      'password-stdin': { type: 'boolean' },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    io.stdout.write(
      'Usage: erofs-oci reattach [--username U --password-stdin] MOUNTPOINT|--all\n\nStarts new servers for mounts whose servers died, without unmounting. Credentials are looked up again\n(the same auth file or helper, or --password-stdin).\n',
    );
    return 0;
  }
  if (values.all === (positionals.length === 1))
    throw new ErofsOciError('usage', 'reattach takes one MOUNTPOINT or --all');
  const password = values['password-stdin'] ? await readPassword(io, true) : undefined;
  const root = stateRoot();
  const targets = values.all
    ? (await listRecords(root)).map((r) => r.mountpoint)
    : [await realpath(positionals[0] as string).catch(() => resolve(positionals[0] as string))];
  let started = 0;
  for (const mountpoint of targets) {
    started += await reattachLazy(mountpoint, root, {
      cli,
      ...(password === undefined ? {} : { password }),
      signal: io.signal,
      log: (line) => io.stderr.write(`${mountpoint}: ${line}\n`),
    });
  }
  if (started === 0) io.stderr.write('every server is alive: nothing to reattach\n');
  return 0;
}
