/**
 * Exposes a byte source as one read-only regular file through FUSE, so that the kernel can mount EROFS on it
 * with a file-backed mount (`mount -t erofs -o ro FILE DIR`) on kernels without an NBD driver. This is what
 * nbdfuse does, in-process and without libfuse.
 *
 * The FUSE filesystem's root inode IS the file (rootmode=0100444), mounted over an existing regular file:
 * the kernel allows a mount whose root is not a directory on a mount point that is not one either. The
 * mount is made by mount(8) with the /dev/fuse descriptor passed down as `fd=3` (Node has no mount(2));
 * requests are read one at a time by `fs.read` (see "Reading requests") and answered from the main thread
 * with `writev(2)`, which never blocks on /dev/fuse. Reads run concurrently and are answered as they complete.
 *
 * Reading requests. A read of /dev/fuse blocks until the kernel has a request, and Node cannot poll a
 * character device (net.Socket refuses it). So each session keeps one `fs.read` outstanding, which pins
 * one thread of libuv's pool (`UV_THREADPOOL_SIZE`, default 4) for as long as the filesystem is idle; the
 * kernel queues requests, and each read returns one of them at once. Those threads also serve every other
 * `fs` call of the process: a process whose own calls could wait on the filesystem (reading the FUSE file,
 * or an EROFS mount on it) needs more threads than it has sessions and such calls in flight, or the
 * request those calls wait for finds no thread to be read on. `mountFuseFile` refuses a session that
 * would leave fewer than two threads free; the device holder, whose own calls never touch its files, is
 * started with a pool of its sessions plus four. A worker thread per session (an isolate each, ~13 MB)
 * did the same with no shared pool, at ~50 MB more for a four-layer mount.
 *
 * Protocol reference: include/uapi/linux/fuse.h (declared in fuse-protocol.ts).
 */
import { execFile, spawn } from 'node:child_process';
import { closeSync, openSync, read, writeFileSync, writevSync } from 'node:fs';
import { lstat, readFile, realpath, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource } from '../io/byte-source.ts';
import {
  encodeFuseError,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_MIN_MINOR_VERSION,
  FUSE_MIN_READ_BUFFER,
  FuseInitFlag,
  FuseOpcode,
  FuseOpenFlag,
  fuseAccessIn,
  fuseAttr,
  fuseAttrOut,
  fuseGetxattrIn,
  fuseGetxattrOut,
  fuseInHeader,
  fuseInitIn,
  fuseInitOut,
  fuseInterruptIn,
  fuseOpenIn,
  fuseOpenOut,
  fuseOutHeader,
  fuseReadIn,
  fuseStatfsOut,
  opcodeName,
  S_IFREG,
} from './fuse-protocol.ts';

export interface MountFuseFileOptions {
  /** The mount's source as shown in /proc/self/mountinfo and by `mount`. Default `erofs-oci`. */
  fsname?: string;
  /**
   * Aborts the mount while it is being set up. Aborted after the mount is up, it ends the session: the file
   * is detached (`umount -l`) and the FUSE connection aborted, so that users of the file get errors and the
   * process can exit.
   */
  signal?: AbortSignal;
  /** Receives one line per notable event (failed reads, protocol surprises, session end). */
  log?: (line: string) => void;
}

export interface FuseMount {
  /** The mount point, resolved (as /proc/self/mountinfo shows it). */
  readonly mountpoint: string;
  /** The FUSE protocol minor version agreed with the kernel (major is always 7). */
  readonly protocolMinor: number;
  /** Resolves when the kernel has ended the session: after `unmount`, or when anyone unmounted the file. */
  readonly ended: Promise<void>;
  /** Unmounts the file (fails if it is in use, e.g. EROFS still mounted on it) and waits for the end. */
  unmount(): Promise<void>;
}

/** The FUSE filesystem type: mount(2) takes `fuse.SUBTYPE` and shows it in mountinfo. */
export const FUSE_FS_TYPE = 'fuse.erofs-oci';

