/** `erofs-oci snapshotter`: a containerd proxy snapshotter that runs containers from lazy EROFS mounts. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ErofsOciError } from '../errors.ts';
import type { RegistrySettings } from '../mount/state.ts';
import { stateRoot } from '../mount/state.ts';
import { startSnapshotterService } from '../snapshotter/service.ts';
import type { CommandIo } from './io.ts';
import { connectionOptions, openImageFromOptions, type RegistryValues } from './registry-options.ts';

const cli = fileURLToPath(new URL('../../bin/erofs-oci.js', import.meta.url));

export const snapshotterHelp = `Usage: erofs-oci snapshotter [options]

A containerd snapshotter (gRPC containerd.services.snapshots.v1.Snapshots on a unix socket), used through
containerd's [proxy_plugins]. Layers are unpacked by containerd into overlayfs snapshots as usual, except
EROFS-native layers pulled through CRI (with disable_snapshot_annotations = false): those are mounted
lazily from the registry, as erofs-oci mount does, one mount per layer shared by every image using it, and
containerd downloads nothing. Runs until SIGTERM/SIGINT; stopping or killing it leaves mounts and running
containers alone, and the next start revives dead serving processes. Needs root.

Options:
  --address unix:PATH  where to listen (default unix:/run/erofs-oci/snapshotter.sock)
  --root DIR           snapshots, lazy layer mount points and the metadata database
                       (default /var/lib/erofs-oci)
  --state-dir DIR      lazy mounts' records, logs and caches; best on a tmpfs
                       (default $EROFS_OCI_STATE_DIR/snapshotter, i.e. /run/erofs-oci/snapshotter)
  --no-lazy            never mount lazily: a plain overlayfs snapshotter
  --backend B          fuse, nbd or auto (default) for lazy layers, as erofs-oci mount
  --io-timeout SECONDS how long reads wait for a dead serving process to be revived (default 300)
  --debug              show the causes of errors
  -h, --help           this help

Registry options (for lazy layers; credentials are looked up when a layer is mounted or revived and never
written anywhere):
  --authfile FILE     credentials file (else $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
                      $DOCKER_CONFIG/config.json, ~/.docker/config.json, incl. credential helpers)
  --username U        with --password-stdin: credentials for the registry
  --password-stdin    read the password from stdin (kept in memory only)
  --insecure          allow plain HTTP and unverified TLS
  --ca-file FILE      extra trusted root certificates (PEM)
  --timeout SECONDS   time budget of one registry operation, retries included (default 30)
`;

async function readPassword(io: CommandIo): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of io.stdin) chunks.push(chunk);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

export async function snapshotterCommand(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      address: { type: 'string' },
      root: { type: 'string' },
      'state-dir': { type: 'string' },
      'no-lazy': { type: 'boolean' },
      backend: { type: 'string' },
      'io-timeout': { type: 'string' },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      ...connectionOptions,
    },
  });
  if (values.help) {
    io.stdout.write(snapshotterHelp);
    return 0;
  }
  if (positionals.length > 0)
    throw new ErofsOciError('usage', `snapshotter takes no arguments, not ${positionals[0]}`);
  const address = values.address ?? 'unix:/run/erofs-oci/snapshotter.sock';
  if (!address.startsWith('unix:'))
    throw new ErofsOciError('usage', `--address must be unix:PATH, not ${address}`);
  const backendName = values.backend ?? 'auto';
  if (!['auto', 'fuse', 'nbd'].includes(backendName))
    throw new ErofsOciError('usage', `--backend must be auto, fuse or nbd, not ${backendName}`);
  const backend =
    backendName === 'auto' ? (existsSync('/dev/nbd0') ? 'nbd' : 'fuse') : (backendName as 'fuse' | 'nbd');
  const ioTimeout = values['io-timeout'] === undefined ? 300 : Number(values['io-timeout']);
  if (!Number.isFinite(ioTimeout) || ioTimeout <= 0)
    throw new ErofsOciError('usage', `--io-timeout is not a number of seconds: ${values['io-timeout']}`);
  if (values['password-stdin'] && values.username === undefined)
    throw new ErofsOciError('usage', '--password-stdin needs --username');
  if (values.username !== undefined && !values['password-stdin'])
    throw new ErofsOciError(
      'usage',
      '--username needs --password-stdin (passwords are never taken as arguments)',
    );
  if (process.getuid?.() !== 0) throw new ErofsOciError('auth', 'the snapshotter needs root');
  const password = values['password-stdin'] ? await readPassword(io) : undefined;
  const registryValues: RegistryValues = {
    ...(values.authfile === undefined ? {} : { authfile: resolve(values.authfile) }),
    ...(values.username === undefined ? {} : { username: values.username }),
    ...(password === undefined ? {} : { password }),
    ...(values.insecure ? { insecure: true } : {}),
    ...(values['ca-file'] === undefined ? {} : { 'ca-file': resolve(values['ca-file']) }),
    ...(values.timeout === undefined ? {} : { timeout: values.timeout }),
  };
  const registry: RegistrySettings = {
    ...(registryValues.authfile === undefined ? {} : { authfile: registryValues.authfile }),
    ...(values.username === undefined ? {} : { username: values.username, passwordStdin: true }),
    ...(values.insecure ? { insecure: true } : {}),
    ...(registryValues['ca-file'] === undefined ? {} : { caFile: registryValues['ca-file'] }),
    ...(values.timeout === undefined ? {} : { timeout: values.timeout }),
  };
  const log = (line: string) => io.stderr.write(`${new Date().toISOString()} ${line}\n`);
  const service = await startSnapshotterService({
    address,
    root: resolve(values.root ?? '/var/lib/erofs-oci'),
    stateDir: resolve(values['state-dir'] ?? `${stateRoot()}/snapshotter`),
    lazy: !values['no-lazy'],
    cli,
    registry,
    ...(password === undefined ? {} : { password }),
    backend,
    ioTimeoutMs: ioTimeout * 1000,
    openImage: (ref, signal) =>
      openImageFromOptions(ref, registryValues, { ...io, ...(signal === undefined ? {} : { signal }) }),
    log,
  });
  await new Promise<void>((done) => {
    if (io.signal.aborted) done();
    io.signal.addEventListener('abort', () => done(), { once: true });
  });
  log('stopping (mounts and serving processes stay)');
  await service.close();
  return 0;
}
