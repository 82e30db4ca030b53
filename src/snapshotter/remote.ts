/**
 * The remote-snapshot protocol (as stargz and SOCI speak it): containerd's CRI plugin, with
 * `disable_snapshot_annotations = false`, labels each layer's Prepare with the image, its manifest and the
 * layer's digest, and names the snapshot it wants (`containerd.io/snapshot.ref`, the chain id). When that
 * layer is EROFS-native we mount it lazily, commit the wanted snapshot on the mount and answer
 * AlreadyExists: containerd finds the snapshot and downloads nothing. Any other layer, or any request
 * without the labels, is unpacked by containerd into an ordinary active snapshot.
 *
 * One mount per layer digest, shared by every snapshot (any image, any namespace) that is this layer, and
 * counted by the snapshot rows that name it: the last Remove unmounts it. A lock per digest orders
 * mounting, unmounting and reviving the same layer.
 */
import { createHash } from 'node:crypto';
import { statfs } from 'node:fs/promises';
import { ErofsOciError } from '../errors.ts';
import { type ImageSource, type LayerDescriptor, parseSourceReference } from '../oci/index.ts';
import type { LazyLayers } from './lazy-layers.ts';
import { LABEL_TARGET_REF, type RemoteLayers, type Snapshotter } from './snapshotter.ts';
import type { LayerRow, SnapshotRow } from './store.ts';

export const LABEL_CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref';
export const LABEL_CRI_MANIFEST_DIGEST = 'containerd.io/snapshot/cri.manifest-digest';
export const LABEL_CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';

/** Manifests remembered per pinned image: CRI prepares an image's layers one after another. */
const MANIFEST_CACHE_ENTRIES = 32;

export interface LazyRemoteOptions {
  snapshotter: Snapshotter;
  lazy: LazyLayers;
  /** Opens an image with the command's registry options and credential chain. */
  openImage: (ref: string, signal?: AbortSignal) => Promise<ImageSource>;
  log: (line: string) => void;
}

/** `REGISTRY/REPO@DIGEST` for a registry reference, undefined for anything else. */
export function pinnedReference(imageRef: string, manifestDigest: string): string | undefined {
  try {
    const ref = parseSourceReference(imageRef);
    return ref.kind === 'registry' ? `${ref.registry}/${ref.repository}@${manifestDigest}` : undefined;
  } catch {
    // Not a reference we can read: containerd unpacks the layer itself.
    return undefined;
  }
}

export class LazyRemote implements RemoteLayers {
  readonly #options: LazyRemoteOptions;
  readonly #locks = new Map<string, Promise<unknown>>();
  readonly #manifests = new Map<string, Promise<LayerDescriptor[]>>();
  /** Layers being mounted together, by digest: their own Prepares wait for that. */
  readonly #mounting = new Map<string, Promise<void>>();

  constructor(options: LazyRemoteOptions) {
    this.#options = options;
  }

