/**
 * `node bench/run.ts compress` (issue 15): `erofs-oci build --compress ALG --pcluster-size P tar:ROOTFS`
 * against erofs-utils 1.9's `mkfs.erofs -zALG -CP --tar=f` on the same tar, per algorithm: build wall time
 * (best of BENCH_RUNS, default 2, ours through the CLI as the README runs it), image size, and the kernel
 * reading every file of each image (file-backed mount, `tar cf - | cat >/dev/null`, best of 3 alternating; the image
 * file is in the page cache, so this is decompression cost).
 *
 * ROOTFS: BENCH_CZ_TAR, else a tar of this host's /usr/lib/python3.11, /usr/share/perl and /usr/bin
 * (real binaries, libraries and scripts; about 480 MB), kept in BENCH_DIR. BENCH_CZ_PCLUSTER (65536).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { mkfsErofs19 } from '../test-support/kernel.ts';
import type { RegistryBuildContext } from './registry-build.ts';

/** Wall seconds and peak RSS (MiB) of a command, through bench/measure.py. */
function measured(command: string, args: string[]): { seconds: number; rssMiB: number } {
  const here = new URL('.', import.meta.url).pathname;
  const out = execFileSync('python3', [join(here, 'measure.py'), command, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const m = JSON.parse(out.trim().split('\n').pop() as string) as {
    seconds: number;
    maxRssKiB: number;
    status: number;
  };
  if (m.status !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${m.status}`);
  return { seconds: m.seconds, rssMiB: m.maxRssKiB / 1024 };
}

function seconds(command: string, args: string[]): number {
  const start = performance.now();
  execFileSync(command, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  return (performance.now() - start) / 1000;
}

function bestOf(runs: number, f: () => number): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < runs; i++) best = Math.min(best, f());
  return best;
}

function readAll(image: string, runs: number): number {
  const mnt = mkdtempSync('/tmp/erofs-oci-bench-mnt-');
  try {
    execFileSync('mount', ['-t', 'erofs', '-o', 'ro', image, mnt]);
    try {
      return bestOf(runs, () => {
        // A fresh mount per run: the decompressed page cache of the last run is dropped with it.
        execFileSync('umount', [mnt]);
        execFileSync('mount', ['-t', 'erofs', '-o', 'ro', image, mnt]);
        // Through a pipe: GNU tar does not read file data when writing to /dev/null itself.
        return seconds('sh', ['-c', `tar cf - -C '${mnt}' . | cat > /dev/null`]);
      });
    } finally {
      execFileSync('umount', [mnt]);
    }
  } finally {
    rmdirSync(mnt);
  }
}

export async function benchCompress(ctx: RegistryBuildContext): Promise<void> {
  const runs = Number(process.env.BENCH_RUNS ?? 2);
  const pcluster = Number(process.env.BENCH_CZ_PCLUSTER ?? 65536);
  let tar = process.env.BENCH_CZ_TAR;
  if (!tar) {
    tar = join(ctx.benchDir, 'rootfs-usr.tar');
    if (!existsSync(tar)) {
      execFileSync('mkdir', ['-p', ctx.benchDir]);
      execFileSync(
        'tar',
        ['cf', `${tar}.part`, '-C', '/', 'usr/lib/python3.11', 'usr/share/perl', 'usr/bin'],
        {
          stdio: ['ignore', 'ignore', 'ignore'],
        },
      );
      execFileSync('mv', [`${tar}.part`, tar]);
    }
  }
  const mkfs = mkfsErofs19();
  if (!mkfs) {
    ctx.addRow(['skipped', '', '', '', 'needs erofs-utils 1.9 (EROFS_UTILS_BIN)']);
    return;
  }
  const cli = join(ctx.root, 'bin', 'erofs-oci.js');
  const results: Record<string, unknown>[] = [];
  for (const alg of (process.env.BENCH_CZ_ALGS ?? 'lz4,lz4hc,deflate,zstd').split(',')) {
    const ours = join(ctx.benchDir, `cz-ours-${alg}.erofs`);
    const theirs = join(ctx.benchDir, `cz-mkfs-${alg}.erofs`);
    const oursArgs = [cli, 'build', '--quiet', '--timestamp', '0', '--uuid', 'clear'];
    oursArgs.push('--compress', alg, '--pcluster-size', String(pcluster), `tar:${tar}`, ours);
    const theirsArgs = ['--quiet', '-T0', '-Uclear', `-z${alg}`, `-C${pcluster}`, '--tar=f', theirs, tar];
    let oursTime = Number.POSITIVE_INFINITY;
    let theirsTime = Number.POSITIVE_INFINITY;
    let oursRss = 0;
    let theirsRss = 0;
    for (let i = 0; i < runs; i++) {
      const o = measured(process.execPath, oursArgs);
      const m = measured(mkfs, theirsArgs);
      oursTime = Math.min(oursTime, o.seconds);
      theirsTime = Math.min(theirsTime, m.seconds);
      oursRss = Math.max(oursRss, o.rssMiB);
      theirsRss = Math.max(theirsRss, m.rssMiB);
    }
    const oursSize = statSync(ours).size;
    const theirsSize = statSync(theirs).size;
    // Reads are short and noisy on a shared machine: at least 3 each, alternating.
    let oursRead = Number.POSITIVE_INFINITY;
    let theirsRead = Number.POSITIVE_INFINITY;
    for (let i = 0; i < Math.max(3, runs); i++) {
      oursRead = Math.min(oursRead, readAll(ours, 1));
      theirsRead = Math.min(theirsRead, readAll(theirs, 1));
    }
    const row = {
      alg,
      pcluster,
      tarBytes: statSync(tar).size,
      build: { ours: oursTime, mkfs: theirsTime, ratio: oursTime / theirsTime },
      peakRssMiB: { ours: oursRss, mkfs: theirsRss },
      size: { ours: oursSize, mkfs: theirsSize, ratio: oursSize / theirsSize },
      readAll: { ours: oursRead, mkfs: theirsRead, ratio: oursRead / theirsRead },
    };
    results.push(row);
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    ctx.addRow([
      `${alg} -C${pcluster}: build ours/mkfs`,
      `${oursTime.toFixed(2)}/${theirsTime.toFixed(2)}`,
      '',
      `${oursRss.toFixed(0)}/${theirsRss.toFixed(0)}`,
      `build ${row.build.ratio.toFixed(2)}x, size ${mib(oursSize)}/${mib(theirsSize)} MiB = ${row.size.ratio.toFixed(3)}x, kernel read-all ${oursRead.toFixed(2)}/${theirsRead.toFixed(2)} s = ${row.readAll.ratio.toFixed(2)}x`,
    ]);
    rmSync(ours, { force: true });
    rmSync(theirs, { force: true });
  }
  ctx.setResults(results);
}
