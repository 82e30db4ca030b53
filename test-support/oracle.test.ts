/**
 * Tests of the test oracle itself, so that a passing build test means something:
 * - the comparison reports every kind of difference;
 * - snapshot.py escapes byte-string names reversibly;
 * - expected.py applies the OCI whiteout rules (spot checks written from the spec);
 * - round trip through erofs-utils: the expected tree → mkfs.erofs (directory mode) → kernel mount →
 *   snapshot equals the tree's own snapshot, root, directory mtimes and all. This validates the
 *   snapshot/mount path with a writer that is not ours.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import {
  check,
  erofsUtils,
  findExecutable,
  isRoot,
  run,
  type Snapshot,
  snapshot,
  type TmpDir,
  tmpdir,
  withMount,
} from './kernel.ts';
import {
  buildExpected,
  countInodes,
  diffSnapshots,
  generateLayers,
  generateTree,
  type LayerSet,
} from './oracle.ts';

async function scratch(t: TestContext): Promise<TmpDir> {
  const dir = await tmpdir('erofs-oci-oracle-');
  t.after(() => dir.cleanup());
  return dir;
}

const base: Snapshot = {
  entries: {
    '.': { type: 'dir', mode: '0755', uid: 0, gid: 0, nlink: 3, mtime: '1' },
    a: { type: 'file', mode: '0644', uid: 0, gid: 0, nlink: 2, mtime: '5', size: 1, sha256: 'aa' },
    b: { type: 'file', mode: '0644', uid: 0, gid: 0, nlink: 2, mtime: '5', size: 1, sha256: 'aa' },
    d: { type: 'dir', mode: '0700', uid: 1, gid: 1, nlink: 2, mtime: '7', xattrs: { 'user.x': '01' } },
  },
  hardlinks: [['a', 'b']],
  problems: [],
};

const clone = (s: Snapshot): Snapshot => structuredClone(s);

test('diffSnapshots finds nothing in equal snapshots', () => {
  assert.deepEqual(diffSnapshots(base, clone(base)), []);
});

test('diffSnapshots reports changed fields, missing and extra paths, hardlink groups', () => {
  const other = clone(base);
  other.entries.d!.mode = '0755';
  other.entries.d!.xattrs = { 'user.x': '02' };
  other.entries.a!.mtime = '6';
  delete other.entries.b;
  other.entries.c = { type: 'symlink', mode: '0777', uid: 0, gid: 0, nlink: 1, mtime: '1', target: 'a' };
  other.hardlinks = [];
  other.problems = ['.: inode number 0'];
  assert.deepEqual(diffSnapshots(base, other), [
    'a: mtime expected 5, image has 6',
    'missing from image: b (file)',
    'unexpected in image: c (symlink)',
    'd: mode expected 0700, image has 0755',
    'd: xattrs expected {"user.x":"01"}, image has {"user.x":"02"}',
    'hardlink group missing: a = b',
    'image: .: inode number 0',
  ]);
});

test('diffSnapshots options: loose paths, ignored root, xattrs and directory mtimes', () => {
  const other = clone(base);
  other.entries['.']!.mode = '0700';
  other.entries.d!.mode = '0777';
  other.entries.d!.mtime = '8';
  other.entries.d!.xattrs = { 'user.x': '01', 'trusted.overlay.origin': '' };
  assert.deepEqual(
    diffSnapshots(base, other, { ignoreRoot: true, ignoreXattrs: ['trusted.overlay.origin'] }),
    ['d: mode expected 0700, image has 0777', 'd: mtime expected 7, image has 8'],
  );
  assert.deepEqual(diffSnapshots(base, other, { ignoreRoot: true, loosePaths: ['d'] }), []);
  other.entries.d!.type = 'file';
  assert.deepEqual(diffSnapshots(base, other, { ignoreRoot: true, loosePaths: ['d'] }), [
    'd: type expected dir, image has file',
  ]);
  const noDirTimes = clone(base);
  noDirTimes.entries.d!.mtime = '9';
  assert.deepEqual(diffSnapshots(base, noDirTimes, { ignoreDirMtimes: true }), []);
});

test('countInodes counts hardlinked names once', () => {
  assert.equal(countInodes(base), 3);
});

test('snapshot.py escapes names that are not UTF-8, and backslashes, reversibly', async (t) => {
  const dir = await scratch(t);
  const root = Buffer.from(dir.path);
  const names = [Buffer.from([0x61, 0xe9, 0x62]), Buffer.from('back\\x41'), Buffer.from('日本')];
  for (const name of names) {
    await writeFile(Buffer.concat([root, Buffer.from('/'), name]), 'x');
  }
  const tree = await snapshot(dir.path, { root: false });
  assert.deepEqual(Object.keys(tree.entries).sort(), ['a\\xe9b', 'back\\\\x41', '日本'].sort());
});

test('snapshot.py reports nanosecond mtimes, hashes, symlink targets and hardlinks', async (t) => {
  const dir = await scratch(t);
  await mkdir(join(dir.path, 'd'));
  await writeFile(join(dir.path, 'd', 'f'), 'hello');
  await check('ln', [join(dir.path, 'd', 'f'), join(dir.path, 'd', 'g')]);
  await check('ln', ['-s', 'f', join(dir.path, 'd', 's')]);
  await check('touch', ['-h', '-d', '@1700000000.123456789', join(dir.path, 'd', 's')]);
  await utimes(join(dir.path, 'd', 'f'), 1, 1);
  const tree = await snapshot(dir.path, { root: false, dirMtimes: false });
  assert.equal(
    tree.entries['d/f']?.sha256,
    '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824',
  );
  assert.equal(tree.entries['d/f']?.mtime, '1000000000');
  assert.equal(tree.entries['d/s']?.mtime, '1700000000123456789');
  assert.equal(tree.entries['d/s']?.target, 'f');
  assert.equal(tree.entries.d?.mtime, undefined);
  assert.deepEqual(tree.hardlinks, [['d/f', 'd/g']]);
});

const rootSkip = !isRoot() ? 'needs root (GNU tar restores owners, devices and trusted.* xattrs)' : false;

test('expected.py applies whiteouts, opaque directories and replacements', { skip: rootSkip }, async (t) => {
  const dir = await scratch(t);
  const layers = await generateLayers('whiteouts', join(dir.path, 'layers'), { compression: 'mixed' });
  const out = join(dir.path, 'expected');
  const { implicitDirs } = await buildExpected(out, layers);
  const tree = await snapshot(out, { root: false });
  const paths = Object.keys(tree.entries);
  const read = (path: string) => readFile(join(out, path), 'utf8');
  // Deleted by .wh.NAME (files, non-empty directories), and deleted-then-re-added.
  for (const gone of ['var', 'delete/subdir', 'etc/conf.d/a.conf', 'base/target', 'opq/new']) {
    assert.ok(!paths.includes(gone), `${gone} should be deleted`);
  }
  assert.equal(await read('etc/passwd'), 'root:x:0:0:re-added\n');
  // Opaque: lower content gone, the same layer's entries stay.
  assert.ok(!paths.includes('opq/old1') && !paths.includes('opq/sub/old2'));
  assert.equal(await read('opq/sub/new2'), 'new2');
  assert.equal(await read('opq/replaced'), 'upper version');
  // A whiteout applies to lower layers only.
  assert.equal(await read('wh-same/x'), 'upper x');
  // Type changes.
  assert.equal(tree.entries['swap/file-to-dir']?.type, 'dir');
  assert.equal(tree.entries['swap/file-to-symlink']?.type, 'symlink');
  assert.equal(tree.entries['swap/symlink-to-file']?.type, 'file');
  assert.equal(tree.entries['swap/fifo-to-dev']?.type, 'chardev');
  assert.ok(!paths.includes('swap/dir-to-file/child'));
  // A hardlink into a lower layer survives its target's deletion; replacing a file breaks its link.
  assert.equal(await read('base/link'), 'hardlink target from layer 0\n');
  assert.equal(tree.entries['base/link']?.uid, 11);
  assert.equal(tree.entries['usr/bin/tool']?.nlink, 1);
  assert.equal(tree.entries['usr/bin/tool2']?.size, 4097);
  // Redefined directory: metadata and xattrs of the upper entry; untouched one keeps its own.
  assert.deepEqual(tree.entries['xattr-dir']?.xattrs, { 'user.kept-name': '7570706572', 'user.upper': '32' });
  assert.equal(tree.entries['xattr-dir']?.mode, '0705');
  assert.equal(tree.entries.dirmeta?.mtime, '1000000000500000000');
  assert.equal(tree.entries.dirmeta?.mode, '0700');
  // Missing parents are created; new/deep is defined by a later layer.
  assert.deepEqual(implicitDirs, ['new', 'new/deep/missing', 'new/deep/missing/parents']);
  assert.equal(tree.entries['new/deep']?.mode, '0700');
  assert.deepEqual(tree.hardlinks, [['new/deep/missing/parents/file', 'new/deep/missing/parents/file2']]);
});

test('expected.py overlay form: whiteout devices and opaque xattrs', { skip: rootSkip }, async (t) => {
  const dir = await scratch(t);
  const layers = await generateLayers('overlay', join(dir.path, 'layers'));
  const overlay = join(dir.path, 'overlay');
  await buildExpected(overlay, layers, 'overlay');
  const tree = await snapshot(overlay, { root: false });
  assert.deepEqual(tree.entries['a/gone'], {
    type: 'chardev',
    rdev: '0:0',
    mode: '0000',
    uid: 10,
    gid: 20,
    nlink: 1,
    mtime: '1650000000750000000',
  });
  assert.deepEqual(tree.entries.b?.xattrs, { 'trusted.overlay.opaque': '79', 'user.b': '62' });
  assert.deepEqual(tree.entries.c?.xattrs, { 'trusted.overlay.opaque': '79' });
  assert.equal(tree.entries.top?.type, 'chardev');
  const strip = join(dir.path, 'strip');
  await buildExpected(strip, layers, 'strip');
  const stripped = await snapshot(strip, { root: false });
  assert.deepEqual(Object.keys(stripped.entries), ['a', 'a/kept', 'b', 'b/own', 'b/sub', 'c', 'plain']);
  assert.equal(stripped.entries.c?.xattrs, undefined);
});

/** mkfs.erofs as an independent writer: what it builds from a directory must mount as that directory. */
const mkfs = findExecutable('mkfs.erofs');
const utils = await erofsUtils();
const roundTripSkip = rootSkip || (!mkfs && 'mkfs.erofs not found (apt-get install erofs-utils)');
// mkfs.erofs 1.5 (Debian 12) fails on 255-byte names ("Could not format the device"), which these sets have.
const longNameSets: LayerSet[] = ['names', 'bigdir', 'everything'];
const modern = utils.version !== null && (utils.version[0]! > 1 || utils.version[1]! >= 6);

