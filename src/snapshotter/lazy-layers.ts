/**
 * Lazy layers behind a small interface (mount, check, unmount), as stargz's snapshotter keeps its remote
 * filesystem: each EROFS-native layer is mounted by `erofs-oci mount`'s machinery (a serving process and a
 * FUSE device holder, src/mount/lazy-mount.ts) on a directory under --root, shared by every snapshot that
 * is this layer. The layers of an image that are mounted together share one record, one serving process
 * and one holder (two processes per pull rather than two per layer); each is still its own EROFS mount. Mount records (no secrets) live in the state directory, which should be on a tmpfs
 * such as /run: after a reboot no record names a dead process whose pid may have been reused.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isErofsOciError } from '../errors.ts';
import { isProcessAlive } from '../io/process.ts';
import { type LayerPlan, mountedPaths, mountLazy, reattachLazy, unmountLazy } from '../mount/lazy-mount.ts';
import { listRecords, mountDir, type RegistrySettings, readRecord } from '../mount/state.ts';
import { formatPlatform, hostPlatform, type LayerDescriptor } from '../oci/index.ts';
import { hasChunkIndex } from '../verified/open.ts';
import type { LayerRow } from './store.ts';

export interface LazyLayersOptions {
  /** Where layers are mounted: DIR/ID. */
  mountRoot: string;
  /** The mount records and serving processes' logs and caches (`erofs-oci mount`'s state directory). */
  stateRoot: string;
  /** The `erofs-oci` entry point the serving processes run. */
  cli: string;
  registry: RegistrySettings;
  /** Only in memory; handed to each serving process on its stdin. */
  password?: string;
  backend: 'fuse' | 'nbd';
  ioTimeoutMs: number;
  log: (line: string) => void;
}

export type CheckResult = 'serving' | 'reattached' | 'remounted' | 'broken';

export class LazyLayers {
  readonly #options: LazyLayersOptions;

  constructor(options: LazyLayersOptions) {
    this.#options = options;
  }

