/**
 * Lazy mounts: per layer, a serving process (`erofs-oci serve`: registry range reads, caches, NBD on a
 * unix socket) and a device holder (FUSE file backed by that socket, reconnecting when the server is
 * replaced); the kernel mounts EROFS on the device file, and several layers are stacked with overlayfs.
 *
 * Why two processes per layer: the serving process does everything that can fail or leak (network, TLS,
 * auth, caches) and may die; the holder only owns the FUSE connection, which must outlive it, and waits
 * for a replacement (`reattach`) while reads are pending. Node has no SCM_RIGHTS, so the FUSE descriptor
 * could not be handed to a new server; the holder keeps it instead. See docs/fuse.md.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErofsOciError, type ErrorCode, throwIfAborted } from '../errors.ts';
import { isProcessAlive as isAlive } from '../io/process.ts';
import { spawnHolder } from './holder.ts';
import {
  ensurePrivateDir,
  type LayerRecord,
  type LayerServerConfig,
  layerCacheDir,
  type MountRecord,
  mountDir,
  RECORD_VERSION,
  type RegistrySettings,
  readRecord,
  removeMountDir,
  writeRecord,
} from './state.ts';

/** What the mount command resolved for a layer; the record adds where it is served and by whom. */
export type LayerPlan = Pick<
  LayerRecord,
  | 'index'
  | 'digest'
  | 'mediaType'
  | 'size'
  | 'kind'
  | 'tarIndex'
  | 'zinfo'
  | 'annotations'
  | 'chunkIndex'
  | 'verification'
>;

export interface MountPlan {
  source: string;
  pinnedSource: string;
  manifestDigest: string;
  platform: string;
  mountpoint: string;
  /** Bottom first. */
  layers: LayerPlan[];
  /**
   * Where each layer is mounted on its own, instead of stacked with overlayfs at `mountpoint` (which then
   * only names the record): the snapshotter mounts several layers with one server and one holder so.
   */
  layerMounts?: string[];
  registry: RegistrySettings;
  /** Only in memory, handed to the serving processes on their stdin. */
  password?: string;
  upper?: string;
  backend: 'fuse' | 'nbd';
  ioTimeoutMs: number;
  stateRoot: string;
  /** The `erofs-oci` entry point the serving processes run. */
  cli: string;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

const SERVER_READY_TIMEOUT_MS = 90_000;
const STOP_TIMEOUT_MS = 10_000;

export { isProcessAlive as isAlive } from '../io/process.ts';

async function run(command: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stderr: stderr.trim() }));
  });
}

/** Mount points currently mounted (from /proc/self/mountinfo, octal escapes undone). */
export async function mountedPaths(): Promise<Set<string>> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const paths = new Set<string>();
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (field)
      paths.add(
        field.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8))),
      );
  }
  return paths;
}

async function unmount(path: string): Promise<void> {
  if (!(await mountedPaths()).has(path)) return;
  const result = await run('umount', [path]);
  if (result.code !== 0) {
    throw new ErofsOciError('io', `cannot unmount ${path}: ${result.stderr}`, {
      hint: /busy/i.test(result.stderr) ? 'something still uses it (fuser -vm shows what)' : undefined,
    });
  }
}

async function mountErofs(device: string, target: string): Promise<void> {
  let result = await run('mount', ['-t', 'erofs', '-o', 'ro', device, target]);
  if (result.code !== 0) {
    // File-backed EROFS mounts need Linux 6.12; older kernels take the file through a loop device.
    const fileBacked = result.stderr;
    result = await run('mount', ['-t', 'erofs', '-o', 'ro,loop', device, target]);
    if (result.code !== 0) {
      throw new ErofsOciError(
        'unsupported',
        `cannot mount EROFS from ${device}: ${fileBacked}; with a loop device: ${result.stderr}`,
      );
    }
  }
}

async function stopProcess(pid: number): Promise<void> {
  if (!isAlive(pid)) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (isAlive(pid) && Date.now() < deadline) await sleep(25);
  if (isAlive(pid)) process.kill(pid, 'SIGKILL');
}

/**
 * Starts the serving process of `layers` (`erofs-oci serve-layers CONFIG.json`: one process serving each
 * layer's blob on the layer's socket), detached, logging into the mount's directory; resolves with its pid
 * once every socket is there. One process for all layers rather than one each: a Node process costs
 * ~0.15 s of CPU to start and ~100 MB resident, and one registry client fetches one token for all.
 */
