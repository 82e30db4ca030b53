/**
 * The `serve` suite of `npm run bench` (issue 5), in one run against a local registry (Debian's
 * docker-registry, filesystem storage, plain HTTP on loopback) holding one image:
 *   layer 0: an EROFS-native layer (`application/vnd.erofs.layer.v1`) built by `erofs-oci build` from a
 *            generated tree (bench/make-tar.py: ~20k small files in nested directories, a few large files);
 *   layer 1: a ≥ 300 MB blob of random bytes (typed tar+gzip; only its bytes matter for throughput).
 *
 * Throughput, best of BENCH_RUNS wall times (rounds interleave the three, so background load hits all):
 *   curl -sf -o /dev/null BLOB_URL
 *   nbdkit -f -r -U SOCK --exit-with-parent curl url=BLOB_URL   then   nbdcopy nbd+unix:///?socket=SOCK null:
 *   erofs-oci serve --insecure --layer 1 REF --listen unix:SOCK   then the same nbdcopy
 * Every run starts a fresh server, so its caches are cold; the registry's blob file is in the page cache
 * for all three (warmed by one untimed curl), so the registry's disk is not what is measured.
 *
 * Cold find over a kernel mount, per backend (our serve of layer 0, and nbdkit curl of the same blob URL),
 * best of BENCH_RUNS: `sync; echo 3 > /proc/sys/vm/drop_caches`, registry blob file read back into the page
 * cache, fresh server, `nbdfuse -r -P PIDFILE DIR/image nbd+unix:///?socket=SOCK`,
 * `mount -t erofs -o ro DIR/image MNT`, timed `find MNT > /dev/null`, then timed
 * `find MNT -type f -print0 | xargs -0 cat > /dev/null`, unmount. Both backends reach the registry through a
 * counting HTTP proxy (in this process), which counts requests and response body bytes: what the mount and
 * the find needed, and what reading every file needed on top.
 *
 * Targets (issue 5): throughput ≥ 3× nbdkit curl and ≥ 0.3× plain curl; the cold find within 1.5× the bytes
 * nbdkit curl fetches, in ≤ 1/5 of its requests.
 *
 * Environment: BENCH_RUNS (3); BENCH_SERVE_BLOB_MIB (320) sizes the throughput blob;
 * BENCH_SERVE_SMALL_FILES (20000), BENCH_SERVE_LARGE_FILES (2), BENCH_SERVE_LARGE_MIB (64) size the tree;
 * BENCH_SERVE_ARGS adds options to every `erofs-oci serve` (e.g. `--fetch-kib 256`), to try tunables;
 * BENCH_SERVE_PARTS (`throughput,find`) picks the measurements; BENCH_SERVE_CLI runs another checkout's
 * bin/erofs-oci.js as the server (A/B comparisons of a change).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, rmdir } from 'node:fs/promises';
import {
  Agent,
  createServer,
  type IncomingMessage,
  request as httpRequest,
  type ServerResponse,
} from 'node:http';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRegistry } from '../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';

export interface SuiteContext {
  /** The checkout. */
  root: string;
  /** Where generated inputs are kept between runs. */
  benchDir: string;
  /** One table row: what, seconds, MB/s, peak RSS MiB, notes. */
  addRow(row: string[]): void;
  setResults(value: unknown): void;
}

const MB = 1e6;
const REPOSITORY = 'bench/serve';
const TAG = 'v1';
const REQUIRED_TOOLS = ['docker-registry', 'skopeo', 'curl', 'nbdkit', 'nbdcopy', 'nbdfuse', 'fusermount3'];

