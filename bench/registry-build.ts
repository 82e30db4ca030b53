/**
 * `node bench/run.ts registry-build` (issue 11 §2): `erofs-oci build --insecure REF OUT` from a local
 * registry (Debian's docker-registry, plain HTTP on loopback) against erofs-utils 1.9's
 * `mkfs.erofs --quiet --oci=f,insecure OUT REF`, both run alternately BENCH_RUNS times (best of), ours
 * as the README runs it (`npx erofs-oci build …`, startup included). Prints wall times, peak RSS and the
 * ratio ours/theirs of the same run.
 *
 * The image: BENCH_RB_LAYERS (4) gzip layers made by bench/make-tar.py, each BENCH_RB_SMALL_FILES (6000)
 * small files and one BENCH_RB_LARGE_MIB (40) MiB file of incompressible data, so about 190 MB gzip and
 * 24k+ entries. Inputs are kept in BENCH_DIR between runs.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mkfsErofs19 } from '../test-support/kernel.ts';
import { startRegistry } from '../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';
import { type Measurement, measure, sh } from './support.ts';

export interface RegistryBuildContext {
  root: string;
  benchDir: string;
  /** One table row: what, seconds, MB/s, peak RSS MiB, notes. */
  addRow(row: string[]): void;
  setResults(value: unknown): void;
}

export async function benchRegistryBuild(ctx: RegistryBuildContext): Promise<void> {
  const mkfs = mkfsErofs19();
  const missing = ['/usr/bin/docker-registry', '/usr/bin/skopeo'].filter((p) => !existsSync(p));
  if (mkfs === null || missing.length > 0) {
    const why =
      mkfs === null ? 'erofs-utils 1.9 not found (EROFS_UTILS_BIN)' : `${missing.join(', ')} missing`;
    ctx.addRow([`skipped: ${why}`, '', '', '', '']);
    ctx.setResults({ skipped: why });
    return;
  }
  const layerCount = Number(process.env.BENCH_RB_LAYERS ?? 4);
  const small = Number(process.env.BENCH_RB_SMALL_FILES ?? 6000);
  const largeMiB = Number(process.env.BENCH_RB_LARGE_MIB ?? 40);
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const here = join(ctx.root, 'bench');
  await mkdir(ctx.benchDir, { recursive: true });
  const layers: { gz: string; diffId: string }[] = [];
  for (let i = 0; i < layerCount; i++) {
    const stem = join(ctx.benchDir, `rb-layer${i}-${small}-${largeMiB}`);
    if (!existsSync(`${stem}.tar.gz`)) {
      process.stderr.write(`registry-build: generating ${stem}.tar.gz\n`);
      await sh('python3', [
        join(here, 'make-tar.py'),
        `${stem}.tar`,
        String(small),
        '1',
        String(largeMiB),
        `R${i}`,
      ]);
      await sh('sh', [
        '-c',
        `gzip -6 -n -c "${stem}.tar" > "${stem}.tar.gz.part" && mv "${stem}.tar.gz.part" "${stem}.tar.gz"`,
      ]);
      await rm(`${stem}.tar`, { force: true });
    }
    const diffId = (await sh('sh', ['-c', `gzip -dc "${stem}.tar.gz" | sha256sum`])).split(' ')[0] as string;
    layers.push({ gz: `${stem}.tar.gz`, diffId: `sha256:${diffId}` });
  }
  const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-rb-'));
  const registry = await startRegistry({ storageDir: join(work, 'storage') });
  try {
    const blobs = layers.map((l) =>
      blobOf('application/vnd.oci.image.layer.v1.tar+gzip', readFileSync(l.gz)),
    );
    const layout = join(work, 'layout');
    await writeLayout(
      layout,
      'v1',
      [
        imageOfBlobs(
          blobs,
          layers.map((l) => l.diffId),
        ),
      ],
      false,
    );
    const ref = `${registry.host}/bench/app:v1`;
    await sh('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${ref}`]);
    await rm(layout, { recursive: true, force: true });
    const gzipBytes = blobs.reduce((sum, b) => sum + b.size, 0);
    const oursOut = join(work, 'ours.erofs');
    const theirsOut = join(work, 'theirs.erofs');
    let ours: Measurement | undefined;
    let theirs: Measurement | undefined;
    const all: { ours: number[]; theirs: number[] } = { ours: [], theirs: [] };
    for (let r = 0; r < runs; r++) {
      const t = await measure(ctx.root, [mkfs, '--quiet', '--oci=f,insecure', theirsOut, ref]);
      await rm(theirsOut, { force: true });
      // `npx erofs-oci`, from the checkout, as the README runs it.
      const o = await measure(ctx.root, [
        'npx',
        '--prefix',
        ctx.root,
        'erofs-oci',
        'build',
        '--quiet',
        '--insecure',
        ref,
        oursOut,
      ]);
      await rm(oursOut, { force: true });
      all.theirs.push(t.seconds);
      all.ours.push(o.seconds);
      if (!theirs || t.seconds < theirs.seconds) theirs = t;
      if (!ours || o.seconds < ours.seconds) ours = o;
    }
    const o = ours as Measurement;
    const t = theirs as Measurement;
    const mb = gzipBytes / 1e6;
    ctx.addRow([
      `mkfs.erofs --oci=f (${mkfs})`,
      t.seconds.toFixed(2),
      (mb / t.seconds).toFixed(0),
      (t.maxRssKiB / 1024).toFixed(0),
      'MB/s of gzip',
    ]);
    ctx.addRow([
      'npx erofs-oci build --insecure',
      o.seconds.toFixed(2),
      (mb / o.seconds).toFixed(0),
      (o.maxRssKiB / 1024).toFixed(0),
      '',
    ]);
    ctx.addRow([
      `ratio ours/theirs: ${(o.seconds / t.seconds).toFixed(2)}x wall (target <= 0.6)`,
      '',
      '',
      '',
      `${layerCount} layers, ${mb.toFixed(0)} MB gzip`,
    ]);
    ctx.setResults({
      layers: layerCount,
      smallFiles: small,
      largeMiB,
      gzipBytes,
      runs,
      ours: o,
      mkfs: t,
      all,
      ratio: o.seconds / t.seconds,
    });
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
