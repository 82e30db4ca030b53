/**
 * `node bench/run.ts convert`: `erofs-oci convert` of a 4-layer gzip image (≥ 150 MB of gzip by default)
 * from a local registry into another repository of it, raw and `--compress zstd`, against erofs-utils 1.9
 * converting the same layers one by one (`mkfs.erofs --oci=f,layer=N` for each N) without any push.
 * Reports wall time, peak RSS and the +zstd layers' bytes against the source's gzip bytes.
 *
 * Environment: BENCH_CONVERT_LAYERS (4), BENCH_CONVERT_SMALL_FILES (5000 per layer),
 * BENCH_CONVERT_LARGE_MIB (40, one incompressible large file per layer), EROFS_UTILS_BIN.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { mkfsErofs19 } from '../test-support/kernel.ts';
import { startRegistry } from '../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';
import type { MountSuiteContext } from './mount.ts';
import { measure, sh } from './support.ts';

export async function benchConvert(ctx: MountSuiteContext): Promise<void> {
  const mkfs = mkfsErofs19();
  if (process.getuid?.() !== 0 && !existsSync('/usr/bin/docker-registry')) {
    ctx.addRow(['skipped: docker-registry missing', '', '', '', '']);
    ctx.setResults({ skipped: 'docker-registry missing' });
    return;
  }
  const layerCount = Number(process.env.BENCH_CONVERT_LAYERS ?? 4);
  const small = Number(process.env.BENCH_CONVERT_SMALL_FILES ?? 5000);
  const largeMiB = Number(process.env.BENCH_CONVERT_LARGE_MIB ?? 40);
  await mkdir(ctx.benchDir, { recursive: true });
  const gzips: Buffer[] = [];
  for (let i = 0; i < layerCount; i++) {
    const tar = join(ctx.benchDir, `convert-layer${i}-${small}-${largeMiB}.tar`);
    if (!existsSync(tar)) {
      process.stderr.write(`convert: generating ${tar}\n`);
      await sh('python3', [
        join(ctx.root, 'bench', 'make-tar.py'),
        `${tar}.part`,
        String(small),
        '1',
        String(largeMiB),
        `C${i}`,
      ]);
      await sh('mv', [`${tar}.part`, tar]);
    }
    gzips.push(gzipSync(readFileSync(tar), { level: 6 }));
  }
  const gzipBytes = gzips.reduce((sum, g) => sum + g.byteLength, 0);
  const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-convert-'));
  const registry = await startRegistry({ storageDir: join(work, 'storage') });
  try {
    const layout = join(work, 'layout');
    await writeLayout(
      layout,
      'v1',
      [imageOfBlobs(gzips.map((g) => blobOf('application/vnd.oci.image.layer.v1.tar+gzip', g)))],
      false,
    );
    const src = `${registry.host}/bench/src:v1`;
    await sh('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${src}`]);
    const mb = (seconds: number) => (gzipBytes / 1e6 / seconds).toFixed(1);

    let theirs: { seconds: number; maxRssKiB: number } | undefined;
    if (mkfs) {
      let seconds = 0;
      let rss = 0;
      let imageBytes = 0;
      for (let n = 0; n < layerCount; n++) {
        const m = await measure(ctx.root, [
          mkfs,
          '--quiet',
          `--oci=f,layer=${n},insecure`,
          join(work, `mkfs-${n}.erofs`),
          src,
        ]);
        seconds += m.seconds;
        rss = Math.max(rss, m.maxRssKiB);
        imageBytes += statSync(join(work, `mkfs-${n}.erofs`)).size;
        await rm(join(work, `mkfs-${n}.erofs`), { force: true });
      }
      if (imageBytes < gzipBytes / 2)
        throw new Error(`mkfs.erofs wrote only ${imageBytes} bytes: not a conversion`);
      theirs = { seconds, maxRssKiB: rss };
      ctx.addRow([
        `mkfs.erofs --oci=f,layer=N x${layerCount} (no push)`,
        seconds.toFixed(2),
        mb(seconds),
        (rss / 1024).toFixed(0),
        `${(gzipBytes / 1e6).toFixed(0)} MB gzip -> ${(imageBytes / 1e6).toFixed(0)} MB EROFS`,
      ]);
    } else {
      ctx.addRow(['mkfs.erofs 1.9: not found (EROFS_UTILS_BIN)', '', '', '', '']);
    }
    const ours: Record<string, unknown> = {};
    for (const [name, extra] of [
      ['raw', []],
      ['zstd', ['--compress', 'zstd']],
    ] as const) {
      const dest = `${registry.host}/bench/${name}-${Date.now()}:erofs`;
      // `npx erofs-oci`, from the checkout, as the README runs it (the bin's shebang sets its V8 flags).
      const m = await measure(ctx.root, [
        'npx',
        '--prefix',
        ctx.root,
        'erofs-oci',
        'convert',
        '--quiet',
        '--insecure',
        ...extra,
        src,
        dest,
      ]);
      const manifest = JSON.parse(
        execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${dest}`], {
          encoding: 'utf8',
        }),
      ) as {
        layers: { size: number }[];
      };
      const bytes = manifest.layers.reduce((sum, l) => sum + l.size, 0);
      const ratio = theirs ? m.seconds / theirs.seconds : undefined;
      ours[name] = { ...m, layerBytes: bytes, vsGzip: bytes / gzipBytes, vsMkfs: ratio };
      ctx.addRow([
        `erofs-oci convert${name === 'zstd' ? ' --compress zstd' : ''} + push`,
        m.seconds.toFixed(2),
        mb(m.seconds),
        (m.maxRssKiB / 1024).toFixed(0),
        `${ratio === undefined ? '' : `${ratio.toFixed(2)}x mkfs; `}layers ${(bytes / gzipBytes).toFixed(2)}x gzip`,
      ]);
    }
    ctx.setResults({ gzipBytes, layers: layerCount, mkfs: theirs ?? null, ours });
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
