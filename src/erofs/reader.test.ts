import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import { type ByteString, displayName } from '../fs-tree/tree.ts';
import type { ByteSource } from '../io/byte-source.ts';
import { concatSources } from '../io/concat-source.ts';
import { crc32c } from '../io/crc32c.ts';
import { openFileSource } from '../io/file-source.ts';
import { DataLayout, deviceSlot, dirent, EROFS_SUPER_OFFSET, inodeCompact, superBlock } from './format.ts';
import {
  describeTree,
  type ExpectedNode,
  fileBytes,
  hasMkfsErofs,
  makeFixtureTree,
  mkfs,
} from './mkfs-fixtures.ts';
import { type ErofsImage, type Inode, openImage } from './reader.ts';

function memory(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.byteLength,
    async read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > bytes.byteLength) {
        throw new ErofsOciError('corrupt', `memory read ${offset}+${length} beyond ${bytes.byteLength}`);
      }
      return bytes.slice(offset, offset + length);
    },
  };
}

async function openBytes(bytes: Uint8Array, devices?: ByteSource[]): Promise<ErofsImage> {
  return openImage(memory(bytes), devices ? { devices } : {});
}

/** Recomputes the superblock checksum after a test patched the superblock. */
function fixChecksum(image: Uint8Array): void {
  const blockSize = 2 ** (image[EROFS_SUPER_OFFSET + superBlock.offsetOf('blkszbits')] as number);
  const at = EROFS_SUPER_OFFSET + superBlock.offsetOf('checksum');
  const block = image.slice(EROFS_SUPER_OFFSET, blockSize);
  block.fill(0, at - EROFS_SUPER_OFFSET, at - EROFS_SUPER_OFFSET + 4);
  new DataView(image.buffer, image.byteOffset).setUint32(at, crc32c(block), true);
}

/** Where a directory's first block is: its data block, or its inline tail after the inode and xattrs. */
function dirDataAt(inode: Inode): number {
  if (inode.layout === DataLayout.flatPlain || inode.size > 4096) return (inode.startBlock as number) * 4096;
  return inode.position + (inode.extended ? 64 : 32) + inode.xattrSize;
}

async function collect(image: ErofsImage): Promise<Map<ByteString, Inode>> {
  const out = new Map<ByteString, Inode>();
  for await (const entry of image.walk()) out.set(entry.path, entry.inode);
  return out;
}

const mkfsAvailable = await hasMkfsErofs();
const skip = mkfsAvailable ? false : 'needs root and mkfs.erofs (Debian erofs-utils) and python3';

