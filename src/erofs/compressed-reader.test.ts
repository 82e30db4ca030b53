import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { mkfsErofs19, withMount } from '../../test-support/kernel.ts';
import { ErofsOciError } from '../errors.ts';
import { displayName, fromByteString } from '../fs-tree/tree.ts';
import type { ByteSource } from '../io/byte-source.ts';
import { openFileSource } from '../io/file-source.ts';
import { lz4DecodeBlock } from './decompress.ts';
import { lz4Available, lz4ToolBlock } from './lz4-testing.ts';
import { DataLayout } from './format.ts';
import {
  describeTree,
  type ExpectedNode,
  fileBytes,
  hasMkfsErofs,
  makeFixtureTree,
  pattern,
} from './mkfs-fixtures.ts';
import { type Inode, openImage } from './reader.ts';

const run = promisify(execFile);

/** Text-like bytes that compress well, deterministic. */
function text(length: number, seed: number): Uint8Array {
  const words = ['alpha ', 'beta ', 'gamma\n', 'erofs ', 'kernel ', 'pcluster ', '\t', 'zstd '];
  const rand = pattern(length, seed);
  const out = new Uint8Array(length);
  let at = 0;
  for (let i = 0; at < length; i++) {
    const w = Buffer.from(words[(rand[i % length] as number) % words.length] as string);
    out.set(w.subarray(0, length - at), at);
    at += w.byteLength;
  }
  return out;
}

/** Sizes around block (4 KiB), lcluster and pcluster (64 KiB, 128 KiB) boundaries, and a few MiB. */
const SIZES = [1, 100, 4095, 4096, 4097, 8191, 12289, 65535, 65536, 65537, 131077, 1048579, 3_000_001];

async function addCompressible(root: string): Promise<void> {
  const dir = join(root, 'compress');
  await mkdir(dir);
  for (const [i, n] of SIZES.entries()) {
    await writeFile(join(dir, `text-${n}`), text(n, i + 1));
    await writeFile(join(dir, `random-${n}`), pattern(n, i + 100));
    // Half compressible, half not: pclusters of both kinds in one file.
    await writeFile(
      join(dir, `mixed-${n}`),
      Buffer.concat([text(n >> 1, i + 7), pattern(n - (n >> 1), i + 9)]),
    );
  }
  await writeFile(join(dir, 'zeros'), new Uint8Array(300_000));
}

const mkfsAvailable = await hasMkfsErofs();
const mkfs19 = mkfsErofs19();

