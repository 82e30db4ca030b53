/**
 * `convert` of images whose layers hardlink into the layers below them: each converted layer stands alone
 * (fsck.erofs accepts it on its own), and the kernel's overlay of the converted layers equals the tree GNU
 * tar extracts from the source layers, except that a link and its lower target are two inodes (the
 * documented price of a standalone layer): the expected hardlink groups are split by layer.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import {
  check,
  isRoot,
  runCli,
  type Snapshot,
  snapshot,
  type TmpDir,
  tmpdir,
  withOverlay,
} from '../../test-support/kernel.ts';
import {
  assertSameTree,
  buildExpected,
  generateBadInput,
  generateLayers,
  type LayerSet,
} from '../../test-support/oracle.ts';
import { skopeo } from '../../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../../test-support/registry-fixtures.ts';

const skip = !isRoot() ? 'needs root to mount images' : undefined;

/**
 * The expected tree with each hardlink group split in two: the paths `upper` names (added by a layer that
 * linked them to a lower file) and the rest; nlink follows.
 */
function splitGroups(expected: Snapshot, upper: ReadonlySet<string>): Snapshot {
  const entries = dirNlinkOne(expected).entries;
  const hardlinks: string[][] = [];
  for (const group of expected.hardlinks) {
    for (const part of [group.filter((p) => upper.has(p)), group.filter((p) => !upper.has(p))]) {
      for (const path of part) (entries[path] as { nlink: number }).nlink = part.length;
      if (part.length > 1) hardlinks.push(part);
    }
  }
  hardlinks.sort((a, b) => (a[0] as string).localeCompare(b[0] as string));
  return { ...expected, entries, hardlinks };
}

/** overlayfs reports nlink 1 for a directory merged from several layers; the comparison leaves it out. */
function dirNlinkOne(tree: Snapshot): Snapshot {
  const entries = structuredClone(tree.entries);
  for (const entry of Object.values(entries)) if (entry.type === 'dir') entry.nlink = 1;
  return { ...tree, entries };
}

/**
 * Directories some layer above the bottom needs but has no entry for: in that layer's EROFS image (overlay
 * form) they get default metadata, which the overlay shows, while GNU tar keeps the lower ones.
 */
async function implicitInUpperLayers(tars: string[]): Promise<string[]> {
  const implicit = new Set<string>();
  for (const tar of tars.slice(1)) {
    const names = (await check('tar', ['-tf', tar])).split('\n').filter(Boolean);
    const own = new Set(names.map((n) => n.replace(/^\.\//, '').replace(/\/$/, '')));
    for (const name of own) {
      const parts = name.split('/');
      for (let i = 1; i < parts.length; i++) {
        const parent = parts.slice(0, i).join('/');
        if (!own.has(parent)) implicit.add(parent);
      }
    }
  }
  return [...implicit];
}

describe('convert resolves hardlinks into lower layers', { skip }, () => {
  let dir: TmpDir;

  before(async () => {
    dir = await tmpdir();
  });
  after(async () => {
    await dir?.cleanup();
  });

  async function layoutOf(name: string, tars: string[]): Promise<string> {
    const blobs = [];
    const diffIds = [];
    for (const tar of tars) {
      const bytes = await readFile(tar);
      diffIds.push(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
      blobs.push(blobOf('application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(bytes)));
    }
    const layout = join(dir.path, `${name}-source`);
    await writeLayout(layout, 'v1', [imageOfBlobs(blobs, diffIds)], false);
    return layout;
  }

  /** `nlink`: overrides for paths whose lower inode keeps links that an upper layer hides. */
  async function convertAndCompare(set: LayerSet, upper: string[], nlink: Record<string, number> = {}) {
    const tars = await generateLayers(set, join(dir.path, set));
    const layout = await layoutOf(set, tars);
    const out = join(dir.path, `${set}-erofs`);
    const result = await runCli(['convert', '--quiet', '--json', `oci:${layout}:v1`, `oci:${out}:erofs`]);
    assert.equal(result.status, 0, result.stderr);
    const raw = JSON.parse(await skopeo(['inspect', '--raw', `oci:${out}:erofs`])) as {
      layers: { digest: string }[];
    };
    const images = raw.layers.map((l) => join(out, 'blobs', 'sha256', l.digest.slice(7)));
    for (const image of images) await check('fsck.erofs', [image]); // each layer stands alone
    const expectedDir = join(dir.path, `${set}-expected`);
    const { implicitDirs } = await buildExpected(expectedDir, tars, 'merged');
    const want = splitGroups(await snapshot(expectedDir), new Set(upper));
    for (const [path, count] of Object.entries(nlink))
      (want.entries[path] as { nlink: number }).nlink = count;
    const loosePaths = [...implicitDirs, ...(await implicitInUpperLayers(tars))];
    await withOverlay(images, async (merged) => {
      assertSameTree(want, dirNlinkOne(await snapshot(merged)), { loosePaths, ignoreRoot: true });
    });
  }

  it('links to lower files, groups, replaced and removed targets, symlinks, empty files', async () => {
    await convertAndCompare('lowerlinks', [
      'data/link',
      'data/link2',
      'elsewhere/a',
      'elsewhere/c',
      'data/r',
      'data/sym-link',
      'data/empty-link',
      'data/m',
      'data/doomed-link',
    ]);
  });

  it('the three-layer whiteout set, whose layers link into the layers below', async () => {
    // usr/bin/tool2 shares its layer-0 inode with the usr/bin/tool that layer 1 replaces: the overlay
    // hides that name, not the link (GNU tar unlinks it, so its tree has nlink 1).
    await convertAndCompare('whiteouts', ['base/link', 'new/deep/missing/parents/file2'], {
      'usr/bin/tool2': 2,
    });
  });

  it('a link whose target is in no layer is exit 5 and names nothing', async () => {
    const tars = await generateBadInput('hardlink-missing-stacked', join(dir.path, 'missing'));
    const layout = await layoutOf('missing', tars);
    const out = join(dir.path, 'missing-erofs');
    const result = await runCli(['convert', '--quiet', `oci:${layout}:v1`, `oci:${out}:erofs`]);
    assert.equal(result.status, 5, result.stderr);
    assert.match(result.stderr, /hardlink target "missing" is neither in this layer nor in the 1 below it/);
    await assert.rejects(readFile(join(out, 'index.json')));
  });
});