/** Reads of at most 1 MiB (256 pages; the kernel caps this by /proc/sys/fs/fuse/max_pages_limit). */
const MAX_PAGES = 256;
/** Nothing is ever written, but the kernel insists on at least one page. */
const MAX_WRITE = 4096;
/**
 * The read buffer for /dev/fuse: the kernel requires FUSE_MIN_READ_BUFFER and room for a WRITE header plus
 * max_write; requests larger than the buffer (never one we serve) are failed by the kernel, not by us.
 */
const READ_BUFFER_SIZE = FUSE_MIN_READ_BUFFER + 64 * 1024;
/** Threads of libuv's pool a new session must leave to the rest of the process. */
const FREE_POOL_THREADS = 2;

/** The size of libuv's thread pool, as it reads UV_THREADPOOL_SIZE (once, at its first use). */
export function threadPoolSize(): number {
  const size = Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10);
  return Number.isSafeInteger(size) && size > 0 ? Math.min(size, 1024) : 4;
}

/** Background (readahead, async direct I/O) requests outstanding at once; the kernel's default is 12. */
const MAX_BACKGROUND = 64;
/** Attributes never change, so the kernel may cache them for a day. */
const ATTR_VALID_SECONDS = 86_400;
const BLOCK_SIZE = 4096;

const errno = osConstants.errno;
const O_ACCMODE = 3;
const X_OK = 1;

export async function mountFuseFile(
  mountpoint: string,
  file: ByteSource,
  options: MountFuseFileOptions = {},
): Promise<FuseMount> {
  const { signal } = options;
  const log = options.log ?? (() => {});
  throwIfAborted(signal);
  if (!Number.isSafeInteger(file.size) || file.size < 0) {
    throw new ErofsOciError('internal', `Cannot mount ${mountpoint}: invalid file size ${file.size}`);
  }
  // See "Reading requests" in the module comment.
  if (FuseSession.active + 1 + FREE_POOL_THREADS > threadPoolSize()) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot serve another FUSE file (${FuseSession.active} already) with libuv's ${threadPoolSize()} threads`,
      { hint: `set UV_THREADPOOL_SIZE to at least ${FuseSession.active + 1 + FREE_POOL_THREADS}` },
    );
  }
  // The pool thread is counted from now on, so that mounts started side by side see each other; the
  // session gives it back when its reading ends, and a mount that fails before it has one, here.
  FuseSession.active++;
  let session: FuseSession;
  try {
    session = await openSession(mountpoint, file, options, log);
  } catch (error) {
    FuseSession.active--;
    throw error;
  }
  const { target } = session;
  const onAbort = () => {
    void session
      .abort()
      .catch((error: unknown) => log(`Cannot abort FUSE session of ${target}: ${String(error)}`));
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  void session.ended.then(() => signal?.removeEventListener('abort', onAbort));
  try {
    // The kernel sends INIT right after mount(2); nothing else is served before it is answered.
    const protocolMinor = await session.initialized;
    if (session.connection !== undefined) await raiseReadahead(session.connection, log);
    return {
      mountpoint: target,
      protocolMinor,
      ended: session.ended,
      unmount: () => session.unmount(),
    };
  } catch (error) {
    await session.abort().catch(() => {
      // Already failing: the first error is the one to report.
    });
    throw error;
  }
}

