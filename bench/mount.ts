/**
 * `node bench/run.ts mount`: lazy mounts of a 4-layer EROFS-native image from a local registry, against the
 * same layers mounted from local files with overlayfs, and against `nbdkit curl` + `nbdfuse` per layer.
 * Page caches are dropped before every step; every measured step starts from a fresh mount (fresh server
 * caches), so "cold" means nothing of the image is cached anywhere.
 *
 * Environment: BENCH_MOUNT_LAYERS (4), BENCH_MOUNT_SMALL_FILES (6000 per layer), BENCH_MOUNT_LARGE_MIB (32,
 * one large file per layer).
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { startRegistry } from '../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';

export interface MountSuiteContext {
  root: string;
  benchDir: string;
  /** One table row: what, seconds, MB/s, peak RSS MiB, notes. */
  addRow(row: string[]): void;
  setResults(value: unknown): void;
}

const TOOLS = ['docker-registry', 'skopeo', 'nbdkit', 'nbdfuse'];

const execFileAsync = promisify(execFile);

/**
 * Commands run asynchronously on purpose: the registry is a child of this process whose log pipe must keep
 * draining; a synchronous wait lets the pipe fill, and the registry stalls mid-benchmark.
 */
async function sh(command: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const { stdout } = await execFileAsync(command, args, {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: env ?? process.env,
  });
  return stdout;
}

