/**
 * The real-world oracles of the integration tests: the kernel's EROFS driver (mount), erofs-utils'
 * `fsck.erofs` and `dump.erofs`, the python tree snapshot (snapshot.py) and the CLI run as a user runs it.
 * Nothing here imports project code: the tests drive `bin/erofs-oci.js` as a black box.
 *
 * erofs-utils are looked up in `$EROFS_UTILS_BIN` (a directory, e.g. a local build of a newer release),
 * then on `$PATH`. Debian 12 ships 1.5, whose fsck/dump refuse images with 512-byte blocks; callers ask
 * `fsckSkipReason` first and report the reason instead of failing.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, rmdir } from 'node:fs/promises';
import { tmpdir as osTmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout this file lives in. */
export const repoRoot: string = fileURLToPath(new URL('..', import.meta.url));
export const testSupportDir: string = fileURLToPath(new URL('.', import.meta.url));
/** The pinned Node 24 (the system `node` may be older). */
export const nodeBinary: string = join(repoRoot, 'node_modules', '.bin', 'node');
export const cliEntry: string = join(repoRoot, 'bin', 'erofs-oci.js');

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** The first executable named `name` in `$EROFS_UTILS_BIN` or on `$PATH`, or null. */
export function findExecutable(name: string): string | null {
  const dirs = [process.env.EROFS_UTILS_BIN, ...(process.env.PATH ?? '').split(delimiter)];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return null;
}

/**
 * `mkfs.erofs` of erofs-utils 1.9 or newer from `$EROFS_UTILS_BIN` (the one variable that points the tests and
 * the bench at a local build; Debian 12's 1.5 has no `--oci`, `--gzinfo` or deflate/zstd), or null.
 */
export function mkfsErofs19(): string | null {
  const dir = process.env.EROFS_UTILS_BIN;
  if (!dir) return null;
  const mkfs = join(dir, 'mkfs.erofs');
  if (!isExecutable(mkfs)) return null;
  const result = spawnSync(mkfs, ['--version'], { encoding: 'utf8' });
  const match = /(\d+)\.(\d+)/.exec(`${result.stdout}${result.stderr}`);
  if (!match) return null;
  const [major, minor] = [Number(match[1]), Number(match[2])];
  return major > 1 || (major === 1 && minor >= 9) ? mkfs : null;
}

export interface ErofsUtils {
  fsck: string | null;
  dump: string | null;
  /** e.g. [1, 5] or [1, 9, 3]; null when fsck.erofs is missing or its version is unreadable. */
  version: number[] | null;
}

let cachedUtils: Promise<ErofsUtils> | undefined;

export function erofsUtils(): Promise<ErofsUtils> {
  cachedUtils ??= (async () => {
    const fsck = findExecutable('fsck.erofs');
    const dump = findExecutable('dump.erofs');
    let version: number[] | null = null;
    if (fsck) {
      // `fsck.erofs -V` prints "fsck.erofs 1.5" (1.5) or "fsck.erofs (erofs-utils) 1.9.3" and exits 0.
      const result = await run(fsck, ['-V']);
      const match = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(result.stdout + result.stderr);
      if (match)
        version = match
          .slice(1)
          .filter((part) => part !== undefined)
          .map(Number);
    }
    return { fsck, dump, version };
  })();
  return cachedUtils;
}

function atLeast(version: number[], wanted: number[]): boolean {
  for (let i = 0; i < wanted.length; i++) {
    const have = version[i] ?? 0;
    if (have !== wanted[i]) return have > wanted[i]!;
  }
  return true;
}

/** log2 of the block size recorded in an image's superblock (erofs_super_block.blkszbits, byte 12 of the
 * superblock at offset 1024). Read directly so the check does not depend on the tools it gates. */
export async function imageBlockSizeBits(image: string): Promise<number> {
  const handle = await open(image, 'r');
  try {
    const buffer = Buffer.alloc(1);
    const { bytesRead } = await handle.read(buffer, 0, 1, 1024 + 12);
    if (bytesRead !== 1) throw new Error(`${image} is too short to hold an EROFS superblock`);
    return buffer[0]!;
  } finally {
    await handle.close();
  }
}

