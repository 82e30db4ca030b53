/**
 * Test support for the FUSE device holder's tests (test code only): a real NBD server (nbdkit, Debian
 * `nbdkit`) started and SIGKILLed at will, EROFS images made by `mkfs.erofs`, and mount bookkeeping.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants, readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { fuseConnectionOf, unescapeMountinfo } from './fuse-file.ts';

const exec = promisify(execFile);

function hasExecutable(name: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    try {
      accessSync(`${dir}/${name}`, constants.X_OK);
      return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

/** Why the FUSE tests cannot run here, or false. */
export function fuseSkipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root: the tests mount FUSE and EROFS';
  try {
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
  } catch {
    return 'no /dev/fuse (modprobe fuse)';
  }
  if (!hasExecutable('mount')) return 'needs mount(8)';
  return false;
}

/** Why the NBD tests cannot run here (no nbdkit), or false. */
export function nbdkitSkipReason(): string | false {
  return hasExecutable('nbdkit') ? false : 'needs nbdkit (apt-get install nbdkit)';
}

/** Why the EROFS-on-FUSE tests cannot run here, or false. */
export function erofsSkipReason(): string | false {
  if (!hasExecutable('mkfs.erofs')) return 'needs mkfs.erofs (apt-get install erofs-utils)';
  return readFileSync('/proc/filesystems', 'utf8').includes('erofs') ? false : 'the kernel has no EROFS';
}

export interface Nbdkit {
  readonly socket: string;
  readonly process: ChildProcess;
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>;
  /** Sends `signal` (default SIGTERM) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `nbdkit --unix SOCKET --foreground --exit-with-parent ARGS...` (so it dies with the test process)
 * and resolves once it accepts connections. A stale socket file from a killed predecessor is removed first:
 * nbdkit refuses to bind over one.
 */
export async function startNbdkit(socket: string, args: string[]): Promise<Nbdkit> {
  await rm(socket, { force: true });
  const child = spawn('nbdkit', ['--unix', socket, '--foreground', '--exit-with-parent', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const server: Nbdkit = {
    socket,
    process: child,
    exited,
    async kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nbdkit ${args.join(' ')} exited: ${stderr}`);
    if (await accepts(socket)) return server;
    if (Date.now() > deadline) {
      await server.kill('SIGKILL');
      throw new Error(`nbdkit ${args.join(' ')} did not listen on ${socket}: ${stderr}`);
    }
    await sleep(20);
  }
}

function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Mount points (resolved paths) currently in /proc/self/mountinfo. */
export function mountedPaths(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => unescapeMountinfo(line.split(' ')[4] ?? ''));
}

export function isMounted(path: string): boolean {
  return mountedPaths().includes(path);
}

/**
 * Unmounts `path` if it is mounted: plainly, else lazily; a FUSE mount's connection is also aborted, so that
 * a reader stuck on a source that never answers is released and the serving process can exit. Cleanup must
 * not fail a test on its own.
 */
export async function forceUnmount(path: string): Promise<void> {
  const connection = await fuseConnectionOf(path);
  for (let i = 0; i < 5 && isMounted(path); i++) {
    try {
      await exec('umount', [path]);
    } catch {
      await exec('umount', ['-l', path]).catch(() => {
        // Reported by the caller's isMounted check, if it matters.
      });
    }
  }
  if (connection !== undefined) {
    await writeFile(`/sys/fs/fuse/connections/${connection}/abort`, '1').catch(() => {
      // Already gone: the session ended with the unmount.
    });
  }
}

/** Drops clean page cache so that the next reads reach the FUSE server (and through it, the NBD server). */
export async function dropCaches(): Promise<void> {
  await writeFile('/proc/sys/vm/drop_caches', '3');
}

export async function mkfsErofs(image: string, dir: string): Promise<void> {
  await exec('mkfs.erofs', ['--quiet', image, dir]);
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** `sha256sum FILE` in a child process (the reader must not be the process serving the file). */
export async function sha256sumOf(path: string, options: { signal?: AbortSignal } = {}): Promise<string> {
  const { stdout } = await exec('sha256sum', [path], options.signal ? { signal: options.signal } : {});
  return stdout.split(' ')[0] ?? '';
}

/** Deterministic pseudo-random bytes (xorshift32), cheap enough for hundreds of MiB. */
export function pseudoRandomBytes(length: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return new Uint8Array(words.buffer, 0, length);
}