describe('reading compressed images made by mkfs.erofs', {
  skip: mkfsAvailable ? false : 'needs root and mkfs.erofs',
}, () => {
  let dir: string;
  let tree: string;
  let expected: ExpectedNode[];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'erofs-zreader-'));
    tree = join(dir, 'tree');
    await makeFixtureTree(tree);
    await addCompressible(tree);
    expected = await describeTree(tree);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function checkImage(image: string): Promise<Set<number>> {
    const source = await openFileSource(image);
    try {
      return await checkSource(source);
    } finally {
      await source.close();
    }
  }

  async function checkSource(source: ByteSource): Promise<Set<number>> {
    const img = await openImage(source);
    const seen = new Map<string, Inode>();
    for await (const entry of img.walk()) seen.set(entry.path, entry.inode);
    assert.deepEqual(
      [...seen.keys()].map(displayName),
      expected.map((n) => displayName(n.path)),
    );
    const layouts = new Set<number>();
    for (const node of expected) {
      const inode = seen.get(node.path) as Inode;
      const where = displayName(node.path);
      layouts.add(inode.layout);
      if (node.type === 'symlink') assert.equal(await img.readlink(inode), node.target, where);
      if (node.type !== 'file') continue;
      const want = await fileBytes(tree, node.path);
      assert.equal(inode.size, want.byteLength, where);
      assert.ok(Buffer.from(await img.readFile(inode)).equals(want), `${where} contents`);
      // Reads that start and end inside pclusters and straddle their boundaries.
      for (const [offset, length] of [
        [1, 5000],
        [4095, 4098],
        [want.byteLength >> 1, 70_000],
        [Math.max(0, want.byteLength - 3), 10],
      ] as const) {
        const part = Buffer.from(await img.readFile(inode, offset, length));
        assert.ok(part.equals(want.subarray(offset, offset + length)), `${where} [${offset}, +${length})`);
      }
    }
    return layouts;
  }

  const compressed = (layouts: Set<number>) =>
    layouts.has(DataLayout.compressedCompact) || layouts.has(DataLayout.compressedFull);

  // Debian's erofs-utils 1.5 (in CI): lz4 and lz4hc, compact and full (legacy) indexes, big pclusters.
  for (const args of [
    ['-zlz4'],
    ['-zlz4hc', '-C65536'],
    ['-zlz4hc', '-Elegacy-compress'],
    ['-zlz4hc', '-Elegacy-compress,ztailpacking', '-C16384'],
    ['-zlz4', '-Eztailpacking'],
  ]) {
    test(`mkfs.erofs (PATH) ${args.join(' ')}`, async () => {
      const image = join(dir, `15-${args.join('')}.erofs`);
      await run('mkfs.erofs', ['--quiet', ...args, image, tree]);
      const layouts = await checkImage(image);
      assert.ok(compressed(layouts), 'some files are compressed');
      if (args.some((a) => a.includes('legacy')))
        assert.ok(layouts.has(DataLayout.compressedFull), 'full indexes');
      else assert.ok(layouts.has(DataLayout.compressedCompact), 'compact indexes');
    });
  }

  // erofs-utils 1.9: every algorithm the kernel knows, fragments, dedupe, 48-bit, 512-byte blocks.
  const skip19 = mkfs19 ? false : 'needs EROFS_UTILS_BIN with mkfs.erofs 1.9';
  for (const args of [
    ['-zlz4hc'],
    ['-zdeflate'],
    ['-zzstd'],
    ['-zzstd', '-C131072', '-Eztailpacking'],
    ['-zdeflate', '-C1048576', '-Eztailpacking'],
    ['-zlz4hc', '-Efragments'],
    ['-zlz4hc', '-Efragments,ztailpacking', '-C65536'],
    ['-zlz4hc', '-Ededupe'],
    ['-zlz4hc,12', '-E48bit'],
    ['-zlz4hc', '-b512'],
    ['-zlz4hc', '--max-extent-bytes=16384'],
  ]) {
    test(`mkfs.erofs 1.9 ${args.join(' ')}`, { skip: skip19 }, async () => {
      const image = join(dir, `19-${args.join('')}.erofs`);
      await run(mkfs19 as string, ['--quiet', ...args, image, tree]);
      assert.ok(compressed(await checkImage(image)), 'some files are compressed');
    });
  }

  // mkfs.erofs 1.9.3 writes a packed inode here whose last interlaced pcluster does not hold what the files
  // put in it (the kernel reads other bytes than the source has, and so do we): compare with the kernel.
  test('mkfs.erofs 1.9 -zzstd -Eall-fragments,ztailpacking -C262144: every file reads as the kernel reads it', {
    skip: skip19,
  }, async () => {
    const image = join(dir, '19-all-fragments.erofs');
    await run(mkfs19 as string, [
      '--quiet',
      '-zzstd',
      '-Eall-fragments,ztailpacking',
      '-C262144',
      image,
      tree,
    ]);
    const source = await openFileSource(image);
    try {
      const img = await openImage(source);
      let files = 0;
      await withMount(image, async (mnt) => {
        for await (const entry of img.walk()) {
          if (entry.inode.type !== 'file') continue;
          const kernel = await readFile(Buffer.concat([Buffer.from(mnt), fromByteString(entry.path)]));
          assert.ok(Buffer.from(await img.readFile(entry.inode)).equals(kernel), displayName(entry.path));
          files++;
        }
      });
      assert.ok(files > 100);
    } finally {
      await source.close();
    }
  });

  test('lzma pclusters are refused as unsupported, by name', { skip: skip19 }, async () => {
    const image = join(dir, '19-lzma.erofs');
    await run(mkfs19 as string, ['--quiet', '-zlzma', image, tree]);
    const source = await openFileSource(image);
    const img = await openImage(source);
    const inode = await img.lookup('/compress/text-65537');
    await assert.rejects(
      img.readFile(inode),
      (e: unknown) => e instanceof ErofsOciError && e.code === 'unsupported' && /lzma/.test(e.message),
    );
    await source.close();
  });
});

describe('lz4DecodeBlock', () => {
  test('decodes literals and overlapping matches, and stops early for partial decoding', () => {
    // "abc" literals, then a match of 9 at offset 3 ("abcabcabc"), then literal "Z" as the last sequence.
    const block = Uint8Array.from([0x35, 0x61, 0x62, 0x63, 0x03, 0x00, 0x10, 0x5a]);
    assert.equal(Buffer.from(lz4DecodeBlock(block, 13)).toString(), 'abcabcabcabcZ');
    assert.equal(Buffer.from(lz4DecodeBlock(block, 5)).toString(), 'abcab');
  });

  test('agrees with the lz4 tool on its own blocks', {
    skip: lz4Available ? false : 'needs the lz4 tool',
  }, async () => {
    const data = Buffer.concat([text(200_000, 3), pattern(5000, 4), text(70_000, 5)]);
    const block = await lz4ToolBlock(data);
    assert.ok(Buffer.from(lz4DecodeBlock(block, data.byteLength)).equals(data));
  });

  test('corrupt blocks throw and never write past the wanted length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 5000 }), (bytes, want) => {
        try {
          assert.ok(lz4DecodeBlock(bytes, want).byteLength <= want);
        } catch (error) {
          assert.ok(error instanceof Error && /LZ4/.test(error.message), String(error));
        }
      }),
    );
  });
});
