/**
 * `node bench/run.ts mount`: lazy mounts of a 4-layer EROFS-native image from a local registry, against the
 * same layers mounted from local files with overlayfs, and against `nbdkit curl` + `nbdfuse` per layer.
 * Page caches are dropped before every step; every measured step starts from a fresh mount (fresh server
 * caches), so "cold" means nothing of the image is cached anywhere.
 *
 * Environment: BENCH_MOUNT_LAYERS (4), BENCH_MOUNT_SMALL_FILES (6000 per layer), BENCH_MOUNT_LARGE_MIB (32,
 * one large file per layer), BENCH_MOUNT_RUNS (3, best of), BENCH_MOUNT_NBDKIT (0 skips nbdkit). With
 * EROFS_UTILS_BIN (an erofs-utils 1.9 bin dir) the same layers are also built by `mkfs.erofs --tar=f --aufs
 * -Enoinline_data`, as containerd's EROFS differ builds them, and measured the same way in the same run.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRegistry } from '../test-support/registry.ts';
import { type FaultProxy, startFaultProxy } from '../test-support/registry-fault-proxy.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';
import { dropCaches, sh, timed } from './support.ts';

export interface MountSuiteContext {
  root: string;
  benchDir: string;
  /** One table row: what, seconds, MB/s, peak RSS MiB, notes. */
  addRow(row: string[]): void;
  setResults(value: unknown): void;
}

