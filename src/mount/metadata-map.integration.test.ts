/**
 * The metadata map (src/erofs/metadata-map.ts) against the kernel: an EROFS image served as a FUSE file
 * through a source that records every read, mounted, caches dropped, then `find` with a stat of every
 * entry (what a cold `find`/`ls -lR` asks): every read the kernel needed (not its page-cache readahead after
 * one) starts in the map. Images by mkfs.erofs
 * (Debian 1.5, from a directory), by 1.9 `--tar=f --aufs -Enoinline_data` when EROFS_UTILS_BIN has it, and
 * by our writer.
 *
 * Needs root, /dev/fuse, mkfs.erofs and the kernel's EROFS.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { buildReproducible, mkfsErofs19, type TmpDir, tmpdir, withMount } from '../../test-support/kernel.ts';
import { type ByteRange, covers, mapMetadata } from '../erofs/metadata-map.ts';
import { addManySmallFiles, makeFixtureTree, mkfs } from '../erofs/mkfs-fixtures.ts';
import { memorySource, recordingSource } from '../io/memory-source.ts';
import { mountFuseFile } from './fuse-file.ts';
import { dropCaches, erofsSkipReason, forceUnmount, fuseSkipReason } from './fuse-testing.ts';

const exec = promisify(execFile);
const skip = fuseSkipReason() || erofsSkipReason();

const recording = (bytes: Uint8Array) => recordingSource(memorySource(bytes));

describe('metadata map against the kernel', { skip, timeout: 300_000 }, () => {
  let work: TmpDir;
  let tree: string;
  let tar: string;
  before(async () => {
    work = await tmpdir('erofs-oci-metamap-kernel-');
    tree = join(work.path, 'tree');
    await makeFixtureTree(tree);
    await addManySmallFiles(tree, 10, 80, 131);
    tar = join(work.path, 'tree.tar');
    await exec('tar', ['-C', tree, '--sort=name', '-cf', tar, '.']);
  });
  after(async () => {
    await work.cleanup();
  });

  /** What the kernel reads of the image for a cold find that stats every entry. */
  async function kernelReads(bytes: Uint8Array, name: string): Promise<ByteRange[]> {
    const source = recording(bytes);
    const file = join(work.path, `${name}.dev`);
    const fuse = await mountFuseFile(file, source, { fsname: 'metadata-map-test' });
    try {
      const reads = await withMount(file, async (mnt) => {
        source.reads.length = 0;
        await dropCaches();
        await exec('find', [mnt, '-printf', '%s %m %u %n %T@\n'], { maxBuffer: 64 << 20 });
        return [...source.reads];
      });
      return reads;
    } finally {
      await fuse.unmount().catch(() => forceUnmount(file));
    }
  }

  async function check(image: string, name: string): Promise<void> {
    const bytes = await readFile(image);
    const map = await mapMetadata(recording(bytes));
    assert.equal(map.complete, true, map.stopped);
    const reads = await kernelReads(bytes, name);
    assert.ok(reads.length > 0, 'the kernel read the image');
    // The kernel reads metadata through the page cache of the backing file, with readahead: a read that
    // continues an earlier one (starts where it ended) is the page cache reading ahead, and may hold file
    // data. Every other read is one the kernel needed: its first page must be metadata in the map.
    const ends = new Set<number>();
    const outside: ByteRange[] = [];
    for (const r of reads) {
      if (!ends.has(r.offset) && !covers(map.ranges, r.offset, Math.min(r.length, 4096))) outside.push(r);
      ends.add(r.offset + r.length);
    }
    assert.deepEqual(outside, [], `${name}: kernel reads outside the map of ${map.bytes} bytes`);
    // And the map predicts most of what the kernel asked for alone: nearly all of it lies in the map.
    const needed = reads.filter((r) => r.length === 4096);
    assert.ok(needed.every((r) => covers(map.ranges, r.offset, r.length)));
  }

  test('mkfs.erofs from a directory: every read the kernel needs for find + stat starts in the map', async () => {
    const image = join(work.path, 'dir.erofs');
    await mkfs(image, tree);
    await check(image, 'dir');
  });

  test('our writer: every read the kernel needs for find + stat starts in the map', async () => {
    const image = join(work.path, 'ours.erofs');
    await buildReproducible(`tar:${tar}`, image);
    await check(image, 'ours');
  });

  const mkfs19 = mkfsErofs19();
  test('mkfs.erofs 1.9 --tar=f --aufs -Enoinline_data: every read the kernel needs for find + stat starts in the map', {
    skip: mkfs19 ? false : 'needs EROFS_UTILS_BIN with mkfs.erofs 1.9',
  }, async () => {
    const image = join(work.path, 'tarf.erofs');
    await exec(mkfs19 as string, ['--quiet', '--tar=f', '--aufs', '-Enoinline_data', image, tar]);
    await check(image, 'tarf');
  });
});