export async function benchServe(ctx: SuiteContext): Promise<void> {
  const skip = skipReason();
  if (skip) {
    process.stderr.write(`serve: skipped: ${skip}\n`);
    ctx.addRow([`skipped: ${skip}`]);
    ctx.setResults({ date: new Date().toISOString(), skipped: skip });
    return;
  }
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const blobMiB = Number(process.env.BENCH_SERVE_BLOB_MIB ?? 320);
  const serveArgs = (process.env.BENCH_SERVE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const parts = new Set((process.env.BENCH_SERVE_PARTS ?? 'throughput,find').split(','));
  const cleanups = new Cleanups();
  // Children see the terminal's SIGINT too and fail the step in progress; what matters is that mounts,
  // servers and the temporary directory go before this process exits.
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    interrupted = true;
    process.stderr.write(`serve: ${signal}: cleaning up\n`);
    void cleanups.run().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // Other work on the machine shows up in the timings (not in the byte and request counts): record it.
  const loadAtStart = loadavg()[0] as number;
  try {
    const erofsLayer = await erofsLayerInput(ctx);
    const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-serve-'));
    cleanups.add(() => rm(work, { recursive: true, force: true }));

    progress(`pushing a ${blobMiB} MiB blob and the ${mib(erofsLayer.bytes.byteLength)} MiB EROFS layer`);
    const randomBlob = blobOf('application/vnd.oci.image.layer.v1.tar+gzip', randomBytes(blobMiB << 20));
    const image = imageOfBlobs([blobOf('application/vnd.erofs.layer.v1', erofsLayer.bytes), randomBlob]);
    const erofsBlob = image.layers[0]!;
    await writeLayout(join(work, 'layout'), TAG, [image], false);
    const storageDir = join(work, 'storage');
    await mkdir(join(work, 'registry'));
    const registry = await startRegistry({ storageDir, workDir: join(work, 'registry') });
    cleanups.add(() => registry.stop());
    await checkOutput('skopeo', [
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      // The random blob is typed tar+gzip without being gzip: skopeo would otherwise recompress it.
      '--preserve-digests',
      `oci:${join(work, 'layout')}:${TAG}`,
      `docker://${registry.host}/${REPOSITORY}:${TAG}`,
    ]);
    await rm(join(work, 'layout'), { recursive: true, force: true });
    for (const blob of image.layers) {
      const head = await fetch(`${registry.url}/v2/${REPOSITORY}/blobs/${blob.digest}`, { method: 'HEAD' });
      if (head.status !== 200 || Number(head.headers.get('content-length')) !== blob.size)
        throw new Error(`the registry does not hold ${blob.digest} as pushed: HTTP ${head.status}`);
    }
    const blobFile = (digest: string) =>
      join(storageDir, 'docker/registry/v2/blobs/sha256', digest.slice(7, 9), digest.slice(7), 'data');

    const throughput = !parts.has('throughput')
      ? null
      : await benchThroughput(ctx, cleanups, {
          work,
          runs,
          serveArgs,
          blobUrl: `${registry.url}/v2/${REPOSITORY}/blobs/${randomBlob.digest}`,
          ref: `${registry.host}/${REPOSITORY}:${TAG}`,
          select: ['--layer', '1'],
          size: randomBlob.size,
        });

    const proxy = await startCountingProxy(registry.url, `/v2/${REPOSITORY}/blobs/${erofsBlob.digest}`);
    cleanups.add(() => proxy.close());
    const find = !parts.has('find')
      ? null
      : await benchColdFind(ctx, cleanups, {
          work,
          runs,
          serveArgs,
          proxy,
          blobUrl: `${proxy.url}/v2/${REPOSITORY}/blobs/${erofsBlob.digest}`,
          ref: `${proxy.host}/${REPOSITORY}:${TAG}`,
          // As a mount's serving process works: the layer's descriptor given, so no manifest request (with
          // `--layer 0` there is one more request, the manifest).
          select: [
            '--blob',
            erofsBlob.digest,
            '--blob-size',
            String(erofsBlob.size),
            '--media-type',
            erofsBlob.mediaType,
          ],
          registryBlobFile: blobFile(erofsBlob.digest),
          tree: erofsLayer.tree,
        });

    ctx.addRow([
      'machine',
      '',
      '',
      '',
      `${cpus().length} CPUs; 1-min load average ${loadAtStart.toFixed(1)} at start, ${(loadavg()[0] as number).toFixed(1)} at end`,
    ]);
    ctx.setResults({
      date: new Date().toISOString(),
      machine: {
        cpus: cpus().length,
        kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
        loadAverage: { start: loadAtStart, end: loadavg()[0] },
      },
      runs,
      serveArgs,
      inputs: {
        throughputBlobBytes: randomBlob.size,
        erofsLayerBytes: erofsBlob.size,
        tree: erofsLayer.tree,
      },
      throughput,
      find,
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanups.run();
    if (interrupted) process.exit(130);
  }
}

function skipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (drop_caches, mount)';
  const path = (process.env.PATH ?? '').split(':');
  const missing = REQUIRED_TOOLS.filter((tool) => !path.some((dir) => dir && existsSync(join(dir, tool))));
  if (missing.length > 0) {
    return `${missing.join(', ')} missing (apt-get install -y nbdkit libnbd-bin nbdfuse docker-registry skopeo curl)`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// Inputs

interface TreeFacts {
  smallFiles: number;
  largeFiles: number;
  largeMiB: number;
  tarBytes: number;
}

/** The EROFS layer, built once per tree size and kept in BENCH_DIR. */
async function erofsLayerInput(ctx: SuiteContext): Promise<{ bytes: Buffer; tree: TreeFacts }> {
  const small = Number(process.env.BENCH_SERVE_SMALL_FILES ?? 20000);
  const large = Number(process.env.BENCH_SERVE_LARGE_FILES ?? 2);
  const largeMiB = Number(process.env.BENCH_SERVE_LARGE_MIB ?? 64);
  await mkdir(ctx.benchDir, { recursive: true });
  const stem = join(ctx.benchDir, `serve-${small}-${large}x${largeMiB}`);
  const tar = `${stem}.tar`;
  const image = `${stem}.erofs`;
  if (!existsSync(tar)) {
    progress(`generating ${tar}`);
    await checkOutput('python3', [
      join(ctx.root, 'bench', 'make-tar.py'),
      `${tar}.part`,
      String(small),
      String(large),
      String(largeMiB),
    ]);
    await checkOutput('mv', [`${tar}.part`, tar]);
  }
  if (!existsSync(image)) {
    progress(`building ${image}`);
    await checkOutput(process.execPath, [
      join(ctx.root, 'bin', 'erofs-oci.js'),
      'build',
      '--quiet',
      '--timestamp',
      '0',
      '--uuid',
      'clear',
      `tar:${tar}`,
      `${image}.part`,
    ]);
    await checkOutput('mv', [`${image}.part`, image]);
  }
  return {
    bytes: readFileSync(image),
    tree: { smallFiles: small, largeFiles: large, largeMiB, tarBytes: statSync(tar).size },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Throughput

interface Timed {
  seconds: number;
  maxRssKiB: number;
}

interface BackendSetup {
  work: string;
  runs: number;
  serveArgs: string[];
  blobUrl: string;
  ref: string;
  /** How `serve` is told the layer: `--layer N`, or `--blob D --blob-size N --media-type T`. */
  select: string[];
}

type Backend = 'nbdkit' | 'ours';

async function benchThroughput(
  ctx: SuiteContext,
  cleanups: Cleanups,
  setup: BackendSetup & { size: number },
): Promise<unknown> {
  const nbdcopy = (socket: string) => ['nbdcopy', `nbd+unix:///?socket=${socket}`, 'null:'];
  // Warm the registry's blob file into the page cache, untimed.
  await timed(['curl', '-sf', '-o', '/dev/null', setup.blobUrl]);
  const all: Record<'curl' | Backend, { seconds: number; serverPeakRssKiB: number | null; log?: string }[]> =
    {
      curl: [],
      nbdkit: [],
      ours: [],
    };
  for (let round = 1; round <= setup.runs; round++) {
    progress(`throughput round ${round}/${setup.runs}`);
    const curl = await timed(['curl', '-sf', '-o', '/dev/null', setup.blobUrl]);
    all.curl.push({ seconds: curl.seconds, serverPeakRssKiB: null });
    for (const backend of ['nbdkit', 'ours'] as const) {
      const socket = join(setup.work, `copy-${backend}-${round}.sock`);
      const server = await startBackend(backend, setup, socket, cleanups);
      try {
        const copy = await timed(nbdcopy(socket));
        const peak = server.peakRssKiB();
        const log = await server.stop();
        all[backend].push({ seconds: copy.seconds, serverPeakRssKiB: peak, log: lastLine(log) });
      } finally {
        await server.stop();
      }
    }
  }
  const best = (key: 'curl' | Backend) => all[key].reduce((a, b) => (b.seconds < a.seconds ? b : a));
  const mbps = (seconds: number) => setup.size / MB / seconds;
  const curl = best('curl');
  const nbdkit = best('nbdkit');
  const ours = best('ours');
  const ratios = { oursVsNbdkit: nbdkit.seconds / ours.seconds, oursVsCurl: curl.seconds / ours.seconds };
  const targets = { oursVsNbdkit: 3, oursVsCurl: 0.3 };
  const copyCommand = 'nbdcopy nbd+unix:///?socket=SOCK null:';
  const rows: [string, typeof curl][] = [
    [`throughput ${mib(setup.size)} MiB blob: curl -sf -o /dev/null URL`, curl],
    ['throughput: nbdkit curl url=URL + nbdcopy', nbdkit],
    [`throughput: erofs-oci serve ${setup.select.join(' ')}${argsNote(setup)} + nbdcopy`, ours],
  ];
  for (const [what, m] of rows) {
    ctx.addRow([
      what,
      m.seconds.toFixed(2),
      mbps(m.seconds).toFixed(0),
      rssCell(m.serverPeakRssKiB),
      m === ours && m.log ? m.log.replace(/^\S+ /, '') : m === curl ? '' : 'server RSS',
    ]);
  }
  // What Node alone needs for the fetching half of serve's work (no NBD, no cache): the floor of any
  // design that moves the blob through Node's HTTP client and verifies its digest.
  const floor: { seconds: number; cpuSeconds: number }[] = [];
  for (let round = 1; round <= setup.runs; round++) floor.push(await nodeFloor(setup.blobUrl, setup.size));
  const floorBest = floor.reduce((a, b) => (b.seconds < a.seconds ? b : a));
  ctx.addRow([
    'throughput floor: Node (undici) 16 MiB ranges ×4, copied into 1 MiB blocks, SHA-256, no NBD',
    floorBest.seconds.toFixed(2),
    mbps(floorBest.seconds).toFixed(0),
    '',
    `${floorBest.cpuSeconds.toFixed(2)} CPU-s of the bench process; curl/floor ${(curl.seconds / floorBest.seconds).toFixed(2)}×`,
  ]);
  ctx.addRow([
    `throughput ratios, best of ${setup.runs}`,
    '',
    '',
    '',
    `ours/nbdkit ${ratios.oursVsNbdkit.toFixed(2)}× (target ≥ 3: ${met(ratios.oursVsNbdkit >= 3)}), ours/curl ${ratios.oursVsCurl.toFixed(2)}× (target ≥ 0.3: ${met(ratios.oursVsCurl >= 0.3)})`,
  ]);
  return {
    bytes: setup.size,
    commands: {
      curl: 'curl -sf -o /dev/null URL',
      nbdkit: `nbdkit -f -r -U SOCK --exit-with-parent curl url=URL; ${copyCommand}`,
      ours: `erofs-oci serve --insecure ${[...setup.select, ...setup.serveArgs, 'REF'].join(' ')} --listen unix:SOCK; ${copyCommand}`,
    },
    best: Object.fromEntries(
      (['curl', 'nbdkit', 'ours'] as const).map((k) => [
        k,
        { ...best(k), megabytesPerSecond: mbps(best(k).seconds) },
      ]),
    ),
    all,
    ratios,
    targets,
    met: { oursVsNbdkit: ratios.oursVsNbdkit >= 3, oursVsCurl: ratios.oursVsCurl >= 0.3 },
    nodeFloor: { best: floorBest, all: floor },
  };
}

/**
 * The blob through undici as `serve` fetches it at best: 16 MiB ranges, four at a time, each copied into
 * 1 MiB blocks and hashed in order with SHA-256 (the digest check), and nothing else.
 */
async function nodeFloor(url: string, size: number): Promise<{ seconds: number; cpuSeconds: number }> {
  const { Agent, request } = await import('undici');
  const dispatcher = new Agent({ connections: 4 });
  const range = 16 * 2 ** 20;
  const block = 2 ** 20;
  const cpu = () => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1e6;
  };
  const started = performance.now();
  const cpuStarted = cpu();
  const hash = createHash('sha256');
  const done = new Map<number, Uint8Array[]>();
  let next = 0;
  let taken = 0;
  const count = Math.ceil(size / range);
  try {
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (taken < count) {
          const index = taken++;
          const from = index * range;
          const to = Math.min(size, from + range);
          const response = await request(url, { dispatcher, headers: { range: `bytes=${from}-${to - 1}` } });
          if (response.statusCode !== 206) throw new Error(`node floor: HTTP ${response.statusCode}`);
          const blocks: Uint8Array[] = [];
          let current = new Uint8Array(Math.min(block, to - from));
          let filled = 0;
          for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
            for (let at = 0; at < chunk.byteLength; ) {
              const n = Math.min(current.byteLength - filled, chunk.byteLength - at);
              current.set(chunk.subarray(at, at + n), filled);
              filled += n;
              at += n;
              if (filled === current.byteLength) {
                blocks.push(current);
                const left = to - from - blocks.length * block;
                if (left > 0) current = new Uint8Array(Math.min(block, left));
                filled = 0;
              }
            }
          }
          done.set(index, blocks);
          while (done.has(next)) {
            for (const b of done.get(next) as Uint8Array[]) hash.update(b);
            done.delete(next);
            next++;
          }
        }
      }),
    );
  } finally {
    await dispatcher.close();
  }
  hash.digest();
  return { seconds: (performance.now() - started) / 1000, cpuSeconds: cpu() - cpuStarted };
}

// ---------------------------------------------------------------------------------------------------------
// Cold find through nbdfuse and a kernel EROFS mount

interface FindRun {
  mountSeconds: number;
  findSeconds: number;
  /** What the backend fetched from server start to the end of the find (the mount included). */
  find: ProxyCounts;
  readAllSeconds: number;
  /** What reading every file fetched on top. */
  readAll: ProxyCounts;
  serverPeakRssKiB: number | null;
  log?: string;
}

async function benchColdFind(
  ctx: SuiteContext,
  cleanups: Cleanups,
  setup: BackendSetup & { proxy: CountingProxy; registryBlobFile: string; tree: TreeFacts },
): Promise<unknown> {
  const all: Record<Backend, FindRun[]> = { nbdkit: [], ours: [] };
  let fileBytes = 0;
  for (let round = 1; round <= setup.runs; round++) {
    for (const backend of ['nbdkit', 'ours'] as const) {
      progress(`cold find round ${round}/${setup.runs}: ${backend}`);
      await checkOutput('sync', []);
      writeFileSync('/proc/sys/vm/drop_caches', '3\n');
      // Back into the page cache: the registry's disk is not what is measured.
      await timed(['cat', setup.registryBlobFile], { stdoutNull: true });
      setup.proxy.reset();
      const socket = join(setup.work, `find-${backend}-${round}.sock`);
      const server = await startBackend(backend, setup, socket, cleanups);
      try {
        const fuseDir = join(setup.work, `fuse-${backend}-${round}`);
        const mountpoint = join(setup.work, `mnt-${backend}-${round}`);
        await mkdir(fuseDir);
        await mkdir(mountpoint);
        const fuse = await startNbdfuse(fuseDir, socket, cleanups);
        try {
          const mountStart = performance.now();
          await checkOutput('mount', ['-t', 'erofs', '-o', 'ro', join(fuseDir, 'image'), mountpoint]);
          const mountSeconds = (performance.now() - mountStart) / 1000;
          const unmount = cleanups.add(() => umount(mountpoint));
          try {
            const findRun = await timed(['find', mountpoint], { stdoutNull: true });
            const find = setup.proxy.counts();
            setup.proxy.reset();
            const readAll = await timed(
              ['sh', '-c', 'find "$1" -type f -print0 | xargs -0 cat', 'sh', mountpoint],
              { stdoutNull: true },
            );
            const readAllCounts = setup.proxy.counts();
            if (fileBytes === 0) fileBytes = await sumFileBytes(mountpoint);
            const peak = server.peakRssKiB();
            all[backend].push({
              mountSeconds,
              findSeconds: findRun.seconds,
              find,
              readAllSeconds: readAll.seconds,
              readAll: readAllCounts,
              serverPeakRssKiB: peak,
            });
          } finally {
            await unmount();
          }
        } finally {
          await fuse.stop();
          await rmdir(fuseDir).catch(() => {});
          await rmdir(mountpoint).catch(() => {});
        }
      } finally {
        const log = await server.stop();
        const last = all[backend].at(-1);
        if (last) last.log = lastLine(log);
      }
    }
  }
  const best = (backend: Backend, key: 'findSeconds' | 'readAllSeconds') =>
    all[backend].reduce((a, b) => (b[key] < a[key] ? b : a));
  const nbdkitFind = best('nbdkit', 'findSeconds');
  const oursFind = best('ours', 'findSeconds');
  // Bytes and requests may vary from run to run with timing (readahead, concurrent FUSE reads): the ratios
  // set the most ours needed against the least nbdkit needed.
  type CountKey = 'bytes' | 'requests' | 'blobRequests' | 'blobBytes';
  const most = (backend: Backend, key: CountKey) => Math.max(...all[backend].map((r) => r.find[key]));
  const least = (backend: Backend, key: CountKey) => Math.min(...all[backend].map((r) => r.find[key]));
  // nbdkit is handed the blob URL; ours also resolves the reference (API ping, manifest): a fixed cost of
  // starting, counted in `requests` and left out of `blobRequests`.
  const ratios = {
    bytes: most('ours', 'bytes') / least('nbdkit', 'bytes'),
    requests: most('ours', 'requests') / least('nbdkit', 'requests'),
    blobRequests: most('ours', 'blobRequests') / least('nbdkit', 'blobRequests'),
    findSeconds: nbdkitFind.findSeconds / oursFind.findSeconds,
  };
  const met = {
    bytes: ratios.bytes <= 1.5,
    requests: ratios.requests <= 0.2,
    blobRequests: ratios.blobRequests <= 0.2,
  };
  for (const backend of ['nbdkit', 'ours'] as const) {
    const f = best(backend, 'findSeconds');
    const name = backend === 'ours' ? `erofs-oci serve${argsNote(setup)}` : 'nbdkit curl';
    ctx.addRow([
      `cold find, ${name}`,
      f.findSeconds.toFixed(2),
      '',
      rssCell(f.serverPeakRssKiB),
      `${mbText(most(backend, 'bytes'))} MB in ${most(backend, 'requests')} requests (${most(backend, 'blobRequests')} for the blob); mount ${f.mountSeconds.toFixed(2)} s`,
    ]);
    const r = best(backend, 'readAllSeconds');
    ctx.addRow([
      `read all files after it, ${name}`,
      r.readAllSeconds.toFixed(2),
      (fileBytes / MB / r.readAllSeconds).toFixed(0),
      '',
      `${mbText(r.readAll.bytes)} MB more in ${r.readAll.requests} requests`,
    ]);
  }
  ctx.addRow([
    `cold find ratios, most of ${setup.runs} runs of ours / least of nbdkit`,
    '',
    '',
    '',
    `bytes ${ratios.bytes.toFixed(2)}× (target ≤ 1.5: ${met.bytes ? 'met' : 'NOT met'}), requests ${ratios.requests.toFixed(2)}×, blob requests only ${ratios.blobRequests.toFixed(2)}× (target ≤ 0.2: ${met.requests ? 'met' : 'NOT met'}, blob only ${met.blobRequests ? 'met' : 'NOT met'})`,
  ]);
  return {
    fileBytes,
    commands: {
      prepare: 'sync; echo 3 > /proc/sys/vm/drop_caches',
      nbdkit: 'nbdkit -f -r -U SOCK --exit-with-parent curl url=PROXY/v2/REPO/blobs/DIGEST',
      ours: `erofs-oci serve --insecure ${[...setup.select.map((a) => (a.startsWith('sha256:') ? 'DIGEST' : a)), ...setup.serveArgs, 'PROXY/REPO:TAG'].join(' ')} --listen unix:SOCK`,
      fuse: 'nbdfuse -r -P PIDFILE DIR/image nbd+unix:///?socket=SOCK',
      mount: 'mount -t erofs -o ro DIR/image MNT',
      find: 'find MNT > /dev/null',
      readAll: 'find MNT -type f -print0 | xargs -0 cat > /dev/null',
    },
    all,
    most: Object.fromEntries(
      (['nbdkit', 'ours'] as const).map((b) => [
        b,
        {
          bytes: most(b, 'bytes'),
          requests: most(b, 'requests'),
          blobBytes: most(b, 'blobBytes'),
          blobRequests: most(b, 'blobRequests'),
        },
      ]),
    ),
    ratios,
    targets: { bytes: 1.5, requests: 0.2, blobRequests: 0.2 },
    met,
  };
}

async function sumFileBytes(dir: string): Promise<number> {
  const out = await checkOutput('find', [dir, '-type', 'f', '-printf', '%s\\n']);
  return out
    .split('\n')
    .filter(Boolean)
    .reduce((sum, line) => sum + Number(line), 0);
}

async function umount(mountpoint: string): Promise<void> {
  const result = await runProcess('umount', [mountpoint]);
  if (result.status !== 0) await runProcess('umount', ['-l', mountpoint]);
}

// ---------------------------------------------------------------------------------------------------------
// Servers and clients

interface Server {
  peakRssKiB(): number | null;
  /** Stops the server (idempotent) and resolves with its stderr. */
  stop(): Promise<string>;
}

function startBackend(backend: Backend, setup: BackendSetup, socket: string, cleanups: Cleanups) {
  if (backend === 'nbdkit') {
    return startServer(
      'nbdkit',
      ['-f', '-r', '-U', socket, '--exit-with-parent', 'curl', `url=${setup.blobUrl}`],
      socket,
      cleanups,
    );
  }
  const cli = process.env.BENCH_SERVE_CLI ?? join(import.meta.dirname, '..', 'bin', 'erofs-oci.js');
  return startServer(
    process.execPath,
    [
      cli,
      'serve',
      '--insecure',
      ...setup.select,
      ...setup.serveArgs,
      setup.ref,
      '--listen',
      `unix:${socket}`,
    ],
    socket,
    cleanups,
  );
}

/** Starts a server and waits until its unix socket exists. */
async function startServer(
  command: string,
  args: string[],
  socket: string,
  cleanups: Cleanups,
): Promise<Server> {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (stderr.length > 64 * 1024) stderr = stderr.slice(-32 * 1024);
  });
  const exited = exitOf(child);
  let stopping: Promise<string> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      remove();
      return stderr;
    })();
    return stopping;
  };
  const remove = cleanups.add(stop);
  for (let i = 0; i < 600 && !existsSync(socket); i++) {
    if (child.exitCode !== null || child.signalCode !== null) {
      remove();
      throw new Error(`${command} ${args.join(' ')} exited before listening: ${tail(stderr)}`);
    }
    await sleep(50);
  }
  if (!existsSync(socket)) {
    await stop();
    throw new Error(`${command} ${args.join(' ')} did not listen on ${socket} within 30 s: ${tail(stderr)}`);
  }
  return {
    peakRssKiB: () => peakRssKiB(child.pid),
    stop,
  };
}

