import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ErofsOciError, isErofsOciError } from '../errors.ts';
import type { ByteString } from '../fs-tree/tree.ts';
import { decompress } from '../io/decompress.ts';
import { headerChecksums, tarHeader } from './format.ts';
import { readTar, type TarEntry, type TarEntryWithBody } from './reader.ts';

// ---------------------------------------------------------------------------------------------------------
// Helpers

/** Yields `bytes` in pieces of the given sizes, cycling (a size of 0 yields an empty chunk). */
async function* chunked(bytes: Uint8Array, sizes: readonly number[] = [65536]): AsyncGenerator<Uint8Array> {
  let offset = 0;
  let i = 0;
  while (offset < bytes.byteLength) {
    const size = sizes[i++ % sizes.length]!;
    yield bytes.subarray(offset, offset + size);
    offset += size;
  }
}

type ReadEntry = Omit<TarEntry, never> & { data: Buffer };

function plain(entry: TarEntryWithBody): TarEntry {
  const { body: _, ...rest } = entry;
  return rest;
}

async function readEntries(
  input: AsyncIterable<Uint8Array> | Uint8Array,
  sizes?: number[],
): Promise<ReadEntry[]> {
  const source = input instanceof Uint8Array ? chunked(input, sizes) : input;
  const entries: ReadEntry[] = [];
  for await (const entry of readTar(source)) {
    const parts: Uint8Array[] = [];
    for await (const part of entry.body()) parts.push(part);
    entries.push({ ...plain(entry), data: Buffer.concat(parts) });
  }
  return entries;
}

async function readError(input: Uint8Array, sizes?: number[]): Promise<ErofsOciError> {
  try {
    await readEntries(input, sizes);
  } catch (error) {
    if (error instanceof ErofsOciError) return error;
    throw error;
  }
  assert.fail('expected the archive to be refused');
}

const latin1 = (s: ByteString): Buffer => Buffer.from(s, 'latin1');

function padded(size: number): number {
  return Math.ceil(size / 512) * 512;
}

/**
 * Checks the offsets against the archive bytes: every file's data is at `dataOffset`, and entries tile the
 * archive (each starts where the previous one's padded data ends), apart from headers that belong to no
 * entry (global pax headers, volume labels) before `firstHeaderOffset`.
 */
function assertOffsets(
  archive: Uint8Array,
  entries: readonly ReadEntry[],
  dataSizes?: Map<string, number>,
): void {
  let end: number | null = null;
  for (const entry of entries) {
    assert.equal(entry.headerOffset % 512, 0);
    assert.equal(entry.dataOffset % 512, 0);
    assert.ok(entry.headerOffset < entry.dataOffset);
    if (end !== null)
      assert.equal(entry.headerOffset, end, `${entry.path} starts where the previous entry ends`);
    assert.deepEqual(
      Buffer.from(archive.subarray(entry.dataOffset, entry.dataOffset + entry.size)),
      entry.data,
    );
    end = entry.dataOffset + padded(dataSizes?.get(entry.path) ?? entry.size);
  }
}

function octal(value: number, width: number): Buffer {
  return Buffer.from(`${value.toString(8).padStart(width - 1, '0')}\0`, 'latin1');
}

/** Rewrites a header's checksum after a test changed it (GNU style: six digits, NUL, space). */
function fixChecksum(archive: Buffer, headerOffset: number): void {
  const block = archive.subarray(headerOffset, headerOffset + 512);
  const sum = headerChecksums(block).unsigned;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, tarHeader.offsetOf('chksum'), 'latin1');
}

function setField(
  archive: Buffer,
  headerOffset: number,
  field: Parameters<typeof tarHeader.offsetOf>[0],
  value: Uint8Array,
): void {
  archive.set(value, headerOffset + tarHeader.offsetOf(field));
  fixChecksum(archive, headerOffset);
}

// ---------------------------------------------------------------------------------------------------------
// Python's tarfile as an independent writer

type SpecType =
  | 'file'
  | 'oldfile'
  | 'contiguous'
  | 'hardlink'
  | 'symlink'
  | 'chardev'
  | 'blockdev'
  | 'dir'
  | 'fifo';

interface Spec {
  name: ByteString;
  type: SpecType;
  data?: Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: ByteString;
  devmajor?: number;
  devminor?: number;
  /** Extra pax records (pax format only); values are byte strings. */
  pax?: Record<string, ByteString>;
  /** What the reader must return where it differs from what follows from the fields above. */
  expect?: Partial<TarEntry>;
}

const PYTHON_WRITER = `
import io, json, sys, tarfile
spec = json.load(sys.stdin)
def s(h): return bytes.fromhex(h).decode('utf-8', 'surrogateescape')
types = {'file': tarfile.REGTYPE, 'oldfile': tarfile.AREGTYPE, 'contiguous': tarfile.CONTTYPE,
         'hardlink': tarfile.LNKTYPE, 'symlink': tarfile.SYMTYPE, 'chardev': tarfile.CHRTYPE,
         'blockdev': tarfile.BLKTYPE, 'dir': tarfile.DIRTYPE, 'fifo': tarfile.FIFOTYPE}
out = io.BytesIO()
glob = {k: s(v) for k, v in spec['global'].items()} if spec['global'] else None
tf = tarfile.open(fileobj=out, mode='w', format=getattr(tarfile, spec['format'] + '_FORMAT'),
                  encoding='utf-8', errors='surrogateescape', pax_headers=glob)
for e in spec['entries']:
    t = tarfile.TarInfo(s(e['name']))
    t.type = types[e['type']]
    t.mode, t.uid, t.gid, t.mtime = e['mode'], e['uid'], e['gid'], e['mtime']
    t.uname = t.gname = ''
    t.linkname = s(e['linkname'])
    t.devmajor, t.devminor = e['devmajor'], e['devminor']
    t.pax_headers = {k: s(v) for k, v in e['pax'].items()}
    data = bytes.fromhex(e['data'])
    t.size = len(data)
    tf.addfile(t, io.BytesIO(data) if data else None)
tf.close()
sys.stdout.buffer.write(out.getvalue())
`;

