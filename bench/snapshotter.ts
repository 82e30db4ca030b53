/**
 * `node bench/run.ts snapshotter`: time from pull start to a container's first output, and bytes the
 * registry sent, for one image in two forms from the same local registry, each through the real
 * containerd 1.6 + runc the tests use (test-support/containerd.ts):
 *
 * - ours: the EROFS-native image (`erofs-oci convert --media-type application/vnd.oci.image.layer.v1.erofs`
 *   of the gzip one) pulled through CRI's ImageService into `erofs-oci snapshotter` (lazy layers, nothing
 *   downloaded), then `ctr run --snapshotter erofs-oci`;
 * - baseline: the gzip original pulled through CRI into containerd's own overlayfs snapshotter (a full
 *   download and unpack), then `ctr run --snapshotter overlayfs`.
 *
 * Each run starts from nothing: a fresh containerd (and snapshotter) with empty roots, page caches dropped.
 * The container reads a few small files from three layers and prints one line; the time to that line's
 * first byte is the figure. Starting containerd and the snapshotter is not counted (they are daemons).
 *
 * Environment: BENCH_SNAPSHOTTER_SMALL_FILES (6000, in the first data layer; half that in the second),
 * BENCH_SNAPSHOTTER_LARGE_MIB (64: one large file in the first data layer, two in the second),
 * BENCH_SNAPSHOTTER_RUNS (3; the best run of each is reported, every run is in results.json),
 * BENCH_SNAPSHOTTER_MBIT (100: after the loopback runs, the same runs through a proxy shaping what the
 * registry sends to this rate, as a node's link to a registry elsewhere would; 0: loopback only),
 * BENCH_SNAPSHOTTER_LOG=1 (print the snapshotter's log of each run, with its timestamps).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  CTR,
  containerdUnavailableReason,
  copyRuntimeTree,
  criImageClient,
  mountsUnder,
  registryTraffic,
  startContainerd,
  startSnapshotter,
  stopSnapshotter,
  tarOf,
} from '../test-support/containerd.ts';
import { registryUnavailableReason, startRegistry } from '../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';
import { dropCaches, sh } from './support.ts';

export interface SnapshotterSuiteContext {
  root: string;
  benchDir: string;
  /** One table row: what, seconds, MB/s, peak RSS MiB, notes. */
  addRow(row: string[]): void;
  setResults(value: unknown): void;
}

const ERofs_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.erofs';
const GZIP_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip';
const READY = 'ready\n';

interface Run {
  /** Seconds from the CRI PullImage call to its answer. */
  pull: number;
  /** Seconds from the CRI PullImage call to the container's first output byte. */
  firstOutput: number;
  /** Body bytes the registry sent (manifests, config and blobs). */
  bytes: number;
}

/** Runs `ctr run` and resolves with the seconds (since `started`) of its first stdout byte and its output. */
function runContainer(args: string[], started: number): Promise<{ first: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(CTR, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let first: number | undefined;
    let output = '';
    let errors = '';
    child.stdout.on('data', (chunk: Buffer) => {
      first ??= (performance.now() - started) / 1000;
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      errors += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0 || first === undefined)
        reject(new Error(`ctr ${args.join(' ')}: exit ${code}: ${errors}`));
      else resolve({ first, output });
    });
  });
}

/**
 * A TCP proxy to the registry on 127.0.0.1:`port` that sends the registry's answers on at `bytesPerSecond`
 * in all (one link shared by every connection, as a node's uplink is); requests pass unshaped.
 */
