/**
 * EROFS-native layers our writer never makes (issue 11 §1, "look for other places where our reader or
 * sources assume our own writer's layout"): layers built by erofs-utils' mkfs.erofs with its own metadata
 * placement (inodes and directories scattered among the data, inline tails, compact and extended inodes,
 * chunk-based files, compressed pclusters, 512-byte blocks where 1.9 is installed), and blobs that go on
 * past the image's last block (trailing bytes, a size that is no multiple of any block size, zero padding).
 * Each is pushed to a real registry as an EROFS layer, lazily mounted by `erofs-oci mount --layer N`, and the
 * tree must equal what the kernel shows for the same image from a local file; `serve` must export exactly
 * the blob's bytes, the trailing ones included.
 *
 * Needs root, /dev/fuse, Debian's erofs-utils (mkfs.erofs 1.5), docker-registry, skopeo, nbdcopy, python3;
 * EROFS_UTILS_BIN with erofs-utils 1.9 adds the variants 1.5 cannot make.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, readFile, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  check,
  findExecutable,
  isRoot,
  mkfsErofs19,
  runCli,
  snapshot,
  startServe,
  stopProcess,
  type TmpDir,
  tmpdir,
  withMount,
} from '../../test-support/kernel.ts';
import {
  type RegistryHandle,
  registryUnavailableReason,
  skopeo,
  startRegistry,
} from '../../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../../test-support/registry-fixtures.ts';
import { makeFixtureTree } from '../erofs/mkfs-fixtures.ts';

const skip = !isRoot()
  ? 'needs root to mount'
  : !findExecutable('mkfs.erofs')
    ? 'needs mkfs.erofs (Debian erofs-utils)'
    : !findExecutable('nbdcopy')
      ? 'needs nbdcopy (Debian libnbd-bin)'
      : (registryUnavailableReason() ?? (existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse'));

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

interface Variant {
  name: string;
  /** mkfs.erofs binary and its options (before IMAGE DIR). */
  mkfs: string;
  args: string[];
  /** What is done to the image file after mkfs: the blob pushed is the result. */
  tail?: (image: string) => Promise<void>;
}

function variants(): Variant[] {
  const list: Variant[] = [
    { name: 'mkfs.erofs 1.5 defaults (inline tails, compact inodes)', mkfs: 'mkfs.erofs', args: [] },
    {
      name: 'mkfs.erofs 1.5 -Enoinline_data -Eforce-inode-extended',
      mkfs: 'mkfs.erofs',
      args: ['-Enoinline_data', '-Eforce-inode-extended'],
    },
    { name: 'mkfs.erofs 1.5 --chunksize=8192', mkfs: 'mkfs.erofs', args: ['--chunksize=8192'] },
    { name: 'mkfs.erofs 1.5 -zlz4hc -C65536', mkfs: 'mkfs.erofs', args: ['-zlz4hc', '-C65536'] },
    {
      // 1,234 bytes after the last block: the blob size is no multiple of 512 or 4096.
      name: 'mkfs.erofs 1.5 image followed by 1,234 bytes that are not EROFS',
      mkfs: 'mkfs.erofs',
      args: [],
      tail: (image) => appendFile(image, randomBytes(1234)),
    },
    {
      name: 'mkfs.erofs 1.5 image zero-padded to the next MiB',
      mkfs: 'mkfs.erofs',
      args: [],
      tail: async (image) => {
        const { size } = await stat(image);
        await truncate(image, Math.ceil((size + 1) / (1 << 20)) * (1 << 20));
      },
    },
  ];
  const mkfs19 = mkfsErofs19();
  if (mkfs19 !== null) {
    list.push(
      { name: 'mkfs.erofs 1.9 -b512', mkfs: mkfs19, args: ['-b512'] },
      {
        name: 'mkfs.erofs 1.9 -zzstd -Eall-fragments,ztailpacking,dedupe -C131072',
        mkfs: mkfs19,
        args: ['-zzstd', '-Eall-fragments,ztailpacking,dedupe', '-C131072'],
      },
    );
  }
  return list;
}

describe('EROFS layers made by other tools, lazily mounted and served', { skip }, () => {
  let dir: TmpDir;
  let registry: RegistryHandle;
  let env: NodeJS.ProcessEnv;
  const layers = variants();
  const images: string[] = [];
  const ref = () => `${registry.host}/test/foreign:v1`;

  before(async () => {
    dir = await tmpdir();
    env = { ...process.env, EROFS_OCI_STATE_DIR: join(dir.path, 'state') };
    const tree = join(dir.path, 'tree');
    await makeFixtureTree(tree);
    const blobs = [];
    for (const [i, variant] of layers.entries()) {
      const image = join(dir.path, `layer-${i}.erofs`);
      await check(variant.mkfs, ['--quiet', ...variant.args, image, tree]);
      await variant.tail?.(image);
      images.push(image);
      blobs.push(blobOf('application/vnd.erofs.layer.v1', await readFile(image)));
    }
    const layout = join(dir.path, 'layout');
    await writeLayout(
      layout,
      'v1',
      [
        imageOfBlobs(
          blobs,
          blobs.map((b) => b.digest),
        ),
      ],
      false,
    );
    registry = await startRegistry({ storageDir: join(dir.path, 'storage') });
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${ref()}`]);
  });

  after(async () => {
    await registry?.stop();
    await dir?.cleanup();
  });

  for (const [i, variant] of layers.entries()) {
    it(`${variant.name}: the lazy mount shows what the kernel shows from the local file`, async () => {
      const image = images[i] as string;
      const expected = await withMount(image, (mnt) => snapshot(mnt));
      const mnt = join(dir.path, `mnt-${i}`);
      await mkdir(mnt, { recursive: true });
      const mounted = await runCli(['mount', '--insecure', '--layer', String(i), ref(), mnt], { env });
      assert.equal(mounted.status, 0, mounted.stderr);
      try {
        assert.deepEqual(await snapshot(mnt), expected);
      } finally {
        const unmounted = await runCli(['umount', mnt], { env });
        assert.equal(unmounted.status, 0, unmounted.stderr);
      }
    });
  }

  it('serve exports every blob byte for byte, trailing bytes included', async () => {
    for (const [i, variant] of layers.entries()) {
      if (variant.tail === undefined) continue;
      const socket = join(dir.path, `serve-${i}.sock`);
      const { child, log } = await startServe(['--insecure', '--layer', String(i), ref()], socket);
      try {
        const out = join(dir.path, `export-${i}`);
        await check('nbdcopy', ['--', `nbd+unix:///?socket=${socket}`, out]);
        const blob = await readFile(images[i] as string);
        const copied = await readFile(out);
        assert.equal(copied.byteLength, blob.byteLength, `${variant.name}: export size\n${log()}`);
        assert.equal(sha256(copied), sha256(blob), `${variant.name}: export bytes`);
      } finally {
        await stopProcess(child);
      }
    }
  });
});
