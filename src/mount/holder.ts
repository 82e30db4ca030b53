/**
 * The FUSE device holder: the small long-lived process that keeps a lazy mount's block device alive as a
 * FUSE file while the serving process (the NBD server that fetches data) may die and be replaced by
 * `erofs-oci reattach` (SPEC §2). Its reads go to the server over NBD through a `ReconnectingNbdSource`,
 * which rides out the server's absence: reads wait, the socket is redialled with backoff, requests lost
 * with the old connection are sent again on the new one, and only after `ioTimeoutMs` does a read fail
 * (which the FUSE layer reports as EIO). See docs/fuse.md for the process model.
 */
import { spawn } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { ErofsOciError, isErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource, Closable, ReadOptions } from '../io/byte-source.ts';
import { compileCacheEnv } from '../io/process.ts';
import { type FuseMount, mountFuseFile, threadPoolSize } from './fuse-file.ts';
import { connectNbd, formatNbdAddress, type NbdAddress, type NbdConnection } from './nbd-client.ts';

/** SPEC §2 `reattach --io-timeout`: how long a read waits for a server before it fails. */
export const DEFAULT_IO_TIMEOUT_MS = 5 * 60 * 1000;

export interface ReconnectingNbdSourceOptions {
  address: NbdAddress;
  /** Default "" (the server's default export). */
  exportName?: string;
  /** The export's size when known; every connection must match it. Unset: the first connection sets it. */
  size?: number;
  /** How long a read (and the first connection) waits for a server before failing. */
  ioTimeoutMs?: number;
  /** Redial delays: the first retry after `min` ms, doubling up to `max`. Default 100 and 500. */
  retryDelayMs?: { min: number; max: number };
  log?: (line: string) => void;
  signal?: AbortSignal;
}

export interface ReconnectingNbdSource extends ByteSource, Closable {
  /** True while a connection is up (false while the server is gone and no read has found a new one). */
  readonly connected: boolean;
  /** Connections made so far (1 after opening; each reconnection adds one). */
  readonly connections: number;
}

/** Redial delay until the first connection is made (a server starting alongside). */
const FIRST_CONNECTION_POLL_MS = 20;

interface Waiter {
  resolve(connection: NbdConnection): void;
  reject(error: ErofsOciError): void;
}

/**
 * Opens a byte source over an NBD export that survives the server's death. Resolves after the first
 * connection, which is retried like a reconnection (up to `ioTimeoutMs`).
 */
export async function openReconnectingNbdSource(
  options: ReconnectingNbdSourceOptions,
): Promise<ReconnectingNbdSource> {
  const source = new Reconnecting(options);
  await source.start(options.signal);
  return source;
}

class Reconnecting implements ReconnectingNbdSource {
  size: number;
  connections = 0;
  readonly #address: NbdAddress;
  readonly #label: string;
  readonly #exportName: string;
  readonly #ioTimeoutMs: number;
  readonly #minDelay: number;
  readonly #maxDelay: number;
  readonly #log: (line: string) => void;
  /** Aborted by `close`: stops the redial loop and any connection attempt in progress. */
  readonly #closing = new AbortController();
  #current: NbdConnection | null = null;
  readonly #waiters = new Set<Waiter>();
  #redialing = false;
  #lostAt = 0;

  constructor(options: ReconnectingNbdSourceOptions) {
    this.#address = options.address;
    this.#label = `NBD server ${formatNbdAddress(options.address)}`;
    this.#exportName = options.exportName ?? '';
    this.size = options.size ?? -1;
    this.#ioTimeoutMs = options.ioTimeoutMs ?? DEFAULT_IO_TIMEOUT_MS;
    this.#minDelay = options.retryDelayMs?.min ?? 100;
    this.#maxDelay = options.retryDelayMs?.max ?? 500;
    this.#log = options.log ?? (() => {});
  }

  get connected(): boolean {
    return this.#current !== null;
  }

  async start(signal: AbortSignal | undefined): Promise<void> {
    this.#lostAt = Date.now();
    await this.#connection(Date.now() + this.#ioTimeoutMs, signal, 'the first connection');
  }

  async read(offset: number, length: number, options: ReadOptions = {}): Promise<Uint8Array> {
    const { signal } = options;
    let deadline: number | undefined;
    for (;;) {
      throwIfAborted(signal);
      let connection = this.#current;
      if (!connection) {
        deadline ??= Date.now() + this.#ioTimeoutMs;
        connection = await this.#connection(
          deadline,
          signal,
          `a read of ${length} bytes at offset ${offset}`,
        );
      }
      try {
        return await connection.read(offset, length, { signal });
      } catch (error) {
        // Only a lost connection is worth another try; a server's error reply is its verdict on the data.
        if (!isErofsOciError(error, 'unavailable') || signal?.aborted || this.#closing.signal.aborted)
          throw error;
        this.#dropConnection(connection, error);
        deadline ??= Date.now() + this.#ioTimeoutMs;
      }
    }
  }

