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
/** Layers of one image mounted side by side ahead of their Prepare (two processes start for each). */
const PREMOUNT_PARALLEL = 3;

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
  /** Manifests whose layers have been premounted. */
  readonly #premounted = new Set<string>();

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
    this.#premount(layers, source, manifestDigest, layerDigest);
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

  async release(layerId: number): Promise<void> {
    const layer = this.#store.layerById(layerId);
    if (!layer) return;
    await this.#locked(layer.digest, async () => {
      const current = this.#store.layerById(layerId);
      if (!current) return;
      if (this.#store.layerUsers(layerId) > 0) {
        if (current.state === 'unmounting')
          this.#store.transaction(() => this.#store.setLayerState(layerId, 'mounted'));
        return;
      }
      this.#store.transaction(() => this.#store.setLayerState(layerId, 'unmounting'));
      await this.#options.lazy.unmount(current);
      this.#store.transaction(() => this.#store.deleteLayer(layerId));
      this.#options.log(`layer ${current.digest}: unmounted (no snapshot uses it)`);
    });
  }

  /**
   * After a start, and from time to time: every layer back to serving (a dead serving process replaced,
   * a lost mount mounted again), half-mounted layers of a crash taken down, half-removed ones finished.
   */
  async revive(signal?: AbortSignal): Promise<void> {
    for (const layer of this.#store.layers()) {
      if (signal?.aborted) return;
      try {
        if (layer.state === 'unmounting') {
          await this.release(layer.id);
          continue;
        }
        await this.#locked(layer.digest, async () => {
          const current = this.#store.layerById(layer.id);
          if (!current) return;
          if (current.state === 'mounting') {
            // A crash while mounting: no snapshot names it yet.
            await this.#options.lazy.unmount(current);
            this.#store.transaction(() => this.#store.deleteLayer(current.id));
            return;
          }
          const result = await this.#options.lazy.check(current, signal);
          if (result !== 'serving') this.#options.log(`layer ${current.digest}: ${result}`);
        });
      } catch (error) {
        this.#options.log(`layer ${layer.digest}: cannot revive: ${(error as Error).message}`);
      }
    }
  }

  /**
   * CRI prepares an image's layers one after another, each waiting for the one before; mounting a layer
   * is mostly starting its processes. So at the first layer of an image, every other EROFS layer of it
   * not mounted yet starts mounting too (PREMOUNT_PARALLEL at a time, each under its digest's lock): the
   * Prepare of each then finds its layer mounted or on its way. A layer premounted but never committed
   * (an abandoned pull) has no users, and Cleanup unmounts it.
   */
  #premount(layers: LayerDescriptor[], source: string, manifestDigest: string, current: string): void {
    if (this.#premounted.has(manifestDigest)) return;
    this.#premounted.add(manifestDigest);
    if (this.#premounted.size > MANIFEST_CACHE_ENTRIES)
      this.#premounted.delete(this.#premounted.values().next().value as string);
    const queue = layers.filter(
      (l) =>
        l.digest !== current &&
        l.format.kind === 'erofs' &&
        l.chunkIndex === undefined &&
        this.#store.layer(l.digest) === undefined,
    );
    const worker = async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const layer = next;
        await this.#locked(layer.digest, async () => {
          if (this.#store.layer(layer.digest)) return;
          await this.#acquire(layer, source, manifestDigest);
        }).catch((error: unknown) => {
          // Its own Prepare tries again and reports the error to containerd.
          this.#options.log(`layer ${layer.digest}: premount failed: ${(error as Error).message}`);
        });
      }
    };
    for (let i = 0; i < PREMOUNT_PARALLEL; i++) void worker();
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
      await this.#options.lazy.check(known);
      return known;
    }
    if (known) {
      await this.#options.lazy.unmount(known);
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
      await this.#options.lazy.mount(row);
    } catch (error) {
      await this.#options.lazy.unmount(row).catch((cleanup: unknown) => {
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