test('oracle round trip through mkfs.erofs and the kernel', { skip: roundTripSkip }, async (t) => {
  const cases: { set: LayerSet; mode?: 'overlay' | 'strip' }[] = [
    { set: 'types' },
    { set: 'sizes' },
    { set: 'xattrs' },
    { set: 'numbers' },
    { set: 'whiteouts' },
    { set: 'overlay', mode: 'overlay' },
    { set: 'overlay', mode: 'strip' },
    ...longNameSets.map((set) => ({ set })),
  ];
  for (const c of cases) {
    const name = `${c.set}${c.mode ? ` (${c.mode})` : ''}`;
    const skip =
      longNameSets.includes(c.set) && !modern ? 'mkfs.erofs < 1.6 cannot write 255-byte names' : false;
    await t.test(name, { skip }, async (t) => {
      const dir = await scratch(t);
      const layers = await generateLayers(c.set, join(dir.path, 'layers'), { compression: 'gzip' });
      const tree = join(dir.path, 'tree');
      const { implicitDirs } = await buildExpected(tree, layers, c.mode ?? 'merged');
      // Directories the layers do not define carry the time of extraction. mkfs.erofs 1.9 drops the
      // nanoseconds of times within its build second (compact inodes), so give them a past time.
      for (const path of ['.', ...implicitDirs]) {
        await check('touch', ['-h', '-d', '@1600000000.5', join(tree, path)]);
      }
      const image = join(dir.path, 'image.erofs');
      await check(mkfs!, ['--quiet', '--preserve-mtime', image, tree]);
      const want = await snapshot(tree);
      const have = await withMount(image, (mountpoint) => snapshot(mountpoint));
      // mkfs.erofs 1.9 marks directories holding whiteouts with trusted.overlay.origin.
      assert.deepEqual(diffSnapshots(want, have, { ignoreXattrs: ['trusted.overlay.origin'] }), []);
    });
  }
});

