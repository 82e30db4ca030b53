/**
 * Throughput of the zinfo builder and reader on one gzip file, next to the baselines they compete with.
 * Usage: node src/gzip-index/zinfo.bench.ts FILE.gz [REPEATS]
 * Optional: EROFS_UTILS_BIN=/path/to/erofs-utils-1.9/bin (built locally) adds `mkfs.erofs --tar=i
 * --gzinfo`, which must also parse the tar. Each line gives the best wall time of REPEATS runs (default 3;
 * the machine may be shared) and the CPU seconds of that run, all threads counted. MB/s are of
 * uncompressed output. The results are quoted in docs/gzip-index.md.
 */
import { spawnSync } from 'node:child_process';
import { createReadStream, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createGunzip } from 'node:zlib';
import { mkfsErofs19 } from '../../test-support/kernel.ts';
import { openFileSource } from '../io/file-source.ts';
import { buildZinfo } from './builder.ts';
import { DeflateScanner } from './deflate-scanner.ts';
import type { Zinfo } from './zinfo.ts';
import { openZinfoSource } from './zinfo-source.ts';

const file = process.argv[2];
if (file === undefined) throw new Error('usage: zinfo.bench.ts FILE.gz [REPEATS]');
const repeats = Number(process.argv[3] ?? 3);
const compressed = statSync(file).size;
let uncompressed = 0;

interface Sample {
  wall: number;
  cpu: number;
}

async function best(run: () => Promise<void> | void): Promise<Sample> {
  let result: Sample | undefined;
  for (let i = 0; i < repeats; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await run();
    const wall = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const cpu = (c.user + c.system) / 1e6;
    if (!result || wall < result.wall) result = { wall, cpu };
  }
  return result!;
}

function external(command: string, args: string[]): Sample {
  let result: Sample | undefined;
  for (let i = 0; i < repeats; i++) {
    const run = spawnSync('/usr/bin/time', ['-f', '%e %U %S', command, ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    if (run.status !== 0) throw new Error(`${command} failed: ${run.stderr.toString()}`);
    const last = run.stderr.toString().trim().split('\n').at(-1)!;
    const [wall, user, sys] = last.split(' ').map(Number) as [number, number, number];
    if (!result || wall < result.wall) result = { wall, cpu: user + sys };
  }
  return result!;
}

function report(name: string, s: Sample, bytes = uncompressed): void {
  console.log(
    `${name.padEnd(44)} ${s.wall.toFixed(2).padStart(6)} s wall ${s.cpu.toFixed(2).padStart(6)} s cpu ` +
      `${(bytes / 1e6 / s.wall).toFixed(0).padStart(5)} MB/s`,
  );
}

async function gunzipOnce(): Promise<void> {
  let n = 0;
  const stream = createReadStream(file!, { highWaterMark: 1 << 20 }).pipe(
    createGunzip({ chunkSize: 256 * 1024 }),
  );
  for await (const chunk of stream as AsyncIterable<Uint8Array>) n += chunk.byteLength;
  uncompressed = n;
}

console.log(`${file}: ${(compressed / 1e6).toFixed(1)} MB compressed`);
const gunzip = await best(gunzipOnce);
console.log(`${(uncompressed / 1e6).toFixed(1)} MB uncompressed`);
report('gzip -dc > /dev/null', external('sh', ['-c', `gzip -dc '${file}' > /dev/null`]));
report('node:zlib gunzip (stream, 256 KiB chunks)', gunzip);

report(
  'block scanner alone (JavaScript)',
  await best(async () => {
    const scanner = new DeflateScanner(() => {});
    for await (const chunk of createReadStream(file, {
      highWaterMark: 1 << 20,
    }) as AsyncIterable<Uint8Array>) {
      scanner.feed(chunk);
    }
    scanner.finish();
  }),
);

let zinfo: Zinfo | undefined;
report(
  'buildZinfo (zlib + scanner in parallel)',
  await best(async () => {
    zinfo = (await buildZinfo(createReadStream(file, { highWaterMark: 1 << 20 }))).zinfo;
  }),
);

const mkfs = mkfsErofs19();
if (mkfs) {
  const work = mkdtempSync(join(tmpdir(), 'zinfo-bench-'));
  try {
    report(
      'mkfs.erofs --tar=i --gzinfo (parses the tar too)',
      external(mkfs, ['--quiet', '--tar=i', `--gzinfo=${join(work, 'z')}`, join(work, 'img'), file]),
    );
    const same = Buffer.compare(
      readFileSync(join(work, 'z')),
      Buffer.from((await import('./zinfo.ts')).encodeZinfo(zinfo!)),
    );
    console.log(`  mkfs.erofs zinfo ${same === 0 ? 'is byte-identical to ours' : 'DIFFERS from ours'}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// Reading: sequential 32 KiB reads (what a kernel reading a file through the device does), then random 4 KiB.
const blob = await openFileSource(file);
const outs = zinfo!.checkpoints.map((c) => c.out);
const checkpointBefore = (offset: number) => outs.filter((o) => o <= offset).at(-1)!;
let seqStats = '';
report(
  'zinfo source: sequential 32 KiB reads',
  await best(async () => {
    const source = await openZinfoSource(blob, zinfo!, { uncompressedSize: uncompressed });
    for (let offset = 0; offset < uncompressed; offset += 32768) {
      await source.read(offset, Math.min(32768, uncompressed - offset));
    }
    seqStats = `  inflated ${(source.stats.bytesInflated / 1e6).toFixed(0)} MB in ${source.stats.spansInflated} spans`;
  }),
);
let gzranBytes = 0;
for (let offset = 0; offset < uncompressed; offset += 32768) {
  gzranBytes += offset + Math.min(32768, uncompressed - offset) - checkpointBefore(offset);
}
console.log(
  `${seqStats}; inflating from the checkpoint per read (erofs-utils gzran) would inflate ${(gzranBytes / 1e6).toFixed(0)} MB`,
);

const randomReads = 2000;
const offsets = Array.from({ length: randomReads }, () => Math.floor(Math.random() * (uncompressed - 4096)));
const random = await best(async () => {
  const source = await openZinfoSource(blob, zinfo!, { uncompressedSize: uncompressed, prefetch: false });
  for (const offset of offsets) await source.read(offset, 4096);
});
console.log(
  `${'zinfo source: random 4 KiB reads'.padEnd(44)} ${(randomReads / random.wall).toFixed(0)} reads/s ` +
    `(${((random.wall / randomReads) * 1000).toFixed(1)} ms each, 64 MiB cache)`,
);
await blob.close();