describe('openImage on mkfs.erofs images', { skip }, () => {
  let dir: string;
  let tree: string;
  let expected: ExpectedNode[];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'erofs-reader-'));
    tree = join(dir, 'tree');
    await makeFixtureTree(tree);
    expected = await describeTree(tree);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /**
   * Walks the image and compares every node with the directory it was made from. `exactTimes`: the image
   * keeps nanoseconds (extended inodes); otherwise compact inodes share the superblock's nanoseconds.
   */
  async function compareWithTree(image: ErofsImage, exactTimes: boolean): Promise<void> {
    const seen = await collect(image);
    assert.deepEqual(
      [...seen.keys()].map(displayName),
      expected.map((n) => displayName(n.path)),
    );
    const nidByIno = new Map<number, number>();
    for (const node of expected) {
      const inode = seen.get(node.path) as Inode;
      const where = displayName(node.path);
      assert.equal(inode.type, node.type, where);
      assert.equal(inode.mode, node.mode, `${where} mode`);
      assert.equal(inode.uid, node.uid, `${where} uid`);
      assert.equal(inode.gid, node.gid, `${where} gid`);
      if (node.type !== 'dir') {
        assert.equal(inode.size, node.size, `${where} size`);
        assert.equal(inode.nlink, node.nlink, `${where} nlink`);
        // Hardlinks share one inode.
        const nid = nidByIno.get(node.ino);
        if (nid === undefined) nidByIno.set(node.ino, inode.nid);
        else assert.equal(inode.nid, nid, `${where} is a hardlink`);
      }
      assert.equal(inode.mtime.sec, node.mtime.sec, `${where} mtime`);
      if (exactTimes) assert.equal(inode.mtime.nsec, node.mtime.nsec, `${where} mtime nsec`);
      assert.deepEqual(inode.rdev, node.rdev, `${where} rdev`);
      assert.deepEqual(
        new Map([...inode.xattrs].map(([k, v]) => [k, Buffer.from(v)])),
        new Map([...node.xattrs].map(([k, v]) => [k, Buffer.from(v)])),
        `${where} xattrs`,
      );
      if (node.type === 'symlink') assert.equal(await image.readlink(inode), node.target, `${where} target`);
      if (node.type === 'file') {
        const want = await fileBytes(tree, node.path);
        assert.deepEqual(Buffer.from(await image.readFile(inode)), want, `${where} contents`);
      }
    }
    // Directory nlink is 2 + subdirectories, as on the source filesystem.
    for (const node of expected.filter((n) => n.type === 'dir')) {
      assert.equal((seen.get(node.path) as Inode).nlink, node.nlink, `${displayName(node.path)} nlink`);
    }
  }

  const variants: { name: string; args: string[]; exactTimes: boolean; layouts: DataLayout[] }[] = [
    {
      name: 'default options',
      args: [],
      exactTimes: false,
      layouts: [DataLayout.flatInline, DataLayout.flatPlain],
    },
    {
      name: '--preserve-mtime',
      args: ['--preserve-mtime'],
      exactTimes: true,
      layouts: [DataLayout.flatInline],
    },
    {
      name: '-E noinline_data',
      args: ['-E', 'noinline_data', '--preserve-mtime'],
      exactTimes: true,
      layouts: [DataLayout.flatPlain],
    },
    {
      name: '-E force-inode-extended',
      args: ['-E', 'force-inode-extended', '--preserve-mtime'],
      exactTimes: true,
      layouts: [DataLayout.flatInline],
    },
    {
      name: '--chunksize=4096 (4-byte block map)',
      args: ['--chunksize=4096', '--preserve-mtime'],
      exactTimes: true,
      layouts: [DataLayout.chunkBased],
    },
    {
      name: '--chunksize=8192 -E force-chunk-indexes (8-byte chunk indexes)',
      args: ['--chunksize=8192', '-E', 'force-chunk-indexes', '--preserve-mtime'],
      exactTimes: true,
      layouts: [DataLayout.chunkBased],
    },
  ];
  for (const variant of variants) {
    test(`openImage reads back every node of an image made with ${variant.name}`, async () => {
      const path = join(dir, `${variant.name.replace(/\W+/g, '_')}.img`);
      await mkfs(path, tree, variant.args);
      const source = await openFileSource(path);
      try {
        const image = await openImage(source);
        assert.equal(image.superblock.blockSize, 4096);
        assert.ok(image.superblock.checksum !== null, 'mkfs.erofs sets sb_csum');
        await compareWithTree(image, variant.exactTimes);
        const big = await image.lookup('/sizes/f300001');
        assert.ok(variant.layouts.includes(big.layout), `layout ${big.layout}`);
        if (variant.name.includes('extended')) assert.ok(big.extended);
      } finally {
        await source.close();
      }
    });
  }

  test('openImage reports the superblock as dump.erofs does', async () => {
    const path = join(dir, 'uuid.img');
    await mkfs(path, tree, ['-T', '1700000000', '-U', '6a4f4c2e-1111-4222-8333-444455556666']);
    const image = await openImage(memory(await readFile(path)));
    const sb = image.superblock;
    assert.equal(sb.uuid, '6a4f4c2e-1111-4222-8333-444455556666');
    assert.deepEqual(sb.buildTime, { sec: 1_700_000_000, nsec: 0 });
    assert.equal(sb.inodeCount, new Set(expected.map((n) => n.ino)).size);
    assert.equal(sb.blocks * sb.blockSize, (await readFile(path)).byteLength);
    assert.deepEqual(sb.features, ['sb_csum', 'mtime']);
    assert.equal(sb.volumeName, '');
    // -T gives every inode the same time.
    for (const inode of (await collect(image)).values()) assert.equal(inode.mtime.sec, 1_700_000_000);
  });

  test('readFile reads any range of chunked, flat and inline files', async () => {
    for (const args of [
      [],
      ['-E', 'noinline_data'],
      ['--chunksize=4096'],
      ['--chunksize=16384', '-E', 'force-chunk-indexes'],
    ]) {
      const path = join(dir, 'ranges.img');
      await mkfs(path, tree, args);
      const image = await openImage(memory(await readFile(path)));
      for (const name of ['f8193', 'f12388', 'f100000']) {
        const inode = await image.lookup(`/sizes/${name}`);
        const want = await fileBytes(tree, `/sizes/${name}`);
        await fc.assert(
          fc.asyncProperty(
            fc.nat({ max: want.byteLength + 10 }),
            fc.nat({ max: want.byteLength + 10 }),
            async (a, b) => {
              const got = await image.readFile(inode, a, b);
              assert.deepEqual(Buffer.from(got), want.subarray(a, a + b));
            },
          ),
          { numRuns: 60 },
        );
      }
    }
  });

  test('openImage reads chunks on an extra device, given separately or concatenated after the image', async () => {
    const path = join(dir, 'meta.img');
    const blob = join(dir, 'blob.img');
    await mkfs(path, tree, ['--blobdev', blob, '--chunksize=4096', '--preserve-mtime']);
    const meta = new Uint8Array(await readFile(path));
    const blobBytes = new Uint8Array(await readFile(blob));

    const withDevice = await openBytes(meta, [memory(blobBytes)]);
    assert.equal(withDevice.superblock.devices.length, 1);
    // mkfs.erofs 1.5 leaves the slot's block count 0.
    assert.deepEqual(withDevice.superblock.devices, [{ tag: '', blocks: 0, uniaddr: 0 }]);
    await compareWithTree(withDevice, true);

    // mkfs.erofs 1.5 leaves uniaddr 0: without the device the data cannot be found.
    const without = await openBytes(meta);
    await assert.rejects(without.readFile(await without.lookup('/sizes/f4097')), {
      code: 'not-found',
      message: /is on device 1 \(.*\), which was not given and has no unified address/,
    });

    // Give the device a unified address right after the image, as index-mode images do, and read the
    // concatenation [image][blob] as one source.
    const patched = meta.slice();
    const sb = superBlock.decode(patched, EROFS_SUPER_OFFSET);
    const slotAt = sb.devtSlotoff * deviceSlot.size;
    const slot = deviceSlot.decode(patched, slotAt);
    const blobBlocks = blobBytes.byteLength / 4096;
    deviceSlot.encode(
      { ...slot, tag: Uint8Array.from(slot.tag), uniaddrLo: sb.blocksLo, blocksLo: blobBlocks },
      patched,
      slotAt,
    );
    fixChecksum(patched);
    const flat = await openImage(concatSources([memory(patched), memory(blobBytes)]));
    assert.equal(flat.superblock.devices[0]?.uniaddr, sb.blocksLo);
    await compareWithTree(flat, true);
    // With a device given, chunks are read from it and not from the concatenation.
    const both = await openImage(memory(patched), { devices: [memory(blobBytes)] });
    await compareWithTree(both, true);

    await assert.rejects(openBytes(meta, []), {
      code: 'usage',
      message: 'Cannot open EROFS image: it has 1 extra device(s), 0 given',
    });
  });

  test('lookup resolves . and .. and reports missing components', async () => {
    const path = join(dir, 'lookup.img');
    await mkfs(path, tree);
    const image = await openImage(memory(await readFile(path)));
    const root = await image.lookup('/');
    assert.equal(root.nid, image.rootNid);
    assert.equal((await image.lookup('types/../sizes/./f1')).nid, (await image.lookup('/sizes/f1')).nid);
    assert.equal((await image.lookup('/..')).nid, root.nid);
    assert.equal((await image.lookup('/names/\xff\xfeA')).size, 6);
    await assert.rejects(image.lookup('/sizes/missing'), {
      code: 'not-found',
      message: 'Cannot find /sizes/missing in the image: /sizes has no entry missing',
    });
    await assert.rejects(image.lookup('/sizes/f1/x'), {
      code: 'not-found',
      message: 'Cannot find /sizes/f1/x in the image: /sizes/f1 is not a directory',
    });
    const fromFile = [];
    for await (const e of image.walk({ from: 'sizes/f1' })) fromFile.push(e);
    assert.deepEqual(
      fromFile.map((e) => [e.path, e.name, e.parentNid]),
      [['/sizes/f1', 'f1', (await image.lookup('/sizes')).nid]],
    );
    // Symlinks are not followed.
    assert.equal((await image.lookup('/types/dir-symlink')).type, 'symlink');
    await assert.rejects(image.lookup('/types/dir-symlink/f1'), { code: 'not-found' });
  });

  test('readdir lists a multi-block directory in byte order without . and ..', async () => {
    const path = join(dir, 'many.img');
    await mkfs(path, tree);
    const image = await openImage(memory(await readFile(path)));
    const many = await image.lookup('/many');
    assert.ok(many.size > 4 * 4096, `directory of ${many.size} bytes spans several blocks`);
    const names = (await image.readdir(many)).map((e) => e.name);
    assert.equal(names.length, 600);
    assert.deepEqual(names, [...names].sort());
    const walked = [];
    for await (const e of image.walk({ from: '/many' })) walked.push(e.path);
    assert.equal(walked.length, 601);
    assert.equal(walked[0], '/many');
    assert.equal(walked[1], '/many/entry-00000-padding');
  });

  describe('corruption', () => {
    let pristine: Uint8Array;
    let image: ErofsImage;
    before(async () => {
      const path = join(dir, 'victim.img');
      await mkfs(path, tree, ['-T', '1700000000']);
      pristine = new Uint8Array(await readFile(path));
      image = await openBytes(pristine);
    });

    test('a flipped superblock byte fails the checksum', async () => {
      const bad = pristine.slice();
      const at = EROFS_SUPER_OFFSET + superBlock.offsetOf('inos');
      bad[at] = (bad[at] as number) ^ 1;
      await assert.rejects(openBytes(bad), (error: unknown) => {
        assert.ok(error instanceof CorruptInputError);
        assert.match(
          error.message,
          /^Cannot open EROFS image: superblock checksum is 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8} \(at offset 1028\)$/,
        );
        return true;
      });
    });

    test('a missing magic is reported', async () => {
      await assert.rejects(openBytes(new Uint8Array(8192)), {
        code: 'corrupt',
        message:
          'Cannot open EROFS image: no EROFS superblock (magic is 0x00000000, expected 0xe0f5e1e2) (at offset 1024)',
      });
      await assert.rejects(openBytes(new Uint8Array(100)), {
        code: 'corrupt',
        message: 'Cannot open EROFS image: 100 bytes is too small to hold a superblock (1152 bytes)',
      });
    });

    test('a nid beyond the image is reported with its offset', async () => {
      await assert.rejects(image.readInode(10_000_000), {
        code: 'corrupt',
        message: `Cannot read inode 10000000: it lies beyond the image (${pristine.byteLength} bytes) (at offset 320000000)`,
      });
    });

    test('an out-of-range dirent name offset is reported', async () => {
      const dirInode = await image.lookup('/types');
      const bad = pristine.slice();
      const blockAt = dirDataAt(dirInode);
      // The first dirent's nameoff also gives the dirent count; point it past the block.
      dirent.encode({ ...dirent.decode(bad, blockAt), nameoff: 5000 }, bad, blockAt);
      fixChecksum(bad);
      const broken = await openBytes(bad);
      await assert.rejects(broken.readdir(dirInode.nid), {
        code: 'corrupt',
        message: `Cannot read directory inode ${dirInode.nid} block 0: first name offset 5000 is out of range (at offset ${blockAt + 8})`,
      });
    });

    test('unsorted names are reported', async () => {
      const dirInode = await image.lookup('/sizes');
      const entries = await image.readdir(dirInode);
      const bad = pristine.slice();
      const blockAt = dirDataAt(dirInode);
      // Swap the first letters of two names of equal length: f1 and f0 → "f0" after "f1".
      const text = Buffer.from(bad.buffer, blockAt, dirInode.size);
      const at = text.indexOf('f0f1');
      assert.ok(at > 0 && entries.some((e) => e.name === 'f0'));
      text.write('f1f0', at, 'latin1');
      fixChecksum(bad);
      const broken = await openBytes(bad);
      await assert.rejects(broken.readdir(dirInode.nid), {
        code: 'corrupt',
        message: `Cannot read directory inode ${dirInode.nid} block 0: names are not sorted ("f0" after "f1") (at offset ${blockAt + at + 2})`,
      });
    });

    test('a file whose size runs past the image is reported', async () => {
      const file = await image.lookup('/sizes/f300001');
      assert.equal(file.extended, false);
      const bad = pristine.slice();
      inodeCompact.encode({ ...inodeCompact.decode(bad, file.position), size: 2 ** 31 }, bad, file.position);
      const broken = await openBytes(bad);
      await assert.rejects(broken.readInode(file.nid), {
        code: 'corrupt',
        message: new RegExp(
          `^Cannot read inode ${file.nid}: 2147483648 bytes of data from block ${file.startBlock} extend beyond the image \\(\\d+ blocks\\) \\(at offset ${file.position}\\)$`,
        ),
      });
    });

    test('inline data crossing a block boundary is reported', async () => {
      const file = await image.lookup('/sizes/f511');
      assert.equal(file.layout, DataLayout.flatInline);
      assert.equal(file.xattrSize, 0);
      // Grow the xattr body until the 511-byte tail no longer fits in the inode's block.
      const room = 4096 - (file.position % 4096) - 32;
      assert.ok(room >= 511 + 12, `inline tail fits in the ${room} bytes after the inode`);
      const xattrIcount = Math.floor((room - 12) / 4);
      const bad = pristine.slice();
      inodeCompact.encode({ ...inodeCompact.decode(bad, file.position), xattrIcount }, bad, file.position);
      fixChecksum(bad);
      const broken = await openBytes(bad);
      const tailAt = file.position + 32 + 12 + 4 * (xattrIcount - 1);
      await assert.rejects(broken.readInode(file.nid), {
        code: 'corrupt',
        message: `Cannot read inode ${file.nid}: inline data of 511 bytes at offset ${tailAt} crosses a block boundary (at offset ${tailAt})`,
      });
    });

    test('a directory loop is reported by walk', async () => {
      // Point /deep/level0's dirent for level1 at /deep itself.
      const deep = await image.lookup('/deep');
      const level0 = await image.lookup('/deep/level0');
      const level1 = await image.lookup('/deep/level0/level1');
      const bad = pristine.slice();
      const view = Buffer.from(bad.buffer);
      // Find the dirent holding level1's nid inside level0's inline directory data.
      const tailStart = level0.position + 32 + level0.xattrSize;
      let patched = false;
      for (let p = tailStart; p < tailStart + level0.size; p += dirent.size) {
        const de = dirent.decode(bad, p);
        if (de.nid === level1.nid) {
          dirent.encode({ ...de, nid: deep.nid }, bad, p);
          patched = true;
          break;
        }
      }
      assert.ok(patched, `dirent found in ${view.byteLength} bytes`);
      fixChecksum(bad);
      const broken = await openBytes(bad);
      await assert.rejects(
        (async () => {
          for await (const _ of broken.walk()) {
            // Walk to the end or the error.
          }
        })(),
        {
          code: 'corrupt',
          message: `Cannot walk the image: directory inode ${deep.nid} appears twice (at /deep/level0/level1), the tree loops (at offset ${deep.position})`,
        },
      );
    });

    test('random byte flips only ever produce ErofsOciError', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.tuple(fc.nat({ max: pristine.byteLength - 1 }), fc.integer({ min: 1, max: 255 })), {
            minLength: 1,
            maxLength: 40,
          }),
          fc.boolean(),
          async (flips, keepChecksum) => {
            const bad = pristine.slice();
            for (const [at, x] of flips) bad[at] = (bad[at] as number) ^ x;
            if (keepChecksum) fixChecksum(bad);
            await exercise(bad);
          },
        ),
        { numRuns: 150, endOnFailure: true },
      );
    });
  });
});

