/**
 * The snapshots API over overlayfs (containerd 1.6 snapshots/overlay semantics): a snapshot is a directory
 * under --root/snapshots/ID with `fs` (its files; the upper directory while active) and `work` (overlayfs's
 * work directory, active snapshots only). Active snapshots and views are mounted as overlayfs over the
 * committed ancestors' `fs` directories, nearest first; a snapshot without parents is a bind mount. A
 * committed snapshot may instead be a lazy EROFS layer (remote.ts), whose `fs` is the layer's mount.
 *
 * Crash discipline: a new snapshot's directory is made under a temporary name, renamed to its id inside
 * the transaction that inserts its row; a removed one is renamed aside inside the transaction that deletes
 * its row and deleted afterwards. A crash anywhere leaves at worst directories no row names: Cleanup's.
 */
import { chownSync, existsSync, renameSync, rmSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ErofsOciError } from '../errors.ts';
import { type Filter, parseFilters } from './filters.ts';
import type { LazyLayers } from './lazy-layers.ts';
import { type Kind, SnapshotConflict, type SnapshotRow, Store } from './store.ts';

export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface Info {
  name: string;
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  /** Milliseconds since the epoch. */
  created: number;
  updated: number;
}

export interface Usage {
  size: number;
  inodes: number;
}

/**
 * What Prepare consults before making an empty active snapshot: given the labels, it may commit the
 * snapshot containerd would unpack (a lazy layer) and say so; containerd then skips the download.
 */
export interface RemoteLayers {
  /** The committed snapshot's name when the target now exists (AlreadyExists), undefined to unpack locally. */
  prepare(request: {
    key: string;
    parent: string;
    labels: Record<string, string>;
  }): Promise<string | undefined>;
  /** Unmounts lazy layer `layerId` if no snapshot uses it any more (after Remove, or found by Cleanup). */
  release(layerId: number): Promise<void>;
}

export const LABEL_TARGET_REF = 'containerd.io/snapshot.ref';

const OVERLAY_INDEX_PARAMETER = '/sys/module/overlay/parameters/index';

export class Snapshotter {
  readonly root: string;
  readonly store: Store;
  readonly lazy: LazyLayers | undefined;
  remote: RemoteLayers | undefined;
  readonly #indexOff = existsSync(OVERLAY_INDEX_PARAMETER);
  /** Temporary directories of snapshots being created: Cleanup must leave them alone. */
  readonly #creating = new Set<string>();

  private constructor(root: string, store: Store, lazy: LazyLayers | undefined) {
    this.root = root;
    this.store = store;
    this.lazy = lazy;
  }

  static async open(root: string, options: { lazy?: LazyLayers } = {}): Promise<Snapshotter> {
    await mkdir(root, { recursive: true, mode: 0o700 });
    await mkdir(join(root, 'snapshots'), { recursive: true, mode: 0o700 });
    const store = Store.open(join(root, 'metadata.db'));
    return new Snapshotter(root, store, options.lazy);
  }

  close(): void {
    this.store.close();
  }

  snapshotDir(id: number): string {
    return join(this.root, 'snapshots', String(id));
  }

  /** Where a committed snapshot's files are: its `fs` directory, or its lazy layer's mount. */
  fsPath(row: Pick<SnapshotRow, 'id' | 'layerId'>): string {
    if (row.layerId !== null) {
      if (!this.lazy)
        throw new ErofsOciError('unsupported', `snapshot ${row.id} is a lazy layer, but lazy layers are off`);
      return this.lazy.mountpoint({ id: row.layerId });
    }
    return join(this.snapshotDir(row.id), 'fs');
  }

