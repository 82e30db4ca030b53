/**
 * A real containerd (Debian's containerd 1.6 + runc) for integration tests: its own config, root, state
 * and sockets under a temporary directory, our snapshotter as the `erofs-oci` proxy plugin, the CRI plugin
 * set to use it with snapshot annotations on, and plain-HTTP access to the test registries. Also a CRI
 * ImageService client over the CRI proto (test-support/cri/api.proto; no crictl package here) and the
 * files a runnable test image needs (the host's sh and cat with their libraries).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, realpath, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { cliEntry, nodeBinary, run } from './kernel.ts';
import type { RegistryHandle } from './registry.ts';

export const CONTAINERD = '/usr/bin/containerd';
export const CTR = '/usr/bin/ctr';

/** Why containerd tests cannot run here, or undefined when they can. */
export function containerdUnavailableReason(): string | undefined {
  for (const binary of [CONTAINERD, CTR, '/usr/bin/containerd-shim-runc-v2']) {
    if (!existsSync(binary)) return `${binary} is missing (apt-get install -y containerd runc)`;
  }
  if (!existsSync('/usr/sbin/runc') && !existsSync('/usr/bin/runc'))
    return 'runc is missing (apt-get install -y runc)';
  return undefined;
}

export interface ContainerdOptions {
  dir: string;
  /** The snapshotter's socket (unix path). */
  snapshotterSocket: string;
  /** Registries (host:port) reached over plain HTTP. */
  plainHttpRegistries?: string[];
  /** The snapshotter CRI pulls into (default erofs-oci; overlayfs for containerd's own). */
  criSnapshotter?: string;
}

export interface ContainerdHandle {
  readonly address: string;
  readonly root: string;
  logs(): string;
  /** `ctr --address ADDRESS ARGS`. */
  ctr(args: string[], options?: { namespace?: string; timeoutMs?: number }): Promise<string>;
  stop(): Promise<void>;
}

export async function startContainerd(options: ContainerdOptions): Promise<ContainerdHandle> {
  const dir = options.dir;
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  const address = join(dir, 'containerd.sock');
  await mkdir(root, { recursive: true });
  await mkdir(state, { recursive: true });
  const certsDir = join(dir, 'certs.d');
  for (const host of options.plainHttpRegistries ?? []) {
    await mkdir(join(certsDir, host), { recursive: true });
    await writeFile(
      join(certsDir, host, 'hosts.toml'),
      `server = "http://${host}"\n\n[host."http://${host}"]\n  capabilities = ["pull", "resolve"]\n`,
    );
  }
  const config = `version = 2
root = ${JSON.stringify(root)}
state = ${JSON.stringify(state)}
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.grpc.v1.introspection.tracing"]

[grpc]
  address = ${JSON.stringify(address)}

[ttrpc]
  address = ${JSON.stringify(`${address}.ttrpc`)}

[metrics]
  address = ""

[proxy_plugins]
  [proxy_plugins.erofs-oci]
    type = "snapshot"
    address = ${JSON.stringify(options.snapshotterSocket)}

[plugins."io.containerd.internal.v1.opt"]
  path = ${JSON.stringify(join(dir, 'opt'))}

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = ${JSON.stringify(options.criSnapshotter ?? 'erofs-oci')}
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ${JSON.stringify(certsDir)}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = ${JSON.stringify(join(dir, 'cni-bin'))}
    conf_dir = ${JSON.stringify(join(dir, 'cni-conf'))}
`;
  const configFile = join(dir, 'config.toml');
  await writeFile(configFile, config);
  const child: ChildProcess = spawn(CONTAINERD, ['--config', configFile, '--log-level', 'debug'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const keep = (chunk: Buffer) => {
    log += chunk.toString();
    if (log.length > 4_000_000) log = log.slice(-2_000_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });
  const ctr = async (args: string[], opts: { namespace?: string; timeoutMs?: number } = {}) => {
    const result = await run(
      CTR,
      ['--address', address, '--namespace', opts.namespace ?? 'default', ...args],
      {
        signal: AbortSignal.timeout(opts.timeoutMs ?? 120_000),
      },
    );
    if (result.status !== 0)
      throw new Error(
        `ctr ${args.join(' ')}: exit ${result.status}: ${result.stderr.trim() || result.stdout.trim()}`,
      );
    return result.stdout;
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`containerd exited at start:\n${log.slice(-4000)}`);
    if (existsSync(address)) {
      const probe = await run(CTR, ['--address', address, 'version'], {
        signal: AbortSignal.timeout(10_000),
      });
      if (probe.status === 0) break;
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`containerd did not start:\n${log.slice(-4000)}`);
    }
    await sleep(100);
  }
  return {
    address,
    root,
    logs: () => log,
    ctr,
    async stop() {
      if (exited) return;
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await gone;
      clearTimeout(timer);
    },
  };
}

// ---- erofs-oci snapshotter ----

export interface SnapshotterProcess {
  readonly child: ChildProcess;
  readonly socket: string;
  log(): string;
}

/**
 * Starts `erofs-oci snapshotter` with its socket, --root (DIR/sn-root) and --state-dir (DIR/sn-state) under
 * `dir`, plain HTTP allowed; resolves once it serves.
 */
