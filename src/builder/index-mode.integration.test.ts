/**
 * Index mode: `[index image][uncompressed tar]` mounted by the kernel equals the layer (expected tree from
 * GNU tar extraction in overlay form), and erofs-utils 1.9's `mkfs.erofs --tar=i` image of the same layer
 * mounts to the same tree (when a local build of it is given).
 */
import assert from 'node:assert/strict';
import { createReadStream, createWriteStream } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import {
  check,
  erofsUtils,
  isRoot,
  mkfsErofs19,
  runCli,
  snapshot,
  tmpdir,
  withMount,
} from '../../test-support/kernel.ts';
import { assertSameTree, buildExpected, generateLayers, type LayerSet } from '../../test-support/oracle.ts';

const skip = isRoot() ? false : 'needs root to mount images';

/** `[a][b]` into `out`. */
async function concatenate(out: string, parts: string[]): Promise<void> {
  const sink = createWriteStream(out);
  for (const part of parts) await pipeline(createReadStream(part), sink, { end: false });
  await new Promise<void>((resolve, reject) =>
    sink.end((error?: Error | null) => (error ? reject(error) : resolve())),
  );
}

const mkfs19 = mkfsErofs19();

describe('build --mode index', { skip }, () => {
  for (const set of ['everything', 'overlay', 'sizes'] as LayerSet[]) {
    it(`[index][tar] mounts as the layer (${set})`, async () => {
      const dir = await tmpdir();
      try {
        const [layer] = await generateLayers(set, join(dir.path, 'layers'), { compression: 'gzip' });
        const tar = join(dir.path, 'layer.tar');
        await writeFile(tar, gunzipSync(await readFile(layer as string)));
        const meta = join(dir.path, 'layer.meta');
        const zinfo = join(dir.path, 'layer.zinfo');
        const built = await runCli([
          'build',
          '--quiet',
          '--json',
          '--mode',
          'index',
          '--zinfo',
          zinfo,
          '--timestamp',
          '0',
          '--uuid',
          'clear',
          `tar:${layer}`,
          meta,
        ]);
        assert.equal(built.status, 0, built.stderr);
        const summary = JSON.parse(built.stdout) as { blockSize: number; tarSize: number };
        assert.equal(summary.blockSize, 512);
        assert.equal(summary.tarSize, (await readFile(tar)).byteLength);
        const combined = join(dir.path, 'combined.erofs');
        await concatenate(combined, [meta, tar]);
        // Debian's fsck.erofs 1.5 cannot read 512-byte blocks; a newer one (EROFS_UTILS_BIN) checks the image.
        const tools = await erofsUtils();
        const [major = 0, minor = 0] = tools.version ?? [];
        if (tools.fsck && (major > 1 || minor >= 6)) await check(tools.fsck, [combined]);

        const expectedDir = join(dir.path, 'expected');
        const { implicitDirs } = await buildExpected(expectedDir, [layer as string], 'overlay');
        const expected = await snapshot(expectedDir);
        const ours = await withMount(combined, (mnt) => snapshot(mnt));
        assertSameTree(expected, ours, {
          loosePaths: implicitDirs,
          ignoreRoot: true,
          ignoreXattrs: ['trusted.overlay.origin'],
        });

        if (mkfs19) {
          // erofs-utils' own index image of the same tar mounts to the same tree.
          const theirs = join(dir.path, 'theirs.meta');
          await check(mkfs19, ['--quiet', '-T0', '--mkfs-time', '--aufs', '-Uclear', '--tar=i', theirs, tar]);
          const theirCombined = join(dir.path, 'theirs.erofs');
          await concatenate(theirCombined, [theirs, tar]);
          const theirTree = await withMount(theirCombined, (mnt) => snapshot(mnt));
          assertSameTree(theirTree, ours, {
            ignoreRoot: true,
            ignoreXattrs: ['trusted.overlay.origin'],
            // erofs-utils gives implicitly created parents its own defaults.
            loosePaths: implicitDirs,
          });
        }
      } finally {
        await dir.cleanup();
      }
    });
  }

  it('needs exactly one tar layer', async () => {
    const result = await runCli(['build', '--mode', 'index', 'tar:/a', 'tar:/b', '/tmp/never.erofs']);
    assert.equal(result.status, 2);
    assert.match(result.stderr, /index mode takes exactly one tar layer/);
  });
});