/** Mounts the FUSE file and starts its session (which then reads requests). */
async function openSession(
  mountpoint: string,
  file: ByteSource,
  options: MountFuseFileOptions,
  log: (line: string) => void,
): Promise<FuseSession> {
  const { signal } = options;
  const target = await prepareMountpoint(mountpoint);

  let fd: number;
  try {
    fd = openSync('/dev/fuse', 'r+');
  } catch (error) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot open /dev/fuse to mount ${target}: ${(error as Error).message}`,
      {
        cause: error,
        hint: 'FUSE needs the fuse kernel module (modprobe fuse) and root',
      },
    );
  }

  try {
    await runMount(fd, target, options.fsname ?? 'erofs-oci', signal);
  } catch (error) {
    closeSync(fd);
    // Aborted, mount(8) may have been killed after its mount(2) succeeded: leave no dead mount behind.
    if (signal?.aborted && (await fuseConnectionOf(target)) !== undefined) {
      await runUmount(['-l', target], `FUSE file ${target}`).catch((umountError: unknown) => {
        log((umountError as Error).message);
      });
    }
    throw error;
  }

  // The connection number is looked up now, while nothing can block on the filesystem, so that `abort` and
  // the exit hook can use it synchronously.
  const connection = await fuseConnectionOf(target);
  await ensureFusectl(log);
  return new FuseSession(fd, target, connection, file, log);
}

/** Resolves the mount point, creating it as an empty file when missing; it must be a regular file. */
async function prepareMountpoint(mountpoint: string): Promise<string> {
  try {
    const stat = await lstat(mountpoint);
    if (!stat.isFile()) {
      throw new ErofsOciError('usage', `Cannot mount a FUSE file on ${mountpoint}: it is not a regular file`);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      if (error instanceof ErofsOciError) throw error;
      throw new ErofsOciError('io', `Cannot stat ${mountpoint}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    await writeFile(mountpoint, '', { mode: 0o600, flag: 'wx' }).catch((createError: unknown) => {
      if ((createError as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw new ErofsOciError(
        'io',
        `Cannot create mount point ${mountpoint}: ${(createError as Error).message}`,
        {
          cause: createError,
        },
      );
    });
  }
  return realpath(mountpoint);
}

/**
 * mount(8) with `-i` (no mount.fuse helper) makes the mount(2) call; the descriptor is its fd 3. Options:
 * rootmode makes the root a read-only regular file; user_id/group_id are required by the kernel;
 * allow_other lets every user (and the kernel's own EROFS file-backed reads on behalf of any caller) in.
 */
function runMount(
  fd: number,
  target: string,
  fsname: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  const mountOptions = 'fd=3,rootmode=100444,user_id=0,group_id=0,allow_other,ro';
  return new Promise((resolve, reject) => {
    const child = spawn('mount', ['-i', '-t', FUSE_FS_TYPE, '-o', mountOptions, fsname, target], {
      signal,
      stdio: ['ignore', 'ignore', 'pipe', fd],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    child.on('error', (error) => {
      if (signal?.aborted) reject(new ErofsOciError('aborted', `Mounting ${target} was aborted`));
      else
        reject(
          new ErofsOciError('unsupported', `Cannot run mount(8) for ${target}: ${error.message}`, {
            cause: error,
          }),
        );
    });
    child.on('close', (code) => {
      if (code === 0) return resolve();
      if (signal?.aborted) return;
      reject(
        new ErofsOciError(
          'unsupported',
          `Cannot mount FUSE file ${target}: ${stderr.trim() || `mount exited with ${code}`}`,
          {
            hint: 'mounting needs root and a kernel with FUSE',
          },
        ),
      );
    });
  });
}

/** Runs `umount` with `args`; rejects with its message. */
function runUmount(args: string[], what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('umount', args, (error, _stdout, stderr) => {
      if (!error) return resolve();
      reject(
        new ErofsOciError('io', `Cannot unmount ${what}: ${String(stderr).trim() || error.message}`, {
          cause: error,
        }),
      );
    });
  });
}

/** One live FUSE connection: dispatches requests, tracks reads in flight, and notices the end. */
class FuseSession {
  /** Sessions of this process whose read of /dev/fuse holds a pool thread. */
  static active = 0;
  readonly initialized: Promise<number>;
  readonly ended: Promise<void>;
  readonly #fd: number;
  readonly #target: string;
  readonly #file: ByteSource;
  readonly #log: (line: string) => void;
  /** Reads in flight by request id, so that INTERRUPT can cancel them. */
  readonly #inflight = new Map<number, AbortController>();
  readonly #mtime = Math.floor(Date.now() / 1000);
  readonly #connection: number | undefined;
  readonly #onExit = () => this.#abortConnection();
  #resolveInit!: (minor: number) => void;
  #rejectInit!: (error: Error) => void;
  #resolveEnded!: () => void;
  #isEnded = false;
  #isInitialized = false;

  constructor(
    fd: number,
    target: string,
    connection: number | undefined,
    file: ByteSource,
    log: (line: string) => void,
  ) {
    this.#fd = fd;
    this.#target = target;
    this.#connection = connection;
    this.#file = file;
    this.#log = log;
    this.initialized = new Promise((resolve, reject) => {
      this.#resolveInit = resolve;
      this.#rejectInit = reject;
    });
    // Handled by whoever awaits it; marking it handled here avoids an unhandled rejection when nobody does.
    this.initialized.catch(() => {});
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve;
    });
    void this.#readRequests();
    // A process that exits while mounted would hang joining the pool thread blocked in read(2) (libuv joins
    // its threads at exit). Aborting the connection wakes it with ENODEV. This costs nothing: the kernel
    // aborts the connection anyway when our descriptor closes.
    process.on('exit', this.#onExit);
  }

  /** Takes requests off /dev/fuse one at a time (module comment, "Reading requests") until the session ends. */
  async #readRequests(): Promise<void> {
    const buffer = new Uint8Array(READ_BUFFER_SIZE);
    try {
      while (!this.#isEnded) {
        let length: number;
        try {
          // Each read(2) of /dev/fuse returns exactly one whole request.
          length = await new Promise<number>((resolve, reject) =>
            read(this.#fd, buffer, 0, buffer.byteLength, null, (error, bytesRead) =>
              error ? reject(error) : resolve(bytesRead),
            ),
          );
        } catch (error) {
          if (this.#isEnded) return;
          const code = String((error as NodeJS.ErrnoException).code);
          // EINTR: a signal arrived; ENOENT: the request we were about to get was interrupted and dropped;
          // EAGAIN: only with O_NONBLOCK, which we do not set, but harmless to retry.
          if (code === 'EINTR' || code === 'ENOENT' || code === 'EAGAIN') continue;
          if (code === 'ENODEV') this.#end('the kernel ended the session');
          else this.#end(`reading /dev/fuse failed: ${code} ${(error as Error).message}`);
          return;
        }
        // The session may have ended (its descriptor closed) while the read was on its way back.
        if (this.#isEnded) return;
        this.#onRequest(buffer.slice(0, length));
      }
    } finally {
      FuseSession.active--;
    }
  }

  /** The mount point, resolved. */
  get target(): string {
    return this.#target;
  }

  /** The FUSE connection number (under /sys/fs/fuse/connections), when it could be found. */
  get connection(): number | undefined {
    return this.#connection;
  }

  async unmount(): Promise<void> {
    if (!this.#isEnded) await runUmount([this.#target], `FUSE file ${this.#target}`);
    await this.ended;
  }

  /** Detaches the mount and aborts the connection, so that the session ends even while the file is in use. */
  async abort(): Promise<void> {
    if (this.#isEnded) return;
    await runUmount(['-l', this.#target], `FUSE file ${this.#target}`).catch((error: unknown) => {
      this.#log(String((error as Error).message));
    });
    this.#abortConnection();
    await this.ended;
  }

  /**
   * Writing anything to the connection's control file aborts it: pending and future requests fail and our
   * reader gets ENODEV. https://docs.kernel.org/filesystems/fuse.html#aborting-a-filesystem-connection
   * Synchronous, for the exit hook.
   */
  #abortConnection(): void {
    if (this.#isEnded) return;
    if (this.#connection === undefined) {
      this.#log(`Cannot abort the FUSE connection of ${this.#target}: its number is unknown`);
      return;
    }
    try {
      writeFileSync(`${FUSECTL_DIR}/${this.#connection}/abort`, '1');
    } catch (error) {
      this.#log(
        `Cannot abort FUSE connection ${this.#connection} of ${this.#target}: ${(error as Error).message}`,
      );
    }
  }

  #onRequest(bytes: Uint8Array): void {
    try {
      this.#dispatch(bytes);
    } catch (error) {
      // Answer what we cannot parse (if its header can be), so that the caller is not left waiting.
      this.#log(`FUSE request of ${bytes.byteLength} bytes not understood: ${(error as Error).message}`);
      if (bytes.byteLength >= fuseInHeader.size) {
        const header = fuseInHeader.decode(bytes);
        const noReply = header.opcode === FuseOpcode.FORGET || header.opcode === FuseOpcode.BATCH_FORGET;
        if (!noReply && header.opcode !== FuseOpcode.INTERRUPT) this.#reply(header.unique, errno.EIO, []);
      }
    }
  }

  #end(reason: string): void {
    if (this.#isEnded) return;
    this.#isEnded = true;
    process.off('exit', this.#onExit);
    for (const controller of this.#inflight.values()) controller.abort();
    this.#inflight.clear();
    try {
      closeSync(this.#fd);
    } catch (error) {
      this.#log(`Cannot close /dev/fuse of ${this.#target}: ${(error as Error).message}`);
    }
    this.#log(`FUSE session of ${this.#target} ended: ${reason}`);
    if (!this.#isInitialized) {
      this.#rejectInit(
        new ErofsOciError(
          'io',
          `FUSE file ${this.#target} ended before the kernel initialised it: ${reason}`,
        ),
      );
    }
    this.#resolveEnded();
  }

  #dispatch(bytes: Uint8Array): void {
    const header = fuseInHeader.decode(bytes);
    if (header.len !== bytes.byteLength) {
      throw new Error(`${opcodeName(header.opcode)} header says ${header.len} bytes`);
    }
    const body = bytes.subarray(fuseInHeader.size);
    const { unique } = header;
    switch (header.opcode) {
      case FuseOpcode.INIT:
        this.#init(unique, body);
        return;
      case FuseOpcode.GETATTR:
        this.#reply(unique, 0, [this.#attrOut()]);
        return;
      case FuseOpcode.OPEN:
        this.#open(unique, body);
        return;
      case FuseOpcode.READ:
        this.#read(unique, body);
        return;
      case FuseOpcode.RELEASE:
      case FuseOpcode.FLUSH:
      case FuseOpcode.DESTROY:
        this.#reply(unique, 0, []);
        return;
      case FuseOpcode.STATFS:
        this.#reply(unique, 0, [this.#statfsOut()]);
        return;
      case FuseOpcode.ACCESS: {
        // Write access never gets here (the VFS refuses it on a read-only mount); nothing is executable.
        const { mask } = fuseAccessIn.decode(body);
        this.#reply(unique, mask & X_OK ? errno.EACCES : 0, []);
        return;
      }
      case FuseOpcode.GETXATTR:
        this.#reply(unique, errno.ENODATA, []);
        return;
      case FuseOpcode.LISTXATTR: {
        // An empty list: a size query gets size 0, a fetch gets no bytes.
        const { size } = fuseGetxattrIn.decode(body);
        this.#reply(unique, 0, size === 0 ? [fuseGetxattrOut.encode({ size: 0 })] : []);
        return;
      }
      case FuseOpcode.INTERRUPT: {
        // No reply to INTERRUPT itself; the interrupted request gets EINTR (or its data, if it wins the race).
        // An unknown id means that request was already answered.
        this.#inflight.get(fuseInterruptIn.decode(body).unique)?.abort();
        return;
      }
      case FuseOpcode.FORGET:
      case FuseOpcode.BATCH_FORGET:
        // "no reply": the kernel does not wait for one, and a reply would be an error on /dev/fuse.
        return;
      default:
        this.#reply(unique, errno.ENOSYS, []);
        return;
    }
  }

  #init(unique: number, body: Uint8Array): void {
    const padded = new Uint8Array(fuseInitIn.size);
    padded.set(body.subarray(0, fuseInitIn.size));
    const request = fuseInitIn.decode(padded);
    if (request.major !== FUSE_KERNEL_VERSION || request.minor < FUSE_MIN_MINOR_VERSION) {
      this.#reply(unique, errno.EPROTO, []);
      this.#isInitialized = true;
      this.#rejectInit(
        new ErofsOciError(
          'unsupported',
          `Cannot serve FUSE file ${this.#target}: the kernel speaks FUSE ${request.major}.${request.minor}, ` +
            `we need ${FUSE_KERNEL_VERSION}.${FUSE_MIN_MINOR_VERSION} or later`,
        ),
      );
      return;
    }
    const minor = Math.min(request.minor, FUSE_KERNEL_MINOR_VERSION);
    // Not ASYNC_DIO: it turns direct reads into background requests, which the kernel never interrupts, so
    // a reader stuck on an unavailable server could not be killed with a signal.
    const wanted =
      FuseInitFlag.ASYNC_READ |
      FuseInitFlag.BIG_WRITES |
      FuseInitFlag.MAX_PAGES |
      FuseInitFlag.PARALLEL_DIROPS;
    const reply = fuseInitOut.encode({
      major: FUSE_KERNEL_VERSION,
      minor,
      // The kernel only ever lowers its readahead to what we say, so echo its own.
      maxReadahead: request.maxReadahead,
      flags: (request.flags & wanted) >>> 0,
      maxBackground: MAX_BACKGROUND,
      congestionThreshold: (MAX_BACKGROUND * 3) / 4,
      maxWrite: MAX_WRITE,
      timeGran: 1,
      maxPages: MAX_PAGES,
    });
    this.#reply(unique, 0, [reply]);
    this.#isInitialized = true;
    this.#resolveInit(minor);
  }

  #attrOut(): Uint8Array {
    const out = new Uint8Array(fuseAttrOut.size + fuseAttr.size);
    fuseAttrOut.encode({ attrValid: ATTR_VALID_SECONDS }, out, 0);
    fuseAttr.encode(
      {
        ino: 1,
        size: this.#file.size,
        blocks: Math.ceil(this.#file.size / 512),
        atime: this.#mtime,
        mtime: this.#mtime,
        ctime: this.#mtime,
        mode: S_IFREG | 0o444,
        nlink: 1,
        blksize: BLOCK_SIZE,
      },
      out,
      fuseAttrOut.size,
    );
    return out;
  }

  #statfsOut(): Uint8Array {
    return fuseStatfsOut.encode({
      blocks: Math.ceil(this.#file.size / BLOCK_SIZE),
      files: 1,
      bsize: BLOCK_SIZE,
      frsize: BLOCK_SIZE,
      namelen: 255,
    });
  }

  #open(unique: number, body: Uint8Array): void {
    const { flags } = fuseOpenIn.decode(body);
    if ((flags & O_ACCMODE) !== 0) {
      this.#reply(unique, errno.EROFS, []);
      return;
    }
    // KEEP_CACHE: the contents never change, so pages cached by an earlier open stay valid.
    // NOFLUSH: close(2) must not wait for us. Without it, a process that serves the file and also has it
    // open deadlocks when it forks (the child's exec closes the descriptor and waits for a FLUSH reply
    // while the parent waits for the exec) or exits; there is nothing to flush anyway.
    const openFlags = FuseOpenFlag.KEEP_CACHE | FuseOpenFlag.NOFLUSH;
    this.#reply(unique, 0, [fuseOpenOut.encode({ fh: 0, openFlags })]);
  }

  #read(unique: number, body: Uint8Array): void {
    const { offset, size } = fuseReadIn.decode(body);
    const fileSize = this.#file.size;
    // A short reply means end of file; the kernel asks for whole pages past it.
    const length = offset >= fileSize ? 0 : Math.min(size, fileSize - offset);
    if (length === 0) {
      this.#reply(unique, 0, []);
      return;
    }
    const controller = new AbortController();
    this.#inflight.set(unique, controller);
    this.#file.read(offset, length, { signal: controller.signal }).then(
      (data) => {
        this.#inflight.delete(unique);
        if (data.byteLength !== length) {
          this.#log(
            `FUSE READ of ${length} bytes at offset ${offset} got ${data.byteLength} bytes: answering EIO`,
          );
          this.#reply(unique, errno.EIO, []);
          return;
        }
        this.#reply(unique, 0, [data]);
      },
      (error: unknown) => {
        this.#inflight.delete(unique);
        if (this.#isEnded) return;
        if (controller.signal.aborted) {
          this.#reply(unique, errno.EINTR, []);
          return;
        }
        // Never zeros: the reader must see that these bytes are missing.
        this.#log(`FUSE READ of ${length} bytes at offset ${offset} failed: ${(error as Error).message}`);
        this.#reply(unique, errno.EIO, []);
      },
    );
  }

  #reply(unique: number, errorNumber: number, parts: Uint8Array[]): void {
    if (this.#isEnded) return;
    let length = fuseOutHeader.size;
    for (const part of parts) length += part.byteLength;
    const header = fuseOutHeader.encode({ len: length, error: encodeFuseError(errorNumber), unique });
    try {
      // One writev per reply: /dev/fuse takes a reply in a single write and never blocks on it.
      writevSync(this.#fd, [header, ...parts]);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // ENOENT: the request was interrupted and is gone; the kernel no longer wants an answer.
      if (code === 'ENOENT') return;
      // ENODEV: the connection was aborted; the reader will see it too and end the session.
      if (code === 'ENODEV') return;
      this.#log(`Cannot answer FUSE request ${unique} of ${this.#target}: ${(error as Error).message}`);
    }
  }
}

