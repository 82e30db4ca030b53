import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chown, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { hasMkfsErofs, mkfs, pattern } from '../erofs/mkfs-fixtures.ts';
import { inspectCommand, isoTime, modeString } from './inspect.ts';

const run = promisify(execFile);

function capture(): { stream: Writable; text: () => string; bytes: () => Buffer } {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      chunks.push(Buffer.from(chunk));
      done();
    },
  });
  return { stream, text: () => Buffer.concat(chunks).toString('utf8'), bytes: () => Buffer.concat(chunks) };
}

async function inspect(...args: string[]): Promise<{ status: number; out: string; bytes: Buffer }> {
  const stdout = capture();
  const stderr = capture();
  const status = await inspectCommand(args, { stdout: stdout.stream, stderr: stderr.stream });
  return { status, out: stdout.text(), bytes: stdout.bytes() };
}

test('modeString renders file types and special bits like ls -l', () => {
  assert.equal(modeString('dir', 0o40755), 'drwxr-xr-x');
  assert.equal(modeString('file', 0o104755), '-rwsr-xr-x');
  assert.equal(modeString('file', 0o102644), '-rw-r-Sr--');
  assert.equal(modeString('dir', 0o41777), 'drwxrwxrwt');
  assert.equal(modeString('dir', 0o41776), 'drwxrwxrwT');
  assert.equal(modeString('symlink', 0o120777), 'lrwxrwxrwx');
  assert.equal(modeString('chardev', 0o20600), 'crw-------');
  assert.equal(modeString('socket', 0o140000), 's---------');
});

test('isoTime keeps nanoseconds', () => {
  assert.equal(isoTime({ sec: 1_700_000_000, nsec: 5 }), '2023-11-14T22:13:20.000000005Z');
  assert.equal(isoTime({ sec: 0, nsec: 0 }), '1970-01-01T00:00:00.000000000Z');
  assert.equal(isoTime({ sec: 2 ** 52, nsec: 1 }), '@4503599627370496.000000001');
});

const skip = (await hasMkfsErofs()) ? false : 'needs root and mkfs.erofs (Debian erofs-utils)';