export async function startServers(
  record: Pick<MountRecord, 'pinnedSource' | 'registry'>,
  layers: LayerRecord[],
  options: {
    cli: string;
    dir: string;
    password?: string;
    signal?: AbortSignal;
  },
): Promise<number> {
  if (record.registry.username !== undefined && options.password === undefined) {
    throw new ErofsOciError(
      'auth',
      `the mount used --username ${record.registry.username} --password-stdin: give the password again the same way`,
    );
  }
  for (const layer of layers) await rm(layer.socket, { force: true });
  const config: LayerServerConfig = {
    source: record.pinnedSource,
    registry: record.registry,
    // The record knows each layer's descriptor from the manifest the mount resolved: the server need not
    // fetch the manifest again. One cache per layer: an image may hold the same blob twice (empty
    // layers), and a cache entry has one owner.
    layers: layers.map((layer) => ({
      digest: layer.digest,
      size: layer.size,
      mediaType: layer.mediaType,
      socket: layer.socket,
      cacheDir: layerCacheDir(options.dir, layer.index),
      ...(layer.tarIndex === undefined ? {} : { tarIndex: layer.tarIndex }),
      ...(layer.zinfo === undefined ? {} : { zinfo: layer.zinfo }),
      ...(layer.annotations === undefined ? {} : { annotations: layer.annotations }),
      ...(layer.chunkIndex === undefined ? {} : { chunkIndex: layer.chunkIndex }),
    })),
  };
  const configPath = join(options.dir, 'server.json');
  await writeFile(configPath, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  const logFile = join(options.dir, 'server.log');
  const out = openSync(logFile, 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [options.cli, 'serve-layers', configPath], {
      detached: true,
      stdio: [options.password === undefined ? 'ignore' : 'pipe', out, out],
    });
  } finally {
    closeSync(out);
  }
  if (options.password !== undefined) child.stdin?.end(`${options.password}\n`);
  const pid = child.pid;
  if (pid === undefined) throw new ErofsOciError('io', 'cannot start the serving process');
  let exited = false;
  let status: number | null = null;
  child.once('exit', (code) => {
    exited = true;
    status = code;
  });
  const deadline = Date.now() + SERVER_READY_TIMEOUT_MS;
  while (!layers.every((layer) => existsSync(layer.socket))) {
    throwIfAborted(options.signal);
    if (exited || Date.now() > deadline) {
      if (!exited) process.kill(pid, 'SIGKILL');
      const log = (await readFile(logFile, 'utf8').catch(() => '')).trim().split('\n');
      const last = log.filter((l) => l.startsWith('erofs-oci:')).pop() ?? log.pop() ?? 'no output';
      // The server's exit status says what kind of failure it was (a refused digest is still exit 5).
      throw new ErofsOciError(
        (status !== null && SERVER_FAILURES[status]) || 'io',
        `the serving process did not start: ${last.replace(/^erofs-oci: serve-layers: /, '')}`,
      );
    }
    await sleep(50);
  }
  child.unref();
  return pid;
}

/** Exit statuses of the CLI (src/errors.ts) back to the error they stand for. */
const SERVER_FAILURES: Record<number, ErrorCode> = {
  2: 'usage',
  3: 'not-found',
  4: 'auth',
  5: 'corrupt',
  6: 'unsupported',
  7: 'unavailable',
};

/** Attaches a layer's server to its /dev/nbdN; returns the pid nbd-client leaves serving it. */
async function attachNbd(layer: LayerRecord): Promise<number> {
  // Kept small: this machine's kernel has no NBD driver, so this path is not exercised by the tests.
  const result = await run('nbd-client', [
    '-unix',
    layer.socket,
    layer.device,
    '-readonly',
    '-persist',
    '-block-size',
    '4096',
  ]);
  if (result.code !== 0)
    throw new ErofsOciError('io', `nbd-client failed on ${layer.device}: ${result.stderr}`);
  return Number(
    (await readFile(`/sys/block/${layer.device.replace('/dev/', '')}/pid`, 'utf8').catch(() => '0')).trim(),
  );
}

/**
 * Starts the one holder process that serves every layer's FUSE file (src/mount/holder-main.ts) and
 * records its pid as each layer's device pid.
 */
async function startHolder(record: MountRecord, dir: string, signal: AbortSignal): Promise<void> {
  const devices = [];
  for (const layer of record.layers) {
    await writeFile(layer.device, '', { mode: 0o600 });
    devices.push({
      mountpoint: layer.device,
      socketPath: layer.socket,
      fsname: `erofs-oci:${layer.digest.slice(0, 19)}`,
    });
  }
  const { pid } = await spawnHolder(
    {
      devices,
      ioTimeoutMs: record.ioTimeoutMs,
      logFile: join(dir, 'holder.log'),
      readyFile: join(dir, 'holder.ready'),
    },
    { configPath: join(dir, 'holder.json'), signal },
  );
  for (const layer of record.layers) layer.devicePid = pid;
}