function pythonTar(
  format: 'GNU' | 'PAX' | 'USTAR',
  specs: readonly Spec[],
  global?: Record<string, ByteString>,
): Buffer {
  const hex = (s: ByteString): string => latin1(s).toString('hex');
  const input = JSON.stringify({
    format,
    global:
      global === undefined ? null : Object.fromEntries(Object.entries(global).map(([k, v]) => [k, hex(v)])),
    entries: specs.map((e) => ({
      name: hex(e.name),
      type: e.type,
      mode: e.mode ?? 0o644,
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? 1700000000,
      linkname: hex(e.linkname ?? ''),
      devmajor: e.devmajor ?? 0,
      devminor: e.devminor ?? 0,
      pax: Object.fromEntries(Object.entries(e.pax ?? {}).map(([k, v]) => [k, hex(v)])),
      data: (e.data ?? Buffer.alloc(0)).toString('hex'),
    })),
  });
  return execFileSync('python3', ['-c', PYTHON_WRITER], { input, maxBuffer: 1 << 30 });
}

/** What the reader must return for an entry Python wrote from `spec`. */
function expectedFrom(spec: Spec): Omit<ReadEntry, 'headerOffset' | 'dataOffset'> {
  const hasData = spec.type === 'file' || spec.type === 'oldfile' || spec.type === 'contiguous';
  const type =
    spec.type === 'oldfile'
      ? spec.name.endsWith('/')
        ? 'dir'
        : 'file'
      : spec.type === 'contiguous'
        ? 'file'
        : spec.type;
  const xattrs = new Map<ByteString, Uint8Array>();
  for (const [key, value] of Object.entries(spec.pax ?? {})) {
    if (key.startsWith('SCHILY.xattr.')) xattrs.set(key.slice(13), latin1(value));
  }
  const isDevice = type === 'chardev' || type === 'blockdev';
  const data = hasData && type === 'file' ? (spec.data ?? Buffer.alloc(0)) : Buffer.alloc(0);
  return {
    // Python appends '/' to directory names.
    path: spec.type === 'dir' && !spec.name.endsWith('/') ? `${spec.name}/` : spec.name,
    type,
    linkname: type === 'hardlink' || type === 'symlink' ? (spec.linkname ?? '') : '',
    mode: (spec.mode ?? 0o644) & 0o7777,
    uid: spec.uid ?? 0,
    gid: spec.gid ?? 0,
    size: data.byteLength,
    mtime: { sec: spec.mtime ?? 1700000000, nsec: 0 },
    devmajor: isDevice ? (spec.devmajor ?? 0) : 0,
    devminor: isDevice ? (spec.devminor ?? 0) : 0,
    xattrs,
    data,
    ...spec.expect,
  };
}

function withoutOffsets(entry: ReadEntry): Omit<ReadEntry, 'headerOffset' | 'dataOffset'> {
  const { headerOffset: _, dataOffset: __, ...rest } = entry;
  return rest;
}

const random = randomBytes(100_000);
const longDir = `root/${'d'.repeat(120)}/${'e'.repeat(120)}`;

/** Entries every format can carry. */
const commonSpecs: Spec[] = [
  { name: 'root', type: 'dir', mode: 0o755 },
  { name: 'root/plain.txt', type: 'file', data: Buffer.from('hello\n'), uid: 1000, gid: 100 },
  { name: 'root/special-bits', type: 'file', mode: 0o7755, data: Buffer.from('x') },
  { name: 'root/empty', type: 'file' },
  { name: 'root/block-512', type: 'file', data: random.subarray(0, 512) },
  { name: 'root/block-1025', type: 'file', data: random.subarray(0, 1025) },
  { name: 'root/random', type: 'file', data: random },
  { name: 'root/caf\xe9-latin1', type: 'file', data: Buffer.from('not UTF-8') },
  { name: 'root/\xe2\x82\xac-utf8', type: 'file', data: Buffer.from('UTF-8') },
  { name: 'root/aregtype', type: 'oldfile', data: Buffer.from('type NUL') },
  { name: 'root/olddir/', type: 'oldfile' },
  { name: 'root/contiguous', type: 'contiguous', data: Buffer.from('type 7') },
  { name: 'root/hard', type: 'hardlink', linkname: 'root/plain.txt' },
  { name: 'root/sym', type: 'symlink', linkname: '../plain.txt', mode: 0o777 },
  { name: 'root/null', type: 'chardev', devmajor: 1, devminor: 3, mode: 0o666 },
  { name: 'root/whiteout', type: 'chardev', devmajor: 0, devminor: 0, mode: 0 },
  { name: 'root/sda', type: 'blockdev', devmajor: 8, devminor: 0, mode: 0o660 },
  { name: 'root/fifo', type: 'fifo', mode: 0o600 },
];

/** Entries that need GNU or pax extensions: long names, long links, big and negative numbers. */
const extendedSpecs: Spec[] = [
  { name: `${longDir}/${'f'.repeat(100)}`, type: 'file', data: Buffer.from('long name') },
  { name: `${longDir}/link`, type: 'symlink', linkname: `../${'t'.repeat(200)}` },
  { name: `${longDir}/hard`, type: 'hardlink', linkname: `${longDir}/${'f'.repeat(100)}` },
  { name: 'root/big-ids', type: 'file', uid: 2 ** 40, gid: 2 ** 33 + 5, data: Buffer.from('ids') },
  { name: 'root/negative-mtime', type: 'file', mtime: -100000 },
  { name: 'root/far-future', type: 'file', mtime: 2 ** 34 },
  { name: 'root/big-devices', type: 'blockdev', devmajor: 0o7777777, devminor: 0o7777777 },
];