  async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    if (this.remote && labels[LABEL_TARGET_REF] !== undefined) {
      const committed = await this.remote.prepare({ key, parent, labels });
      if (committed !== undefined) {
        throw new SnapshotConflict(
          'already-exists',
          `target snapshot ${labels[LABEL_TARGET_REF]} already exists (lazy layer ${committed})`,
        );
      }
    }
    return this.#create('active', key, parent, labels);
  }

  async view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.#create('view', key, parent, labels);
  }

  mounts(key: string): Mount[] {
    const row = this.store.require(key);
    if (row.kind === 'committed')
      throw new SnapshotConflict(
        'failed-precondition',
        `snapshot ${key} is committed: only active snapshots and views have mounts`,
      );
    return this.#mountsOf(row);
  }

  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    const active = this.store.require(key);
    if (active.kind !== 'active')
      throw new SnapshotConflict('failed-precondition', `snapshot ${key} is ${active.kind}, not active`);
    const usage = await diskUsage(join(this.snapshotDir(active.id), 'fs'));
    this.store.transaction(() => {
      this.store.commit(key, name, {
        usage,
        now: Date.now(),
        ...(Object.keys(labels).length > 0 ? { labels } : {}),
      });
    });
  }

  async remove(key: string): Promise<void> {
    let aside: string | undefined;
    const removed = this.store.transaction(() => {
      const row = this.store.remove(key);
      if (row.layerId !== null) {
        if (this.store.layerUsers(row.layerId) === 0) this.store.setLayerState(row.layerId, 'unmounting');
        return row;
      }
      const dir = this.snapshotDir(row.id);
      aside = join(this.root, 'snapshots', `rm-${row.id}`);
      try {
        renameSync(dir, aside);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        aside = undefined;
      }
      return row;
    });
    if (aside !== undefined) await rm(aside, { recursive: true, force: true });
    if (removed.layerId !== null) await this.remote?.release(removed.layerId);
  }

  stat(key: string): Info {
    return infoOf(this.store.require(key));
  }

  /** Updates labels (the only mutable field): `paths` empty replaces all, `labels` too, `labels.K` one. */
  update(info: Pick<Info, 'name' | 'labels'>, paths: readonly string[]): Info {
    return this.store.transaction(() => {
      const row = this.store.require(info.name);
      let labels = { ...row.labels };
      if (paths.length === 0) labels = { ...info.labels };
      for (const path of paths) {
        if (path === 'labels') labels = { ...info.labels };
        else if (path.startsWith('labels.')) {
          const label = path.slice('labels.'.length);
          const value = info.labels[label];
          if (value === undefined) delete labels[label];
          else labels[label] = value;
        } else
          throw new ErofsOciError(
            'usage',
            `cannot update field ${JSON.stringify(path)} of snapshot ${info.name}`,
          );
      }
      return infoOf(this.store.setLabels(info.name, labels, Date.now()));
    });
  }

  async usage(key: string): Promise<Usage> {
    const row = this.store.require(key);
    if (row.kind === 'committed') return { size: row.size, inodes: row.inodes };
    return diskUsage(join(this.snapshotDir(row.id), 'fs'));
  }

  list(filters: readonly string[]): Info[] {
    const filter: Filter = parseFilters(filters);
    return this.store
      .list()
      .map(infoOf)
      .filter((info) => filter({ ...info, kind: kindName(info.kind) }));
  }

  /** Removes snapshot directories no row names (left by crashes) and unmounts lazy layers nothing uses. */
  async cleanup(): Promise<void> {
    const { snapshots, layers } = this.store.referenced();
    const dir = join(this.root, 'snapshots');
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      if (this.#creating.has(path)) continue;
      if (/^\d+$/.test(name) && snapshots.has(Number(name))) continue;
      await rm(path, { recursive: true, force: true });
    }
    for (const layer of this.store.layers()) {
      if (!layers.has(layer.id)) await this.remote?.release(layer.id);
    }
  }

  async #create(
    kind: 'active' | 'view',
    key: string,
    parent: string,
    labels: Record<string, string>,
  ): Promise<Mount[]> {
    // Refused before any directory is made; checked again inside the transaction.
    if (this.store.get(key)) throw new SnapshotConflict('already-exists', `snapshot ${key} already exists`);
    const parentRow = parent === '' ? undefined : this.store.require(parent);
    const temp = await mkdtemp(join(this.root, 'snapshots', 'new-'));
    this.#creating.add(temp);
    try {
      await mkdir(join(temp, 'fs'), { mode: 0o755 });
      if (kind === 'active') await mkdir(join(temp, 'work'), { mode: 0o711 });
      // As containerd's overlay snapshotter: the new root is owned like the parent's (user namespaces).
      const owner = parentRow ? await stat(this.fsPath(parentRow)).catch(() => undefined) : undefined;
      const row = this.store.transaction(() => {
        const inserted = this.store.insert({ name: key, parent, kind, labels, now: Date.now() });
        const dir = this.snapshotDir(inserted.id);
        // An id whose insert was lost in a crash may come again, its directory still there: nothing names it.
        rmSync(dir, { recursive: true, force: true });
        if (owner) chownSync(join(temp, 'fs'), owner.uid, owner.gid);
        renameSync(temp, dir);
        return inserted;
      });
      return this.#mountsOf(row);
    } catch (error) {
      await rm(temp, { recursive: true, force: true });
      throw error;
    } finally {
      this.#creating.delete(temp);
    }
  }

  #mountsOf(row: SnapshotRow): Mount[] {
    const fs = join(this.snapshotDir(row.id), 'fs');
    const ancestors = this.store.ancestors(row.id).map((id) => this.fsPath(this.store.byId(id)));
    if (ancestors.length === 0) {
      return [
        { type: 'bind', source: fs, target: '', options: [row.kind === 'view' ? 'ro' : 'rw', 'rbind'] },
      ];
    }
    if (row.kind === 'view' && ancestors.length === 1) {
      return [{ type: 'bind', source: ancestors[0] as string, target: '', options: ['ro', 'rbind'] }];
    }
    const options = this.#indexOff ? ['index=off'] : [];
    if (row.kind === 'active') {
      options.push(`workdir=${join(this.snapshotDir(row.id), 'work')}`, `upperdir=${fs}`);
    }
    options.push(`lowerdir=${ancestors.join(':')}`);
    return [{ type: 'overlay', source: 'overlay', target: '', options }];
  }
}

function infoOf(row: SnapshotRow): Info {
  return {
    name: row.name,
    parent: row.parent,
    kind: row.kind,
    labels: row.labels,
    created: row.created,
    updated: row.updated,
  };
}

/** containerd's Kind.String(), which filters compare against. */
function kindName(kind: Kind): string {
  return kind === 'view' ? 'View' : kind === 'active' ? 'Active' : 'Committed';
}

/** Bytes allocated and inodes under `dir`, each inode counted once (containerd's fs.DiskUsage). */
export async function diskUsage(dir: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  const walk = async (path: string): Promise<void> => {
    const st = await lstat(path, { bigint: true });
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      for (const name of await readdir(path)) await walk(join(path, name));
    }
  };
  await walk(dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
  });
  return { size, inodes: seen.size };
}
