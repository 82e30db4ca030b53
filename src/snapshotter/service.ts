/**
 * `erofs-oci snapshotter` put together: the database and directories under --root, the lazy layers and
 * their revival (at start, then every REVIVE_INTERVAL_MS), and the gRPC server. Stopping it (or killing
 * it) leaves every mount and serving process in place: running containers keep reading, and the next
 * start adopts them again.
 */
import { join } from 'node:path';
import type { RegistrySettings } from '../mount/state.ts';
import type { ImageSource } from '../oci/index.ts';
import { type SnapshotterServer, serveSnapshotter } from './grpc-server.ts';
import { LazyLayers } from './lazy-layers.ts';
import { LazyRemote } from './remote.ts';
import { Snapshotter } from './snapshotter.ts';

const REVIVE_INTERVAL_MS = 10_000;

export interface SnapshotterServiceOptions {
  address: string;
  root: string;
  /** Mount records of the lazy layers (a tmpfs such as /run/erofs-oci/snapshotter). */
  stateDir: string;
  /** Lazy EROFS layers on CRI's labels; false: a plain overlayfs snapshotter. */
  lazy: boolean;
  cli: string;
  registry: RegistrySettings;
  password?: string;
  backend: 'fuse' | 'nbd';
  ioTimeoutMs: number;
  openImage: (ref: string, signal?: AbortSignal) => Promise<ImageSource>;
  log: (line: string) => void;
}

export interface SnapshotterService {
  readonly snapshotter: Snapshotter;
  readonly server: SnapshotterServer;
  /** The first revival of the layers found at start (served meanwhile; a layer's calls wait for it). */
  readonly revived: Promise<void>;
  close(): Promise<void>;
}

export async function startSnapshotterService(
  options: SnapshotterServiceOptions,
): Promise<SnapshotterService> {
  const lazy = options.lazy
    ? new LazyLayers({
        mountRoot: join(options.root, 'layers'),
        stateRoot: options.stateDir,
        cli: options.cli,
        registry: options.registry,
        ...(options.password === undefined ? {} : { password: options.password }),
        backend: options.backend,
        ioTimeoutMs: options.ioTimeoutMs,
        log: options.log,
      })
    : undefined;
  const snapshotter = await Snapshotter.open(options.root, lazy ? { lazy } : {});
  const stopping = new AbortController();
  let remote: LazyRemote | undefined;
  if (lazy) {
    remote = new LazyRemote({ snapshotter, lazy, openImage: options.openImage, log: options.log });
    snapshotter.remote = remote;
  }
  let server: SnapshotterServer;
  try {
    server = await serveSnapshotter(snapshotter, options.address, { log: options.log });
  } catch (error) {
    snapshotter.close();
    throw error;
  }
  const revived = remote ? remote.revive(stopping.signal) : Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  let reviving: Promise<void> = revived;
  if (remote) {
    const again = remote;
    timer = setInterval(() => {
      reviving = reviving.then(() => again.revive(stopping.signal));
    }, REVIVE_INTERVAL_MS);
    timer.unref();
  }
  options.log(`serving ${server.address} (root ${options.root}${lazy ? ', lazy EROFS layers' : ''})`);
  return {
    snapshotter,
    server,
    revived,
    async close() {
      stopping.abort();
      clearInterval(timer);
      await server.close();
      await reviving.catch(() => undefined);
      snapshotter.close();
    },
  };
}