async function dropCaches(): Promise<void> {
  await sh('sync', []);
  await sh('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

/** `find` over the tree, and reading every regular file's bytes. */
async function coldFind(mnt: string): Promise<number> {
  await dropCaches();
  return timed(() => sh('find', [mnt, '-printf', '']));
}

async function coldReadAll(mnt: string): Promise<number> {
  await dropCaches();
  return timed(() => sh('sh', ['-c', `find "${mnt}" -type f -print0 | xargs -0 cat > /dev/null`]));
}

async function overlay(lowers: string[], mnt: string): Promise<void> {
  await sh('mount', [
    '-t',
    'overlay',
    'overlay',
    '-o',
    `ro,lowerdir=${[...lowers].reverse().join(':')}`,
    mnt,
  ]);
}

export async function benchMount(ctx: MountSuiteContext): Promise<void> {
  const path = (process.env.PATH ?? '').split(':');
  const missing = TOOLS.filter((tool) => !path.some((dir) => dir && existsSync(join(dir, tool))));
  if (process.getuid?.() !== 0 || missing.length > 0) {
    const why = process.getuid?.() !== 0 ? 'needs root' : `${missing.join(', ')} missing`;
    ctx.addRow([`skipped: ${why}`, '', '', '', '']);
    ctx.setResults({ skipped: why });
    return;
  }
  const layerCount = Number(process.env.BENCH_MOUNT_LAYERS ?? 4);
  const small = Number(process.env.BENCH_MOUNT_SMALL_FILES ?? 6000);
  const largeMiB = Number(process.env.BENCH_MOUNT_LARGE_MIB ?? 32);
  await mkdir(ctx.benchDir, { recursive: true });
  const cli = join(ctx.root, 'bin', 'erofs-oci.js');
  const images: string[] = [];
  for (let i = 0; i < layerCount; i++) {
    const stem = join(ctx.benchDir, `mount-layer${i}-${small}-${largeMiB}`);
    if (!existsSync(`${stem}.erofs`)) {
      process.stderr.write(`mount: generating ${stem}.erofs\n`);
      await sh('python3', [
        join(ctx.root, 'bench', 'make-tar.py'),
        `${stem}.tar`,
        String(small),
        '1',
        String(largeMiB),
        `L${i}`,
      ]);
      await sh(process.execPath, [
        cli,
        'build',
        '--quiet',
        '--timestamp',
        '0',
        '--uuid',
        'clear',
        `tar:${stem}.tar`,
        `${stem}.erofs.part`,
      ]);
      await sh('mv', [`${stem}.erofs.part`, `${stem}.erofs`]);
      await rm(`${stem}.tar`, { force: true });
    }
    images.push(`${stem}.erofs`);
  }
  const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-mount-'));
  const registry = await startRegistry({ storageDir: join(work, 'storage') });
  const cleanups: (() => Promise<void> | void)[] = [];
  try {
    const blobs = images.map((image) => blobOf('application/vnd.erofs.layer.v1', readFileSync(image)));
    const layout = join(work, 'layout');
    await writeLayout(layout, 'v1', [imageOfBlobs(blobs)], false);
    const ref = `${registry.host}/bench/mount:v1`;
    await sh('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${ref}`]);
    const totalBytes = blobs.reduce((sum, b) => sum + b.size, 0);
    const mnt = join(work, 'mnt');
    await mkdir(mnt);

    // Local files: each layer mounted from its file, stacked.
    const local = async (step: (m: string) => Promise<number>): Promise<number> => {
      const lowers: string[] = [];
      try {
        for (const [i, image] of images.entries()) {
          const dir = join(work, `local-${i}`);
          await mkdir(dir, { recursive: true });
          await sh('mount', ['-t', 'erofs', '-o', 'ro', image, dir]);
          lowers.push(dir);
        }
        await overlay(lowers, mnt);
        return await step(mnt);
      } finally {
        await sh('umount', [mnt]);
        for (const dir of lowers) await sh('umount', [dir]);
      }
    };

    // erofs-oci mount.
    const env = { ...process.env, EROFS_OCI_STATE_DIR: join(work, 'state') };
    const ours = async (step: (m: string) => Promise<number>): Promise<{ mount: number; step: number }> => {
      await dropCaches();
      const mountSeconds = await timed(() =>
        sh(process.execPath, [cli, 'mount', '--insecure', ref, mnt], env),
      );
      try {
        return { mount: mountSeconds, step: await step(mnt) };
      } finally {
        await sh(process.execPath, [cli, 'umount', mnt], env);
      }
    };

    // nbdkit curl + nbdfuse per layer, stacked; a counting of requests is not needed here (serve suite).
    let chain = 0;
    const nbdkit = async (step: (m: string) => Promise<number>): Promise<number> => {
      // Fresh names per run: a FUSE mount of the previous run may still be going away.
      chain++;
      const lowers: string[] = [];
      const fuses: string[] = [];
      const procs: ReturnType<typeof spawn>[] = [];
      try {
        for (const [i, blob] of blobs.entries()) {
          const sock = join(work, `nbdkit-${chain}-${i}.sock`);
          const url = `${registry.url}/v2/bench/mount/blobs/${blob.digest}`;
          const server = spawn('nbdkit', ['--foreground', '-U', sock, 'curl', `url=${url}`], {
            stdio: 'ignore',
          });
          procs.push(server);
          for (let t = 0; t < 200 && !existsSync(sock); t++) await sleep(25);
          const fuseDir = join(work, `fuse-${chain}-${i}`);
          await mkdir(fuseDir, { recursive: true });
          const pidFile = join(work, `fuse-${chain}-${i}.pid`);
          await rm(pidFile, { force: true });
          procs.push(
            spawn('nbdfuse', ['-r', '-P', pidFile, join(fuseDir, 'image'), `nbd+unix:///?socket=${sock}`], {
              stdio: 'ignore',
            }),
          );
          for (let t = 0; t < 400 && !(existsSync(pidFile) && existsSync(join(fuseDir, 'image'))); t++)
            await sleep(25);
          fuses.push(fuseDir);
          const dir = join(work, `nbdkit-layer-${chain}-${i}`);
          await mkdir(dir, { recursive: true });
          await sh('mount', ['-t', 'erofs', '-o', 'ro', join(fuseDir, 'image'), dir]);
          lowers.push(dir);
        }
        await overlay(lowers, mnt);
        return await step(mnt);
      } finally {
        await sh('sh', ['-c', `umount "${mnt}" 2>/dev/null; true`]);
        for (const dir of lowers) await sh('umount', [dir]);
        for (const dir of fuses)
          await sh('sh', [
            '-c',
            `fusermount3 -u "${dir}" 2>/dev/null || umount -l "${dir}/image" 2>/dev/null || umount -l "${dir}" 2>/dev/null; true`,
          ]);
        for (const p of procs) p.kill('SIGTERM');
        await sleep(200);
      }
    };

    const best = async <T>(runs: number, f: () => Promise<T>, key: (t: T) => number): Promise<T> => {
      let winner: T | undefined;
      for (let r = 0; r < runs; r++) {
        const t = await f();
        if (winner === undefined || key(t) < key(winner)) winner = t;
      }
      return winner as T;
    };
    const runs = Number(process.env.BENCH_MOUNT_RUNS ?? 3);
    const localFind = await best(
      runs,
      () => local(coldFind),
      (t) => t,
    );
    const localRead = await best(
      runs,
      () => local(coldReadAll),
      (t) => t,
    );
    const oursFind = await best(
      runs,
      () => ours(coldFind),
      (t) => t.step,
    );
    const oursRead = await best(
      runs,
      () => ours(coldReadAll),
      (t) => t.step,
    );
    const mountTime = Math.min(oursFind.mount, oursRead.mount);
    const nbdkitFind = await best(
      runs,
      () => nbdkit(coldFind),
      (t) => t,
    );
    const nbdkitRead = await best(
      runs,
      () => nbdkit(coldReadAll),
      (t) => t,
    );

    const fmt = (s: number) => s.toFixed(2);
    const mbps = (s: number) => (totalBytes / 1e6 / s).toFixed(0);
    ctx.addRow([`erofs-oci mount (${layerCount} layers) returns`, fmt(mountTime), '', '', 'target ≤ 1.5 s']);
    ctx.addRow(['cold find: local files + overlayfs', fmt(localFind), '', '', '']);
    ctx.addRow([
      'cold find: erofs-oci mount',
      fmt(oursFind.step),
      '',
      '',
      `${(oursFind.step / localFind).toFixed(1)}× local (≤ 10), ${(oursFind.step / nbdkitFind).toFixed(2)}× nbdkit (≤ 0.5)`,
    ]);
    ctx.addRow(['cold find: nbdkit curl + nbdfuse', fmt(nbdkitFind), '', '', '']);
    ctx.addRow(['read every file: local files + overlayfs', fmt(localRead), mbps(localRead), '', '']);
    ctx.addRow([
      'read every file: erofs-oci mount',
      fmt(oursRead.step),
      mbps(oursRead.step),
      '',
      `${(oursRead.step / localRead).toFixed(1)}× local (≤ 4), ${(oursRead.step / nbdkitRead).toFixed(2)}× nbdkit`,
    ]);
    ctx.addRow(['read every file: nbdkit curl + nbdfuse', fmt(nbdkitRead), mbps(nbdkitRead), '', '']);
    ctx.setResults({
      date: new Date().toISOString(),
      layers: layerCount,
      smallFilesPerLayer: small,
      largeMiBPerLayer: largeMiB,
      imageBytes: totalBytes,
      runs,
      mountSeconds: mountTime,
      find: { local: localFind, ours: oursFind.step, nbdkit: nbdkitFind },
      readAll: { local: localRead, ours: oursRead.step, nbdkit: nbdkitRead },
    });
  } finally {
    for (const c of cleanups) await c();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