test('oracle round trip: a dir: tree with a socket', { skip: roundTripSkip }, async (t) => {
  const dir = await scratch(t);
  const tree = join(dir.path, 'tree');
  await generateTree(tree);
  const image = join(dir.path, 'image.erofs');
  await check(mkfs!, ['--quiet', '--preserve-mtime', image, tree]);
  const want = await snapshot(tree);
  assert.equal(want.entries['d/socket']?.type, 'socket');
  const have = await withMount(image, (mountpoint) => snapshot(mountpoint));
  assert.deepEqual(diffSnapshots(want, have), []);
});

test('oracle round trip detects a one-nanosecond difference', { skip: roundTripSkip }, async (t) => {
  const dir = await scratch(t);
  const layers = await generateLayers('numbers', join(dir.path, 'layers'));
  const tree = join(dir.path, 'tree');
  await buildExpected(tree, layers);
  await check('touch', ['-h', '-d', '@1600000000.5', tree]);
  const image = join(dir.path, 'image.erofs');
  await check(mkfs!, ['--quiet', '--preserve-mtime', image, tree]);
  await check('touch', ['-h', '-d', '@1700000000.123456790', join(tree, 'num/pax-ns')]);
  const want = await snapshot(tree);
  const have = await withMount(image, (mountpoint) => snapshot(mountpoint));
  assert.deepEqual(diffSnapshots(want, have), [
    'num/pax-ns: mtime expected 1700000000123456790, image has 1700000000123456789',
  ]);
  // And the mount is gone afterwards.
  const mounts = await run('findmnt', ['-n', '-o', 'SOURCE', '--source', image]);
  assert.equal(mounts.stdout.trim(), '');
});