// ---------------------------------------------------------------------------------------------------------

describe('readTar with archives written by Python tarfile', () => {
  test('readTar returns exactly what a GNU-format archive holds', async () => {
    const specs = [...commonSpecs, ...extendedSpecs];
    const archive = pythonTar('GNU', specs);
    const entries = await readEntries(archive);
    assert.deepEqual(entries.map(withoutOffsets), specs.map(expectedFrom));
    assertOffsets(archive, entries);
    // Entries with a GNU long name start at their 'L' header.
    const long = entries.find((e) => e.path.endsWith('f'.repeat(100)))!;
    assert.equal(long.dataOffset - long.headerOffset, 512 + padded(long.path.length + 1) + 512);
  });

  test('readTar returns exactly what a pax-format archive holds, xattrs and nanoseconds included', async () => {
    const paxSpecs: Spec[] = [
      {
        name: 'root/xattrs',
        type: 'file',
        data: Buffer.from('with xattrs'),
        pax: {
          'SCHILY.xattr.user.a': '1',
          'SCHILY.xattr.user.binary': '\x00\xff\n=\x80',
          'SCHILY.xattr.security.capability': '\x01\x00\x00\x02\x00\x20\x00\x00',
          'SCHILY.xattr.user.empty': '',
          'LIBARCHIVE.xattr.user.%3Dodd%20name': Buffer.from([0, 1, 2, 0xfe]).toString('base64'),
        },
        expect: {
          xattrs: new Map([
            ['user.a', Buffer.from('1')],
            ['user.binary', latin1('\x00\xff\n=\x80')],
            ['security.capability', latin1('\x01\x00\x00\x02\x00\x20\x00\x00')],
            ['user.empty', Buffer.alloc(0)],
            ['user.=odd name', Buffer.from([0, 1, 2, 0xfe])],
          ]),
        },
      },
      { name: 'root/opaque', type: 'dir', pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y' } },
      {
        name: 'root/ns',
        type: 'file',
        pax: { mtime: '1700000000.123456789' },
        expect: { mtime: { sec: 1700000000, nsec: 123456789 } },
      },
      {
        name: 'root/ns-negative',
        type: 'file',
        pax: { mtime: '-1.25' },
        expect: { mtime: { sec: -2, nsec: 750000000 } },
      },
      {
        name: 'root/pax-ids',
        type: 'file',
        pax: { uid: '123456789', gid: '987654321' },
        expect: { uid: 123456789, gid: 987654321 },
      },
      { name: 'root/\xff\xfe-not-utf8-in-pax', type: 'file', data: Buffer.from('binary path') },
    ];
    const specs = [...commonSpecs, ...extendedSpecs, ...paxSpecs];
    const archive = pythonTar('PAX', specs);
    const entries = await readEntries(archive);
    assert.deepEqual(
      entries.map(withoutOffsets),
      specs.map(expectedFrom).map((e, i) => ({ ...e, ...specs[i]!.expect })),
    );
    assertOffsets(archive, entries);
  });

  test('readTar joins the ustar prefix and name', async () => {
    const specs: Spec[] = [
      { name: `${'p'.repeat(150)}/${'n'.repeat(100)}`, type: 'file', data: Buffer.from('prefixed') },
      { name: `${'q'.repeat(154)}/short`, type: 'dir' },
    ];
    const archive = pythonTar('USTAR', specs);
    assert.equal(archive.subarray(345, 346).toString(), 'p'); // the name really was split
    const entries = await readEntries(archive);
    assert.deepEqual(entries.map(withoutOffsets), specs.map(expectedFrom));
  });

  test('readTar applies uid, gid, mtime and xattrs of global pax headers, and ignores their path and size', async () => {
    const specs: Spec[] = [
      { name: 'a', type: 'file', data: Buffer.from('a'), uid: 5 },
      { name: 'b', type: 'file', uid: 2 ** 40, pax: { 'SCHILY.xattr.user.g': 'entry' } },
      { name: 'c', type: 'dir', pax: { mtime: '' } },
    ];
    const archive = pythonTar('PAX', specs, {
      uid: '4242',
      mtime: '77.5',
      path: 'ignored',
      size: '3',
      'SCHILY.xattr.user.g': 'global',
      'SCHILY.xattr.user.h': 'global',
    });
    const entries = await readEntries(archive);
    const g = (v: string): [string, Buffer] => ['user.g', Buffer.from(v)];
    const h: [string, Buffer] = ['user.h', Buffer.from('global')];
    assert.deepEqual(
      entries.map((e) => [e.path, e.uid, e.mtime, e.xattrs, e.data.toString()]),
      [
        ['a', 4242, { sec: 77, nsec: 500000000 }, new Map([g('global'), h]), 'a'],
        ['b', 2 ** 40, { sec: 77, nsec: 500000000 }, new Map([g('entry'), h]), ''],
        // An empty mtime record in the entry's own header deletes the global value: the ustar field counts.
        ['c/', 4242, { sec: 1700000000, nsec: 0 }, new Map([g('global'), h]), ''],
      ],
    );
    assert.equal(entries[0]!.headerOffset, 1024); // after the global header and its data block
  });
});

describe('readTar with archives written by GNU tar', () => {
  type Expected = Omit<TarEntry, 'headerOffset' | 'dataOffset' | 'xattrs' | 'linkname'>;

  interface TreeOptions {
    /** Names and link targets beyond what ustar can hold. */
    long?: boolean;
    /** Device nodes and FIFOs (v7 cannot hold them). */
    special?: boolean;
  }

  /** A directory tree in a fresh temporary directory, archived with GNU tar; removed afterwards. */
  class Tree {
    readonly base = mkdtempSync(join(tmpdir(), 'tar-reader-'));

    constructor({ long = true, special = true }: TreeOptions = {}) {
      mkdirSync(this.p('t/dir/sub'), { recursive: true });
      // 't/' + 90 + '/' + 90: longer than the 100-byte name field, so ustar splits it into prefix and name.
      mkdirSync(this.p(`t/${'m'.repeat(90)}`));
      writeFileSync(this.p(`t/${'m'.repeat(90)}/${'n'.repeat(90)}`), 'split');
      writeFileSync(this.p('t/a.txt'), 'hello\n');
      writeFileSync(this.p('t/empty'), '');
      writeFileSync(this.p('t/dir/big'), random);
      writeFileSync(this.p('t/dir/exact'), random.subarray(0, 1024));
      writeFileSync(this.p('t/caf\xe9'), 'latin1 name');
      writeFileSync(this.p('t/setuid'), '#!/bin/sh\n');
      execFileSync('chmod', ['6755', this.s('t/setuid')]);
      execFileSync('chmod', ['1777', this.s('t/dir/sub')]);
      linkSync(this.p('t/a.txt'), this.p('t/dir/hardlink'));
      symlinkSync('../a.txt', this.p('t/dir/symlink'));
      chownSync(this.p('t/a.txt'), 1000, 1001);
      execFileSync('touch', ['-h', '-d', '@1700000000.123456789', this.s('t/dir/symlink')]);
      execFileSync('touch', ['-d', '@1600000000.5', this.s('t/a.txt')]);
      if (long) {
        mkdirSync(this.p(`t/${'x'.repeat(100)}/${'y'.repeat(100)}`), { recursive: true });
        writeFileSync(this.p(`t/${'x'.repeat(100)}/${'y'.repeat(100)}/${'z'.repeat(80)}`), 'deep');
        symlinkSync('l'.repeat(150), this.p('t/longlink'));
      }
      if (special) {
        execFileSync('mkfifo', [this.s('t/fifo')]);
        execFileSync('mknod', [this.s('t/null'), 'c', '1', '3']);
        execFileSync('mknod', [this.s('t/whiteout'), 'c', '0', '0']);
        execFileSync('mknod', [this.s('t/loop'), 'b', '7', '300']);
      }
    }

    /** A path under the base directory, as bytes (names are not all UTF-8). */
    p(relative: ByteString): Buffer {
      return latin1(`${this.base}/${relative}`);
    }

    s(relative: ByteString): string {
      return this.p(relative).toString('latin1');
    }

    tar(args: string[]): Buffer {
      const out = join(this.base, 'out.tar');
      execFileSync('tar', ['--numeric-owner', '-C', this.base, ...args, '-f', out, 't'], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      return readFileSync(out);
    }

    remove(): void {
      rmSync(this.base, { recursive: true, force: true });
    }

    /** What GNU tar must have recorded for every path, from the files themselves. */
    expectations(withNanoseconds: boolean): Map<ByteString, Expected> {
      const result = new Map<ByteString, Expected>();
      const walk = (relative: ByteString): void => {
        const st = lstatSync(this.p(relative), { bigint: true });
        const kind = st.isDirectory()
          ? 'dir'
          : st.isSymbolicLink()
            ? 'symlink'
            : st.isFIFO()
              ? 'fifo'
              : st.isCharacterDevice()
                ? 'chardev'
                : st.isBlockDevice()
                  ? 'blockdev'
                  : 'file';
        const rdev = Number(st.rdev);
        const isDevice = kind === 'chardev' || kind === 'blockdev';
        const path = kind === 'dir' ? `${relative}/` : relative;
        result.set(path, {
          path,
          type: kind,
          mode: Number(st.mode) & 0o7777,
          uid: Number(st.uid),
          gid: Number(st.gid),
          size: kind === 'file' ? Number(st.size) : 0,
          mtime: {
            sec: Number(st.mtimeNs / 1_000_000_000n),
            nsec: withNanoseconds ? Number(st.mtimeNs % 1_000_000_000n) : 0,
          },
          devmajor: isDevice ? (rdev >> 8) & 0xfff : 0,
          devminor: isDevice ? (rdev & 0xff) | ((rdev >> 12) & 0xfff00) : 0,
        });
        if (kind === 'dir') {
          for (const name of readdirSync(this.p(relative), { encoding: 'buffer' })) {
            walk(`${relative}/${name.toString('latin1')}`);
          }
        }
      };
      walk('t');
      return result;
    }

    /** Reads `archive` and checks every entry against the files it was made from. */
    async check(archive: Buffer, withNanoseconds: boolean): Promise<ReadEntry[]> {
      const entries = await readEntries(archive, [10240]);
      const expected = this.expectations(withNanoseconds);
      assert.deepEqual(new Set(entries.map((e) => e.path)), new Set(expected.keys()));
      let hardlinks = 0;
      for (const entry of entries) {
        const want = expected.get(entry.path)!;
        const { linkname, xattrs: _, headerOffset: __, dataOffset: ___, data, ...rest } = entry;
        if (entry.type === 'hardlink') {
          // GNU tar stores the second path of a hardlinked file as a link to the first.
          hardlinks++;
          assert.notEqual(linkname, entry.path);
          assert.equal(lstatSync(this.p(linkname)).ino, lstatSync(this.p(entry.path)).ino);
          assert.deepEqual({ ...rest, type: 'file', size: want.size }, want, entry.path);
          continue;
        }
        assert.deepEqual(rest, want, entry.path);
        if (entry.type === 'file') assert.deepEqual(data, readFileSync(this.p(entry.path)), entry.path);
        if (entry.type === 'symlink') {
          assert.equal(linkname, readlinkSync(this.p(entry.path), { encoding: 'buffer' }).toString('latin1'));
        } else {
          assert.equal(linkname, '');
        }
      }
      assert.equal(hardlinks, 1);
      assertOffsets(archive, entries);
      return entries;
    }
  }

  async function withTree(options: TreeOptions, action: (tree: Tree) => Promise<void>): Promise<void> {
    const tree = new Tree(options);
    try {
      await action(tree);
    } finally {
      tree.remove();
    }
  }

  test('readTar reads GNU tar --format=gnu (long names, long links, base-256 ids)', async () => {
    await withTree({}, async (tree) => {
      chownSync(tree.p('t/dir/big'), 3_000_000, 3_000_001); // beyond 7 octal digits: base-256
      const archive = tree.tar(['--format=gnu', '-c']);
      assert.equal(archive[tarHeader.offsetOf('typeflag')], 0x35); // no long name before 't/'
      assert.ok(archive.includes('././@LongLink'));
      await tree.check(archive, false);
    });
  });

  test('readTar reads GNU tar --format=posix with xattrs and nanosecond times', async () => {
    await withTree({}, async (tree) => {
      execFileSync('setfattr', ['-n', 'user.plain', '-v', 'value', tree.s('t/dir/big')]);
      execFileSync('python3', [
        '-c',
        `import os, sys; os.setxattr(sys.argv[1].encode('latin1'), 'user.bin', bytes([0, 255, 10, 61]))`,
        tree.s('t/dir/big'),
      ]);
      execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', tree.s('t/dir/sub')]);
      chownSync(tree.p('t/dir/big'), 3_000_000, 3_000_001);
      const entries = await tree.check(
        tree.tar(['--format=posix', '--xattrs', '--xattrs-include=*', '-c']),
        true,
      );
      const xattrsOf = (path: string) => entries.find((e) => e.path === path)!.xattrs;
      assert.deepEqual(
        xattrsOf('t/dir/big'),
        new Map([
          ['user.plain', Buffer.from('value')],
          ['user.bin', Buffer.from([0, 255, 10, 61])],
        ]),
      );
      assert.deepEqual(xattrsOf('t/dir/sub/'), new Map([['trusted.overlay.opaque', Buffer.from('y')]]));
      assert.deepEqual(xattrsOf('t/a.txt'), new Map());
    });
  });

  test('readTar reads GNU tar --format=ustar (prefix/name split)', async () => {
    await withTree({ long: false }, async (tree) => {
      const archive = tree.tar(['--format=ustar', '-c']);
      assert.ok(archive.includes(`t/${'m'.repeat(90)}\0`)); // a prefix field
      await tree.check(archive, false);
    });
  });

  test('readTar reads GNU tar --format=v7 (no magic)', async () => {
    await withTree({ long: false, special: false }, async (tree) => {
      rmSync(tree.p(`t/${'m'.repeat(90)}`), { recursive: true });
      const archive = tree.tar(['--format=v7', '-c']);
      assert.equal(archive.subarray(257, 265).toString('latin1'), '\0'.repeat(8)); // really no magic
      await tree.check(archive, false);
    });
  });

  test('readTar reads gzip and zstd compressed archives through decompress', async () => {
    await withTree({}, async (tree) => {
      const plainEntries = await readEntries(tree.tar(['--format=gnu', '-c']));
      for (const flag of ['-z', '--zstd']) {
        const compressed = tree.tar(['--format=gnu', '-c', flag]);
        const entries = await readEntries(decompress(chunked(compressed, [4096])));
        assert.deepEqual(entries, plainEntries);
      }
    });
  });

  test('readTar applies global headers from --pax-option', async () => {
    await withTree({}, async (tree) => {
      const archive = tree.tar([
        '--format=posix',
        '--pax-option=SCHILY.xattr.user.everywhere=1,comment=hi,delete=atime,delete=ctime',
        '-c',
      ]);
      assert.equal(archive[tarHeader.offsetOf('typeflag')], 0x67); // starts with a 'g' header
      const entries = await readEntries(archive);
      assert.equal(entries.length, tree.expectations(false).size);
      for (const entry of entries)
        assert.deepEqual(entry.xattrs, new Map([['user.everywhere', Buffer.from('1')]]));
    });
  });

  test('readTar skips a GNU volume label and reads GNU dumpdirs as directories', async () => {
    await withTree({}, async (tree) => {
      const paths = [...tree.expectations(false).keys()].sort();
      const labelled = await readEntries(tree.tar(['--format=gnu', '-V', 'LABEL', '-c']));
      assert.deepEqual(labelled.map((e) => e.path).sort(), paths);
      assert.equal(labelled[0]!.headerOffset, 512);

      const archive = tree.tar(['--format=gnu', '-g', join(tree.base, 'snapshot'), '-c']);
      const entries = await readEntries(archive);
      assert.deepEqual(entries.map((e) => e.path).sort(), paths);
      const dirs = entries.filter((e) => e.type === 'dir');
      assert.ok(dirs.every((e) => archive[e.dataOffset - 512 + tarHeader.offsetOf('typeflag')] === 0x44)); // 'D'
      assert.ok(dirs.every((e) => e.size === 0 && e.data.byteLength === 0));
    });
  });

  test('readTar refuses GNU sparse files and multi-volume continuations as unsupported', async () => {
    await withTree({}, async (tree) => {
      writeFileSync(tree.p('t/sparse'), '');
      execFileSync('truncate', ['-s', '1M', tree.s('t/sparse')]);
      writeFileSync(tree.p('t/sparse'), 'tail', { flag: 'a' });
      const gnu = await readError(tree.tar(['--format=gnu', '--sparse', '-c']));
      assert.equal(gnu.code, 'unsupported');
      assert.match(gnu.message, /^tar entry 't\/sparse' at offset \d+: GNU sparse files are not supported$/);
      const pax = await readError(tree.tar(['--format=posix', '--sparse', '-c']));
      assert.equal(pax.code, 'unsupported');
      assert.match(pax.message, /GNU sparse files are not supported \(pax keyword GNU\.sparse\./);

      const volumes = [join(tree.base, 'v1.tar'), join(tree.base, 'v2.tar')];
      writeFileSync(join(tree.base, 'mv'), random);
      execFileSync('tar', [
        '-C',
        tree.base,
        '-c',
        '-M',
        '-L',
        '60',
        '-f',
        volumes[0]!,
        '-f',
        volumes[1]!,
        'mv',
      ]);
      const error = await readError(readFileSync(volumes[1]!));
      assert.equal(error.code, 'unsupported');
      assert.equal(
        error.message,
        "tar entry 'mv' at offset 0: GNU multi-volume continuations are not supported",
      );
    });
  });
});

describe('readTar end of archive', () => {
  const archive = pythonTar('GNU', [
    { name: 'a', type: 'file', data: Buffer.from('first') },
    { name: 'b', type: 'file', data: Buffer.from('second') },
  ]);
  const end = 2048; // two headers, two data blocks

  test('readTar accepts two zero blocks, one zero block, or none at the end (as GNU tar does)', async () => {
    const full = await readEntries(archive);
    assert.deepEqual(
      full.map((e) => e.path),
      ['a', 'b'],
    );
    assert.deepEqual(await readEntries(archive.subarray(0, end + 1024)), full);
    assert.deepEqual(await readEntries(archive.subarray(0, end + 512)), full);
    assert.deepEqual(await readEntries(archive.subarray(0, end)), full);
  });

  test('readTar ignores what follows the first zero block but reads the stream to its end', async () => {
    const tail = Buffer.concat([archive.subarray(0, end + 512), randomBytes(700)]);
    let consumed = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      for await (const chunk of chunked(tail, [100])) {
        consumed += chunk.byteLength;
        yield chunk;
      }
    }
    assert.deepEqual(
      (await readEntries(source())).map((e) => e.path),
      ['a', 'b'],
    );
    assert.equal(consumed, tail.byteLength);
  });

  test('readTar refuses an extended header with no entry after it', async () => {
    const pax = pythonTar('PAX', [{ name: 'x'.repeat(200), type: 'file' }]);
    const error = await readError(pax.subarray(0, 1024));
    assert.equal(
      error.message,
      'tar archive ends after the extended header at offset 0, before the entry it describes',
    );
    const zero = Buffer.concat([pax.subarray(0, 1024), Buffer.alloc(1024)]);
    assert.equal(
      (await readError(zero)).message,
      'tar archive ends at offset 1024, after the extended header at offset 0 and before the entry it describes',
    );
  });
});

describe('readTar refuses corrupt and truncated archives with a precise error', () => {
  const data = random.subarray(0, 5000);
  const archive = pythonTar('GNU', [
    { name: 'a/b', type: 'file', data },
    { name: 'c', type: 'file', data: Buffer.from('after') },
  ]);
  const second = 512 + padded(5000); // 5632

  test('readTar reports a checksum mismatch with both sums', async () => {
    const bad = Buffer.from(archive);
    bad[second + 1] = 0x41; // the name of the second header
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : bad[second + i]!;
    const recorded = Number.parseInt(bad.subarray(second + 148, second + 154).toString('latin1'), 8);
    const error = await readError(bad);
    assert.equal(error.code, 'corrupt');
    assert.equal(
      error.message,
      `Cannot parse tar header at offset ${second}: checksum is ${recorded}, expected ${sum}`,
    );
  });

  test('readTar accepts the historic signed checksum', async () => {
    const signed = Buffer.from(
      pythonTar('GNU', [{ name: '\xe9\xe9', type: 'file', data: Buffer.from('x') }]),
    );
    const { signed: sum } = headerChecksums(signed.subarray(0, 512));
    signed.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    assert.deepEqual(
      (await readEntries(signed)).map((e) => e.path),
      ['\xe9\xe9'],
    );
  });

  test('readTar reports data cut short with the entry, its offset and the bytes that arrived', async () => {
    const error = await readError(archive.subarray(0, 512 + 1200), [700]);
    assert.equal(error.code, 'corrupt');
    assert.equal(
      error.message,
      "tar entry 'a/b' at offset 0 claims 5000 bytes of data but the stream ends after 1200",
    );
  });

  test('readTar reports data cut short also when the consumer skips the body', async () => {
    const entries = readTar(chunked(archive.subarray(0, 512 + 1200)));
    assert.equal((await entries.next()).value?.path, 'a/b');
    await assert.rejects(entries.next(), {
      message: "tar entry 'a/b' at offset 0 claims 5000 bytes of data but the stream ends after 1200",
    });
  });

  test('readTar reports a stream that ends inside padding or a header', async () => {
    assert.equal(
      (await readError(archive.subarray(0, 5600))).message,
      "tar entry 'a/b' at offset 0 is truncated: the stream ends inside the padding after its data, at offset 5600",
    );
    assert.equal(
      (await readError(archive.subarray(0, second + 100), [33])).message,
      `Cannot parse tar header at offset ${second}: the stream ends after 100 of its 512 bytes`,
    );
  });

  test('readTar reports numeric fields that are not numbers, naming the entry', async () => {
    const bad = Buffer.from(archive);
    setField(bad, 0, 'size', latin1('0000001x750\0'));
    assert.equal(
      (await readError(bad)).message,
      'Cannot parse tar header of \'a/b\' at offset 0: size field "0000001x750\\u0000" is not a valid number',
    );
    const mode = Buffer.from(archive);
    setField(mode, second, 'mode', latin1('rwxr-xr-'));
    assert.equal(
      (await readError(mode)).message,
      `Cannot parse tar header of 'c' at offset ${second}: mode field "rwxr-xr-" is not a valid number`,
    );
    const size = Buffer.from(archive);
    setField(size, 0, 'size', Uint8Array.from([0xff, ...new Array(11).fill(0xff)])); // base-256 -1
    assert.match(
      (await readError(size)).message,
      /^Cannot parse tar header of 'a\/b' at offset 0: size field/,
    );
  });

  test('readTar reports malformed pax records with the header and byte offsets', async () => {
    const pax = pythonTar('PAX', [{ name: 'p', type: 'file', pax: { comment: 'abcdef' } }]);
    const recordAt = pax.indexOf('18 comment=abcdef\n');
    assert.equal(recordAt, 512);

    const longer = Buffer.from(pax);
    longer.write('99', recordAt, 'latin1');
    assert.equal(
      (await readError(longer)).message,
      `Cannot parse pax extended header at offset 0: record length 99 runs past the end of the header (at offset ${recordAt})`,
    );
    const shorter = Buffer.from(pax);
    shorter.write('17', recordAt, 'latin1');
    assert.equal(
      (await readError(shorter)).message,
      `Cannot parse pax extended header at offset 0: record of length 17 does not end with a newline (at offset ${recordAt})`,
    );
    const noEquals = Buffer.from(pax);
    noEquals.write(':', recordAt + 10, 'latin1');
    assert.equal(
      (await readError(noEquals)).message,
      `Cannot parse pax extended header at offset 0: record "comment:abcdef" has no '=' (at offset ${recordAt})`,
    );

    const badSize = pythonTar('PAX', [{ name: 'p', type: 'file', pax: { size: '12a' } }]);
    const sizeAt = badSize.indexOf('12 size=12a\n');
    assert.equal(
      (await readError(badSize)).message,
      `Cannot parse pax extended header at offset 0: size "12a" is not a number (at offset ${sizeAt})`,
    );
    const badUid = pythonTar('PAX', [{ name: 'p', type: 'file', pax: { uid: '-3' } }]);
    assert.match((await readError(badUid)).message, /: uid "-3" is not a number \(at offset \d+\)$/);
  });

  test('readTar refuses unknown and obsolete entry types as unsupported', async () => {
    for (const [flag, what] of [
      ['Z', "entries of type 'Z' are"],
      ['N', 'old GNU long names (type N) are'],
      ['S', 'GNU sparse files are'],
    ]) {
      const bad = Buffer.from(archive);
      setField(bad, second, 'typeflag', latin1(flag!));
      const error = await readError(bad);
      assert.equal(error.code, 'unsupported');
      assert.equal(error.message, `tar entry 'c' at offset ${second}: ${what} not supported`);
    }
  });

  test('readTar refuses oversized extended headers instead of buffering them', async () => {
    const bad = Buffer.from(pythonTar('PAX', [{ name: 'x'.repeat(200), type: 'file' }]));
    setField(bad, 0, 'size', octal(2 ** 30, 12));
    const error = await readError(bad);
    assert.equal(error.code, 'unsupported');
    assert.equal(
      error.message,
      'tar pax extended header at offset 0 is 1073741824 bytes, more than the supported 16777216 bytes',
    );
  });
});

describe('readTar header variants', () => {
  test('readTar reads base-256 sizes', async () => {
    const archive = Buffer.from(pythonTar('GNU', [{ name: 'f', type: 'file', data: Buffer.from('12345') }]));
    setField(archive, 0, 'size', Uint8Array.from([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]));
    assert.deepEqual(
      (await readEntries(archive)).map((e) => [e.size, e.data.toString()]),
      [[5, '12345']],
    );
  });

  test('readTar takes the data size from a pax size record over the header field', async () => {
    const archive = Buffer.from(
      pythonTar('PAX', [
        { name: 'f', type: 'file', data: Buffer.from('12345'), pax: { size: '5' } },
        { name: 'g', type: 'file', data: Buffer.from('next') },
      ]),
    );
    setField(archive, 1024, 'size', octal(0, 12)); // the ustar header after the pax header
    const entries = await readEntries(archive);
    assert.deepEqual(
      entries.map((e) => [e.path, e.size, e.data.toString(), e.headerOffset, e.dataOffset]),
      [
        ['f', 5, '12345', 0, 1536],
        ['g', 4, 'next', 2048, 2560],
      ],
    );
  });

  test('readTar reads star headers, whose prefix is 131 bytes followed by atime and ctime', async () => {
    const archive = Buffer.from(
      pythonTar('USTAR', [{ name: 'name', type: 'file', data: Buffer.from('star') }]),
    );
    archive.write('p'.repeat(131), 345, 'latin1');
    archive.write('14604553170\0', 476, 'latin1'); // atime right after the prefix, no NUL in between
    archive.write('tar\0', 508, 'latin1');
    fixChecksum(archive, 0);
    assert.deepEqual(
      (await readEntries(archive)).map((e) => e.path),
      [`${'p'.repeat(131)}/name`],
    );
  });

  test('readTar does not read the GNU atime/ctime area as a prefix', async () => {
    const archive = Buffer.from(pythonTar('GNU', [{ name: 'name', type: 'file' }]));
    archive.write('14604553170\0', 345, 'latin1'); // old GNU atime
    fixChecksum(archive, 0);
    assert.deepEqual(
      (await readEntries(archive)).map((e) => e.path),
      ['name'],
    );
  });

  test('readTar gives header-only types no data whatever their size field says', async () => {
    const archive = Buffer.from(
      pythonTar('GNU', [
        { name: 'l', type: 'symlink', linkname: 't' },
        { name: 'f', type: 'file', data: Buffer.from('data') },
      ]),
    );
    setField(archive, 0, 'size', octal(100, 12));
    const entries = await readEntries(archive);
    assert.deepEqual(
      entries.map((e) => [e.path, e.size, e.data.toString()]),
      [
        ['l', 0, ''],
        ['f', 4, 'data'],
      ],
    );
  });
});

describe('readTar bodies', () => {
  const specs: Spec[] = [
    { name: 'one', type: 'file', data: random.subarray(0, 70_000) },
    { name: 'two', type: 'file', data: random.subarray(1, 3) },
    { name: 'three', type: 'file', data: random.subarray(5, 600) },
  ];
  const archive = pythonTar('PAX', specs);

  test('readTar skips bodies the consumer does not read, in part or at all', async () => {
    const seen: Array<[string, number]> = [];
    for await (const entry of readTar(chunked(archive, [1000]))) {
      if (entry.path === 'one') {
        const iterator = entry.body()[Symbol.asyncIterator]();
        seen.push([entry.path, ((await iterator.next()).value as Uint8Array).byteLength]);
        continue;
      }
      if (entry.path === 'two') continue;
      let n = 0;
      for await (const piece of entry.body()) n += piece.byteLength;
      seen.push([entry.path, n]);
    }
    // The first piece of 'one' is what the first 1000-byte chunk holds after its header.
    assert.deepEqual(seen, [
      ['one', 1000 - 512],
      ['three', 595],
    ]);
  });

  test('readTar hands out file data as views of the input chunks, without copying', async () => {
    const chunks: Uint8Array[] = [];
    async function* source(): AsyncGenerator<Uint8Array> {
      for await (const chunk of chunked(archive, [4096])) {
        chunks.push(chunk);
        yield chunk;
      }
    }
    for await (const entry of readTar(source())) {
      for await (const piece of entry.body()) {
        assert.ok(
          chunks.some((chunk) => chunk.buffer === piece.buffer),
          'a piece shares memory with an input chunk',
        );
      }
    }
  });

  test('readTar refuses a body requested twice or after moving on', async () => {
    const entries = readTar(chunked(archive));
    const first = (await entries.next()).value as TarEntryWithBody;
    first.body();
    assert.throws(
      () => first.body(),
      (e) => isErofsOciError(e, 'internal') && /requested twice/.test(e.message),
    );
    const second = (await entries.next()).value as TarEntryWithBody;
    await entries.next();
    assert.throws(
      () => second.body(),
      (e) => isErofsOciError(e, 'internal') && /after moving on/.test(e.message),
    );
    await entries.return(undefined);
  });

  test('readTar closes its input when the consumer stops early', async () => {
    let closed = false;
    async function* source(): AsyncGenerator<Uint8Array> {
      try {
        yield* chunked(archive, [512]);
      } finally {
        closed = true;
      }
    }
    for await (const _ of readTar(source())) break;
    assert.equal(closed, true);
  });

  test('readTar stops with an aborted error when its signal fires', async () => {
    const controller = new AbortController();
    await assert.rejects(
      (async () => {
        for await (const _ of readTar(chunked(archive, [512]), { signal: controller.signal }))
          controller.abort();
      })(),
      (e) => isErofsOciError(e, 'aborted'),
    );
  });
});

describe('readTar properties', () => {
  const specs = [...commonSpecs, ...extendedSpecs];
  const gnu = pythonTar('GNU', specs);
  const pax = pythonTar('PAX', [
    ...specs,
    {
      name: 'x',
      type: 'file',
      pax: { 'SCHILY.xattr.user.x': 'v', mtime: '5.000000001' },
      data: Buffer.from('v'),
    },
  ]);

  test('readTar returns the same entries and bodies however the input is split into chunks', async () => {
    const wholeGnu = await readEntries(gnu, [gnu.byteLength]);
    const wholePax = await readEntries(pax, [pax.byteLength]);
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 0, max: 3000 }), fc.constant(512)),
          {
            minLength: 1,
            maxLength: 30,
          },
        ),
        async (sizes) => {
          // A cycle of only empty chunks would never end.
          const safe = sizes.some((s) => s > 0) ? sizes : [1];
          assert.deepEqual(await readEntries(gnu, safe), wholeGnu);
          assert.deepEqual(await readEntries(pax, safe), wholePax);
        },
      ),
      { numRuns: 60 },
    );
  });

  test('readTar fails only with ErofsOciError on random bytes', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 0, maxLength: 3000 }),
        fc.integer({ min: 1, max: 700 }),
        async (bytes, size) => {
          try {
            await readEntries(bytes, [size]);
          } catch (error) {
            assert.ok(error instanceof ErofsOciError, String(error));
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  test('readTar fails only with ErofsOciError on damaged archives (bytes changed, checksums fixed, truncated)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(gnu, pax),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.boolean(),
        fc.option(fc.nat()),
        async (original, changes, fixSums, cut) => {
          const damaged = Buffer.from(original);
          for (const [at, value] of changes) {
            // Aim mostly at the first 8 KiB, where headers and extended headers are.
            const offset = at % Math.min(damaged.byteLength, at % 3 === 0 ? damaged.byteLength : 8192);
            damaged[offset] = value;
            const header = offset - (offset % 512);
            if (fixSums) fixChecksum(damaged, header);
          }
          const input = cut === null ? damaged : damaged.subarray(0, cut % damaged.byteLength);
          try {
            await readEntries(input, [777]);
          } catch (error) {
            assert.ok(error instanceof ErofsOciError, String(error));
          }
        },
      ),
      { numRuns: 400 },
    );
  });
});