/**
 * Lets the kernel read ahead as much as one request carries. INIT can only lower the connection's
 * readahead below the kernel's default (128 KiB), so the larger window is set on the backing device info,
 * named after the FUSE mount's anonymous device (0:N, N being the connection number). EROFS file-backed
 * reads go through this file's page cache, so this doubles sequential throughput. Failure is only logged.
 */
async function raiseReadahead(connection: number, log: (line: string) => void): Promise<void> {
  const path = `/sys/class/bdi/0:${connection}/read_ahead_kb`;
  await writeFile(path, String((MAX_PAGES * 4096) / 1024)).catch((error: unknown) => {
    log(`Cannot raise readahead in ${path}: ${(error as Error).message}`);
  });
}

/** Where the fusectl filesystem lists connections (systemd mounts it at boot; minimal systems may not). */
const FUSECTL_DIR = '/sys/fs/fuse/connections';

/** Mounts fusectl when it is not mounted yet, so that connections can be aborted; failure is only logged. */
async function ensureFusectl(log: (line: string) => void): Promise<void> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  if (mounts.split('\n').some((line) => line.split(' ')[4] === FUSECTL_DIR)) return;
  await new Promise<void>((resolve) => {
    execFile('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR], (error, _stdout, stderr) => {
      // Racing with another process mounting it is fine: one of us wins and both can use it.
      if (error) log(`Cannot mount fusectl on ${FUSECTL_DIR}: ${String(stderr).trim() || error.message}`);
      resolve();
    });
  });
}

/**
 * The FUSE connection number of the mount on `target` (its anonymous device minor, which names
 * /sys/fs/fuse/connections/N), read from /proc/self/mountinfo without touching the filesystem itself.
 */
export async function fuseConnectionOf(target: string): Promise<number | undefined> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  let found: number | undefined;
  for (const line of mounts.split('\n')) {
    const fields = line.split(' ');
    const separator = fields.indexOf('-');
    if (separator < 0 || fields[separator + 1] !== FUSE_FS_TYPE) continue;
    if (unescapeMountinfo(fields[4] ?? '') !== target) continue;
    const minor = Number((fields[2] ?? '').split(':')[1]);
    if (Number.isInteger(minor)) found = minor; // the last one is the top of the stack
  }
  return found;
}

/** mountinfo escapes space, tab, newline and backslash as octal `\NNN`. */
export function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}