/** Reads everything reachable in an image; any error must be an ErofsOciError. */
async function exercise(bytes: Uint8Array): Promise<void> {
  try {
    const image = await openBytes(bytes);
    let n = 0;
    for await (const entry of image.walk()) {
      if (++n > 3000) break;
      if (entry.inode.type === 'file') await image.readFile(entry.inode, 0, 65536);
      if (entry.inode.type === 'symlink') await image.readlink(entry.inode);
    }
  } catch (error) {
    if (!(error instanceof ErofsOciError)) throw error;
  }
}

test('openImage on random bytes only ever produces ErofsOciError', async () => {
  // A plausible superblock (so that the reader gets past it) over random metadata.
  const header = fc.record({
    blkszbits: fc.constantFrom(9, 10, 12),
    featureIncompat: fc.constantFrom(0, 0x4, 0x8, 0xc),
    metaBlkaddr: fc.nat({ max: 3 }),
    xattrBlkaddr: fc.nat({ max: 3 }),
    rootnid2b: fc.nat({ max: 255 }),
    blocksLo: fc.nat({ max: 24 }),
    extraDevices: fc.nat({ max: 2 }),
    devtSlotoff: fc.nat({ max: 30 }),
    inos: fc.nat(),
    epoch: fc.nat(),
  });
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ minLength: 1024, maxLength: 12288 }),
      fc.option(header),
      async (bytes, sb) => {
        if (sb && bytes.byteLength >= EROFS_SUPER_OFFSET + superBlock.size) {
          superBlock.encode({ ...sb, magic: 0xe0f5e1e2 }, bytes, EROFS_SUPER_OFFSET);
        }
        await exercise(bytes);
      },
    ),
    { numRuns: 300, endOnFailure: true },
  );
});