export async function startSnapshotter(dir: string, extraArgs: string[] = []): Promise<SnapshotterProcess> {
  const socket = join(dir, 'snapshotter.sock');
  const child = spawn(
    nodeBinary,
    [
      cliEntry,
      'snapshotter',
      '--address',
      `unix:${socket}`,
      '--root',
      join(dir, 'sn-root'),
      '--state-dir',
      join(dir, 'sn-state'),
      '--insecure',
      '--io-timeout',
      '120',
      ...extraArgs,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  const keep = (chunk: Buffer) => {
    log += chunk.toString();
    if (log.length > 4_000_000) log = log.slice(-2_000_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const deadline = Date.now() + 30_000;
  while (!/serving unix:/.test(log)) {
    if (child.exitCode !== null) throw new Error(`the snapshotter exited: ${log}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the snapshotter did not start: ${log}`);
    }
    await sleep(50);
  }
  return { child, socket, log: () => log };
}

export async function stopSnapshotter(
  snapshotter: SnapshotterProcess,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<void> {
  if (snapshotter.child.exitCode !== null || snapshotter.child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => snapshotter.child.once('exit', () => resolve()));
  snapshotter.child.kill(signal);
  await gone;
}

/** Mount points under `dir` from /proc/self/mountinfo, with their filesystem types. */
export async function mountsUnder(dir: string): Promise<{ path: string; type: string; source: string }[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const found = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const path = fields[4];
    const dash = fields.indexOf('-');
    if (path?.startsWith(dir))
      found.push({ path, type: fields[dash + 1] ?? '', source: fields[dash + 2] ?? '' });
  }
  return found;
}

export interface RegistryTraffic {
  /** Body bytes the registry sent for each blob digest since `registryTraffic` was called. */
  blobs(): Map<string, number>;
  /** Body bytes of every answer (blobs, manifests, tokens) since then. */
  total(): number;
}

/**
 * Counts what the registry sends, from its access log (`http.response.written`) as it arrives: its own
 * kept log is cut short on long runs, this count is not.
 */
export function registryTraffic(registry: RegistryHandle): RegistryTraffic {
  const blobs = new Map<string, number>();
  let total = 0;
  let partial = '';
  const onData = (chunk: Buffer) => {
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const written = /http\.response\.written=(\d+)/.exec(line);
      if (!written) continue;
      total += Number(written[1]);
      const uri = /http\.request\.uri="[^"]*\/blobs\/(sha256:[0-9a-f]{64})"/.exec(line);
      if (uri) blobs.set(uri[1] as string, (blobs.get(uri[1] as string) ?? 0) + Number(written[1]));
    }
  };
  registry.process.stdout?.on('data', onData);
  registry.process.stderr?.on('data', onData);
  return { blobs: () => new Map(blobs), total: () => total };
}

// ---- CRI ----

const CRI_PROTO_DIR = fileURLToPath(new URL('./cri', import.meta.url));

export interface CriImageClient {
  pullImage(image: string): Promise<string>;
  removeImage(image: string): Promise<void>;
  close(): void;
}

type UnaryMethod<T> = (
  request: unknown,
  options: { deadline: Date },
  callback: (error: grpc.ServiceError | null, response: T) => void,
) => void;

/** A `runtime.v1.ImageService` client on containerd's socket (the CRI plugin serves it there). */
export function criImageClient(containerdAddress: string): CriImageClient {
  const definition = loadSync('api.proto', {
    includeDirs: [CRI_PROTO_DIR],
    keepCase: true,
    longs: Number,
    defaults: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    runtime: { v1: { ImageService: grpc.ServiceClientConstructor } };
  };
  const client = new loaded.runtime.v1.ImageService(
    `unix:${containerdAddress}`,
    grpc.credentials.createInsecure(),
  );
  const call = <T>(method: string, request: unknown): Promise<T> =>
    new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + 300_000);
      const method_ = (client as unknown as Record<string, UnaryMethod<T>>)[method];
      if (!method_) return reject(new Error(`no CRI method ${method}`));
      method_.call(client, request, { deadline }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  return {
    async pullImage(image) {
      const response = await call<{ image_ref: string }>('PullImage', { image: { image } });
      return response.image_ref;
    },
    async removeImage(image) {
      await call('RemoveImage', { image: { image } });
    },
    close: () => client.close(),
  };
}

// ---- a runnable image ----

/**
 * The host's `sh` and `cat`, with the shared libraries they load, as a file tree for a test image's
 * bottom layer (real files, modes kept): enough for `sh -c 'cat ...'` in a container.
 */
export async function copyRuntimeTree(target: string): Promise<void> {
  const binaries = ['/bin/sh', '/bin/cat'];
  const needed = new Set<string>();
  for (const binary of binaries) {
    const ldd = await run('ldd', [binary]);
    for (const match of ldd.stdout.matchAll(/(\/\S+\.so[^\s]*)/g)) needed.add(match[1] as string);
  }
  for (const path of [...binaries, ...needed]) {
    const dest = join(target, path);
    await mkdir(dirname(dest), { recursive: true });
    await copyFile(await realpath(path), dest);
    await chmod(dest, 0o755);
  }
  await mkdir(join(target, 'etc'), { recursive: true });
  await mkdir(join(target, 'proc'), { recursive: true });
  await mkdir(join(target, 'dev'), { recursive: true });
  await mkdir(join(target, 'sys'), { recursive: true });
  await mkdir(join(target, 'tmp'), { recursive: true });
}

/** A reproducible tar of `dir` (GNU tar, numeric root owner, mtime 0, sorted). */
export async function tarOf(dir: string, out: string): Promise<Buffer> {
  const result = await run('tar', [
    '-C',
    dir,
    '--sort=name',
    '--owner=0',
    '--group=0',
    '--numeric-owner',
    '--mtime=@0',
    '--format=gnu',
    '-cf',
    out,
    '.',
  ]);
  if (result.status !== 0) throw new Error(`tar: ${result.stderr}`);
  return readFile(out);
}
