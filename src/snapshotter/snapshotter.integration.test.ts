/**
 * `erofs-oci snapshotter` with the real containerd 1.6 and runc (root): containerd started with its own
 * config (test-support/containerd.ts) uses our snapshotter as a proxy plugin. A gzip image is pulled with
 * ctr and run; an EROFS-native image (made by our `convert`) is pulled through CRI's ImageService and its
 * layers are mounted lazily (the download is skipped), then run with ctr; the snapshotter is killed and
 * restarted while a read waits; removing the images and Cleanup leave no mount or process behind.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';
import {
  type ContainerdHandle,
  containerdUnavailableReason,
  copyRuntimeTree,
  criImageClient,
  mountsUnder,
  type RegistryTraffic,
  registryTraffic,
  type SnapshotterProcess,
  startContainerd,
  startSnapshotter,
  stopSnapshotter,
  tarOf,
} from '../../test-support/containerd.ts';
import { isRoot, run, runCli, type TmpDir, tmpdir } from '../../test-support/kernel.ts';
import {
  type RegistryHandle,
  registryUnavailableReason,
  skopeo,
  startRegistry,
} from '../../test-support/registry.ts';
import { blobOf, imageOfBlobs, writeLayout } from '../../test-support/registry-fixtures.ts';
import { parseRange } from '../chunk-index/index.ts';

const skip = !isRoot()
  ? 'needs root'
  : (registryUnavailableReason() ??
    containerdUnavailableReason() ??
    (existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse'));

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const ERofs_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.erofs';

describe('erofs-oci snapshotter with containerd', { skip, timeout: 900_000 }, () => {
  let dir: TmpDir;
  let registry: RegistryHandle;
  let containerd: ContainerdHandle;
  let snapshotter: SnapshotterProcess;
  let traffic: RegistryTraffic;
  let big: Buffer;
  let erofsLayers: { digest: string; size: number }[] = [];
  const gzipRef = () => `${registry.host}/test/run:gzip`;
  const erofsRef = () => `${registry.host}/test/run:erofs`;
  const tamperedRef = () => `${registry.host}/test/tampered:erofs`;
  const snapshotterRoot = () => join(dir.path, 'sn-root');
  const expectedOutput = 'one\ntwo\n';

  before(async () => {
    dir = await tmpdir('erofs-oci-snapshotter-');
    registry = await startRegistry({ storageDir: join(dir.path, 'storage') });
    traffic = registryTraffic(registry);
    // Three layers: the host's sh and cat, a file, and a file beside a big incompressible one.
    const trees = [join(dir.path, 't0'), join(dir.path, 't1'), join(dir.path, 't2')];
    await copyRuntimeTree(trees[0] as string);
    await mkdir(join(trees[1] as string, 'etc'), { recursive: true });
    await writeFile(join(trees[1] as string, 'etc', 'one.txt'), 'one\n');
    await mkdir(join(trees[2] as string, 'data'), { recursive: true });
    await writeFile(join(trees[2] as string, 'data', 'two.txt'), 'two\n');
    big = randomBytes(24 * 1024 * 1024);
    await writeFile(join(trees[2] as string, 'data', 'big.bin'), big);
    const blobs = [];
    const diffIds = [];
    for (const [i, tree] of trees.entries()) {
      const tar = await tarOf(tree, join(dir.path, `layer-${i}.tar`));
      blobs.push(blobOf('application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(tar)));
      diffIds.push(`sha256:${sha256(tar)}`);
    }
    const layout = join(dir.path, 'layout');
    await writeLayout(layout, 'gzip', [imageOfBlobs(blobs, diffIds)], false);
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${layout}:gzip`, `docker://${gzipRef()}`]);
    const converted = await runCli([
      'convert',
      '--quiet',
      '--json',
      '--insecure',
      '--media-type',
      ERofs_MEDIA_TYPE,
      gzipRef(),
      erofsRef(),
    ]);
    assert.equal(converted.status, 0, converted.stderr);
    const summary = JSON.parse(converted.stdout) as { layers: { digest: string; size: number }[] };
    erofsLayers = summary.layers;
    // A second image: the same runtime layer under two layers of its own; a test tampers with the chunk
    // index of the top one.
    const own = join(dir.path, 't3');
    await mkdir(join(own, 'etc'), { recursive: true });
    await writeFile(join(own, 'etc', 'own.txt'), 'own\n');
    const ownTop = join(dir.path, 't4');
    await mkdir(join(ownTop, 'etc'), { recursive: true });
    await writeFile(join(ownTop, 'etc', 'top.txt'), 'top\n');
    await writeFile(join(ownTop, 'etc', 'filler.bin'), randomBytes(3 * 1024 * 1024));
    const ownTars = [
      await tarOf(trees[0] as string, join(dir.path, 'layer-0.tar')),
      await tarOf(own, join(dir.path, 'layer-3.tar')),
      await tarOf(ownTop, join(dir.path, 'layer-4.tar')),
    ];
    const ownLayout = join(dir.path, 'layout-own');
    await writeLayout(
      ownLayout,
      'gzip',
      [
        imageOfBlobs(
          ownTars.map((tar) => blobOf('application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(tar))),
          ownTars.map((tar) => `sha256:${sha256(tar)}`),
        ),
      ],
      false,
    );
    const ownGzip = `${registry.host}/test/tampered:gzip`;
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${ownLayout}:gzip`, `docker://${ownGzip}`]);
    const ownConverted = await runCli([
      'convert',
      '--quiet',
      '--insecure',
      '--media-type',
      ERofs_MEDIA_TYPE,
      ownGzip,
      tamperedRef(),
    ]);
    assert.equal(ownConverted.status, 0, ownConverted.stderr);
    snapshotter = await startSnapshotter(dir.path);
    containerd = await startContainerd({
      dir: join(dir.path, 'containerd'),
      snapshotterSocket: join(dir.path, 'snapshotter.sock'),
      plainHttpRegistries: [registry.host],
    });
  });

  after(async () => {
    for (const ns of ['default', 'k8s.io']) {
      for (const id of ['gz1', 'lazy1', 'lazy2', 'lazy3']) {
        await containerd?.ctr(['task', 'kill', '-s', 'SIGKILL', id], { namespace: ns }).catch(() => '');
        await containerd?.ctr(['container', 'rm', id], { namespace: ns }).catch(() => '');
      }
    }
    await containerd?.stop();
    if (snapshotter) await stopSnapshotter(snapshotter);
    // Whatever is still mounted under the test directory (a failed test), deepest first.
    if (dir) {
      const left = (await mountsUnder(dir.path)).map((m) => m.path).sort((a, b) => b.length - a.length);
      for (const path of left) await run('umount', ['-l', path]);
    }
    await registry?.stop();
    await dir?.cleanup();
  });

  it('ctr snapshots prepare, view, mounts, commit, usage and rm behave as containerd snapshotters do', async () => {
    const ctr = (args: string[]) => containerd.ctr(['snapshots', '--snapshotter', 'erofs-oci', ...args]);
    const prepared = JSON.parse(await ctr(['prepare', '--mounts', 'base-active', ''])) as {
      Type: string;
      Source: string;
      Options: string[];
    }[];
    assert.equal(prepared.length, 1);
    assert.equal(prepared[0]?.Type, 'bind');
    assert.match(prepared[0]?.Source ?? '', /\/snapshots\/\d+\/fs$/);
    assert.deepEqual(prepared[0]?.Options, ['rw', 'rbind']);
    const target = join(dir.path, 'mnt-base');
    await mkdir(target);
    const mount = (await ctr(['mounts', target, 'base-active'])).trim();
    assert.match(mount, /^mount -t bind /);
    await run('sh', ['-c', mount]);
    await writeFile(join(target, 'hello.txt'), 'hello snapshot\n');
    await run('umount', [target]);
    await ctr(['commit', 'base', 'base-active']);
    await assert.rejects(ctr(['commit', 'base', 'base-active']), /already exists|not found/);
    const usage = await ctr(['usage', 'base']);
    // The fs directory and hello.txt: two inodes, 8 KiB allocated (one 4 KiB block each).
    assert.match(usage, /^base\s+\d[\d.]* [KM]iB\s+2\s*$/m);
    await ctr(['prepare', 'child-active', 'base']);
    const childMount = (await ctr(['mounts', target, 'child-active'])).trim();
    assert.match(childMount, /-t overlay .*lowerdir=/);
    await run('sh', ['-c', childMount]);
    assert.equal(await readFile(join(target, 'hello.txt'), 'utf8'), 'hello snapshot\n');
    await writeFile(join(target, 'upper.txt'), 'upper\n');
    await run('umount', [target]);
    await ctr(['view', 'base-view', 'base']);
    const viewMount = (await ctr(['mounts', target, 'base-view'])).trim();
    assert.match(viewMount, /-t bind .*ro/);
    const listed = await ctr(['ls']);
    for (const name of ['base', 'child-active', 'base-view'])
      assert.match(listed, new RegExp(`^${name}\\s`, 'm'));
    assert.match(listed, /^base\s+Committed/m);
    assert.match(listed, /^child-active\s+base\s+Active/m);
    // ctr makes these snapshots without a lease: containerd's garbage collector, which every removal wakes,
    // would collect the ones nothing references while the test still uses them. Roots are left alone.
    for (const name of ['base', 'child-active', 'base-view'])
      await ctr(['label', name, 'containerd.io/gc.root=test']);
    // A parent with children cannot go.
    await assert.rejects(ctr(['rm', 'base']), /precondition|child/i);
    await ctr(['rm', 'child-active']);
    await ctr(['rm', 'base-view']);
    await ctr(['rm', 'base']);
    assert.doesNotMatch(await ctr(['ls']), /base/);
  });

  it('a gzip image pulled with ctr image pull runs from overlay snapshots', async () => {
    await containerd.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'erofs-oci', gzipRef()]);
    const out = await containerd.ctr([
      'run',
      '--rm',
      '--snapshotter',
      'erofs-oci',
      gzipRef(),
      'gz1',
      '/bin/sh',
      '-c',
      'cat /etc/one.txt /data/two.txt',
    ]);
    assert.equal(out, expectedOutput);
    // containerd unpacked each layer into an ordinary snapshot: no lazy layer was mounted.
    assert.deepEqual(
      (await mountsUnder(join(snapshotterRoot(), 'layers'))).map((m) => m.path),
      [],
    );
  });

  it('a CRI pull of an EROFS-native image mounts its layers lazily and downloads none of them', async () => {
    const cri = criImageClient(containerd.address);
    try {
      const before = traffic.blobs();
      const imageRef = await cri.pullImage(erofsRef());
      assert.match(imageRef, /^sha256:/);
      const sent = traffic.blobs();
      const layerBytes = erofsLayers.reduce((sum, l) => sum + l.size, 0);
      const fetched = erofsLayers.reduce(
        (sum, l) => sum + (sent.get(l.digest) ?? 0) - (before.get(l.digest) ?? 0),
        0,
      );
      assert.ok(fetched < layerBytes / 10, `fetched ${fetched} of ${layerBytes} layer bytes`);
      const lazy = await mountsUnder(join(snapshotterRoot(), 'layers'));
      assert.equal(lazy.filter((m) => m.type === 'erofs').length, erofsLayers.length, JSON.stringify(lazy));
    } finally {
      cri.close();
    }
    const out = await containerd.ctr(
      [
        'run',
        '--rm',
        '--snapshotter',
        'erofs-oci',
        erofsRef(),
        'lazy1',
        '/bin/sh',
        '-c',
        'cat /etc/one.txt /data/two.txt',
      ],
      { namespace: 'k8s.io' },
    );
    assert.equal(out, expectedOutput);
    const sent = traffic.blobs();
    const layerBytes = erofsLayers.reduce((sum, l) => sum + l.size, 0);
    const fetched = erofsLayers.reduce((sum, l) => sum + (sent.get(l.digest) ?? 0), 0);
    assert.ok(fetched < layerBytes / 2, `after the run: fetched ${fetched} of ${layerBytes} layer bytes`);
  });

  it('a view of the lazily committed image reads every layer; usage reports each lazy layer without fetching', async () => {
    const ctr = (args: string[]) =>
      containerd.ctr(['snapshots', '--snapshotter', 'erofs-oci', ...args], { namespace: 'k8s.io' });
    const rows = (await ctr(['ls']))
      .trim()
      .split('\n')
      .slice(1)
      .map((line) => line.trim().split(/\s+/));
    const committed = rows.filter((r) => r.at(-1) === 'Committed');
    assert.equal(committed.length, erofsLayers.length, JSON.stringify(rows));
    const parents = new Set(committed.map((r) => (r.length === 3 ? r[1] : '')));
    const top = committed.find((r) => !parents.has(r[0] as string))?.[0] as string;
    const sentBefore = traffic.total();
    // Usage of a lazy layer comes from its filesystem's statfs: the image's size and inode count. Layer 1
    // holds /, /etc and one.txt; layer 2 holds /, /data, two.txt and big.bin.
    const usage = (await ctr(['usage']))
      .trim()
      .split('\n')
      .slice(1)
      .map((line) => line.trim().split(/\s+/));
    const inodes = usage.map((r) => Number(r.at(-1)));
    assert.ok(inodes.includes(3) && inodes.includes(4), JSON.stringify(usage));
    for (const r of usage) assert.doesNotMatch(r[1] ?? '', /^0(\.0)?$/, `usage ${r.join(' ')}`);
    assert.equal(traffic.total(), sentBefore, 'usage fetched nothing');
    // ctr makes the view without a lease: containerd's collector (woken by the container removed just
    // before) may take it before the label that keeps it lands. Then it is made again.
    for (let attempt = 1; ; attempt++) {
      await ctr(['view', 'lazy-view', top]);
      const labelled = await ctr(['label', 'lazy-view', 'containerd.io/gc.root=test']).then(
        () => true,
        (error: Error) => {
          if (attempt >= 5 || !/not found/.test(error.message)) throw error;
          return false;
        },
      );
      if (labelled) break;
    }
    const target = join(dir.path, 'mnt-view');
    await mkdir(target, { recursive: true });
    const mount = (await ctr(['mounts', target, 'lazy-view'])).trim();
    assert.match(mount, /-t overlay .*lowerdir=[^ ]*\/layers\/\d+:/);
    await run('sh', ['-c', mount]);
    try {
      assert.equal(await readFile(join(target, 'etc', 'one.txt'), 'utf8'), 'one\n');
      assert.equal(await readFile(join(target, 'data', 'two.txt'), 'utf8'), 'two\n');
      assert.ok(existsSync(join(target, 'bin', 'sh')));
      await assert.rejects(writeFile(join(target, 'new.txt'), 'no'), /EROFS|read-only/i);
    } finally {
      await run('umount', [target]);
    }
    await ctr(['rm', 'lazy-view']);
  });

  it('a killed snapshotter and its serving processes come back: a waiting read completes', async () => {
    const records = await readdir(join(dir.path, 'sn-state'));
    const serverPids = new Set<number>();
    const holderPids = new Set<number>();
    let recordedLayers = 0;
    for (const name of records.filter((n) => n.startsWith('mount-'))) {
      const record = JSON.parse(await readFile(join(dir.path, 'sn-state', name, 'record.json'), 'utf8')) as {
        layers: { serverPid: number; devicePid: number }[];
      };
      recordedLayers += record.layers.length;
      for (const layer of record.layers) {
        serverPids.add(layer.serverPid);
        holderPids.add(layer.devicePid);
      }
    }
    // The image's layers were mounted together: one serving process and one device holder for all three.
    assert.equal(recordedLayers, erofsLayers.length);
    assert.equal(serverPids.size, 1);
    assert.equal(holderPids.size, 1);
    await stopSnapshotter(snapshotter, 'SIGKILL');
    for (const pid of serverPids) process.kill(pid, 'SIGKILL');
    // The big file has not been read yet: reading it needs a serving process, which is gone.
    const lazy = (await mountsUnder(join(snapshotterRoot(), 'layers'))).filter((m) => m.type === 'erofs');
    const bigPath = lazy.map((m) => join(m.path, 'data', 'big.bin')).find((p) => existsSync(p));
    assert.ok(bigPath, 'the layer with data/big.bin is mounted');
    const reading = readFile(bigPath);
    await sleep(500);
    snapshotter = await startSnapshotter(dir.path);
    const bytes = await reading;
    assert.equal(sha256(bytes), sha256(big));
    // containerd's gRPC channel to the killed snapshotter reconnects with backoff and fails calls fast
    // until it has (seen once under load in CI: "connection refused"); wait for it, as a user would retry.
    for (let tries = 0; ; tries++) {
      try {
        await containerd.ctr(['snapshots', '--snapshotter', 'erofs-oci', 'ls']);
        break;
      } catch (error) {
        if (tries >= 60 || !/connection refused|Unavailable|unavailable/.test(String(error))) throw error;
        await sleep(500);
      }
    }
    const out = await containerd.ctr(
      [
        'run',
        '--rm',
        '--snapshotter',
        'erofs-oci',
        erofsRef(),
        'lazy2',
        '/bin/sh',
        '-c',
        'cat /etc/one.txt /data/two.txt',
      ],
      { namespace: 'k8s.io' },
    );
    assert.equal(out, expectedOutput);
    assert.match(snapshotter.log(), /reattached|new serving process/);
  });

  it('a lazy layer unmounted by hand is mounted again at the next revival, the layers beside it untouched', async () => {
    const layersDir = join(snapshotterRoot(), 'layers');
    const lazy = (await mountsUnder(layersDir)).filter((m) => m.type === 'erofs');
    const victim = lazy.find((m) => existsSync(join(m.path, 'data', 'two.txt')));
    assert.ok(victim, 'the layer with data/two.txt is mounted');
    await run('umount', [victim.path]);
    await stopSnapshotter(snapshotter);
    snapshotter = await startSnapshotter(dir.path);
    const deadline = Date.now() + 30_000;
    while (!(await mountsUnder(layersDir)).some((m) => m.path === victim.path)) {
      if (Date.now() > deadline) assert.fail(`not mounted again: ${snapshotter.log()}`);
      await sleep(100);
    }
    assert.equal(await readFile(join(victim.path, 'data', 'two.txt'), 'utf8'), 'two\n');
    assert.match(snapshotter.log(), /mounted again at/);
    assert.doesNotMatch(snapshotter.log(), /remounted/);
    assert.equal((await mountsUnder(layersDir)).filter((m) => m.type === 'erofs').length, lazy.length);
  });

  it('a layer whose chunk index does not match its digest annotation is refused, never mounted; the pull fails clearly, the good layer beside it mounts alone', async () => {
    const manifest = JSON.parse(
      await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${tamperedRef()}`]),
    ) as { layers: { digest: string; annotations?: Record<string, string> }[] };
    const layer = manifest.layers[2];
    const good = manifest.layers[1] as { digest: string };
    const rangeText = layer?.annotations?.['org.erofs.chunk-index.range'];
    assert.ok(layer && rangeText, 'convert embeds a chunk index in every layer');
    assert.ok(!erofsLayers.some((l) => l.digest === layer.digest), 'the tampered layer is its own blob');
    // One byte of the embedded index flipped in the registry's storage: the registry still serves it.
    const hex = layer.digest.slice('sha256:'.length);
    const blob = join(dir.path, 'storage/docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
    const flip = async () => {
      const handle = await open(blob, 'r+');
      try {
        const offset = parseRange(rangeText).offset + 40;
        const byte = Buffer.alloc(1);
        await handle.read(byte, 0, 1, offset);
        await handle.write(Buffer.from([(byte[0] as number) ^ 0x55]), 0, 1, offset);
      } finally {
        await handle.close();
      }
    };
    const layersDir = join(snapshotterRoot(), 'layers');
    const mountedBefore = (await mountsUnder(layersDir)).length;
    const recordsBefore = (await readdir(join(dir.path, 'sn-state'))).filter((n) => n.startsWith('mount-'));
    const cri = criImageClient(containerd.address);
    await flip();
    try {
      await assert.rejects(cri.pullImage(tamperedRef()), (error: Error) => {
        assert.match(error.message, /chunk index refused/);
        assert.ok(error.message.includes(layer.digest), error.message);
        return true;
      });
      // Mounting both new layers together failed on the bad one; the good one below it was then mounted
      // alone and committed.
      assert.match(snapshotter.log(), /mounting 2 layers together failed, each is mounted alone/);
      assert.ok(
        snapshotter.log().includes(`layer ${good.digest} of ${tamperedRef()}: committed lazily`),
        snapshotter.log(),
      );
      assert.match(snapshotter.log(), /chunk index refused/);
      // containerd collects what the failed pull left (the good layer's snapshot; waiting for that also
      // keeps its collector from racing the next pull). Then nothing stays: no mount, no record.
      const deadline = Date.now() + 60_000;
      for (;;) {
        const mounted = (await mountsUnder(layersDir)).length;
        const records = (await readdir(join(dir.path, 'sn-state'))).filter((n) => n.startsWith('mount-'));
        if (mounted === mountedBefore && records.length === recordsBefore.length) {
          assert.deepEqual(records, recordsBefore);
          break;
        }
        if (Date.now() > deadline) assert.fail(`left after the failed pull: ${mounted} mounts, ${records}`);
        await sleep(200);
      }
    } finally {
      await flip();
    }
    // The same layer, intact again, mounts lazily and runs: the refusal left nothing broken behind.
    try {
      await cri.pullImage(tamperedRef());
      assert.equal((await mountsUnder(layersDir)).length, mountedBefore + 2);
      const out = await containerd.ctr(
        [
          'run',
          '--rm',
          '--snapshotter',
          'erofs-oci',
          tamperedRef(),
          'lazy3',
          '/bin/sh',
          '-c',
          'cat /etc/own.txt /etc/top.txt',
        ],
        { namespace: 'k8s.io' },
      );
      assert.equal(out, 'own\ntop\n');
      await cri.removeImage(tamperedRef());
    } finally {
      cri.close();
    }
  });

  it('removing the images and Cleanup leave no lazy mount, process or directory behind', async () => {
    const cri = criImageClient(containerd.address);
    try {
      await cri.removeImage(erofsRef());
    } finally {
      cri.close();
    }
    await containerd.ctr(['image', 'rm', '--sync', gzipRef()]);
    await containerd.ctr(['image', 'rm', '--sync', erofsRef()], { namespace: 'k8s.io' }).catch(() => '');
    const deadline = Date.now() + 60_000;
    for (;;) {
      const listed = await containerd.ctr(['snapshots', '--snapshotter', 'erofs-oci', 'ls'], {
        namespace: 'k8s.io',
      });
      const lazy = await mountsUnder(join(snapshotterRoot(), 'layers'));
      if (lazy.length === 0 && listed.trim().split('\n').length <= 1) break;
      if (Date.now() > deadline) assert.fail(`still there: ${JSON.stringify(lazy)}\n${listed}`);
      await sleep(500);
    }
    assert.deepEqual(await mountsUnder(join(dir.path, 'sn-state')), []);
    assert.deepEqual(
      (await readdir(join(dir.path, 'sn-state'))).filter((n) => n.startsWith('mount-')),
      [],
    );
    const ps = await run('ps', ['-eo', 'args']);
    assert.doesNotMatch(
      ps.stdout,
      new RegExp(`serve-layers ${join(dir.path, 'sn-state').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
    );
    const snapshots = await readdir(join(snapshotterRoot(), 'snapshots'));
    assert.deepEqual(snapshots, [], 'every snapshot directory is gone');
    assert.deepEqual(await readdir(join(snapshotterRoot(), 'layers')), [], 'every layer directory is gone');
  });
});