async function startNbdfuse(fuseDir: string, socket: string, cleanups: Cleanups): Promise<Server> {
  const pidFile = `${fuseDir}.pid`;
  const child = spawn(
    'nbdfuse',
    ['-r', '-P', pidFile, join(fuseDir, 'image'), `nbd+unix:///?socket=${socket}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = exitOf(child);
  let stopping: Promise<string> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const unmounted = await runProcess('fusermount3', ['-u', fuseDir]);
        if (unmounted.status !== 0) await runProcess('umount', ['-l', fuseDir]);
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      remove();
      return stderr;
    })();
    return stopping;
  };
  const remove = cleanups.add(stop);
  for (let i = 0; i < 200 && !existsSync(pidFile); i++) {
    if (child.exitCode !== null) {
      remove();
      throw new Error(`nbdfuse exited before mounting: ${tail(stderr)}`);
    }
    await sleep(50);
  }
  if (!existsSync(pidFile)) {
    await stop();
    throw new Error(`nbdfuse did not mount ${fuseDir} within 10 s: ${tail(stderr)}`);
  }
  return { peakRssKiB: () => peakRssKiB(child.pid), stop };
}

/** VmHWM of a live process, from /proc. */
function peakRssKiB(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const match = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : null;
  } catch {
    // The process is gone: no figure rather than a wrong one.
    return null;
  }
}

function exitOf(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

/**
 * Wall time and peak RSS of a command, through bench/measure.py (as the build suite measures), spawned
 * asynchronously: the counting proxy in this process must keep answering meanwhile.
 */
async function timed(command: string[], options: { stdoutNull?: boolean } = {}): Promise<Timed> {
  const result = await runProcess('python3', [join(import.meta.dirname, 'measure.py'), ...command], {
    ...(options.stdoutNull ? { MEASURE_STDOUT_NULL: '1' } : {}),
  });
  if (result.status !== 0) throw new Error(`measure.py ${command.join(' ')}: ${tail(result.stderr)}`);
  const measured = JSON.parse(result.stdout.trim().split('\n').pop() as string) as Timed & {
    status: number;
  };
  if (measured.status !== 0)
    throw new Error(`${command.join(' ')} exited with ${measured.status}: ${tail(result.stderr)}`);
  return { seconds: measured.seconds, maxRssKiB: measured.maxRssKiB };
}

function runProcess(
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (status) =>
      resolve({
        status,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
      }),
    );
  });
}

async function checkOutput(command: string, args: string[]): Promise<string> {
  const result = await runProcess(command, args);
  if (result.status !== 0)
    throw new Error(`${command} ${args.join(' ')} failed (exit ${result.status}): ${tail(result.stderr)}`);
  return result.stdout;
}

// ---------------------------------------------------------------------------------------------------------
// Counting proxy

interface ProxyCounts {
  /** Every request, whatever its path (API ping, manifests, config, blob). */
  requests: number;
  /** Response body bytes of every request. */
  bytes: number;
  /** Requests (GET or HEAD) for the measured blob. */
  blobRequests: number;
  blobBytes: number;
  /** Requested lengths of the blob's range requests, as "LENGTH×COUNT" (most frequent first). */
  rangeSizes: string;
  /** The first blob ranges requested, as "START+LENGTH", in order. */
  firstRanges: string[];
}

interface CountingProxy {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** `127.0.0.1:PORT` */
  host: string;
  counts(): ProxyCounts;
  reset(): void;
  close(): Promise<void>;
}

/**
 * A plain HTTP forward to `upstream` that counts requests and response body bytes, to see what a backend
 * fetched from the registry. Keep-alive on both sides, so it does not add connection setups of its own.
 */
async function startCountingProxy(upstream: string, blobPath: string): Promise<CountingProxy> {
  const target = new URL(upstream);
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  let counts = { requests: 0, bytes: 0, blobRequests: 0, blobBytes: 0 };
  let ranges = new Map<number, number>();
  let firstRanges: string[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const isBlob = req.url === blobPath;
    counts.requests++;
    if (isBlob) {
      counts.blobRequests++;
      const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (range) {
        const length = Number(range[2]) - Number(range[1]) + 1;
        ranges.set(length, (ranges.get(length) ?? 0) + 1);
        if (firstRanges.length < 64) firstRanges.push(`${range[1]}+${length}`);
      }
    }
    const counted = counts;
    const headers = { ...req.headers };
    delete headers.connection;
    const upstreamRequest = httpRequest(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers,
        agent,
      },
      (upstreamResponse) => {
        res.writeHead(upstreamResponse.statusCode ?? 502, upstreamResponse.headers);
        upstreamResponse.on('data', (chunk: Buffer) => {
          counted.bytes += chunk.byteLength;
          if (isBlob) counted.blobBytes += chunk.byteLength;
        });
        upstreamResponse.pipe(res);
      },
    );
    upstreamRequest.on('error', (error) => {
      if (!res.headersSent) res.writeHead(502);
      res.end(String(error));
    });
    req.pipe(upstreamRequest);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (typeof address !== 'object' || !address) throw new Error('the counting proxy has no address');
  const host = `127.0.0.1:${address.port}`;
  return {
    url: `http://${host}`,
    host,
    counts: () => ({
      ...counts,
      rangeSizes: [...ranges]
        .sort((a, b) => b[1] - a[1])
        .map(([length, count]) => `${length}×${count}`)
        .join(' '),
      firstRanges: [...firstRanges],
    }),
    reset: () => {
      counts = { requests: 0, bytes: 0, blobRequests: 0, blobBytes: 0 };
      ranges = new Map();
      firstRanges = [];
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
        agent.destroy();
      }),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

/** Cleanup steps run in reverse order, each at most once, whatever fails. */
class Cleanups {
  #steps: (() => Promise<void>)[] = [];
  #running: Promise<void> | undefined;

  /** Registers a step; returns a function that runs it now (once; later calls share that run). */
  add(step: () => Promise<unknown>): () => Promise<void> {
    let ran: Promise<void> | undefined;
    const once = () => {
      ran ??= (async () => {
        this.#steps = this.#steps.filter((s) => s !== once);
        await step();
      })();
      return ran;
    };
    this.#steps.push(once);
    return once;
  }

  /** Runs the remaining steps; a second caller (a signal during the normal cleanup) shares the same run. */
  run(): Promise<void> {
    this.#running ??= (async () => {
      while (this.#steps.length > 0) {
        const step = this.#steps.at(-1) as () => Promise<void>;
        try {
          await step();
        } catch (error) {
          process.stderr.write(`serve: cleanup failed: ${(error as Error).message}\n`);
        }
        this.#steps = this.#steps.filter((s) => s !== step);
      }
    })().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }
}

/** The end of a program's stderr, for error messages (a failing `xargs cat` can print thousands of lines). */
function tail(text: string): string {
  const trimmed = text.trim();
  return trimmed.length > 2000 ? `…${trimmed.slice(-2000)}` : trimmed;
}

function progress(message: string): void {
  process.stderr.write(`serve: ${message} …\n`);
}

function lastLine(text: string): string {
  return text.trim().split('\n').at(-1) ?? '';
}

function argsNote(setup: { serveArgs: string[] }): string {
  return setup.serveArgs.length > 0 ? ` ${setup.serveArgs.join(' ')}` : '';
}

function met(ok: boolean): string {
  return ok ? 'met' : 'NOT met';
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);
const mbText = (bytes: number) => (bytes / MB).toFixed(1);
const rssCell = (kib: number | null) => (kib === null ? '' : (kib / 1024).toFixed(0));
