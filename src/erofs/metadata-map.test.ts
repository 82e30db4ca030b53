/**
 * mapMetadata against images made by erofs-utils (Debian's 1.5 from a directory; 1.9 `--tar=f --aufs
 * -Enoinline_data` as containerd's EROFS differ builds layers, when EROFS_UTILS_BIN points at it) and by
 * our writer: every byte our reader reads to list every directory and stat every inode lies in the map,
 * the map is much smaller than the image, and damaged images stop the walk with a reason instead of
 * hanging. The kernel's own reads are checked in src/mount/metadata-map.integration.test.ts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { buildReproducible, mkfsErofs19 } from '../../test-support/kernel.ts';
import { memorySource, recordingSource } from '../io/memory-source.ts';
import { type ByteRange, coalesce, covers, mapMetadata } from './metadata-map.ts';
import { addManySmallFiles, hasMkfsErofs, makeFixtureTree, mkfs } from './mkfs-fixtures.ts';
import { openImage } from './reader.ts';

const exec = promisify(execFile);

const recordingMemory = (bytes: Uint8Array) => recordingSource(memorySource(bytes));

/** What our reader reads to list every directory and stat every inode (a find + stat). */
async function oracleReads(bytes: Uint8Array): Promise<ByteRange[]> {
  const source = recordingMemory(bytes);
  const image = await openImage(source);
  for await (const _entry of image.walk()) {
    // Walking reads every inode (with xattrs) and every directory.
  }
  return source.reads;
}

async function checkMap(bytes: Uint8Array, label: string, maxShare = 0.5): Promise<void> {
  const map = await mapMetadata(recordingMemory(bytes));
  assert.equal(map.complete, true, `${label}: ${map.stopped}`);
  assert.ok(map.inodes > 20, `${label}: ${map.inodes} inodes`);
  for (const r of await oracleReads(bytes)) {
    assert.ok(
      covers(map.ranges, r.offset, r.length),
      `${label}: read [${r.offset}, +${r.length}) not in the map`,
    );
  }
  assert.ok(
    map.bytes < bytes.byteLength * maxShare,
    `${label}: map of ${map.bytes} bytes of ${bytes.byteLength}`,
  );
  for (let i = 1; i < map.ranges.length; i++) {
    const a = map.ranges[i - 1] as ByteRange;
    assert.ok(a.offset + a.length < (map.ranges[i] as ByteRange).offset, 'ranges sorted and apart');
  }
}

test('coalesce merges touching and overlapping ranges and covers finds them', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ offset: fc.nat(10_000), length: fc.nat(300) }), { maxLength: 40 }),
      (rs) => {
        const merged = coalesce(rs);
        for (const r of rs) if (r.length > 0) assert.ok(covers(merged, r.offset, r.length));
        for (let i = 1; i < merged.length; i++) {
          const a = merged[i - 1] as ByteRange;
          assert.ok(a.offset + a.length < (merged[i] as ByteRange).offset);
        }
        const total = merged.reduce((s, r) => s + r.length, 0);
        const bytes = new Set<number>();
        for (const r of rs) for (let b = r.offset; b < r.offset + r.length; b++) bytes.add(b);
        assert.equal(total, bytes.size);
      },
    ),
  );
});

describe('mapMetadata', { skip: (await hasMkfsErofs()) ? false : 'needs root and mkfs.erofs' }, () => {
  let work: string;
  let tree: string;
  let tar: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'erofs-oci-metamap-'));
    tree = join(work, 'tree');
    await makeFixtureTree(tree);
    // Many small files in several directories: the shape where metadata scatters.
    await addManySmallFiles(tree, 12, 60, 97);
    tar = join(work, 'tree.tar');
    await exec('tar', ['-C', tree, '--sort=name', '-cf', tar, '.']);
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('covers every metadata read of an image made by mkfs.erofs from a directory', async () => {
    const image = join(work, 'mkfs-dir.erofs');
    await mkfs(image, tree);
    await checkMap(await readFile(image), 'mkfs.erofs dir');
  });

  test('covers every metadata read of an image made by our writer', async () => {
    const bytes = await buildReproducible(`tar:${tar}`, join(work, 'ours.erofs'));
    // Our writer keeps small files' data inline, in the metadata blocks: a larger share of this small image.
    await checkMap(bytes, 'erofs-oci build', 0.8);
  });

  const mkfs19 = mkfsErofs19();
  test('covers every metadata read of a layer made by mkfs.erofs 1.9 --tar=f --aufs -Enoinline_data', {
    skip: mkfs19 ? false : 'needs EROFS_UTILS_BIN with mkfs.erofs 1.9',
  }, async () => {
    const image = join(work, 'tarf.erofs');
    await exec(mkfs19 as string, ['--quiet', '--tar=f', '--aufs', '-Enoinline_data', image, tar]);
    await checkMap(await readFile(image), 'mkfs.erofs --tar=f');
    const lz4 = join(work, 'tarf-lz4.erofs');
    await exec(mkfs19 as string, ['--quiet', '--tar=f', '-zlz4hc', lz4, tar]);
    await checkMap(await readFile(lz4), 'mkfs.erofs --tar=f -zlz4hc');
  });

  test('announces each batch before reading it, and stops at its byte budget', async () => {
    const image = join(work, 'budget.erofs');
    await mkfs(image, tree);
    const bytes = await readFile(image);
    const source = recordingMemory(bytes);
    const announced: ByteRange[] = [];
    const full = await mapMetadata(source, {
      prefetch: async (ranges) => {
        announced.push(...ranges);
      },
    });
    assert.ok(announced.length > 0);
    // Every announced range lies in the image's metadata.
    for (const r of announced) assert.ok(covers(full.ranges, r.offset, r.length) || r.offset < bytes.length);
    const small = await mapMetadata(recordingMemory(bytes), { maxBytes: 8192, batchInodes: 8 });
    assert.equal(small.complete, false);
    assert.match(small.stopped ?? '', /byte budget/);
  });

  test('stops with the reader error on a damaged image, and never loops on a directory cycle', async () => {
    const image = join(work, 'damaged.erofs');
    await mkfs(image, tree);
    const bytes = await readFile(image);
    const good = await mapMetadata(recordingMemory(bytes));
    // Damage the middle of each directory block: every such walk must end.
    const dirBlocks = good.ranges.filter((r) => r.offset >= 4096);
    for (const [i, r] of dirBlocks.slice(0, 6).entries()) {
      const damaged = Uint8Array.from(bytes);
      for (let b = 0; b < 64; b++) {
        const at = r.offset + ((b * 131 + i * 17) % r.length);
        damaged[at] = (damaged[at] as number) ^ 0x5a;
      }
      const map = await mapMetadata(recordingMemory(damaged), { maxMs: 30_000 });
      if (!map.complete) assert.ok(map.stopped && map.stopped.length > 0);
    }
    // A source that is not EROFS at all is refused outright.
    await assert.rejects(mapMetadata(recordingMemory(new Uint8Array(8192))), /no EROFS superblock/);
  });
});