test('openImage reads a hand-made minimal image with a 4-byte block map hole', async () => {
  // One block of 4096: superblock, root directory inode (nid 40 → offset 1280) with inline dirents, and a
  // chunk-based file whose only chunk is a hole.
  const bytes = new Uint8Array(4096);
  superBlock.encode(
    {
      magic: 0xe0f5e1e2,
      blkszbits: 12,
      rootnid2b: 40,
      inos: 2,
      epoch: 1000,
      fixedNsec: 5,
      blocksLo: 1,
      featureIncompat: 0x4,
    },
    bytes,
    EROFS_SUPER_OFFSET,
  );
  const names = ['.', '..', 'hole'];
  const dirSize = names.length * dirent.size + names.join('').length;
  inodeCompact.encode(
    { format: DataLayout.flatInline << 1, mode: 0o40755, nlink: 2, size: dirSize, mtime: 7 },
    bytes,
    1280,
  );
  let nameoff = names.length * dirent.size;
  for (const [i, name] of names.entries()) {
    dirent.encode({ nid: i < 2 ? 40 : 44, nameoff, fileType: i < 2 ? 2 : 1 }, bytes, 1312 + i * dirent.size);
    bytes.set(Buffer.from(name), 1312 + nameoff);
    nameoff += name.length;
  }
  // nid 44 → offset 1408: 5000 bytes in 8 KiB chunks (format 1 = chunk bits above the block size).
  inodeCompact.encode(
    { format: (DataLayout.chunkBased << 1) | 0x10, mode: 0o100644, size: 5000, u: 1 },
    bytes,
    1408,
  );
  new DataView(bytes.buffer).setUint32(1440, 0xffffffff, true);
  const image = await openBytes(bytes);
  assert.equal(image.superblock.checksum, null);
  assert.deepEqual(image.superblock.buildTime, { sec: 1000, nsec: 5 });
  const root = await image.readInode(image.rootNid);
  assert.deepEqual(root.mtime, { sec: 1007, nsec: 5 });
  const file = await image.lookup('/hole');
  assert.equal(file.nlink, 1);
  assert.deepEqual(await image.readFile(file), new Uint8Array(5000));
  assert.deepEqual(await image.readdir(root), [{ name: 'hole', nid: 44, fileType: 1 }]);

  // Point the chunk at block 0: 5000 bytes from there run past the 4096-byte image.
  new DataView(bytes.buffer).setUint32(1440, 0, true);
  await assert.rejects((await openBytes(bytes)).readFile(44), {
    code: 'corrupt',
    message:
      'Cannot read data of inode 44: 5000 bytes at offset 0 of the image extend beyond its end (4096 bytes) (at offset 0)',
  });
});

