/**
 * Lazy layers behind a small interface (mount, check, unmount), as stargz's snapshotter keeps its remote
 * filesystem: each EROFS-native layer is one lazy mount of `erofs-oci mount`'s machinery (a serving process
 * and a FUSE device holder, src/mount/lazy-mount.ts) on a directory under --root, shared by every snapshot
 * that is this layer. Mount records (no secrets) live in the state directory, which should be on a tmpfs
 * such as /run: after a reboot no record names a dead process whose pid may have been reused.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isErofsOciError } from '../errors.ts';
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

  mountpoint(layer: Pick<LayerRow, 'id'>): string {
    return join(this.#options.mountRoot, String(layer.id));
  }

  async mount(layer: LayerRow, signal?: AbortSignal): Promise<void> {
    const mountpoint = this.mountpoint(layer);
    await mkdir(mountpoint, { recursive: true, mode: 0o755 });
    const descriptor = {
      digest: layer.digest,
      mediaType: layer.mediaType,
      size: layer.size,
      annotations: layer.annotations,
    } as unknown as LayerDescriptor;
    const plan: LayerPlan = {
      index: 0,
      digest: layer.digest,
      mediaType: layer.mediaType,
      size: layer.size,
      kind: 'erofs',
      annotations: { ...layer.annotations },
      verification: hasChunkIndex(descriptor) ? 'chunk-verified' : 'whole-blob',
    };
    await mountLazy({
      source: layer.source,
      pinnedSource: layer.source,
      manifestDigest: layer.manifestDigest,
      platform: formatPlatform(hostPlatform()),
      mountpoint,
      layers: [plan],
      registry: this.#options.registry,
      ...(this.#options.password === undefined ? {} : { password: this.#options.password }),
      backend: this.#options.backend,
      ioTimeoutMs: this.#options.ioTimeoutMs,
      stateRoot: this.#options.stateRoot,
      cli: this.#options.cli,
      ...(signal === undefined ? {} : { signal }),
      log: (line) => this.#options.log(`layer ${layer.digest}: ${line}`),
    });
  }

  /**
   * Brings a layer back to serving: a dead serving process is replaced (the mount stays, reads wait for the
   * new server); a layer whose mount is gone (a reboot, or someone unmounted it) is mounted again. A mount
   * whose device holder died cannot be repaired while it is in use: 'broken'.
   */
  async check(layer: LayerRow, signal?: AbortSignal): Promise<CheckResult> {
    const mountpoint = this.mountpoint(layer);
    const record = await readRecord(mountDir(this.#options.stateRoot, mountpoint));
    const mounted = (await mountedPaths()).has(mountpoint);
    if (record && mounted) {
      try {
        const started = await reattachLazy(mountpoint, this.#options.stateRoot, {
          cli: this.#options.cli,
          ...(this.#options.password === undefined ? {} : { password: this.#options.password }),
          ...(signal === undefined ? {} : { signal }),
          log: (line) => this.#options.log(`layer ${layer.digest}: ${line}`),
        });
        return started > 0 ? 'reattached' : 'serving';
      } catch (error) {
        if (isErofsOciError(error, 'io')) {
          this.#options.log(`layer ${layer.digest}: ${(error as Error).message}`);
          return 'broken';
        }
        throw error;
      }
    }
    // Half there (a record without its mount, or a mount without a record): clear it and mount afresh.
    await this.unmount(layer);
    await this.mount(layer, signal);
    return 'remounted';
  }

  /** Unmounts the layer and stops its processes; idempotent. */
  async unmount(layer: Pick<LayerRow, 'id'>): Promise<void> {
    const mountpoint = this.mountpoint(layer);
    await unmountLazy(mountpoint, this.#options.stateRoot);
    if ((await mountedPaths()).has(mountpoint)) {
      // A mount without a record (say, a crash between mounting and recording): take it down directly.
      spawnSync('umount', [mountpoint], { stdio: 'ignore' });
    }
    await rmdir(mountpoint).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
  }

  /** Mount points of records in the state directory (ours or left over). */
  async recordedMountpoints(): Promise<string[]> {
    return (await listRecords(this.#options.stateRoot)).map((r) => r.mountpoint);
  }

  async unmountRecorded(mountpoint: string): Promise<void> {
    await unmountLazy(mountpoint, this.#options.stateRoot);
  }
}
