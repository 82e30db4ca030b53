/**
 * `npm run bench`: measures erofs-oci against baselines in the same run and prints ratios.
 *
 * build: MB/s of `erofs-oci build tar:…` on a ≥ 500 MB uncompressed layer (≥ 20k small files and large
 * files), next to `cat` of the same tar and, when EROFS_UTILS_BIN holds an erofs-utils 1.9 mkfs.erofs
 * (built locally from its public source, never committed), `mkfs.erofs --tar=f`. Peak RSS of each.
 *
 * serve: `erofs-oci serve` against `nbdkit curl` and plain `curl` on blobs in a local registry (see
 * bench/serve.ts).
 *
 * mount: `erofs-oci mount` of a 4-layer EROFS-native image against local files + overlayfs and against
 * `nbdkit curl` + `nbdfuse` (see bench/mount.ts).
 *
 * `node bench/run.ts [SUITE...]` runs the named suites only (default: all). bench/out/results.json keeps the
 * last results of every suite: a run replaces the entries of the suites it ran.
 *
 * Environment: BENCH_DIR (default /tmp/erofs-oci-bench) holds generated inputs between runs;
 * BENCH_SMALL_FILES, BENCH_LARGE_FILES, BENCH_LARGE_MIB size the layer; EROFS_UTILS_BIN as above.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mkfsErofs19 } from '../test-support/kernel.ts';
import { benchCompress } from './compress.ts';
import { benchConvert } from './convert.ts';
import { benchMount } from './mount.ts';
import { benchRegistryBuild } from './registry-build.ts';
import { benchServe } from './serve.ts';
import { benchSnapshotter } from './snapshotter.ts';
import { benchVerified } from './verified.ts';
import { benchVerifiedServe } from './verified-serve.ts';

const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..');
const benchDir = process.env.BENCH_DIR ?? '/tmp/erofs-oci-bench';
const cli = join(root, 'bin', 'erofs-oci.js');

interface Measurement {
  seconds: number;
  maxRssKiB: number;
  status: number;
}

function measure(command: string[], options: { stdoutNull?: boolean } = {}): Measurement {
  const out = execFileSync('python3', [join(here, 'measure.py'), ...command], {
    encoding: 'utf8',
    env: { ...process.env, ...(options.stdoutNull ? { MEASURE_STDOUT_NULL: '1' } : {}) },
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 20,
  });
  const result = JSON.parse(out.trim().split('\n').pop() as string) as Measurement;
  if (result.status !== 0) throw new Error(`${command.join(' ')} exited with ${result.status}`);
  return result;
}

/** Best of `runs` (least wall time), to keep page-cache and scheduling noise out of the ratios. */
function best(runs: number, command: string[], options: { stdoutNull?: boolean } = {}): Measurement {
  let winner: Measurement | undefined;
  for (let i = 0; i < runs; i++) {
    const m = measure(command, options);
    if (!winner || m.seconds < winner.seconds) winner = m;
  }
  return winner as Measurement;
}

const mb = (bytes: number) => bytes / 1e6;
/** Table rows: suite, what, seconds, MB/s, peak RSS MiB, notes (cells a suite has nothing for stay ''). */
const rows: string[][] = [];
const results: Record<string, unknown> = { date: new Date().toISOString(), node: process.version };