  async close(): Promise<void> {
    this.#closing.abort();
    const closed = new ErofsOciError('aborted', `The connection to ${this.#label} was closed`);
    for (const waiter of this.#waiters) waiter.reject(closed);
    this.#waiters.clear();
    const current = this.#current;
    this.#current = null;
    await current?.close();
  }

  /** Waits for a connection: shares one redial loop among all waiting reads; each waits until `deadline`. */
  #connection(deadline: number, signal: AbortSignal | undefined, what: string): Promise<NbdConnection> {
    if (this.#closing.signal.aborted) {
      return Promise.reject(
        new ErofsOciError('aborted', `Cannot serve ${what}: the connection to ${this.#label} was closed`),
      );
    }
    return new Promise<NbdConnection>((resolve, reject) => {
      const settle = () => {
        this.#waiters.delete(waiter);
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = {
        resolve: (connection) => {
          settle();
          resolve(connection);
        },
        reject: (error) => {
          settle();
          reject(error);
        },
      };
      const onAbort = () => waiter.reject(new ErofsOciError('aborted', `${what} was aborted`));
      const timer = setTimeout(
        () => {
          const waited = Date.now() - this.#lostAt;
          waiter.reject(
            new ErofsOciError('unavailable', `Cannot serve ${what}: no ${this.#label} for ${waited} ms`, {
              hint: 'the serving process is gone; `erofs-oci reattach MOUNTPOINT` restarts it',
            }),
          );
        },
        Math.max(0, deadline - Date.now()),
      );
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(waiter);
      if (this.#current) waiter.resolve(this.#current);
      else if (!this.#redialing) void this.#redial();
    });
  }

  /** Dials until a connection is up, someone waits no longer, or the source is closed. */
  async #redial(): Promise<void> {
    this.#redialing = true;
    let delay = this.#minDelay;
    let attempts = 0;
    let lastError = '';
    try {
      while (this.#waiters.size > 0 && !this.#closing.signal.aborted) {
        attempts++;
        let connection: NbdConnection;
        try {
          connection = await connectNbd(this.#address, {
            exportName: this.#exportName,
            signal: this.#closing.signal,
          });
        } catch (error) {
          const message = (error as Error).message;
          // One line per kind of failure, not per attempt: a dead server is redialled several times a second.
          if (message !== lastError)
            this.#log(
              `Cannot ${this.connections === 0 ? 'connect' : 'reconnect'} (attempt ${attempts}): ${message}`,
            );
          lastError = message;
          // Before the first connection the server is starting (side by side with us): poll it briskly.
          const wait = this.connections === 0 ? Math.min(delay, FIRST_CONNECTION_POLL_MS) : delay;
          await sleep(wait, undefined, { signal: this.#closing.signal }).catch(() => {
            // Closed while waiting: the loop condition ends the loop.
          });
          delay = Math.min(this.#maxDelay, delay * 2);
          continue;
        }
        if (this.size >= 0 && connection.size !== this.size) {
          // A different export (say, a server started for another image) must never be read as ours.
          const error = new ErofsOciError(
            'corrupt',
            `${this.#label} exports ${connection.size} bytes as ${JSON.stringify(this.#exportName)}, expected ${this.size}`,
          );
          this.#log(`Refusing the new connection: ${error.message}`);
          await connection.close();
          for (const waiter of this.#waiters) waiter.reject(error);
          await sleep(this.#maxDelay, undefined, { signal: this.#closing.signal }).catch(() => {
            // Closed while waiting: the loop condition ends the loop.
          });
          continue;
        }
        this.#adopt(connection);
        return;
      }
    } finally {
      this.#redialing = false;
    }
  }

  #adopt(connection: NbdConnection): void {
    const first = this.connections === 0;
    this.connections++;
    if (this.size < 0) this.size = connection.size;
    this.#current = connection;
    this.#log(
      first
        ? `Connected to ${this.#label}: ${connection.size} bytes`
        : `Reconnected to ${this.#label} after ${Date.now() - this.#lostAt} ms`,
    );
    void connection.closed.then((reason) => {
      if (reason) this.#dropConnection(connection, reason);
    });
    for (const waiter of this.#waiters) waiter.resolve(connection);
  }

  #dropConnection(connection: NbdConnection, reason: Error): void {
    if (this.#current !== connection) return;
    this.#current = null;
    this.#lostAt = Date.now();
    this.#log(`Lost ${this.#label}: ${reason.message}`);
    void connection.close();
  }
}

// ---- the holder ----

export interface HolderOptions {
  /** The FUSE file to create; EROFS is then mounted on it. */
  mountpoint: string;
  /** The serving process's unix socket. */
  socketPath: string;
  exportName?: string;
  /** The export's size; when given, a server exporting another size is refused from the start. */
  size?: number;
  ioTimeoutMs?: number;
  /** The mount's source in mountinfo; default `erofs-oci`. */
  fsname?: string;
  log?: (line: string) => void;
  signal?: AbortSignal;
}

export interface Holder {
  readonly mount: FuseMount;
  readonly source: ReconnectingNbdSource;
  /** Resolves when the FUSE file has been unmounted (by `stop` or by anyone) and the connection closed. */
  readonly done: Promise<void>;
  /** Unmounts the FUSE file (fails while EROFS is still mounted on it) and closes the connection. */
  stop(): Promise<void>;
}

