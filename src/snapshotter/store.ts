/**
 * The snapshotter's metadata: snapshots (name, parent, kind, labels, times, usage) and the lazy layers they
 * sit on, in one SQLite database (node:sqlite) under --root.
 *
 * Every snapshot API call is one transaction (containerd's snapshots/storage discipline): the rows change
 * all together or not at all, and the filesystem work around a transaction is ordered so that a crash
 * between the two leaves only directories that no row names, which `Cleanup` removes. The database runs in
 * WAL mode with synchronous=FULL: a committed transaction survives a crash of the process or the machine.
 * Nothing secret is stored: lazy layers keep the image reference and descriptor, never credentials.
 */
import { DatabaseSync, type SQLInputValue } from 'node:sqlite';
import { ErofsOciError } from '../errors.ts';

export type Kind = 'view' | 'active' | 'committed';

export interface SnapshotRow {
  id: number;
  /** The key of an active snapshot or view, the name of a committed one. */
  name: string;
  parentId: number | null;
  /** The parent's name ('' when none). */
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  /** Milliseconds since the epoch. */
  created: number;
  updated: number;
  /** Usage measured when the snapshot was committed; active snapshots are measured when asked. */
  size: number;
  inodes: number;
  /** The lazy layer this committed snapshot is, or null for a directory snapshot. */
  layerId: number | null;
}

export type LayerState = 'mounting' | 'mounted' | 'unmounting';

/** A lazily mounted EROFS layer, shared by every committed snapshot that is this layer. */
export interface LayerRow {
  id: number;
  digest: string;
  mediaType: string;
  size: number;
  annotations: Record<string, string>;
  /** Where the layer is read from: the image pinned to its manifest digest (REGISTRY/REPO@sha256:...). */
  source: string;
  manifestDigest: string;
  state: LayerState;
  created: number;
  /**
   * The mount record this layer's mount belongs to, when it was mounted with other layers of its image
   * (one serving process and one device holder for them all); null: its own, at its mountpoint.
   */
  mountGroup: string | null;
}

/** The snapshot-state conflicts of the snapshots API, which containerd tells apart by gRPC status. */
export class SnapshotConflict extends ErofsOciError {
  readonly status: 'already-exists' | 'failed-precondition';
  constructor(status: 'already-exists' | 'failed-precondition', message: string) {
    super('io', message);
    this.status = status;
  }
}