function benchBuild(): void {
  mkdirSync(benchDir, { recursive: true });
  const small = Number(process.env.BENCH_SMALL_FILES ?? 24000);
  const large = Number(process.env.BENCH_LARGE_FILES ?? 3);
  const largeMiB = Number(process.env.BENCH_LARGE_MIB ?? 120);
  const tar = join(benchDir, `layer-${small}-${large}x${largeMiB}.tar`);
  if (!existsSync(tar)) {
    process.stderr.write(`generating ${tar} …\n`);
    execFileSync('python3', [
      join(here, 'make-tar.py'),
      `${tar}.part`,
      String(small),
      String(large),
      String(largeMiB),
    ]);
    execFileSync('mv', [`${tar}.part`, tar]);
  }
  const size = statSync(tar).size;
  const out = join(benchDir, 'out.erofs');
  const runs = 3;
  const cat = best(runs, ['cat', tar], { stdoutNull: true });
  const ours = best(runs, [
    process.execPath,
    cli,
    'build',
    '--quiet',
    '--timestamp',
    '0',
    '--uuid',
    'clear',
    `tar:${tar}`,
    out,
  ]);
  const entries = { tarBytes: size, smallFiles: small, largeFiles: large, largeMiB };
  const table: [string, Measurement][] = [
    ['cat tar > /dev/null', cat],
    ['erofs-oci build tar:', ours],
  ];
  const mkfs = mkfsErofs19();
  let theirs: Measurement | undefined;
  if (mkfs) {
    const theirsOut = join(benchDir, 'out-mkfs.erofs');
    theirs = best(runs, [mkfs, '--quiet', '-T0', '-Uclear', '--tar=f', theirsOut, tar]);
    table.push([`mkfs.erofs --tar=f (${mkfs})`, theirs]);
    rmSync(theirsOut, { force: true });
  }
  rmSync(out, { force: true });
  for (const [name, m] of table) {
    rows.push([
      'build',
      name,
      m.seconds.toFixed(2),
      (mb(size) / m.seconds).toFixed(0),
      (m.maxRssKiB / 1024).toFixed(0),
    ]);
  }
  const ratios: Record<string, number> = { oursVsCat: cat.seconds / ours.seconds };
  if (theirs) ratios.oursVsMkfs = theirs.seconds / ours.seconds;
  results.build = { ...entries, cat, ours, mkfs: theirs ?? null, ratios };
  rows.push([
    'build',
    `ratios: ${(ratios.oursVsCat as number).toFixed(2)}× cat${theirs ? `, ${(ratios.oursVsMkfs as number).toFixed(2)}× mkfs.erofs` : ' (EROFS_UTILS_BIN not set)'}`,
    '',
    '',
    '',
  ]);
}

const only = process.argv.slice(2);
const suites: Record<string, () => void | Promise<void>> = {
  build: benchBuild,
  serve: () =>
    benchServe({
      root,
      benchDir,
      addRow: (row) => rows.push(['serve', ...row]),
      setResults: (value) => {
        results.serve = value;
      },
    }),
  convert: () =>
    benchConvert({
      root,
      benchDir,
      addRow: (row) => rows.push(['convert', ...row]),
      setResults: (value) => {
        results.convert = value;
      },
    }),
  'registry-build': () =>
    benchRegistryBuild({
      root,
      benchDir,
      addRow: (row) => rows.push(['registry-build', ...row]),
      setResults: (value) => {
        results['registry-build'] = value;
      },
    }),
  mount: () =>
    benchMount({
      root,
      benchDir,
      addRow: (row) => rows.push(['mount', ...row]),
      setResults: (value) => {
        results.mount = value;
      },
    }),
  compress: () =>
    benchCompress({
      root,
      benchDir,
      addRow: (row) => rows.push(['compress', ...row]),
      setResults: (value) => {
        results.compress = value;
      },
    }),
  snapshotter: () =>
    benchSnapshotter({
      root,
      benchDir,
      addRow: (row) => rows.push(['snapshotter', ...row]),
      setResults: (value) => {
        results.snapshotter = value;
      },
    }),
  verified: () =>
    benchVerified({
      root,
      benchDir,
      addRow: (row) => rows.push(['verified', ...row]),
      setResults: (value) => {
        results.verified = value;
      },
    }),
  'verified-serve': () =>
    benchVerifiedServe({
      root,
      benchDir,
      addRow: (row) => rows.push(['verified-serve', ...row]),
      setResults: (value) => {
        results['verified-serve'] = value;
      },
    }),
};
const unknown = only.filter((name) => !(name in suites));
if (unknown.length > 0) {
  process.stderr.write(`unknown suite ${unknown.join(', ')}; suites: ${Object.keys(suites).join(', ')}\n`);
  process.exit(2);
}
for (const [name, run] of Object.entries(suites)) {
  if (only.length > 0 && !only.includes(name)) continue;
  await run();
}

const header = ['suite', 'what', 'seconds', 'MB/s', 'peak RSS MiB', 'notes'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
const line = (r: string[]) =>
  `| ${header.map((_, i) => (r[i] ?? '').padEnd(widths[i] as number)).join(' | ')} |`;
process.stdout.write(
  `${[line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n')}\n`,
);
mkdirSync(join(here, 'out'), { recursive: true });
const resultsFile = join(here, 'out', 'results.json');
// Suites not run this time keep their last results.
let previous: Record<string, unknown> = {};
try {
  previous = JSON.parse(readFileSync(resultsFile, 'utf8')) as Record<string, unknown>;
} catch {
  // No earlier results (or unreadable ones): this run's are all there is.
}
writeFileSync(resultsFile, `${JSON.stringify({ ...previous, ...results }, null, 2)}\n`);
