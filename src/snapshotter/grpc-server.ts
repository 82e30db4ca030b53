/**
 * containerd's snapshots API (`containerd.services.snapshots.v1.Snapshots`, the vendored proto/ files) over
 * gRPC on a unix socket, as a `[proxy_plugins]` snapshotter is reached. Each call is handed to the
 * Snapshotter; errors travel as the gRPC statuses containerd's errdefs turns back into its error kinds
 * (NotFound, AlreadyExists, FailedPrecondition, InvalidArgument).
 */
import { chmod, mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ErofsOciError } from '../errors.ts';
import type { Info, Mount, Snapshotter } from './snapshotter.ts';
import { SnapshotConflict } from './store.ts';

const PROTO_ROOT = fileURLToPath(new URL('./proto', import.meta.url));
const SNAPSHOTS_PROTO = 'github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto';
/** Infos per List response message: containerd reads a stream of batches. */
const LIST_BATCH = 100;

interface Timestamp {
  seconds: number;
  nanos: number;
}

interface WireInfo {
  name: string;
  parent: string;
  kind: 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';
  created_at: Timestamp | null;
  updated_at: Timestamp | null;
  labels: Record<string, string>;
}

function timestamp(ms: number): Timestamp {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

function wireInfo(info: Info): WireInfo {
  return {
    name: info.name,
    parent: info.parent,
    kind: info.kind === 'view' ? 'VIEW' : info.kind === 'active' ? 'ACTIVE' : 'COMMITTED',
    created_at: timestamp(info.created),
    updated_at: timestamp(info.updated),
    labels: info.labels,
  };
}

function wireMounts(mounts: Mount[]) {
  return { mounts };
}

export function statusOf(error: unknown): grpc.status {
  if (error instanceof SnapshotConflict)
    return error.status === 'already-exists' ? grpc.status.ALREADY_EXISTS : grpc.status.FAILED_PRECONDITION;
  if (error instanceof ErofsOciError) {
    switch (error.code) {
      case 'not-found':
        return grpc.status.NOT_FOUND;
      case 'usage':
        return grpc.status.INVALID_ARGUMENT;
      case 'unavailable':
        return grpc.status.UNAVAILABLE;
      case 'auth':
        return grpc.status.PERMISSION_DENIED;
      case 'unsupported':
        return grpc.status.UNIMPLEMENTED;
      case 'aborted':
        return grpc.status.CANCELLED;
      default:
        return grpc.status.UNKNOWN;
    }
  }
  return grpc.status.UNKNOWN;
}

type Handler<Req, Res> = (request: Req) => Promise<Res> | Res;

export interface SnapshotterServer {
  readonly address: string;
  close(): Promise<void>;
}

/** Serves `snapshotter` on `address` (`unix:PATH`); a stale socket file there is replaced. */
export async function serveSnapshotter(
  snapshotter: Snapshotter,
  address: string,
  options: { log?: (line: string) => void } = {},
): Promise<SnapshotterServer> {
  const log = options.log ?? (() => {});
  if (!address.startsWith('unix:'))
    throw new ErofsOciError('usage', `--address must be unix:PATH, not ${JSON.stringify(address)}`);
  const path = address.slice('unix:'.length).replace(/^\/\/(?=\/)/, '');
  const definition = loadSync(SNAPSHOTS_PROTO, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
  };
  const service = loaded.containerd.services.snapshots.v1.Snapshots.service;

  const unary =
    <Req, Res>(name: string, handler: Handler<Req, Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      Promise.resolve()
        .then(() => handler(call.request))
        .then(
          (response) => callback(null, response),
          (error: unknown) => {
            const code = statusOf(error);
            if (code !== grpc.status.NOT_FOUND && code !== grpc.status.ALREADY_EXISTS)
              log(`${name}: ${(error as Error).message}`);
            callback({ code, details: (error as Error).message });
          },
        );
    };

  type Labelled = { key: string; parent: string; labels: Record<string, string> };
  const empty = {};
  const server = new grpc.Server();
  server.addService(service, {
    Prepare: unary('Prepare', async (r: Labelled) =>
      wireMounts(await snapshotter.prepare(r.key, r.parent, r.labels)),
    ),
    View: unary('View', async (r: Labelled) => wireMounts(await snapshotter.view(r.key, r.parent, r.labels))),
    Mounts: unary('Mounts', (r: { key: string }) => wireMounts(snapshotter.mounts(r.key))),
    Commit: unary('Commit', async (r: { name: string; key: string; labels: Record<string, string> }) => {
      await snapshotter.commit(r.name, r.key, r.labels);
      return empty;
    }),
    Remove: unary('Remove', async (r: { key: string }) => {
      await snapshotter.remove(r.key);
      return empty;
    }),
    Stat: unary('Stat', (r: { key: string }) => ({ info: wireInfo(snapshotter.stat(r.key)) })),
    Update: unary('Update', (r: { info: WireInfo | null; update_mask: { paths: string[] } | null }) => {
      if (!r.info) throw new ErofsOciError('usage', 'Update needs info');
      return { info: wireInfo(snapshotter.update(r.info, r.update_mask?.paths ?? [])) };
    }),
    Usage: unary('Usage', (r: { key: string }) => snapshotter.usage(r.key)),
    Cleanup: unary('Cleanup', async () => {
      await snapshotter.cleanup();
      return empty;
    }),
    List: ((call: grpc.ServerWritableStream<{ filters: string[] }, { info: WireInfo[] }>) => {
      try {
        const infos = snapshotter.list(call.request.filters ?? []).map(wireInfo);
        for (let i = 0; i < infos.length; i += LIST_BATCH)
          call.write({ info: infos.slice(i, i + LIST_BATCH) });
        call.end();
      } catch (error) {
        log(`List: ${(error as Error).message}`);
        call.destroy(Object.assign(new Error((error as Error).message), { code: statusOf(error) }));
      }
    }) as grpc.handleServerStreamingCall<{ filters: string[] }, { info: WireInfo[] }>,
  });

  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await rm(path, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${path}`, grpc.ServerCredentials.createInsecure(), (error) =>
      error
        ? reject(new ErofsOciError('io', `cannot listen on unix:${path}: ${error.message}`, { cause: error }))
        : resolve(),
    );
  });
  // containerd runs as root; nobody else may drive the snapshotter.
  await chmod(path, 0o600);
  return {
    address: `unix:${path}`,
    async close() {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      await rm(path, { force: true });
    },
  };
}
