/**
 * `node bench/run.ts verified-serve`: what checking every chunk costs a whole copy (issue 13: "reach at
 * least nbdcopy throughput of unverified serve"). One layer, a tar holding one file of random bytes
 * (BENCH_VERIFIED_SERVE_MIB, 320 by default), converted by `erofs-oci convert` into a raw EROFS layer with
 * an embedded chunk index (SHA-256 per 1 MiB chunk) and pushed to a local registry twice: as converted
 * (chunk-verified) and as the same blob without the chunk-index annotations (verified as a whole once
 * every block has been fetched, the path of an index-less image). Each round starts a fresh
 * `erofs-oci serve --insecure --layer 0 REF --listen unix:SOCK` (cold caches) for each and times
 * `nbdcopy nbd+unix:///?socket=SOCK null:`; rounds interleave the two, best of BENCH_RUNS (3).
 */

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServe, stopProcess } from '../test-support/kernel.ts';
import { startRegistry } from '../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../test-support/registry-fixtures.ts';
import type { MountSuiteContext } from './mount.ts';
import { sh } from './support.ts';

interface Manifest {
  layers: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> }[];
}

export async function benchVerifiedServe(ctx: MountSuiteContext): Promise<void> {
  const mib = Number(process.env.BENCH_VERIFIED_SERVE_MIB ?? 320);
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const cli = join(ctx.root, 'bin', 'erofs-oci.js');
  const work = await mkdtemp(join(tmpdir(), 'erofs-oci-bench-verified-serve-'));
  const registry = await startRegistry({ storageDir: join(work, 'storage') });
  const loadAtStart = loadavg()[0] as number;
  try {
    const tree = join(work, 'tree');
    await mkdir(tree);
    await writeFile(join(tree, 'random.bin'), randomBytes(mib << 20));
    const tar = join(work, 'layer.tar');
    await sh('tar', ['-cf', tar, '-C', tree, '.']);
    await rm(tree, { recursive: true });
    const source = join(work, 'source');
    const tarBytes = readFileSync(tar);
    const layer = blobOf('application/vnd.oci.image.layer.v1.tar', tarBytes);
    await writeLayout(source, 'v1', [imageOfBlobs([layer])], false);
    await rm(tar);
    const converted = join(work, 'converted');
    await sh(process.execPath, [cli, 'convert', '--quiet', `oci:${source}:v1`, `oci:${converted}:v1`]);
    await rm(source, { recursive: true });
    const manifest = JSON.parse(await sh('skopeo', ['inspect', '--raw', `oci:${converted}:v1`])) as Manifest;
    const erofs = manifest.layers[0];
    if (erofs?.annotations?.['org.erofs.chunk-index.range'] === undefined) {
      throw new Error('convert did not embed a chunk index');
    }
    await sh('skopeo', [
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${converted}:v1`,
      `docker://${registry.host}/bench/verified:v1`,
    ]);
    const plain = join(work, 'plain');
    const blob = readFileSync(join(converted, 'blobs', 'sha256', erofs.digest.slice(7)));
    await writeLayout(plain, 'v1', [imageOfBlobs([blobOf(erofs.mediaType, blob)])], false);
    await sh('skopeo', [
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${plain}:v1`,
      `docker://${registry.host}/bench/plain:v1`,
    ]);
    await rm(plain, { recursive: true });
    await rm(converted, { recursive: true });

    const kinds = { verified: 'bench/verified:v1', unverified: 'bench/plain:v1' } as const;
    const seconds: Record<keyof typeof kinds, number[]> = { verified: [], unverified: [] };
    for (let round = 1; round <= runs; round++) {
      for (const kind of Object.keys(kinds) as (keyof typeof kinds)[]) {
        process.stderr.write(`verified-serve: round ${round}/${runs}: ${kind}\n`);
        const socket = join(work, `${kind}-${round}.sock`);
        const { child: server } = await startServe(
          ['--insecure', '--layer', '0', `${registry.host}/${kinds[kind]}`],
          socket,
          20_000,
        );
        try {
          const started = performance.now();
          await sh('nbdcopy', [`nbd+unix:///?socket=${socket}`, 'null:']);
          seconds[kind].push((performance.now() - started) / 1000);
        } finally {
          await stopProcess(server);
        }
      }
    }
    const best = (kind: keyof typeof kinds) => Math.min(...seconds[kind]);
    const mbps = (s: number) => (blob.byteLength / 1e6 / s).toFixed(0);
    const ratio = best('unverified') / best('verified');
    ctx.addRow([
      `serve --layer 0 + nbdcopy null:, ${mib} MiB layer, index-less (whole-blob digest)`,
      best('unverified').toFixed(2),
      mbps(best('unverified')),
      '',
      `all: ${seconds.unverified.map((s) => s.toFixed(2)).join(', ')}`,
    ]);
    ctx.addRow([
      'the same layer chunk-verified (embedded index, SHA-256 per 1 MiB chunk)',
      best('verified').toFixed(2),
      mbps(best('verified')),
      '',
      `all: ${seconds.verified.map((s) => s.toFixed(2)).join(', ')}; throughput ${ratio.toFixed(2)}x unverified (target ≥ 1.0: ${ratio >= 1 ? 'met' : 'not met'}); load ${loadAtStart.toFixed(1)} → ${(loadavg()[0] as number).toFixed(1)}`,
    ]);
    ctx.setResults({
      date: new Date().toISOString(),
      blobBytes: blob.byteLength,
      runs,
      seconds,
      throughputVerifiedVsUnverified: ratio,
      target: 1,
      met: ratio >= 1,
      loadAverage: { start: loadAtStart, end: loadavg()[0] },
    });
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