/** Why `fsck`/`dumpInodeCount` cannot check this image here, or null when they can. */
export async function fsckSkipReason(image: string): Promise<string | null> {
  const utils = await erofsUtils();
  if (!utils.fsck) return 'fsck.erofs is not installed (apt-get install erofs-utils)';
  const bits = await imageBlockSizeBits(image);
  if (bits !== 12 && !(utils.version && atLeast(utils.version, [1, 6]))) {
    return `fsck.erofs ${utils.version?.join('.') ?? '?'} cannot check ${2 ** bits}-byte blocks (needs erofs-utils 1.6+; set EROFS_UTILS_BIN to a newer build)`;
  }
  return null;
}

/**
 * Runs `fsck.erofs --extract IMAGE` (--extract without a directory walks every inode and reads all file
 * data, so broken extents fail too). Returns its output; throws with the output on failure.
 * `readData: false` leaves out --extract: fsck.erofs 1.5 reads an uncompressed extent in one buffer and
 * crashes on files over 4 GiB ("double free or corruption"); see `fsckCanReadHugeFiles`.
 */
export async function fsck(
  image: string,
  options: { signal?: AbortSignal; readData?: boolean } = {},
): Promise<string> {
  const utils = await erofsUtils();
  if (!utils.fsck) throw new Error('fsck.erofs is not installed');
  const args = options.readData === false ? [image] : ['--extract', image];
  const result = await run(utils.fsck, args, options.signal ? { signal: options.signal } : {});
  if (result.status !== 0) {
    const status = result.status ?? result.signal;
    throw new Error(
      `fsck.erofs ${args.join(' ')} failed (exit ${status}):\n${result.stdout}${result.stderr}`,
    );
  }
  return result.stdout + result.stderr;
}

/** Whether `fsck --extract` copes with files over 4 GiB (erofs-utils 1.6 and later). */
export async function fsckCanReadHugeFiles(): Promise<boolean> {
  const { version } = await erofsUtils();
  return version !== null && atLeast(version, [1, 6]);
}

/** The superblock's inode count as `dump.erofs -s` reports it. */
export async function dumpInodeCount(image: string, options: { signal?: AbortSignal } = {}): Promise<number> {
  const info = await dumpSuperblock(image, options);
  const count = info.get('inode count');
  if (count === undefined) throw new Error(`dump.erofs -s ${image} printed no inode count`);
  return Number(count);
}

/** `dump.erofs -s` as a map from lower-cased field name without "Filesystem " to value. */
export async function dumpSuperblock(
  image: string,
  options: { signal?: AbortSignal } = {},
): Promise<Map<string, string>> {
  const utils = await erofsUtils();
  if (!utils.dump) throw new Error('dump.erofs is not installed');
  const result = await run(utils.dump, ['-s', image], options);
  if (result.status !== 0) {
    throw new Error(
      `dump.erofs -s ${image} failed (exit ${result.status}):\n${result.stdout}${result.stderr}`,
    );
  }
  const fields = new Map<string, string>();
  for (const line of result.stdout.split('\n')) {
    const match = /^Filesystem ([^:]+):\s*(.*?)\s*$/.exec(line);
    if (match) fields.set(match[1]!.toLowerCase(), match[2]!);
  }
  return fields;
}

/**
 * util-linux's view of an image (`blkid -p -o export`: TYPE, LABEL, UUID, BLOCK_SIZE…), an oracle for the
 * superblock fields that dump.erofs 1.5 does not print. Null when blkid is not installed.
 */
export async function blkid(image: string): Promise<Map<string, string> | null> {
  const command = findExecutable('blkid') ?? ['/sbin/blkid', '/usr/sbin/blkid'].find(isExecutable);
  if (!command) return null;
  const result = await run(command, ['-p', '-o', 'export', image]);
  if (result.status !== 0)
    throw new Error(`blkid -p ${image} failed (exit ${result.status}): ${result.stderr}`);
  const fields = new Map<string, string>();
  for (const line of result.stdout.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1));
  }
  return fields;
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export interface TmpDir {
  path: string;
  cleanup(): Promise<void>;
}