const TOOLS = ['docker-registry', 'skopeo', 'nbdkit', 'nbdfuse'];

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
  // Layers as erofs-utils builds them for containerd's EROFS differ, when EROFS_UTILS_BIN has mkfs.erofs:
  // inodes and directory blocks scattered among the file data.
  const mkfsDir = process.env.EROFS_UTILS_BIN;
  const mkfs = mkfsDir && existsSync(join(mkfsDir, 'mkfs.erofs')) ? join(mkfsDir, 'mkfs.erofs') : undefined;
  const utilsImages: string[] = [];
  for (let i = 0; i < layerCount; i++) {
    const stem = join(ctx.benchDir, `mount-layer${i}-${small}-${largeMiB}`);
    const utils = `${stem}.erofs-utils.erofs`;
    const needed = !existsSync(`${stem}.erofs`) || (mkfs !== undefined && !existsSync(utils));
    if (needed) {
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
      if (mkfs !== undefined) {
        await sh(mkfs, ['--quiet', '--tar=f', '--aufs', '-Enoinline_data', `${utils}.part`, `${stem}.tar`]);
        await sh('mv', [`${utils}.part`, utils]);
      }
      await rm(`${stem}.tar`, { force: true });
    }
    images.push(`${stem}.erofs`);
    if (mkfs !== undefined) utilsImages.push(utils);
  }
  const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-mount-'));
  const registry = await startRegistry({ storageDir: join(work, 'storage') });
  const proxy = await startFaultProxy(registry.url);
  const mnt = join(work, 'mnt');
  await mkdir(mnt);
  const runs = Number(process.env.BENCH_MOUNT_RUNS ?? 3);
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    layers: layerCount,
    smallFilesPerLayer: small,
    largeMiBPerLayer: largeMiB,
    runs,
  };
  let stateRuns = 0;
  let chain = 0;
  try {
    /** One image (its layers built one way): local, erofs-oci mount and optionally nbdkit, cold. */
    const variant = async (label: string, repo: string, layerFiles: string[], withNbdkit: boolean) => {
      const blobs = layerFiles.map((image) => blobOf('application/vnd.erofs.layer.v1', readFileSync(image)));
      const layout = join(work, `layout-${repo}`);
      await writeLayout(layout, 'v1', [imageOfBlobs(blobs)], false);
      const ref = `${registry.host}/bench/${repo}:v1`;
      await sh('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${ref}`]);
      const totalBytes = blobs.reduce((sum, b) => sum + b.size, 0);

      // Local files: each layer mounted from its file, stacked.
      const local = async (step: (m: string) => Promise<number>): Promise<number> => {
        const lowers: string[] = [];
        try {
          for (const [i, image] of layerFiles.entries()) {
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

      // erofs-oci mount. Timed straight from the registry; bytes fetched counted in one more run through a
      // pass-through proxy that records the Range of every blob request (it adds a hop, so it is not timed).
      const ours = async (
        step: (m: string) => Promise<number>,
        counted = false,
      ): Promise<{ mount: number; step: number; fetched: number }> => {
        const env = { ...process.env, EROFS_OCI_STATE_DIR: join(work, `state-${++stateRuns}`) };
        const from = proxy.requests.length;
        const host = counted ? proxy.host : registry.host;
        await dropCaches();
        const mountSeconds = await timed(() =>
          sh(process.execPath, [cli, 'mount', '--insecure', `${host}/bench/${repo}:v1`, mnt], env),
        );
        try {
          return { mount: mountSeconds, step: await step(mnt), fetched: fetchedSince(proxy, from) };
        } finally {
          await sh(process.execPath, [cli, 'umount', mnt], env);
        }
      };

      // nbdkit curl + nbdfuse per layer, stacked; a counting of requests is not needed here (serve suite).
      const nbdkit = async (step: (m: string) => Promise<number>): Promise<number> => {
        // Fresh names per run: a FUSE mount of the previous run may still be going away.
        chain++;
        const lowers: string[] = [];
        const fuses: string[] = [];
        const procs: ReturnType<typeof spawn>[] = [];
        try {
          for (const [i, blob] of blobs.entries()) {
            const sock = join(work, `nbdkit-${chain}-${i}.sock`);
            const url = `${registry.url}/v2/bench/${repo}/blobs/${blob.digest}`;
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

      const best = async <T>(f: () => Promise<T>, key: (t: T) => number): Promise<T> => {
        let winner: T | undefined;
        for (let r = 0; r < runs; r++) {
          const t = await f();
          if (winner === undefined || key(t) < key(winner)) winner = t;
        }
        return winner as T;
      };
      const localFind = await best(
        () => local(coldFind),
        (t) => t,
      );
      const localRead = await best(
        () => local(coldReadAll),
        (t) => t,
      );
      const oursFind = await best(
        () => ours(coldFind),
        (t) => t.step,
      );
      const oursRead = await best(
        () => ours(coldReadAll),
        (t) => t.step,
      );
      const mountTime = Math.min(oursFind.mount, oursRead.mount);
      oursFind.fetched = (await ours(coldFind, true)).fetched;
      oursRead.fetched = (await ours(coldReadAll, true)).fetched;
      const nbdkitFind = withNbdkit
        ? await best(
            () => nbdkit(coldFind),
            (t) => t,
          )
        : undefined;
      const nbdkitRead = withNbdkit
        ? await best(
            () => nbdkit(coldReadAll),
            (t) => t,
          )
        : undefined;

      const fmt = (s: number) => s.toFixed(2);
      const mbps = (s: number) => (totalBytes / 1e6 / s).toFixed(0);
      const mib = (n: number) =>
        `${(n / 1048576).toFixed(1)} MiB fetched of ${(totalBytes / 1048576).toFixed(0)}`;
      ctx.addRow([
        `${label}: erofs-oci mount (${layerCount} layers) returns`,
        fmt(mountTime),
        '',
        '',
        'target ≤ 1.5 s',
      ]);
      ctx.addRow([`${label}: cold find: local files + overlayfs`, fmt(localFind), '', '', '']);
      ctx.addRow([
        `${label}: cold find: erofs-oci mount`,
        fmt(oursFind.step),
        '',
        '',
        `${(oursFind.step / localFind).toFixed(2)}× local (≤ 2)${nbdkitFind === undefined ? '' : `, ${(oursFind.step / nbdkitFind).toFixed(2)}× nbdkit`}; ${mib(oursFind.fetched)}`,
      ]);
      if (nbdkitFind !== undefined)
        ctx.addRow([`${label}: cold find: nbdkit curl + nbdfuse`, fmt(nbdkitFind), '', '', '']);
      ctx.addRow([
        `${label}: read every file: local files + overlayfs`,
        fmt(localRead),
        mbps(localRead),
        '',
        '',
      ]);
      ctx.addRow([
        `${label}: read every file: erofs-oci mount`,
        fmt(oursRead.step),
        mbps(oursRead.step),
        '',
        `${(oursRead.step / localRead).toFixed(2)}× local (≤ 1.5)${nbdkitRead === undefined ? '' : `, ${(oursRead.step / nbdkitRead).toFixed(2)}× nbdkit`}; ${mib(oursRead.fetched)}`,
      ]);
      if (nbdkitRead !== undefined)
        ctx.addRow([
          `${label}: read every file: nbdkit curl + nbdfuse`,
          fmt(nbdkitRead),
          mbps(nbdkitRead),
          '',
          '',
        ]);
      results[repo] = {
        imageBytes: totalBytes,
        mountSeconds: mountTime,
        find: { local: localFind, ours: oursFind.step, nbdkit: nbdkitFind, oursFetched: oursFind.fetched },
        readAll: { local: localRead, ours: oursRead.step, nbdkit: nbdkitRead, oursFetched: oursRead.fetched },
      };
    };

    const withNbdkit = process.env.BENCH_MOUNT_NBDKIT !== '0';
    await variant('our writer', 'mount', images, withNbdkit);
    if (utilsImages.length > 0) {
      await variant('erofs-utils --tar=f', 'mount-erofs-utils', utilsImages, withNbdkit);
    } else {
      ctx.addRow([
        'erofs-utils layers: skipped (set EROFS_UTILS_BIN to an erofs-utils 1.9 bin dir)',
        '',
        '',
        '',
        '',
      ]);
    }
    ctx.setResults(results);
  } finally {
    await proxy.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

/** Bytes of blob range requests the proxy passed since request `from`. */
function fetchedSince(proxy: FaultProxy, from: number): number {
  let total = 0;
  for (const r of proxy.requests.slice(from)) {
    if (r.method !== 'GET' || !r.path.includes('/blobs/')) continue;
    const m = /bytes=(\d+)-(\d+)/.exec(String(r.headers.range ?? ''));
    if (m) total += Number(m[2]) - Number(m[1]) + 1;
  }
  return total;
}