test('openImage reads a hand-made image with 512-byte blocks and a checksum over its second block', async () => {
  // Blocks: 0-1 boot area, 2 superblock, 3 inodes (meta_blkaddr 3), 4 directory data, 5-6 file data.
  const bs = 512;
  const bytes = new Uint8Array(7 * bs);
  const names = ['.', '..', 'a', 'b'];
  const dirSize = names.length * dirent.size + names.join('').length;
  // nid 0: root, flat-plain directory at block 4; nid 1: 700-byte file at block 5; nid 2: inline symlink.
  inodeCompact.encode(
    { format: DataLayout.flatPlain << 1, mode: 0o40755, nlink: 2, size: dirSize, u: 4 },
    bytes,
    3 * bs,
  );
  inodeCompact.encode(
    { format: (DataLayout.flatPlain << 1) | 0x10, mode: 0o100600, size: 700, u: 5, uid: 7 },
    bytes,
    3 * bs + 32,
  );
  inodeCompact.encode(
    { format: (DataLayout.flatInline << 1) | 0x10, mode: 0o120777, size: 1 },
    bytes,
    3 * bs + 64,
  );
  bytes[3 * bs + 96] = 0x61;
  let nameoff = names.length * dirent.size;
  const nids = [0, 0, 1, 2];
  const types = [2, 2, 1, 7];
  for (const [i, name] of names.entries()) {
    dirent.encode({ nid: nids[i], nameoff, fileType: types[i] }, bytes, 4 * bs + i * dirent.size);
    bytes.set(Buffer.from(name), 4 * bs + nameoff);
    nameoff += name.length;
  }
  const data = Uint8Array.from({ length: 700 }, (_, i) => (i * 13) & 0xff);
  bytes.set(data, 5 * bs);
  superBlock.encode(
    {
      magic: 0xe0f5e1e2,
      featureCompat: 0x1,
      blkszbits: 9,
      rootnid2b: 0,
      inos: 3,
      blocksLo: 7,
      metaBlkaddr: 3,
      volumeName: Buffer.from('tiny'),
    },
    bytes,
    EROFS_SUPER_OFFSET,
  );
  // For blocks of 1 KiB or less the checksum covers one whole block from offset 1024.
  const sbBlock = bytes.slice(EROFS_SUPER_OFFSET, EROFS_SUPER_OFFSET + bs);
  new DataView(bytes.buffer).setUint32(EROFS_SUPER_OFFSET + 4, crc32c(sbBlock), true);

  const image = await openBytes(bytes);
  assert.equal(image.superblock.blockSize, 512);
  assert.equal(image.superblock.volumeName, 'tiny');
  assert.equal(image.superblock.checksum, crc32c(sbBlock));
  const seen = await collect(image);
  assert.deepEqual([...seen.keys()], ['/', '/a', '/b']);
  assert.deepEqual(await image.readFile(1), data);
  assert.deepEqual(await image.readFile(1, 500, 100), data.subarray(500, 600));
  assert.equal(await image.readlink(2), 'a');
  assert.equal((await image.lookup('/a')).uid, 7);

  // The checksum covers bytes past the superblock struct too.
  const bad = bytes.slice();
  bad[EROFS_SUPER_OFFSET + 300] = 1;
  await assert.rejects(openBytes(bad), { code: 'corrupt', message: /superblock checksum is/ });
  // A data block beyond the 7 blocks of the image.
  const far = bytes.slice();
  inodeCompact.encode(
    { format: (DataLayout.flatPlain << 1) | 0x10, mode: 0o100600, size: 700, u: 6 },
    far,
    3 * bs + 32,
  );
  await assert.rejects((await openBytes(far)).readInode(1), {
    code: 'corrupt',
    message:
      'Cannot read inode 1: 700 bytes of data from block 6 extend beyond the image (7 blocks) (at offset 1568)',
  });
});