/** A fresh directory under the system temp dir; `cleanup` removes it and everything in it. */
export async function tmpdir(prefix = 'erofs-oci-test-'): Promise<TmpDir> {
  const path = await mkdtemp(join(osTmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/**
 * Mounts `image` read-only at a temporary mount point, calls `fn` with it and always unmounts and removes
 * the mount point, even when `fn` throws. Tries a file-backed mount first (kernel 6.12+), then a loop one.
 */
export async function withMount<T>(image: string, fn: (mountpoint: string) => Promise<T>): Promise<T> {
  const mountpoint = await mkdtemp(join(osTmpdir(), 'erofs-oci-mnt-'));
  try {
    let result = await run('mount', ['-t', 'erofs', '-o', 'ro', image, mountpoint]);
    if (result.status !== 0) {
      const fileBacked = result.stderr.trim();
      result = await run('mount', ['-t', 'erofs', '-o', 'ro,loop', image, mountpoint]);
      if (result.status !== 0) {
        throw new Error(`Cannot mount ${image}: ${fileBacked}; with -o loop: ${result.stderr.trim()}`);
      }
    }
    try {
      return await fn(mountpoint);
    } finally {
      const unmounted = await run('umount', [mountpoint]);
      if (unmounted.status !== 0) {
        // Something still holds it: detach lazily so the test run does not leak mounts.
        await run('umount', ['-l', mountpoint]);
      }
    }
  } finally {
    await rmdir(mountpoint).catch(() => {
      // Left behind only if even the lazy unmount failed; never remove files under a live mount.
    });
  }
}

export interface SnapshotEntry {
  type: 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';
  /** Permission bits as 4 octal digits. */
  mode: string;
  uid: number;
  gid: number;
  nlink: number;
  /** st_mtime_ns in decimal. Absent for directories when snapshotted with dirMtimes: false. */
  mtime?: string;
  size?: number;
  sha256?: string;
  target?: string;
  /** "MAJOR:MINOR" */
  rdev?: string;
  /** name → value in hex */
  xattrs?: Record<string, string>;
}

export interface Snapshot {
  /** Path (relative, "." = root, non-UTF-8 bytes as \xNN) → entry. */
  entries: Record<string, SnapshotEntry>;
  /** Groups of paths sharing one inode (non-directories), each sorted; the list sorted. */
  hardlinks: string[][];
  /** Things no filesystem should show (e.g. an inode number 0); empty for a sound tree. */
  problems: string[];
}

export interface SnapshotOptions {
  /** Include the root directory's own entry ("."). Default true. */
  root?: boolean;
  /** Include directory mtimes. Default true. */
  dirMtimes?: boolean;
  excludeXattrs?: string[];
  signal?: AbortSignal;
}

/** Describes the tree at `dir` with snapshot.py (see there for the format). */
export async function snapshot(dir: string, options: SnapshotOptions = {}): Promise<Snapshot> {
  const args = [join(testSupportDir, 'snapshot.py'), dir];
  if (options.root === false) args.push('--no-root');
  if (options.dirMtimes === false) args.push('--no-dir-mtime');
  for (const name of options.excludeXattrs ?? []) args.push('--exclude-xattr', name);
  const result = await run('python3', args, options.signal ? { signal: options.signal } : {});
  if (result.status !== 0)
    throw new Error(`snapshot.py ${dir} failed (exit ${result.status}): ${result.stderr}`);
  return JSON.parse(result.stdout) as Snapshot;
}

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export type Stdin =
  | string
  | Uint8Array
  /** A file to read standard input from. */
  | { file: string }
  /** Another program whose standard output becomes standard input (a pipeline, streamed). */
  | { command: string; args: string[] };

export interface RunOptions {
  stdin?: Stdin;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  signal?: AbortSignal;
}

/** Runs `erofs-oci ARGS...` the way a user of the checkout would, with the pinned Node. */
export function runCli(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return run(nodeBinary, [cliEntry, ...args], options);
}

/**
 * Builds a reproducible image of SOURCE (`erofs-oci build --quiet --timestamp 0 --uuid clear SOURCE OUT`)
 * and resolves with its bytes; rejects with the build's stderr when it fails.
 */
export async function buildReproducible(source: string, out: string): Promise<Buffer> {
  const built = await runCli(['build', '--quiet', '--timestamp', '0', '--uuid', 'clear', source, out]);
  if (built.status !== 0)
    throw new Error(`erofs-oci build ${source} exited with ${built.status}: ${built.stderr}`);
  return readFile(out);
}

/**
 * Runs a program to completion and collects its output. Never rejects for a non-zero exit (the status is
 * in the result); rejects when the program cannot be started or a stdin producer fails.
 */
export async function run(command: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const { stdin } = options;
  let producer: ChildProcess | undefined;
  let producerDone: Promise<RunResult> | undefined;
  let stdinSpec: 'pipe' | 'ignore' | number | NodeJS.ReadableStream = 'pipe';
  let fileHandle: Awaited<ReturnType<typeof open>> | undefined;
  if (stdin !== undefined && typeof stdin === 'object' && 'command' in stdin) {
    producer = spawn(stdin.command, stdin.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    producerDone = collect(producer, stdin.command);
    stdinSpec = producer.stdout!;
  } else if (stdin !== undefined && typeof stdin === 'object' && 'file' in stdin) {
    fileHandle = await open(stdin.file, 'r');
    stdinSpec = fileHandle.fd;
  }
  try {
    const child = spawn(command, args, {
      stdio: [stdinSpec as 'pipe', 'pipe', 'pipe'],
      env: options.env ?? process.env,
      cwd: options.cwd,
      signal: options.signal,
    });
    if (child.stdin) {
      // EPIPE when the program exits without reading all of its input is its business, not ours.
      child.stdin.on('error', () => {});
      if (typeof stdin === 'string' || stdin instanceof Uint8Array) child.stdin.end(stdin);
      else child.stdin.end();
    }
    if (producer) {
      // The child has its own copy of the pipe now; ours must not keep the producer from getting EPIPE.
      (producer.stdout as unknown as { destroy(): void }).destroy();
    }
    const result = await collect(child, command);
    if (producerDone) {
      const produced = await producerDone;
      if (produced.status !== 0 && result.status === 0) {
        throw new Error(
          `stdin producer ${(stdin as { command: string }).command} failed: ${produced.stderr}`,
        );
      }
    }
    return result;
  } finally {
    await fileHandle?.close();
  }
}

function collect(child: ChildProcess, name: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.on('error', (error) => reject(new Error(`Cannot run ${name}: ${error.message}`, { cause: error })));
    child.on('close', (status, signal) =>
      resolve({
        status,
        signal,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      }),
    );
  });
}

/** Runs a command and throws with its stderr unless it exits 0; returns stdout. */
export async function check(command: string, args: string[], options: RunOptions = {}): Promise<string> {
  const result = await run(command, args, options);
  if (result.status !== 0) {
    throw new Error(
      `${command} ${args.join(' ')} failed (exit ${result.status ?? result.signal}): ${result.stderr}`,
    );
  }
  return result.stdout;
}

/** Starts `erofs-oci serve ARGS --listen unix:SOCKET` and waits until its socket exists (up to `waitMs`). */
export async function startServe(
  args: string[],
  socket: string,
  waitMs = 10_000,
): Promise<{ child: ChildProcess; log: () => string }> {
  const child = spawn(nodeBinary, [cliEntry, 'serve', ...args, '--listen', `unix:${socket}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  for (let waited = 0; waited < waitMs && !existsSync(socket); waited += 50) {
    if (child.exitCode !== null) throw new Error(`serve exited early: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (!existsSync(socket)) throw new Error(`serve did not listen: ${stderr}`);
  return { child, log: () => stderr };
}

/** Stops a server the way the mount machinery does (SIGTERM) and returns its exit status. */
export async function stopProcess(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  child.kill('SIGTERM');
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** Mounts every image and the overlay of them all (first = bottom); calls `fn` with the overlay. */
export async function withOverlay<T>(
  images: string[],
  fn: (dir: string) => Promise<T>,
  lowers: string[] = [],
): Promise<T> {
  if (images.length === 0) {
    const target = await mkdtemp(join(osTmpdir(), 'erofs-oci-ovl-'));
    try {
      await check('mount', [
        '-t',
        'overlay',
        'overlay',
        '-o',
        `ro,lowerdir=${[...lowers].reverse().join(':')}`,
        target,
      ]);
      try {
        return await fn(target);
      } finally {
        await run('umount', [target]);
      }
    } finally {
      await rmdir(target).catch(() => {});
    }
  }
  return withMount(images[0] as string, (mnt) => withOverlay(images.slice(1), fn, [...lowers, mnt]));
}