async function startShapingProxy(
  port: number,
  bytesPerSecond: number,
): Promise<{ host: string; stop(): Promise<void> }> {
  let nextFree = performance.now();
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      const now = performance.now();
      nextFree = Math.max(nextFree, now) + (chunk.length / bytesPerSecond) * 1000;
      upstream.pause();
      setTimeout(() => {
        client.write(chunk);
        upstream.resume();
      }, nextFree - now);
    });
    upstream.on('end', () => setTimeout(() => client.end(), Math.max(0, nextFree - performance.now()) + 1));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${address.port}`,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A cached generated tar of make-tar.py, gzipped beside it. */
async function dataLayer(
  ctx: SnapshotterSuiteContext,
  name: string,
  small: number,
  large: number,
  mib: number,
) {
  const stem = join(ctx.benchDir, `snapshotter-${name}-${small}-${large}x${mib}`);
  if (!existsSync(`${stem}.tar.gz`)) {
    process.stderr.write(`snapshotter: generating ${stem}.tar\n`);
    await sh('python3', [
      join(ctx.root, 'bench', 'make-tar.py'),
      `${stem}.tar`,
      String(small),
      String(large),
      String(mib),
      name,
    ]);
    await sh('sh', [
      '-c',
      `gzip -6 -n -c "${stem}.tar" > "${stem}.tar.gz.part" && mv "${stem}.tar.gz.part" "${stem}.tar.gz"`,
    ]);
  }
  return { tar: `${stem}.tar`, gz: `${stem}.tar.gz` };
}

export async function benchSnapshotter(ctx: SnapshotterSuiteContext): Promise<void> {
  const why =
    process.getuid?.() !== 0
      ? 'needs root'
      : (registryUnavailableReason() ??
        containerdUnavailableReason() ??
        (existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse'));
  if (why !== undefined) {
    ctx.addRow([`skipped: ${why}`, '', '', '', '']);
    ctx.setResults({ skipped: why });
    return;
  }
  const small = Number(process.env.BENCH_SNAPSHOTTER_SMALL_FILES ?? 6000);
  const largeMiB = Number(process.env.BENCH_SNAPSHOTTER_LARGE_MIB ?? 64);
  const runs = Number(process.env.BENCH_SNAPSHOTTER_RUNS ?? 3);
  const mbitText = process.env.BENCH_SNAPSHOTTER_MBIT ?? '100';
  const mbitLimit = mbitText === '0' ? undefined : Number(mbitText);
  await mkdir(ctx.benchDir, { recursive: true });
  const cli = join(ctx.root, 'bin', 'erofs-oci.js');
  const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-snapshotter-'));
  const registry = await startRegistry({ storageDir: join(work, 'storage') });
  const traffic = registryTraffic(registry);
  try {
    // Layers: the host's sh and cat with their libraries; two generated data layers (many small files,
    // large ones); a small top layer with the file the container prints.
    const runtime = join(work, 'runtime');
    await copyRuntimeTree(runtime);
    const runtimeTar = await tarOf(runtime, join(work, 'runtime.tar'));
    const top = join(work, 'top');
    await mkdir(join(top, 'etc'), { recursive: true });
    await writeFile(join(top, 'etc', 'app.txt'), READY);
    const topTar = await tarOf(top, join(work, 'top.tar'));
    const l1 = await dataLayer(ctx, 'L1', small, 1, largeMiB);
    const l2 = await dataLayer(ctx, 'L2', Math.floor(small / 2), 2, largeMiB);
    const blobs = [
      blobOf(GZIP_MEDIA_TYPE, gzipSync(runtimeTar)),
      blobOf(GZIP_MEDIA_TYPE, readFileSync(l1.gz)),
      blobOf(GZIP_MEDIA_TYPE, readFileSync(l2.gz)),
      blobOf(GZIP_MEDIA_TYPE, gzipSync(topTar)),
    ];
    const diffIds = [runtimeTar, readFileSync(l1.tar), readFileSync(l2.tar), topTar].map(
      (tar) => `sha256:${createHash('sha256').update(tar).digest('hex')}`,
    );
    const layout = join(work, 'layout');
    await writeLayout(layout, 'gzip', [imageOfBlobs(blobs, diffIds)], false);
    const gzipRef = `${registry.host}/bench/snapshotter:gzip`;
    const erofsRef = `${registry.host}/bench/snapshotter:erofs`;
    await sh('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout}:gzip`, `docker://${gzipRef}`]);
    const convertStarted = performance.now();
    const converted = JSON.parse(
      await sh(process.execPath, [
        cli,
        'convert',
        '--quiet',
        '--json',
        '--insecure',
        '--media-type',
        ERofs_MEDIA_TYPE,
        gzipRef,
        erofsRef,
      ]),
    ) as { layers: { size: number }[] };
    const convertSeconds = (performance.now() - convertStarted) / 1000;
    const gzipBytes = blobs.reduce((sum, b) => sum + b.size, 0);
    const erofsBytes = converted.layers.reduce((sum, l) => sum + l.size, 0);
    // Reads three layers (runtime, both data layers) and prints the top layer's file.
    const command = `cat /usr/share/pkg001/L1-file-000001.txt /usr/share/pkg002/L2-file-000002.txt > /dev/null && cat /etc/app.txt`;

    let serial = 0;
    const once = async (kind: 'ours' | 'overlayfs', host: string): Promise<Run> => {
      const d = join(work, `run-${++serial}-${kind}`);
      await mkdir(d);
      const snapshotter = kind === 'ours' ? await startSnapshotter(d) : undefined;
      const containerd = await startContainerd({
        dir: join(d, 'containerd'),
        snapshotterSocket: join(d, 'snapshotter.sock'),
        plainHttpRegistries: [host],
        criSnapshotter: kind === 'ours' ? 'erofs-oci' : 'overlayfs',
      });
      const cri = criImageClient(containerd.address);
      const ref = `${host}/bench/snapshotter:${kind === 'ours' ? 'erofs' : 'gzip'}`;
      try {
        await dropCaches();
        const before = traffic.total();
        const started = performance.now();
        await cri.pullImage(ref);
        const pull = (performance.now() - started) / 1000;
        const { first, output } = await runContainer(
          [
            '--address',
            containerd.address,
            '--namespace',
            'k8s.io',
            'run',
            '--rm',
            '--snapshotter',
            kind === 'ours' ? 'erofs-oci' : 'overlayfs',
            ref,
            `bench-${serial}`,
            '/bin/sh',
            '-c',
            command,
          ],
          started,
        );
        if (output !== READY) throw new Error(`the ${kind} container printed ${JSON.stringify(output)}`);
        return { pull, firstOutput: first, bytes: traffic.total() - before };
      } finally {
        cri.close();
        await containerd.stop();
        if (snapshotter) {
          await stopSnapshotter(snapshotter);
          if (process.env.BENCH_SNAPSHOTTER_LOG) process.stderr.write(snapshotter.log());
          // Lazy layers stay mounted past the snapshotter (by design): unmount them as `erofs-oci umount`.
          const layers = join(d, 'sn-root', 'layers');
          for (const name of existsSync(layers) ? await readdir(layers) : []) {
            await sh(process.execPath, [cli, 'umount', join(layers, name)], {
              ...process.env,
              EROFS_OCI_STATE_DIR: join(d, 'sn-state'),
            }).catch(() => '');
          }
        }
        const left = (await mountsUnder(d)).map((m) => m.path).sort((a, b) => b.length - a.length);
        for (const path of left) await sh('umount', ['-l', path]).catch(() => '');
        await rm(d, { recursive: true, force: true });
      }
    };

    const fmt = (s: number) => s.toFixed(2);
    const mbFetched = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB fetched`;
    const links: Record<string, unknown> = {};
    // The registry on loopback, then behind a proxy that shapes what it sends to BENCH_SNAPSHOTTER_MBIT.
    for (const mbit of [0, mbitLimit]) {
      if (mbit === undefined) continue;
      const proxy = mbit === 0 ? undefined : await startShapingProxy(registry.port, (mbit * 1e6) / 8);
      const host = proxy?.host ?? registry.host;
      const link = mbit === 0 ? 'loopback' : `${mbit} Mbit/s`;
      try {
        const all: Record<'ours' | 'overlayfs', Run[]> = { ours: [], overlayfs: [] };
        for (let r = 0; r < runs; r++) {
          // Alternating, so that a busy spell on the shared machine does not fall on one side only.
          all.ours.push(await once('ours', host));
          all.overlayfs.push(await once('overlayfs', host));
        }
        const best = (list: Run[]) => list.reduce((a, b) => (b.firstOutput < a.firstOutput ? b : a));
        const ours = best(all.ours);
        const theirs = best(all.overlayfs);
        ctx.addRow([
          `${link}: overlayfs, CRI pull of the gzip image (${(gzipBytes / 1e6).toFixed(0)} MB of blobs)`,
          fmt(theirs.pull),
          '',
          '',
          mbFetched(theirs.bytes),
        ]);
        ctx.addRow([`${link}: overlayfs: pull start to first output`, fmt(theirs.firstOutput), '', '', '']);
        ctx.addRow([
          `${link}: erofs-oci snapshotter, CRI pull of the EROFS image (${(erofsBytes / 1e6).toFixed(0)} MB of blobs)`,
          fmt(ours.pull),
          '',
          '',
          mbFetched(ours.bytes),
        ]);
        ctx.addRow([
          `${link}: erofs-oci snapshotter: pull start to first output`,
          fmt(ours.firstOutput),
          '',
          '',
          `${theirs.firstOutput >= ours.firstOutput ? `${(theirs.firstOutput / ours.firstOutput).toFixed(1)}× sooner` : `${(ours.firstOutput / theirs.firstOutput).toFixed(1)}× later`} than overlayfs; ${((100 * ours.bytes) / theirs.bytes).toFixed(1)}% of its bytes`,
        ]);
        links[link] = {
          ours: { best: ours, all: all.ours },
          overlayfs: { best: theirs, all: all.overlayfs },
          ratios: {
            firstOutputSpeedup: theirs.firstOutput / ours.firstOutput,
            bytesFraction: ours.bytes / theirs.bytes,
          },
        };
      } finally {
        await proxy?.stop();
      }
    }
    ctx.addRow([
      'convert (once, when publishing; not in the figures above)',
      fmt(convertSeconds),
      '',
      '',
      '',
    ]);
    ctx.setResults({
      date: new Date().toISOString(),
      smallFiles: small,
      largeMiB,
      gzipBlobBytes: gzipBytes,
      erofsBlobBytes: erofsBytes,
      runs,
      command,
      convertSeconds,
      links,
    });
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