  /** Where the layer's files are. */
  mountpoint(layer: Pick<LayerRow, 'id'>): string {
    return join(this.#options.mountRoot, String(layer.id));
  }

  /** The directory that names a mount of several layers (its record's key), beside their mountpoints. */
  groupKey(firstDigest: string): string {
    return join(this.#options.mountRoot, `group-${firstDigest.replace(/^[^:]*:/, '').slice(0, 16)}`);
  }

  /** The key of the mount record that holds the layer: its group's, or its own mountpoint. */
  recordKey(layer: Pick<LayerRow, 'id' | 'mountGroup'>): string {
    return layer.mountGroup ?? this.mountpoint(layer);
  }

  /**
   * Mounts `layers` (of one image; one serving process and one device holder for them all), each at its
   * own mountpoint; the record is kept under `recordKey` of the first (every one shares it).
   */
  async mount(layers: LayerRow[], signal?: AbortSignal): Promise<void> {
    const first = layers[0];
    if (!first) return;
    const key = this.recordKey(first);
    await mkdir(key, { recursive: true, mode: 0o755 });
    const plans = layers.map((layer, index): LayerPlan => {
      const descriptor = {
        digest: layer.digest,
        mediaType: layer.mediaType,
        size: layer.size,
        annotations: layer.annotations,
      } as unknown as LayerDescriptor;
      return {
        index,
        digest: layer.digest,
        mediaType: layer.mediaType,
        size: layer.size,
        kind: 'erofs',
        annotations: { ...layer.annotations },
        verification: hasChunkIndex(descriptor) ? 'chunk-verified' : 'whole-blob',
      };
    });
    await mountLazy({
      source: first.source,
      pinnedSource: first.source,
      manifestDigest: first.manifestDigest,
      platform: formatPlatform(hostPlatform()),
      mountpoint: key,
      layers: plans,
      layerMounts: layers.map((layer) => this.mountpoint(layer)),
      registry: this.#options.registry,
      ...(this.#options.password === undefined ? {} : { password: this.#options.password }),
      backend: this.#options.backend,
      ioTimeoutMs: this.#options.ioTimeoutMs,
      stateRoot: this.#options.stateRoot,
      cli: this.#options.cli,
      ...(signal === undefined ? {} : { signal }),
      log: (line) =>
        this.#options.log(`${layers.length === 1 ? `layer ${first.digest}` : `layers of ${key}`}: ${line}`),
    });
  }

  /**
   * Brings a mount (the layers of one record) back to serving: a dead serving process is replaced (the
   * mounts stay, reads wait for the new server); when a mount is gone (a reboot, or someone unmounted it)
   * the layers are mounted again. A mount whose device holder died cannot be repaired while in use: 'broken'.
   */
  async check(layers: LayerRow[], signal?: AbortSignal): Promise<CheckResult> {
    const first = layers[0];
    if (!first) return 'serving';
    const key = this.recordKey(first);
    const record = await readRecord(mountDir(this.#options.stateRoot, key));
    let mounted = await mountedPaths();
    if (record && layers.some((layer) => mounted.has(this.mountpoint(layer)))) {
      // Some of the layers' mounts are gone (unmounted by hand) while others may be in use: mount those
      // again on their devices, which the holder still serves, instead of taking the whole group down.
      for (const layer of layers) {
        const mountpoint = this.mountpoint(layer);
        const entry = record.layers.find((l) => l.layerMount === mountpoint);
        if (mounted.has(mountpoint) || !entry || (entry.devicePid > 0 && !isProcessAlive(entry.devicePid)))
          continue;
        const result = spawnSync('mount', ['-t', 'erofs', '-o', 'ro', entry.device, mountpoint], {
          encoding: 'utf8',
        });
        if (result.status === 0) this.#options.log(`layer ${layer.digest}: mounted again at ${mountpoint}`);
        else this.#options.log(`layer ${layer.digest}: cannot mount again: ${result.stderr.trim()}`);
      }
      mounted = await mountedPaths();
    }
    if (record && layers.every((layer) => mounted.has(this.mountpoint(layer)))) {
      try {
        const started = await reattachLazy(key, this.#options.stateRoot, {
          cli: this.#options.cli,
          ...(this.#options.password === undefined ? {} : { password: this.#options.password }),
          ...(signal === undefined ? {} : { signal }),
          log: (line) => this.#options.log(`${key}: ${line}`),
        });
        return started > 0 ? 'reattached' : 'serving';
      } catch (error) {
        if (isErofsOciError(error, 'io')) {
          this.#options.log(`${key}: ${(error as Error).message}`);
          return 'broken';
        }
        throw error;
      }
    }
    // Half there (a record without its mounts, or mounts without a record): clear it and mount afresh.
    await this.unmount(layers);
    await this.mount(layers, signal);
    return 'remounted';
  }

  /** Unmounts the layers of one record and stops their processes; idempotent. */
  async unmount(layers: Pick<LayerRow, 'id' | 'mountGroup'>[]): Promise<void> {
    const first = layers[0];
    if (!first) return;
    const key = this.recordKey(first);
    await unmountLazy(key, this.#options.stateRoot);
    for (const layer of layers) {
      const mountpoint = this.mountpoint(layer);
      if ((await mountedPaths()).has(mountpoint)) {
        // A mount without a record (say, a crash between mounting and recording): take it down directly.
        spawnSync('umount', [mountpoint], { stdio: 'ignore' });
      }
      await rmdir(mountpoint).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error;
      });
    }
    if (key !== this.mountpoint(first)) {
      await rmdir(key).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error;
      });
    }
  }

  /** Mount points of records in the state directory (ours or left over). */
  async recordedMountpoints(): Promise<string[]> {
    return (await listRecords(this.#options.stateRoot)).map((r) => r.mountpoint);
  }

  async unmountRecorded(mountpoint: string): Promise<void> {
    await unmountLazy(mountpoint, this.#options.stateRoot);
  }
}