describe('inspectCommand on a mkfs.erofs image', { skip }, () => {
  let dir: string;
  let image: string;
  const big = pattern(3 * 1024 * 1024 + 17, 5);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'inspect-'));
    const tree = join(dir, 'tree');
    await mkdir(tree);
    await writeFile(join(tree, 'hello.txt'), 'hello\n');
    await run('setfattr', ['-n', 'user.comment', '-v', 'greeting', join(tree, 'hello.txt')]);
    await run('setfattr', ['-n', 'trusted.bin', '-v', '0x00ff', join(tree, 'hello.txt')]);
    await symlink('hello.txt', join(tree, 'link'));
    await run('mknod', [join(tree, 'null'), 'c', '1', '3']);
    await mkdir(join(tree, 'sub'));
    await writeFile(join(tree, 'sub', 'big.bin'), big);
    await chown(join(tree, 'sub', 'big.bin'), 1000, 100);
    await writeFile(join(tree, 'é'), '');
    image = join(dir, 'test.erofs');
    await mkfs(image, tree, ['-T', '1700000000', '-U', '11111111-2222-3333-4444-555555555555']);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('inspect without PATH prints the superblock', async () => {
    const { status, out } = await inspect(image);
    assert.equal(status, 0);
    const facts = Object.fromEntries(
      out
        .trimEnd()
        .split('\n')
        .map((l) => l.split(/: (.*)/s).slice(0, 2)),
    );
    assert.equal(facts['block size'], '4096');
    assert.equal(facts.uuid, '11111111-2222-3333-4444-555555555555');
    assert.equal(facts['build time'], '2023-11-14T22:13:20.000000000Z');
    assert.equal(facts.inodes, '7');
    assert.match(facts.blocks as string, /^\d+ \(\d+ bytes; file is \d+ bytes\)$/);
    assert.equal(facts.features, 'sb_csum mtime');
    assert.match(facts.checksum as string, /^0x[0-9a-f]{8} \(verified\)$/);
    assert.equal(facts.devices, '0');
    // dump.erofs agrees on the counts.
    const { stdout } = await run('dump.erofs', ['-s', image]);
    assert.match(stdout, new RegExp(`Filesystem inode count:\\s+${facts.inodes}\\b`));
    assert.match(stdout, new RegExp(`Filesystem blocks:\\s+${(facts.blocks as string).split(' ')[0]}\\b`));
  });

  test('inspect --json prints the superblock as JSON', async () => {
    const { out } = await inspect('--json', image);
    const sb = JSON.parse(out);
    assert.equal(sb.blockSize, 4096);
    assert.equal(sb.uuid, '11111111-2222-3333-4444-555555555555');
    assert.deepEqual(sb.buildTime, { sec: 1_700_000_000, nsec: 0, iso: '2023-11-14T22:13:20.000000000Z' });
    assert.deepEqual(sb.features, ['sb_csum', 'mtime']);
    assert.deepEqual(sb.devices, []);
  });

  test('inspect IMAGE / lists the root like ls -l', async () => {
    const { status, out } = await inspect(image, '/');
    assert.equal(status, 0);
    const t = '2023-11-14T22:13:20.000000000Z';
    assert.equal(
      out,
      [
        `-rw-r--r-- 1 0 0    6 ${t} hello.txt`,
        `lrwxrwxrwx 1 0 0    9 ${t} link -> hello.txt`,
        `crw-r--r-- 1 0 0 1, 3 ${t} null`,
        `drwxr-xr-x 2 0 0   46 ${t} sub`,
        `-rw-r--r-- 1 0 0    0 ${t} é`,
        '',
      ].join('\n'),
    );
  });

  test('inspect IMAGE FILE shows metadata and xattrs', async () => {
    const { out } = await inspect(image, '/hello.txt');
    assert.match(
      out,
      /^path: \/hello.txt\nnid: \d+\ntype: file\nmode: 0644 \(-rw-r--r--\)\nuid: 0\ngid: 0\nsize: 6\nnlink: 1\n/,
    );
    assert.match(out, /\nxattr user.comment: "greeting"\n/);
    assert.match(out, /\nxattr trusted.bin: 0x00ff\n/);
    const link = await inspect(image, 'link');
    assert.match(link.out, /\ntarget: hello.txt\n/);
    const dev = await inspect(image, '/null');
    assert.match(dev.out, /\ndevice: 1, 3\n/);
    const subdir = await inspect('-d', image, '/sub');
    assert.match(subdir.out, /^path: \/sub\nnid: \d+\ntype: dir\n/);
  });

  test('inspect --json IMAGE DIR lists entries with their metadata', async () => {
    const { out } = await inspect('--json', image, '/sub');
    const json = JSON.parse(out);
    assert.equal(json.type, 'dir');
    assert.equal(json.entries.length, 1);
    const [entry] = json.entries;
    assert.equal(entry.name, 'big.bin');
    assert.equal(entry.size, big.byteLength);
    assert.equal(entry.uid, 1000);
    assert.equal(entry.gid, 100);
    const file = JSON.parse((await inspect('--json', image, '/hello.txt')).out);
    assert.deepEqual(
      [...file.xattrs].sort((a, b) => a.name.localeCompare(b.name)),
      [
        { name: 'trusted.bin', hex: '00ff' },
        { name: 'user.comment', hex: Buffer.from('greeting').toString('hex') },
      ],
    );
  });

  test('inspect --cat writes file contents, across several read chunks', async () => {
    const { status, bytes } = await inspect('--cat', image, '/sub/big.bin');
    assert.equal(status, 0);
    assert.ok(bytes.equals(big));
    assert.equal((await inspect('--cat', image, 'hello.txt')).out, 'hello\n');
    await assert.rejects(inspect('--cat', image, '/sub'), {
      code: 'usage',
      message: /it is a dir, not a regular file/,
    });
  });

  test('inspect reports a missing PATH as not-found and bad arguments as usage', async () => {
    await assert.rejects(inspect(image, '/nope'), {
      code: 'not-found',
      message: 'Cannot find /nope in the image: / has no entry nope',
    });
    await assert.rejects(inspect(), { code: 'usage' });
    await assert.rejects(inspect(image, '/', 'extra'), { code: 'usage' });
    await assert.rejects(inspect(join(dir, 'missing.erofs')), { code: 'not-found' });
    await assert.rejects(inspect(join(dir, 'tree', 'hello.txt')), { code: 'corrupt' });
    await assert.rejects(inspect('--bogus', image), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' });
  });

  test('inspect --help prints usage', async () => {
    const { status, out } = await inspect('--help');
    assert.equal(status, 0);
    assert.match(out, /^Usage: erofs-oci inspect \[options\] IMAGE.erofs \[PATH\]/);
  });
});