  get #store() {
    return this.#options.snapshotter.store;
  }

  async prepare(request: {
    key: string;
    parent: string;
    labels: Record<string, string>;
  }): Promise<string | undefined> {
    const { labels, parent } = request;
    const target = labels[LABEL_TARGET_REF];
    const imageRef = labels[LABEL_CRI_IMAGE_REF];
    const manifestDigest = labels[LABEL_CRI_MANIFEST_DIGEST];
    const layerDigest = labels[LABEL_CRI_LAYER_DIGEST];
    if (!target || !imageRef || !manifestDigest || !layerDigest) return undefined;
    const existing = this.#findTarget(target, parent);
    if (existing) return existing.name;
    const source = pinnedReference(imageRef, manifestDigest);
    if (source === undefined) return undefined;
    let layers: LayerDescriptor[];
    try {
      layers = await this.#layersOf(source);
    } catch (error) {
      this.#options.log(
        `${source}: cannot read the manifest, containerd unpacks ${layerDigest}: ${(error as Error).message}`,
      );
      return undefined;
    }
    const descriptor = layers.find((l) => l.digest === layerDigest);
    if (descriptor?.format.kind !== 'erofs') return undefined;
    if (descriptor.chunkIndex !== undefined) {
      // Its index is a manifest entry of its own, which containerd would count as a layer of the image.
      throw new ErofsOciError(
        'unsupported',
        `layer ${layerDigest} of ${source} has a standalone chunk-index layer, which containerd cannot pull`,
      );
    }
    const layer = descriptor;
    await this.#mountTogether(layers, source, manifestDigest, layerDigest);
    return this.#locked(layerDigest, async () => {
      const raced = this.#findTarget(target, parent);
      if (raced) return raced.name;
      const row = await this.#acquire(layer, source, manifestDigest);
      const name = this.#store.get(target) ? `${target}@${hash(parent)}` : target;
      const usage = await layerUsage(this.#options.lazy.mountpoint(row));
      this.#store.transaction(() =>
        this.#store.insert({
          name,
          parent,
          kind: 'committed',
          labels,
          now: Date.now(),
          layerId: row.id,
          usage,
        }),
      );
      this.#options.log(`layer ${layer.digest} of ${imageRef}: committed lazily as ${name}`);
      return name;
    });
  }

  /** The rows of `group` as the store holds them now (under the group's locks): removed ones left out. */
  #current(group: readonly LayerRow[]): LayerRow[] {
    return group.map((l) => this.#store.layerById(l.id)).filter((l): l is LayerRow => l !== undefined);
  }

  /**
   * Unmounts the layer's mount once no snapshot uses any layer of it (its group: the layers mounted
   * together share their processes); until then a layer nothing uses stays mounted, ready for reuse.
   */
  async release(layerId: number): Promise<void> {
    const layer = this.#store.layerById(layerId);
    if (!layer) return;
    const group = this.#groupOf(layer);
    await this.#lockedAll(
      group.map((l) => l.digest),
      async () => {
        const rows = this.#current(group);
        if (rows.length === 0) return;
        if (rows.some((l) => this.#store.layerUsers(l.id) > 0)) {
          this.#store.transaction(() => {
            for (const l of rows) if (l.state === 'unmounting') this.#store.setLayerState(l.id, 'mounted');
          });
          return;
        }
        this.#store.transaction(() => {
          for (const l of rows) this.#store.setLayerState(l.id, 'unmounting');
        });
        await this.#options.lazy.unmount(rows);
        this.#store.transaction(() => {
          for (const l of rows) this.#store.deleteLayer(l.id);
        });
        for (const l of rows) this.#options.log(`layer ${l.digest}: unmounted (no snapshot uses it)`);
      },
    );
  }

  /**
   * After a start, and from time to time: every mount back to serving (a dead serving process replaced,
   * a lost mount mounted again), half-mounted ones of a crash taken down, half-removed ones finished.
   */
  async revive(signal?: AbortSignal): Promise<void> {
    const groups = new Map<string, LayerRow[]>();
    for (const layer of this.#store.layers()) {
      const key = this.#options.lazy.recordKey(layer);
      groups.set(key, [...(groups.get(key) ?? []), layer]);
    }
    for (const [key, group] of groups) {
      if (signal?.aborted) return;
      try {
        const unmounting = group.find((l) => l.state === 'unmounting');
        if (unmounting) {
          await this.release(unmounting.id);
          continue;
        }
        await this.#lockedAll(
          group.map((l) => l.digest),
          async () => {
            const rows = this.#current(group);
            if (rows.length === 0) return;
            if (rows.some((l) => l.state === 'mounting')) {
              // A crash while mounting: no snapshot names them yet.
              await this.#options.lazy.unmount(rows);
              this.#store.transaction(() => {
                for (const l of rows) this.#store.deleteLayer(l.id);
              });
              return;
            }
            const result = await this.#options.lazy.check(rows, signal);
            if (result !== 'serving') this.#options.log(`${key}: ${result}`);
          },
        );
      } catch (error) {
        this.#options.log(`${key}: cannot revive: ${(error as Error).message}`);
      }
    }
  }

  /** The layers that share `layer`'s mount record (itself included). */
  #groupOf(layer: LayerRow): LayerRow[] {
    if (layer.mountGroup === null) return [layer];
    return this.#store.layers().filter((l) => l.mountGroup === layer.mountGroup);
  }

  /**
   * CRI prepares an image's layers one after another, each waiting for the one before, and mounting a
   * layer is mostly starting its two processes. So at the first EROFS layer of an image not mounted yet,
   * every such layer of the image is mounted at once, with one serving process and one device holder for
   * them all; the Prepare of each then finds it mounted (or waits for the mount in progress). When that
   * fails (one bad layer fails the whole start), each Prepare mounts its own layer alone, so only a bad
   * layer is refused.
   */
  async #mountTogether(
    layers: LayerDescriptor[],
    source: string,
    manifestDigest: string,
    current: string,
  ): Promise<void> {
    const pending = this.#mounting.get(current);
    if (pending) return pending.catch(() => undefined);
    if (this.#store.layer(current)) return;
    const seen = new Set<string>();
    const wanted = layers.filter((l) => {
      const fresh =
        l.format.kind === 'erofs' &&
        l.chunkIndex === undefined &&
        !seen.has(l.digest) &&
        !this.#mounting.has(l.digest) &&
        this.#store.layer(l.digest) === undefined;
      seen.add(l.digest);
      return fresh;
    });
    if (wanted.length < 2 || !wanted.some((l) => l.digest === current)) return;
    const job = this.#lockedAll(
      wanted.map((l) => l.digest),
      async () => {
        const fresh = wanted.filter((l) => this.#store.layer(l.digest) === undefined);
        if (fresh.length < 2) return;
        const mountGroup = this.#options.lazy.groupKey((fresh[0] as LayerDescriptor).digest);
        const store = this.#store;
        const rows = store.transaction(() =>
          fresh.map((l) =>
            store.insertLayer({
              digest: l.digest,
              mediaType: l.mediaType,
              size: l.size,
              annotations: { ...(l.annotations ?? {}) },
              source,
              manifestDigest,
              now: Date.now(),
              mountGroup,
            }),
          ),
        );
        try {
          await this.#options.lazy.mount(rows);
        } catch (error) {
          await this.#options.lazy.unmount(rows).catch(() => undefined);
          store.transaction(() => {
            for (const row of rows) store.deleteLayer(row.id);
          });
          throw error;
        }
        store.transaction(() => {
          for (const row of rows) store.setLayerState(row.id, 'mounted');
        });
        this.#options.log(
          `layers ${rows.map((r) => r.digest).join(', ')}: mounted lazily together (${mountGroup})`,
        );
      },
    );
    for (const l of wanted) this.#mounting.set(l.digest, job);
    try {
      await job;
    } catch (error) {
      this.#options.log(
        `${source}: mounting ${wanted.length} layers together failed, each is mounted alone: ${(error as Error).message}`,
      );
    } finally {
      for (const l of wanted) if (this.#mounting.get(l.digest) === job) this.#mounting.delete(l.digest);
    }
  }

  #findTarget(target: string, parent: string): SnapshotRow | undefined {
    return this.#store
      .list()
      .find((r) => r.kind === 'committed' && r.labels[LABEL_TARGET_REF] === target && r.parent === parent);
  }

  /** The layer's mount, made if needed; the caller holds the digest's lock. */
  async #acquire(descriptor: LayerDescriptor, source: string, manifestDigest: string): Promise<LayerRow> {
    const store = this.#store;
    const known = store.layer(descriptor.digest);
    if (known && known.state !== 'mounting') {
      if (known.state === 'unmounting') store.transaction(() => store.setLayerState(known.id, 'mounted'));
      await this.#options.lazy.check(this.#groupOf(known));
      return known;
    }
    if (known) {
      await this.#options.lazy.unmount([known]);
      store.transaction(() => store.deleteLayer(known.id));
    }
    const row = store.transaction(() =>
      store.insertLayer({
        digest: descriptor.digest,
        mediaType: descriptor.mediaType,
        size: descriptor.size,
        annotations: { ...(descriptor.annotations ?? {}) },
        source,
        manifestDigest,
        now: Date.now(),
      }),
    );
    try {
      await this.#options.lazy.mount([row]);
    } catch (error) {
      await this.#options.lazy.unmount([row]).catch((cleanup: unknown) => {
        this.#options.log(`layer ${row.digest}: cleaning up a failed mount: ${(cleanup as Error).message}`);
      });
      store.transaction(() => store.deleteLayer(row.id));
      throw new ErofsOciError(
        isCode(error) ? error.code : 'io',
        `cannot mount layer ${descriptor.digest} of ${source} lazily: ${(error as Error).message}`,
        { cause: error },
      );
    }
    store.transaction(() => store.setLayerState(row.id, 'mounted'));
    this.#options.log(`layer ${row.digest}: mounted lazily at ${this.#options.lazy.mountpoint(row)}`);
    return { ...row, state: 'mounted' };
  }

  #layersOf(source: string): Promise<LayerDescriptor[]> {
    let layers = this.#manifests.get(source);
    if (!layers) {
      layers = (async () => {
        const image = await this.#options.openImage(source);
        try {
          return await image.layers();
        } finally {
          await image.close();
        }
      })();
      layers.catch(() => this.#manifests.delete(source));
      this.#manifests.set(source, layers);
      if (this.#manifests.size > MANIFEST_CACHE_ENTRIES) {
        this.#manifests.delete(this.#manifests.keys().next().value as string);
      }
    }
    return layers;
  }

  /** Runs `body` holding the locks of every key, taken in sorted order (so that no two wait on each other). */
  #lockedAll<T>(keys: string[], body: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(keys)].sort();
    const take = (i: number): Promise<T> =>
      i === sorted.length ? body() : this.#locked(sorted[i] as string, () => take(i + 1));
    return take(0);
  }

  /** Runs `body` after every earlier holder of `key`'s lock is done. */
  async #locked<T>(key: string, body: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(key) ?? Promise.resolve();
    const current = previous.catch(() => undefined).then(body);
    this.#locks.set(key, current);
    try {
      return await current;
    } finally {
      if (this.#locks.get(key) === current) this.#locks.delete(key);
    }
  }
}

/**
 * What a lazy layer holds, from its filesystem's statfs (no tree walk, so nothing is fetched): the image's
 * size and its inode count (EROFS reports f_files - f_ffree = its inodes). Bytes on this host are fewer:
 * only what reads have fetched is cached.
 */
async function layerUsage(mountpoint: string): Promise<{ size: number; inodes: number }> {
  const st = await statfs(mountpoint, { bigint: true });
  return { size: Number(st.blocks * st.bsize), inodes: Number(st.files - st.ffree) };
}

function isCode(error: unknown): error is ErofsOciError {
  return error instanceof ErofsOciError;
}

function hash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}
