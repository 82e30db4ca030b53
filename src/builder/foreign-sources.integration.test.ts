/**
 * `build` from images our code never wrote: an OCI layout made by umoci (its own tar writer, Go's gzip,
 * whiteouts for what a later layer deletes), the same image rewritten by skopeo as a docker-archive, an
 * oci-archive and a layout with zstd layers. The expected tree is what `umoci unpack` extracts, so the
 * oracle is another tool too. Every build is mounted by the kernel and compared; the single-layer build of
 * the deleting layer must hold the overlayfs whiteouts.
 *
 * Needs root, umoci and skopeo (Debian umoci, skopeo), python3.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, chown, link, lstat, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  check,
  findExecutable,
  isRoot,
  runCli,
  type Snapshot,
  snapshot,
  type TmpDir,
  tmpdir,
  withMount,
} from '../../test-support/kernel.ts';
import { assertSameTree } from '../../test-support/oracle.ts';

const skip = !isRoot()
  ? 'needs root to mount'
  : !findExecutable('umoci')
    ? 'needs umoci'
    : !findExecutable('skopeo')
      ? 'needs skopeo'
      : undefined;

describe('build from images made by umoci and rewritten by skopeo', { skip }, () => {
  let dir: TmpDir;
  let layout: string;
  let expected: Snapshot;

  before(async () => {
    dir = await tmpdir();
    layout = join(dir.path, 'layout');
    const bundle = join(dir.path, 'bundle');
    await check('umoci', ['init', '--layout', layout]);
    await check('umoci', ['new', '--image', `${layout}:v1`]);
    await check('umoci', ['unpack', '--image', `${layout}:v1`, bundle]);
    const rootfs = join(bundle, 'rootfs');
    // Layer 1: a bit of everything.
    await mkdir(join(rootfs, 'etc', 'deep', 'er'), { recursive: true });
    await writeFile(join(rootfs, 'etc', 'hostname'), 'umoci\n');
    await writeFile(join(rootfs, 'etc', 'deep', 'er', 'file'), randomBytes(70_000));
    await writeFile(join(rootfs, 'big.bin'), randomBytes(3 << 20));
    await link(join(rootfs, 'big.bin'), join(rootfs, 'big.link'));
    await symlink('etc/hostname', join(rootfs, 'host'));
    await writeFile(join(rootfs, 'suid'), '#!/bin/sh\n');
    // chown clears the set-uid bit: owner first.
    await chown(join(rootfs, 'suid'), 1000, 1000);
    await chmod(join(rootfs, 'suid'), 0o4755);
    await mkdir(join(rootfs, 'gone', 'sub'), { recursive: true });
    await writeFile(join(rootfs, 'gone', 'sub', 'x'), 'x\n');
    await writeFile(join(rootfs, 'deleted.txt'), 'deleted\n');
    await check('mknod', [join(rootfs, 'null'), 'c', '1', '3']);
    await check('mkfifo', [join(rootfs, 'fifo')]);
    await check('setfattr', ['-n', 'user.note', '-v', 'hello', join(rootfs, 'etc', 'hostname')]);
    await check('umoci', ['repack', '--refresh-bundle', '--image', `${layout}:v1`, bundle]);
    // Layer 2: deletes a file and a directory tree, replaces a file by a directory, adds and changes.
    await rm(join(rootfs, 'deleted.txt'));
    await rm(join(rootfs, 'gone'), { recursive: true });
    await rm(join(rootfs, 'host'));
    await mkdir(join(rootfs, 'host'));
    await writeFile(join(rootfs, 'host', 'inside'), 'now a directory\n');
    await writeFile(join(rootfs, 'etc', 'hostname'), 'changed\n');
    await writeFile(join(rootfs, 'new.txt'), 'new\n');
    await check('umoci', ['repack', '--refresh-bundle', '--image', `${layout}:v1`, bundle]);
    const unpacked = join(dir.path, 'unpacked');
    await check('umoci', ['unpack', '--image', `${layout}:v1`, unpacked]);
    expected = await snapshot(join(unpacked, 'rootfs'));
    assert.ok(
      !('deleted.txt' in expected.entries) && 'host/inside' in expected.entries,
      'umoci applied layer 2',
    );
    // The awkward cases survived umoci, so the comparison covers them.
    assert.ok(expected.entries['etc/hostname']?.xattrs?.['user.note'], 'xattr kept by umoci');
    assert.deepEqual(expected.hardlinks, [['big.bin', 'big.link']]);
    assert.equal(expected.entries.suid?.mode, '4755');
  });

  after(async () => {
    await dir?.cleanup();
  });

  async function buildAndCompare(source: string, name: string): Promise<void> {
    const out = join(dir.path, `${name}.erofs`);
    const built = await runCli(['build', '--quiet', source, out]);
    assert.equal(built.status, 0, built.stderr);
    const actual = await withMount(out, (mnt) => snapshot(mnt));
    assertSameTree(expected, actual, { ignoreRoot: true, ignoreDirMtimes: true });
  }

  it('an OCI layout written by umoci', async () => {
    await buildAndCompare(`oci:${layout}:v1`, 'umoci');
  });

  it('the same image as a docker-archive written by skopeo', async () => {
    const archive = join(dir.path, 'docker.tar');
    await check('skopeo', ['copy', '--quiet', `oci:${layout}:v1`, `docker-archive:${archive}:app:v1`]);
    await buildAndCompare(`docker-archive:${archive}`, 'docker-archive');
  });

  it('the same image as an oci-archive written by skopeo', async () => {
    const archive = join(dir.path, 'oci.tar');
    await check('skopeo', ['copy', '--quiet', `oci:${layout}:v1`, `oci-archive:${archive}:v1`]);
    await buildAndCompare(`oci-archive:${archive}:v1`, 'oci-archive');
  });

  it('the same image recompressed by skopeo with zstd', async () => {
    const zstd = join(dir.path, 'zstd-layout');
    await check('skopeo', [
      'copy',
      '--quiet',
      '--dest-compress-format',
      'zstd',
      '--dest-compress',
      `oci:${layout}:v1`,
      `oci:${zstd}:v1`,
    ]);
    await buildAndCompare(`oci:${zstd}:v1`, 'zstd');
  });

  it("umoci's deleting layer alone keeps overlayfs whiteouts", async () => {
    const out = join(dir.path, 'layer1.erofs');
    const built = await runCli(['build', '--quiet', '--layer', '1', `oci:${layout}:v1`, out]);
    assert.equal(built.status, 0, built.stderr);
    await withMount(out, async (mnt) => {
      for (const name of ['deleted.txt', 'gone']) {
        const st = await lstat(join(mnt, name));
        assert.ok(st.isCharacterDevice() && st.rdev === 0, `${name} is a 0:0 whiteout`);
      }
      assert.ok((await lstat(join(mnt, 'host'))).isDirectory());
      assert.ok(!('gone/sub' in (await snapshot(mnt)).entries));
    });
  });
});
