import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseFilters } from './filters.ts';
import { Snapshotter } from './snapshotter.ts';
import { SnapshotConflict, Store } from './store.ts';

const dir = mkdtempSync(join(tmpdir(), 'erofs-oci-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const storeModule = fileURLToPath(new URL('./store.ts', import.meta.url));

describe('Store', () => {
  it('Store opens a version-1 database, adding mount_group (null: each layer its own mount)', () => {
    const path = join(dir, 'v1.db');
    const old = new DatabaseSync(path);
    old.exec(`CREATE TABLE layers (id INTEGER PRIMARY KEY AUTOINCREMENT, digest TEXT NOT NULL UNIQUE,
      media_type TEXT NOT NULL, size INTEGER NOT NULL, annotations TEXT NOT NULL, source TEXT NOT NULL,
      manifest_digest TEXT NOT NULL, state TEXT NOT NULL, created INTEGER NOT NULL);
      INSERT INTO layers (digest, media_type, size, annotations, source, manifest_digest, state, created)
      VALUES ('sha256:aa', 'application/vnd.oci.image.layer.v1.erofs', 10, '{}', 'r/x@sha256:bb', 'sha256:bb', 'mounted', 1);
      PRAGMA user_version = 1;`);
    old.close();
    const store = Store.open(path);
    assert.equal(store.layer('sha256:aa')?.mountGroup, null);
    store.transaction(() =>
      store.insertLayer({
        digest: 'sha256:cc',
        mediaType: 'application/vnd.oci.image.layer.v1.erofs',
        size: 1,
        annotations: {},
        source: 'r/x@sha256:bb',
        manifestDigest: 'sha256:bb',
        now: 2,
        mountGroup: '/root/layers/group-cc',
      }),
    );
    assert.equal(store.layer('sha256:cc')?.mountGroup, '/root/layers/group-cc');
    store.close();
  });

  it('Store.transaction rolls every change back when the body throws', () => {
    const store = Store.open(join(dir, 'rollback.db'));
    store.transaction(() => store.insert({ name: 'base', parent: '', kind: 'active', labels: {}, now: 1 }));
    assert.throws(
      () =>
        store.transaction(() => {
          store.commit('base', 'committed', { usage: { size: 1, inodes: 1 }, now: 2 });
          store.insert({ name: 'child', parent: 'committed', kind: 'active', labels: {}, now: 3 });
          throw new Error('fail midway');
        }),
      /fail midway/,
    );
    assert.deepEqual(
      store.list().map((r) => [r.name, r.kind]),
      [['base', 'active']],
    );
    store.close();
  });

  it('Store keeps parents, refuses removing one with children and names conflicts', () => {
    const store = Store.open(join(dir, 'tree.db'));
    store.insert({ name: 'a', parent: '', kind: 'active', labels: {}, now: 1 });
    store.commit('a', 'A', { usage: { size: 0, inodes: 0 }, now: 1 });
    store.insert({ name: 'b', parent: 'A', kind: 'active', labels: { x: 'y' }, now: 1 });
    store.commit('b', 'B', { usage: { size: 0, inodes: 0 }, now: 1 });
    const c = store.insert({ name: 'c', parent: 'B', kind: 'active', labels: {}, now: 1 });
    assert.deepEqual(
      store.ancestors(c.id).map((id) => store.byId(id).name),
      ['B', 'A'],
    );
    assert.equal(store.get('c')?.parent, 'B');
    assert.throws(
      () => store.remove('B'),
      (e: unknown) => e instanceof SnapshotConflict && e.status === 'failed-precondition',
    );
    assert.throws(
      () => store.insert({ name: 'c', parent: '', kind: 'view', labels: {}, now: 1 }),
      (e: unknown) => e instanceof SnapshotConflict && e.status === 'already-exists',
    );
    assert.throws(
      () => store.insert({ name: 'd', parent: 'c', kind: 'view', labels: {}, now: 1 }),
      /not a committed snapshot/,
    );
    assert.throws(
      () => store.insert({ name: 'd', parent: 'nope', kind: 'view', labels: {}, now: 1 }),
      /does not exist/,
    );
    store.close();
  });

  it('Store survives a process killed inside a transaction: the transaction is gone, earlier ones stay', () => {
    const path = join(dir, 'crash.db');
    const script = join(dir, 'crash.ts');
    writeFileSync(
      script,
      `import { Store } from ${JSON.stringify(storeModule)};
const store = Store.open(${JSON.stringify(path)});
store.transaction(() => store.insert({ name: 'kept', parent: '', kind: 'active', labels: {}, now: 1 }));
store.transaction(() => {
  store.commit('kept', 'K', { usage: { size: 1, inodes: 1 }, now: 2 });
  store.insert({ name: 'lost', parent: 'K', kind: 'active', labels: {}, now: 3 });
  process.kill(process.pid, 'SIGKILL');
});
`,
    );
    const child = spawnSync(process.execPath, [script]);
    assert.equal(child.signal, 'SIGKILL', child.stderr.toString());
    const store = Store.open(path);
    assert.deepEqual(
      store.list().map((r) => [r.name, r.kind]),
      [['kept', 'active']],
    );
    // The next id is usable even if the lost insert had taken it.
    store.transaction(() => store.insert({ name: 'next', parent: '', kind: 'active', labels: {}, now: 4 }));
    store.close();
  });
});

describe('Snapshotter (directories)', () => {
  it('Snapshotter.cleanup removes directories no row names and keeps the others', async () => {
    const root = join(dir, 'root');
    const snapshotter = await Snapshotter.open(root);
    const mounts = await snapshotter.prepare('one', '', {});
    assert.equal(mounts[0]?.type, 'bind');
    // What a crash leaves: a half-made snapshot, a half-removed one, a directory whose row was lost.
    for (const name of ['new-abc', 'rm-7', '99'])
      await mkdir(join(root, 'snapshots', name, 'fs'), { recursive: true });
    await snapshotter.cleanup();
    const one = snapshotter.store.require('one');
    assert.deepEqual(readdirSync(join(root, 'snapshots')), [String(one.id)]);
    await snapshotter.commit('One', 'one', {});
    await snapshotter.prepare('two', 'One', {});
    const [overlay] = snapshotter.mounts('two');
    assert.equal(overlay?.type, 'overlay');
    assert.ok(overlay?.options.includes(`lowerdir=${join(root, 'snapshots', String(one.id), 'fs')}`));
    await assert.rejects(snapshotter.remove('One'), /child/);
    await snapshotter.remove('two');
    await snapshotter.remove('One');
    assert.deepEqual(readdirSync(join(root, 'snapshots')), []);
    snapshotter.close();
  });
});

describe('parseFilters', () => {
  const target = {
    name: 'default/3/sha256:abc',
    parent: 'default/2/sha256:def',
    kind: 'Committed',
    labels: { 'containerd.io/snapshot.ref': 'sha256:abc', x: 'y' },
  };
  it('parseFilters matches the filters containerd sends', () => {
    assert.ok(
      parseFilters([`labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/2/sha256:def"`])(
        target,
      ),
    );
    assert.ok(!parseFilters([`labels."containerd.io/snapshot.ref"==sha256:abc,parent=="other"`])(target));
    assert.ok(parseFilters(['kind==committed'])(target));
    assert.ok(parseFilters(['name~=^default/', 'kind==view'])(target));
    assert.ok(parseFilters(['labels.x'])(target));
    assert.ok(!parseFilters(['labels.z'])(target));
    assert.ok(parseFilters([])(target));
    assert.throws(() => parseFilters(['name=="unterminated']), /unterminated quote/);
  });
});
