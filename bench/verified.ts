/**
 * `node bench/run.ts verified`: the same 4-layer image converted by `erofs-oci convert`, raw and
 * `--compress zstd`, mounted lazily with `erofs-oci mount` (every chunk verified), against the raw layers
 * mounted without their chunk index (the unverified path: whole-blob digest once complete) and against the
 * layers mounted from local files with overlayfs. Cold `find` and reading every file; bytes fetched from the
 * registry are counted by a pass-through proxy (test-support/registry-fault-proxy.ts) from the Range
 * headers of blob requests. Page caches are dropped before every step; every step starts from a fresh mount.
 *
 * Environment: BENCH_VERIFIED_SMALL_FILES (3000 per layer), BENCH_VERIFIED_LARGE_MIB (24, one large file
 * per layer), BENCH_VERIFIED_RUNS (2).
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { startRegistry } from '../test-support/registry.ts';
import { startFaultProxy } from '../test-support/registry-fault-proxy.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';
import type { MountSuiteContext } from './mount.ts';
import { dropCaches, sh, timed } from './support.ts';

const steps = {
  find: async (mnt: string) => {
    await dropCaches();
    return timed(() => sh('find', [mnt, '-printf', '']));
  },
  readAll: async (mnt: string) => {
    await dropCaches();
    return timed(() => sh('sh', ['-c', `find "${mnt}" -type f -print0 | xargs -0 cat > /dev/null`]));
  },
};

interface Manifest {
  layers: { mediaType: string; digest: string; size: number }[];
}

const blobFile = (layout: string, digest: string) => join(layout, 'blobs', 'sha256', digest.slice(7));

export async function benchVerified(ctx: MountSuiteContext): Promise<void> {
  if (process.getuid?.() !== 0 || !existsSync('/dev/fuse')) {
    ctx.addRow(['skipped: needs root and /dev/fuse', '', '', '', '']);
    ctx.setResults({ skipped: 'needs root and /dev/fuse' });
    return;
  }
  const small = Number(process.env.BENCH_VERIFIED_SMALL_FILES ?? 3000);
  const largeMiB = Number(process.env.BENCH_VERIFIED_LARGE_MIB ?? 24);
  const runs = Number(process.env.BENCH_VERIFIED_RUNS ?? 2);
  const cli = join(ctx.root, 'bin', 'erofs-oci.js');
  await mkdir(ctx.benchDir, { recursive: true });
  const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-verified-'));
  const registry = await startRegistry({ storageDir: join(work, 'storage') });
  const proxy = await startFaultProxy(registry.url);
  try {
    const blobs = [];
    const diffIds = [];
    for (let i = 0; i < 4; i++) {
      const tar = join(ctx.benchDir, `verified-layer${i}-${small}-${largeMiB}.tar`);
      if (!existsSync(tar)) {
        process.stderr.write(`verified: generating ${tar}\n`);
        await sh('python3', [
          join(ctx.root, 'bench', 'make-tar.py'),
          `${tar}.part`,
          String(small),
          '1',
          String(largeMiB),
          `V${i}`,
        ]);
        await sh('mv', [`${tar}.part`, tar]);
      }
      const bytes = readFileSync(tar);
      blobs.push(blobOf('application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(bytes, { level: 1 })));
      diffIds.push(`sha256:${(await sh('sha256sum', [tar])).split(' ')[0]}`);
    }
    const source = join(work, 'source');
    await writeLayout(source, 'v1', [imageOfBlobs(blobs, diffIds)], false);
    const converted: Record<'raw' | 'zstd', { layout: string; manifest: Manifest }> = {} as never;
    for (const [name, options] of [
      ['raw', []],
      ['zstd', ['--compress', 'zstd']],
    ] as const) {
      const layout = join(work, name);
      await sh(process.execPath, [
        cli,
        'convert',
        '--quiet',
        ...options,
        `oci:${source}:v1`,
        `oci:${layout}:v1`,
      ]);
      const manifest = JSON.parse(await sh('skopeo', ['inspect', '--raw', `oci:${layout}:v1`])) as Manifest;
      converted[name] = { layout, manifest };
      await sh('skopeo', [
        'copy',
        '--dest-tls-verify=false',
        `oci:${layout}:v1`,
        `docker://${registry.host}/bench/${name}:v1`,
      ]);
    }
    // The raw layers without their chunk-index annotations: what an index-less image mounts like.
    const rawBlobs = converted.raw.manifest.layers.map((l) =>
      blobOf(l.mediaType, readFileSync(blobFile(converted.raw.layout, l.digest))),
    );
    const plain = join(work, 'plain');
    await writeLayout(plain, 'v1', [imageOfBlobs(rawBlobs)], false);
    await sh('skopeo', [
      'copy',
      '--dest-tls-verify=false',
      `oci:${plain}:v1`,
      `docker://${registry.host}/bench/plain:v1`,
    ]);
    const zstdBytes = converted.zstd.manifest.layers.reduce((sum, l) => sum + l.size, 0);
    const rawBytes = converted.raw.manifest.layers.reduce((sum, l) => sum + l.size, 0);

    const mnt = join(work, 'mnt');
    await mkdir(mnt);
    const local = async (step: (m: string) => Promise<number>): Promise<number> => {
      const lowers: string[] = [];
      try {
        for (const [i, layer] of converted.raw.manifest.layers.entries()) {
          const dir = join(work, `local-${i}`);
          await mkdir(dir, { recursive: true });
          await sh('mount', ['-t', 'erofs', '-o', 'ro', blobFile(converted.raw.layout, layer.digest), dir]);
          lowers.push(dir);
        }
        await sh('mount', [
          '-t',
          'overlay',
          'overlay',
          '-o',
          `ro,lowerdir=${[...lowers].reverse().join(':')}`,
          mnt,
        ]);
        return await step(mnt);
      } finally {
        await sh('sh', ['-c', `umount "${mnt}" 2>/dev/null; true`]);
        for (const dir of lowers) await sh('umount', [dir]);
      }
    };
    const env = { ...process.env, EROFS_OCI_STATE_DIR: join(work, 'state') };
    const fetched = (from: number): number => {
      let total = 0;
      for (const r of proxy.requests.slice(from)) {
        if (r.method !== 'GET' || !r.path.includes('/blobs/')) continue;
        const m = /bytes=(\d+)-(\d+)/.exec(String(r.headers.range ?? ''));
        if (m) total += Number(m[2]) - Number(m[1]) + 1;
      }
      return total;
    };
    const ours = async (
      name: string,
      step: (m: string) => Promise<number>,
    ): Promise<{ seconds: number; bytes: number }> => {
      await dropCaches();
      const from = proxy.requests.length;
      await sh(
        process.execPath,
        [cli, 'mount', '--insecure', '--backend', 'fuse', `${proxy.host}/bench/${name}:v1`, mnt],
        env,
      );
      try {
        const seconds = await step(mnt);
        return { seconds, bytes: fetched(from) };
      } finally {
        await sh(process.execPath, [cli, 'umount', mnt], env);
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
    const results: Record<string, unknown> = {
      date: new Date().toISOString(),
      runs,
      small,
      largeMiB,
      zstdBytes,
      rawBytes,
    };
    for (const stepName of ['find', 'readAll'] as const) {
      const step = steps[stepName];
      const localSeconds = await best(
        () => local(step),
        (t) => t,
      );
      const plainRun = await best(
        () => ours('plain', step),
        (t) => t.seconds,
      );
      const rawRun = await best(
        () => ours('raw', step),
        (t) => t.seconds,
      );
      const zstdRun = await best(
        () => ours('zstd', step),
        (t) => t.seconds,
      );
      const what = stepName === 'find' ? 'cold find' : 'read every file';
      const f = (s: number) => s.toFixed(2);
      ctx.addRow([`${what}: local files + overlayfs`, f(localSeconds), '', '', '']);
      ctx.addRow([
        `${what}: mount raw, unverified (no index)`,
        f(plainRun.seconds),
        '',
        '',
        `${(plainRun.bytes / 1e6).toFixed(1)} MB fetched`,
      ]);
      ctx.addRow([
        `${what}: mount raw, chunk-verified`,
        f(rawRun.seconds),
        '',
        '',
        `${(rawRun.seconds / plainRun.seconds).toFixed(2)}× unverified (≤ 1.05), ${(rawRun.seconds / localSeconds).toFixed(1)}× local, ${(rawRun.bytes / 1e6).toFixed(1)} MB fetched`,
      ]);
      ctx.addRow([
        `${what}: mount +zstd, chunk-verified`,
        f(zstdRun.seconds),
        '',
        '',
        `${(zstdRun.seconds / localSeconds).toFixed(2)}× local${stepName === 'readAll' ? ' (≤ 2)' : ''}, fetched ${(zstdRun.bytes / zstdBytes).toFixed(3)}× the zstd blobs${stepName === 'readAll' ? ' (≤ 1.1)' : ''}`,
      ]);
      results[stepName] = { local: localSeconds, plain: plainRun, raw: rawRun, zstd: zstdRun };
    }
    ctx.setResults(results);
    await writeFile(join(work, 'done'), '');
  } finally {
    await proxy.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