const SCHEMA_VERSION = 2;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS layers (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  digest TEXT NOT NULL UNIQUE,
  media_type TEXT NOT NULL,
  size INTEGER NOT NULL,
  annotations TEXT NOT NULL,
  source TEXT NOT NULL,
  manifest_digest TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('mounting', 'mounted', 'unmounting')),
  created INTEGER NOT NULL,
  mount_group TEXT
);
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES snapshots(id),
  kind TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
  labels TEXT NOT NULL,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  inodes INTEGER NOT NULL DEFAULT 0,
  layer_id INTEGER REFERENCES layers(id)
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE INDEX IF NOT EXISTS snapshots_layer ON snapshots(layer_id);
`;

const SNAPSHOT_COLUMNS = `s.id, s.name, s.parent_id, COALESCE(p.name, '') AS parent, s.kind, s.labels, s.created,
  s.updated, s.size, s.inodes, s.layer_id`;

type Row = Record<string, SQLInputValue>;

function snapshotOf(row: Row): SnapshotRow {
  return {
    id: Number(row.id),
    name: String(row.name),
    parentId: row.parent_id === null ? null : Number(row.parent_id),
    parent: String(row.parent),
    kind: row.kind as Kind,
    labels: JSON.parse(String(row.labels)) as Record<string, string>,
    created: Number(row.created),
    updated: Number(row.updated),
    size: Number(row.size),
    inodes: Number(row.inodes),
    layerId: row.layer_id === null ? null : Number(row.layer_id),
  };
}

function layerOf(row: Row): LayerRow {
  return {
    id: Number(row.id),
    digest: String(row.digest),
    mediaType: String(row.media_type),
    size: Number(row.size),
    annotations: JSON.parse(String(row.annotations)) as Record<string, string>,
    source: String(row.source),
    manifestDigest: String(row.manifest_digest),
    state: row.state as LayerState,
    created: Number(row.created),
    mountGroup: row.mount_group === null || row.mount_group === undefined ? null : String(row.mount_group),
  };
}

export class Store {
  readonly #db: DatabaseSync;
  #depth = 0;

  private constructor(db: DatabaseSync) {
    this.#db = db;
  }

  static open(path: string): Store {
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path);
      db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;');
      const version = Number((db.prepare('PRAGMA user_version').get() as Row).user_version);
      if (version === 1) {
        // Version 2 added layers.mount_group (null for the layers version 1 mounted, one each).
        db.exec(
          'BEGIN IMMEDIATE; ALTER TABLE layers ADD COLUMN mount_group TEXT; PRAGMA user_version = 2; COMMIT;',
        );
      } else if (version !== 0 && version !== SCHEMA_VERSION) {
        db.close();
        throw new ErofsOciError(
          'unsupported',
          `the snapshotter database ${path} has schema version ${version}; this erofs-oci reads ${SCHEMA_VERSION}`,
        );
      }
      db.exec(SCHEMA);
      db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    } catch (error) {
      if (error instanceof ErofsOciError) throw error;
      throw new ErofsOciError(
        'corrupt',
        `cannot open the snapshotter database ${path}: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
    return new Store(db);
  }

  close(): void {
    this.#db.close();
  }

  /**
   * Runs `body` as one transaction: committed when it returns, rolled back when it throws. `body` is
   * synchronous, so no other call can interleave with it on this single-threaded process; nested calls
   * join the outer transaction.
   */
  transaction<T>(body: () => T): T {
    if (this.#depth > 0) return body();
    this.#db.exec('BEGIN IMMEDIATE');
    this.#depth++;
    try {
      const result = body();
      this.#db.exec('COMMIT');
      return result;
    } catch (error) {
      this.#db.exec('ROLLBACK');
      throw error;
    } finally {
      this.#depth--;
    }
  }

  // ---- snapshots ----

  get(name: string): SnapshotRow | undefined {
    const row = this.#db
      .prepare(
        `SELECT ${SNAPSHOT_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id WHERE s.name = ?`,
      )
      .get(name) as Row | undefined;
    return row === undefined ? undefined : snapshotOf(row);
  }

  /** Like `get`, but a missing snapshot is a 'not-found' error. */
  require(name: string): SnapshotRow {
    const row = this.get(name);
    if (!row) throw new ErofsOciError('not-found', `snapshot ${name} does not exist`);
    return row;
  }

  byId(id: number): SnapshotRow {
    const row = this.#db
      .prepare(
        `SELECT ${SNAPSHOT_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id WHERE s.id = ?`,
      )
      .get(id) as Row | undefined;
    if (row === undefined) throw new ErofsOciError('not-found', `snapshot #${id} does not exist`);
    return snapshotOf(row);
  }

  list(): SnapshotRow[] {
    return (
      this.#db
        .prepare(
          `SELECT ${SNAPSHOT_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.id`,
        )
        .all() as Row[]
    ).map(snapshotOf);
  }

  /** The ids of `id`'s ancestors, nearest first (the overlayfs lowerdir order). */
  ancestors(id: number): number[] {
    const rows = this.#db
      .prepare(
        `WITH RECURSIVE chain(id, depth) AS (
           SELECT parent_id, 1 FROM snapshots WHERE id = ? AND parent_id IS NOT NULL
           UNION ALL
           SELECT s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.id WHERE s.parent_id IS NOT NULL
         ) SELECT id FROM chain ORDER BY depth`,
      )
      .all(id) as Row[];
    return rows.map((r) => Number(r.id));
  }

  /** Inserts a snapshot; the name must be free and the parent committed. */
  insert(snapshot: {
    name: string;
    parent: string;
    kind: Kind;
    labels: Record<string, string>;
    now: number;
    layerId?: number;
    usage?: { size: number; inodes: number };
  }): SnapshotRow {
    if (this.get(snapshot.name))
      throw new SnapshotConflict('already-exists', `snapshot ${snapshot.name} already exists`);
    let parentId: number | null = null;
    if (snapshot.parent !== '') {
      const parent = this.get(snapshot.parent);
      if (!parent) throw new ErofsOciError('not-found', `parent snapshot ${snapshot.parent} does not exist`);
      if (parent.kind !== 'committed')
        throw new ErofsOciError('usage', `parent ${snapshot.parent} is not a committed snapshot`);
      parentId = parent.id;
    }
    this.#db
      .prepare(
        `INSERT INTO snapshots (name, parent_id, kind, labels, created, updated, size, inodes, layer_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        snapshot.name,
        parentId,
        snapshot.kind,
        JSON.stringify(snapshot.labels),
        snapshot.now,
        snapshot.now,
        snapshot.usage?.size ?? 0,
        snapshot.usage?.inodes ?? 0,
        snapshot.layerId ?? null,
      );
    return this.require(snapshot.name);
  }

  /** Turns active snapshot `key` into committed snapshot `name`, keeping its id (and so its directory). */
  commit(
    key: string,
    name: string,
    options: { labels?: Record<string, string>; usage: { size: number; inodes: number }; now: number },
  ): SnapshotRow {
    const active = this.require(key);
    if (active.kind !== 'active')
      throw new SnapshotConflict(
        'failed-precondition',
        `snapshot ${key} is ${active.kind}, not active: only active snapshots can be committed`,
      );
    if (this.get(name)) throw new SnapshotConflict('already-exists', `snapshot ${name} already exists`);
    this.#db
      .prepare(
        `UPDATE snapshots SET name = ?, kind = 'committed', labels = ?, updated = ?, size = ?, inodes = ? WHERE id = ?`,
      )
      .run(
        name,
        JSON.stringify(options.labels ?? active.labels),
        options.now,
        options.usage.size,
        options.usage.inodes,
        active.id,
      );
    return this.require(name);
  }

  /** Deletes snapshot `name`; one with children is refused (remove them first, as containerd requires). */
  remove(name: string): SnapshotRow {
    const row = this.require(name);
    const children = Number(
      (this.#db.prepare('SELECT COUNT(*) AS n FROM snapshots WHERE parent_id = ?').get(row.id) as Row).n,
    );
    if (children > 0)
      throw new SnapshotConflict(
        'failed-precondition',
        `snapshot ${name} has ${children} child snapshot(s): remove them first`,
      );
    this.#db.prepare('DELETE FROM snapshots WHERE id = ?').run(row.id);
    return row;
  }

  setLabels(name: string, labels: Record<string, string>, now: number): SnapshotRow {
    const row = this.require(name);
    this.#db
      .prepare('UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?')
      .run(JSON.stringify(labels), now, row.id);
    return this.require(name);
  }

  /** Every snapshot id and layer id a row names: what `Cleanup` must keep. */
  referenced(): { snapshots: Set<number>; layers: Set<number> } {
    const snapshots = new Set(
      (this.#db.prepare('SELECT id FROM snapshots').all() as Row[]).map((r) => Number(r.id)),
    );
    const layers = new Set(
      (
        this.#db.prepare('SELECT DISTINCT layer_id FROM snapshots WHERE layer_id IS NOT NULL').all() as Row[]
      ).map((r) => Number(r.layer_id)),
    );
    return { snapshots, layers };
  }

  // ---- lazy layers ----

  layer(digest: string): LayerRow | undefined {
    const row = this.#db.prepare('SELECT * FROM layers WHERE digest = ?').get(digest) as Row | undefined;
    return row === undefined ? undefined : layerOf(row);
  }

  layerById(id: number): LayerRow | undefined {
    const row = this.#db.prepare('SELECT * FROM layers WHERE id = ?').get(id) as Row | undefined;
    return row === undefined ? undefined : layerOf(row);
  }

  layers(): LayerRow[] {
    return (this.#db.prepare('SELECT * FROM layers ORDER BY id').all() as Row[]).map(layerOf);
  }

  insertLayer(
    layer: Omit<LayerRow, 'id' | 'state' | 'created' | 'mountGroup'> & { now: number; mountGroup?: string },
  ): LayerRow {
    this.#db
      .prepare(
        `INSERT INTO layers (digest, media_type, size, annotations, source, manifest_digest, state, created, mount_group)
         VALUES (?, ?, ?, ?, ?, ?, 'mounting', ?, ?)`,
      )
      .run(
        layer.digest,
        layer.mediaType,
        layer.size,
        JSON.stringify(layer.annotations),
        layer.source,
        layer.manifestDigest,
        layer.now,
        layer.mountGroup ?? null,
      );
    return this.layer(layer.digest) as LayerRow;
  }

  setLayerState(id: number, state: LayerState): void {
    this.#db.prepare('UPDATE layers SET state = ? WHERE id = ?').run(state, id);
  }

  /** How many snapshots are this layer. */
  layerUsers(id: number): number {
    return Number(
      (this.#db.prepare('SELECT COUNT(*) AS n FROM snapshots WHERE layer_id = ?').get(id) as Row).n,
    );
  }

  deleteLayer(id: number): void {
    this.#db.prepare('DELETE FROM layers WHERE id = ?').run(id);
  }
}