async function freeNbdDevice(used: Set<string>): Promise<string> {
  for (let i = 0; i < 256; i++) {
    const device = `/dev/nbd${i}`;
    if (!existsSync(device)) break;
    if (used.has(device) || existsSync(`/sys/block/nbd${i}/pid`)) continue;
    return device;
  }
  throw new ErofsOciError('unavailable', 'no free /dev/nbdN device');
}

/** Waits for every promise (so nothing still runs afterwards), then throws the first failure. */
async function allOrFirstError(promises: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Mounts the plan; on any failure everything started so far is torn down again. */
export async function mountLazy(plan: MountPlan): Promise<MountRecord> {
  const st = await stat(plan.mountpoint).catch(() => undefined);
  if (!st?.isDirectory())
    throw new ErofsOciError('not-found', `mount point ${plan.mountpoint} is not a directory`);
  if ((await mountedPaths()).has(plan.mountpoint)) {
    throw new ErofsOciError('io', `${plan.mountpoint} is already a mount point`, {
      hint: 'unmount it first',
    });
  }
  await ensurePrivateDir(plan.stateRoot);
  const dir = mountDir(plan.stateRoot, plan.mountpoint);
  if (await readRecord(dir)) {
    throw new ErofsOciError('io', `a mount of ${plan.mountpoint} is already recorded`, {
      hint: `erofs-oci umount ${plan.mountpoint}`,
    });
  }
  await ensurePrivateDir(dir);
  const record: MountRecord = {
    version: RECORD_VERSION,
    mountpoint: plan.mountpoint,
    source: plan.source,
    pinnedSource: plan.pinnedSource,
    manifestDigest: plan.manifestDigest,
    platform: plan.platform,
    backend: plan.backend,
    registry: plan.registry,
    ioTimeoutMs: plan.ioTimeoutMs,
    ...(plan.upper === undefined ? {} : { upper: plan.upper }),
    layers: [],
    createdAt: new Date().toISOString(),
  };
  try {
    const usedNbd = new Set<string>();
    for (const layer of plan.layers) {
      const device =
        plan.backend === 'nbd' ? await freeNbdDevice(usedNbd) : join(dir, `layer-${layer.index}.dev`);
      usedNbd.add(device);
      record.layers.push({
        ...layer,
        socket: join(dir, `layer-${layer.index}.sock`),
        device,
        layerMount: plan.layerMounts?.[record.layers.length] ?? join(dir, `layer-${layer.index}.mnt`),
        serverPid: 0,
        devicePid: 0,
      });
    }
    // Written before any process starts, so that umount finds whatever a failure leaves.
    await writeRecord(dir, record);
    // Everything starts side by side: the servers, and the FUSE holder, which waits for their sockets
    // (a server that cannot start stops the holder's wait). nbd-client needs the servers up first.
    const starting = new AbortController();
    const stopStarting = () => starting.abort();
    plan.signal?.addEventListener('abort', stopStarting, { once: true });
    try {
      const servers = (async () => {
        try {
          const pid = await startServers(record, record.layers, {
            cli: plan.cli,
            dir,
            password: plan.password,
            signal: starting.signal,
          });
          for (const entry of record.layers) entry.serverPid = pid;
        } catch (error) {
          starting.abort();
          throw error;
        }
      })();
      if (plan.backend === 'nbd') {
        await servers;
        await allOrFirstError(
          record.layers.map(async (entry) => {
            entry.devicePid = await attachNbd(entry);
          }),
        );
      } else {
        await allOrFirstError([servers, startHolder(record, dir, starting.signal)]);
      }
    } finally {
      plan.signal?.removeEventListener('abort', stopStarting);
    }
    for (const entry of record.layers)
      plan.log?.(`layer ${entry.index} ${entry.digest}: server ${entry.serverPid}, device ${entry.device}`);
    await writeRecord(dir, record);
    if (plan.layerMounts === undefined) await stackLayers(record);
    else {
      for (const layer of record.layers) {
        await mkdir(layer.layerMount, { recursive: true, mode: 0o755 });
        await mountErofs(layer.device, layer.layerMount);
      }
    }
    await writeRecord(dir, record);
    // Mounted means the filesystem answers: list the root once.
    if (plan.layerMounts === undefined) await readdir(plan.mountpoint);
    else for (const layer of record.layers) await readdir(layer.layerMount);
    return record;
  } catch (error) {
    await teardown(record, dir).catch(() => {
      // The original error is what the user needs; leftovers are visible with `erofs-oci list`.
    });
    throw error;
  }
}

async function stackLayers(record: MountRecord): Promise<void> {
  const lone = record.layers.length === 1 && record.upper === undefined;
  for (const layer of record.layers) {
    if (lone) {
      await mountErofs(layer.device, record.mountpoint);
      layer.layerMount = record.mountpoint;
      return;
    }
    await mkdir(layer.layerMount, { recursive: true, mode: 0o700 });
    await mountErofs(layer.device, layer.layerMount);
  }
  const lower = [...record.layers].reverse().map((l) => l.layerMount);
  const options = [`lowerdir=${lower.join(':')}`];
  if (record.upper !== undefined) {
    record.work = `${record.upper.replace(/\/+$/, '')}.work`;
    await mkdir(record.upper, { recursive: true });
    await mkdir(record.work, { recursive: true });
    options.push(`upperdir=${record.upper}`, `workdir=${record.work}`);
  } else {
    options.push('ro');
  }
  const result = await run('mount', ['-t', 'overlay', 'overlay', '-o', options.join(','), record.mountpoint]);
  if (result.code !== 0)
    throw new ErofsOciError(
      'unsupported',
      `cannot mount overlayfs on ${record.mountpoint}: ${result.stderr}`,
    );
}

/**
 * Unmounts and stops everything a record names, tolerating parts already gone: first the top mount, then
 * every layer at once (mount, device, holder and server; the holder ends by itself when its FUSE file is
 * unmounted, the server is asked to stop meanwhile), then the record.
 */
async function teardown(record: MountRecord, dir: string): Promise<void> {
  await unmount(record.mountpoint);
  await allOrFirstError(
    record.layers.map(async (layer) => {
      await unmount(layer.layerMount);
      if (record.backend === 'nbd') {
        if (layer.devicePid > 0) await run('nbd-client', ['-d', layer.device]);
        await stopProcess(layer.serverPid);
        return;
      }
      await unmount(layer.device);
      const holderGone = (async () => {
        const deadline = Date.now() + STOP_TIMEOUT_MS;
        while (isAlive(layer.devicePid) && Date.now() < deadline) await sleep(25);
        await stopProcess(layer.devicePid);
      })();
      await Promise.all([holderGone, stopProcess(layer.serverPid)]);
    }),
  );
  await removeMountDir(dir);
}

/** `umount`: false when nothing was mounted there by us (idempotent). */
export async function unmountLazy(mountpoint: string, stateRoot: string): Promise<boolean> {
  const dir = mountDir(stateRoot, mountpoint);
  const record = await readRecord(dir);
  if (!record) return false;
  await teardown(record, dir);
  return true;
}

export type Health = 'serving' | 'server dead' | 'reattaching' | 'device dead';

/** While `reattach` works on a mount, this file in its directory holds reattach's pid. */
const REATTACH_MARKER = 'reattaching';

export function healthOf(record: MountRecord, stateRoot: string): Health {
  if (record.layers.some((l) => l.devicePid > 0 && !isAlive(l.devicePid))) return 'device dead';
  if (record.layers.every((l) => isAlive(l.serverPid))) return 'serving';
  const marker = join(mountDir(stateRoot, record.mountpoint), REATTACH_MARKER);
  const reattacher = existsSync(marker) ? Number(readFileSync(marker, 'utf8')) : 0;
  return isAlive(reattacher) ? 'reattaching' : 'server dead';
}

/** `reattach`: starts a new serving process for the layers whose server died. Returns how many were started. */
export async function reattachLazy(
  mountpoint: string,
  stateRoot: string,
  options: { cli: string; password?: string; signal?: AbortSignal; log?: (line: string) => void },
): Promise<number> {
  const dir = mountDir(stateRoot, mountpoint);
  const record = await readRecord(dir);
  if (!record) throw new ErofsOciError('not-found', `no erofs-oci mount at ${mountpoint}`);
  const marker = join(dir, REATTACH_MARKER);
  await writeFile(marker, String(process.pid), { mode: 0o600 });
  try {
    return await restartDeadServers(record, dir, options);
  } finally {
    await rm(marker, { force: true });
  }
}

async function restartDeadServers(
  record: MountRecord,
  dir: string,
  options: { cli: string; password?: string; signal?: AbortSignal; log?: (line: string) => void },
): Promise<number> {
  const dead = record.layers.filter((layer) => !isAlive(layer.serverPid));
  if (dead.length === 0) return 0;
  for (const layer of dead) {
    if (layer.devicePid > 0 && !isAlive(layer.devicePid)) {
      throw new ErofsOciError(
        'io',
        `the device of layer ${layer.digest} is gone too: the mount cannot be recovered`,
        {
          hint: `erofs-oci umount ${record.mountpoint}, then mount again`,
        },
      );
    }
  }
  const pid = await startServers(record, dead, {
    cli: options.cli,
    dir,
    password: options.password,
    signal: options.signal,
  });
  for (const layer of dead) layer.serverPid = pid;
  await writeRecord(dir, record);
  options.log?.(`new serving process ${pid} for layers ${dead.map((l) => l.index).join(', ')}`);
  return 1;
}
