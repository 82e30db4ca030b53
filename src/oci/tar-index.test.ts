import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import { readTarIndex, resolveMember } from './tar-index.ts';

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'erofs-oci-tarindex-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function index(archive: string) {
  const handle = await open(archive, 'r');
  try {
    return await readTarIndex(handle, (await handle.stat()).size, archive);
  } finally {
    await handle.close();
  }
}

async function readMember(archive: string, offset: number, size: number): Promise<string> {
  const handle = await open(archive, 'r');
  try {
    const buffer = Buffer.alloc(size);
    await handle.read(buffer, 0, size, offset);
    return buffer.toString('utf8');
  } finally {
    await handle.close();
  }
}

describe('readTarIndex', () => {
  for (const format of ['gnu', 'posix', 'ustar']) {
    it(`finds member data in a GNU tar --format=${format} archive, long names and links included`, async () => {
      const src = join(root, `src-${format}`);
      const longDir = 'd'.repeat(90);
      await mkdir(join(src, 'blobs', 'sha256', longDir), { recursive: true });
      await writeFile(join(src, 'blobs', 'sha256', 'abc'), 'content of abc');
      await writeFile(join(src, 'blobs', 'sha256', longDir, 'f'.repeat(60)), 'long');
      await writeFile(join(src, 'empty'), '');
      await symlink('../blobs/sha256/abc', join(src, 'blobs', 'link'));
      const archive = join(root, `${format}.tar`);
      execFileSync('tar', ['-C', src, `--format=${format}`, '--hard-dereference', '-cf', archive, '.']);
      const members = await index(archive);
      const abc = resolveMember(members, 'blobs/sha256/abc', 'x');
      assert.ok(abc);
      assert.equal(await readMember(archive, abc.offset, abc.size), 'content of abc');
      const long = resolveMember(members, `./blobs/sha256/${longDir}/${'f'.repeat(60)}`, 'x');
      assert.ok(long, 'a 160-character name is found');
      assert.equal(await readMember(archive, long.offset, long.size), 'long');
      const linked = resolveMember(members, 'blobs/link', 'x');
      assert.equal(linked?.offset, abc.offset, 'a symlink resolves to its target');
      assert.equal(resolveMember(members, 'empty', 'x')?.size, 0);
      assert.equal(resolveMember(members, 'missing', 'x'), undefined);
    });
  }

  it('rejects a header whose checksum is wrong, naming the offset', async () => {
    const src = join(root, 'cks');
    await mkdir(src, { recursive: true });
    await writeFile(join(src, 'a'), 'x');
    const archive = join(root, 'cks.tar');
    execFileSync('tar', ['-C', src, '-cf', archive, 'a']);
    const handle = await open(archive, 'r+');
    await handle.write(Buffer.from('b'), 0, 1, 0); // rename a → b without fixing the checksum
    await handle.close();
    await assert.rejects(
      index(archive),
      (error) =>
        isErofsOciError(error, 'corrupt') &&
        /checksum is \d+, expected \d+ \(at offset 0\)/.test(error.message),
    );
  });

  it('rejects an archive cut inside member data', async () => {
    const src = join(root, 'cut');
    await mkdir(src, { recursive: true });
    await writeFile(join(src, 'a'), Buffer.alloc(5000, 1));
    const archive = join(root, 'cut.tar');
    execFileSync('tar', ['-C', src, '-cf', archive, 'a']);
    const handle = await open(archive, 'r+');
    await handle.truncate(2048);
    await handle.close();
    await assert.rejects(index(archive), /member data runs past the end of the archive/);
  });
});