export async function runHolder(options: HolderOptions): Promise<Holder> {
  const log = options.log ?? (() => {});
  const source = await openReconnectingNbdSource({
    address: { kind: 'unix', path: options.socketPath },
    ...(options.exportName !== undefined && { exportName: options.exportName }),
    ...(options.size !== undefined && { size: options.size }),
    ...(options.ioTimeoutMs !== undefined && { ioTimeoutMs: options.ioTimeoutMs }),
    ...(options.signal && { signal: options.signal }),
    log,
  });
  let mount: FuseMount;
  try {
    mount = await mountFuseFile(options.mountpoint, source, {
      ...(options.fsname !== undefined && { fsname: options.fsname }),
      ...(options.signal && { signal: options.signal }),
      log,
    });
  } catch (error) {
    await source.close();
    throw error;
  }
  log(`Serving ${mount.mountpoint} (${source.size} bytes, FUSE 7.${mount.protocolMinor})`);
  const done = mount.ended.then(() => source.close());
  return {
    mount,
    source,
    done,
    async stop() {
      await mount.unmount();
      await done;
    },
  };
}

// ---- the holder as a detached process (holder-main.ts) ----

/** One FUSE file of a holder process: a device over one server's export. */
export interface HolderDevice {
  mountpoint: string;
  socketPath: string;
  exportName?: string;
  size?: number;
  fsname?: string;
}

/**
 * What holder-main.ts reads from its JSON config file. One holder process serves every device of a
 * mount: one process to start instead of one per layer.
 */
export interface HolderConfig {
  devices: HolderDevice[];
  ioTimeoutMs?: number;
  /** Log lines are appended here (the state directory's log). */
  logFile: string;
  /** Written (atomically) once every FUSE file is served, or with the error when starting failed. */
  readyFile: string;
}

/** The ready file's content. */
export type HolderReady =
  | { ok: true; pid: number; devices: { mountpoint: string; size: number }[] }
  | { ok: false; pid: number; code: string; message: string };

export interface SpawnHolderOptions {
  /** Where to write the config (mode 0600); the holder reads it at start. */
  configPath: string;
  /** How long to wait for the ready file. Default: the I/O timeout plus 30 s. */
  readyTimeoutMs?: number;
  signal?: AbortSignal;
}

export const holderMainPath: string = fileURLToPath(new URL('./holder-main.ts', import.meta.url));

/**
 * Starts holder-main.ts as a detached process (its own session, no inherited stdio, so it outlives the
 * command that started it) and waits until it serves every FUSE file. Resolves with its pid. The servers
 * need not be up yet: the holder waits for them (up to the I/O timeout), so both can start side by side;
 * aborting `signal` stops the holder and the wait.
 */
export async function spawnHolder(
  config: HolderConfig,
  options: SpawnHolderOptions,
): Promise<{ pid: number }> {
  const { signal } = options;
  throwIfAborted(signal);
  await rm(config.readyFile, { force: true });
  await writeFile(options.configPath, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  const what = config.devices.map((d) => d.mountpoint).join(', ');
  const child = spawn(process.execPath, [holderMainPath, options.configPath], {
    detached: true,
    stdio: 'ignore',
    env: {
      // The compile cache this command uses, a private one (see bin/erofs-oci.js): the holder starts without
      // loading the TypeScript stripper, ~75 MB less.
      ...compileCacheEnv(),
      // A pool thread per FUSE file for its read of /dev/fuse, and four for the rest (fuse-file.ts).
      UV_THREADPOOL_SIZE: String(Math.min(1024, Math.max(threadPoolSize(), config.devices.length + 4))),
    },
  });
  const pid = child.pid;
  if (pid === undefined) {
    throw new ErofsOciError('io', `Cannot start the device holder for ${what}: spawn failed`);
  }
  let exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  child.once('exit', (code, exitSignal) => {
    exited = { code, signal: exitSignal };
  });
  child.unref();
  const deadline =
    Date.now() + (options.readyTimeoutMs ?? (config.ioTimeoutMs ?? DEFAULT_IO_TIMEOUT_MS) + 30_000);
  for (;;) {
    const ready = await readFile(config.readyFile, 'utf8').then(
      (text) => JSON.parse(text) as HolderReady,
      () => null,
    );
    if (ready?.ok) return { pid };
    if (ready && !ready.ok) {
      throw new ErofsOciError(
        ready.code as ErofsOciError['code'],
        `Cannot start the device holder for ${what}: ${ready.message}`,
      );
    }
    const status = exited as { code: number | null; signal: NodeJS.Signals | null } | null;
    if (status) {
      throw new ErofsOciError(
        'io',
        `The device holder for ${what} exited (${status.signal ?? `status ${status.code}`}) before it was ready; see ${config.logFile}`,
      );
    }
    if (signal?.aborted || Date.now() > deadline) {
      process.kill(pid, 'SIGTERM');
      throwIfAborted(signal);
      throw new ErofsOciError(
        'io',
        `The device holder for ${what} was not ready in time; see ${config.logFile}`,
      );
    }
    await sleep(50);
  }
}
