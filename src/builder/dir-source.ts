/**
 * A local directory as a stream of entries shaped like tar entries, so `build` has one ingestion path.
 * Hardlinks (same device and inode) become hardlink entries to the first path seen; sockets are kept.
 * Extended attributes are read for the whole tree with one `getfattr` run (Node has no xattr API).
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteString, Timestamp } from '../fs-tree/tree.ts';
import type { SourceEntry } from './source-entry.ts';

export interface DirSourceOptions {
  signal?: AbortSignal;
  /** Called once when extended attributes cannot be read (no `getfattr`). */
  onWarning?: (message: string) => void;
}

export async function* readDirectory(
  root: string,
  options: DirSourceOptions = {},
): AsyncGenerator<SourceEntry> {
  const rootStat = await lstat(root, { bigint: true }).catch((error: NodeJS.ErrnoException) => {
    throw new ErofsOciError(
      error.code === 'ENOENT' ? 'not-found' : 'io',
      `cannot read directory ${root}: ${error.message}`,
      {
        cause: error,
      },
    );
  });
  if (!rootStat.isDirectory()) throw new ErofsOciError('usage', `dir: source ${root} is not a directory`);
  const xattrs = await readAllXattrs(root, options);
  const seen = new Map<string, ByteString>();
  // Paths are handled as Buffers so names in any encoding survive.
  const rootBuffer = Buffer.from(root);
  const stack: { abs: Buffer; rel: ByteString }[] = [{ abs: rootBuffer, rel: '' }];
  while (stack.length > 0) {
    throwIfAborted(options.signal);
    const { abs, rel } = stack.pop() as { abs: Buffer; rel: ByteString };
    const st = await lstat(abs, { bigint: true });
    const entryXattrs = xattrs.get(abs.toString('latin1')) ?? new Map<ByteString, Uint8Array>();
    const base = {
      path: rel,
      linkname: '',
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: 0,
      mtime: timestampOf(st.mtimeNs),
      devmajor: 0,
      devminor: 0,
      xattrs: entryXattrs,
      headerOffset: undefined,
    };
    if (st.isDirectory()) {
      yield { ...base, type: 'dir', body: noBody };
      const names = (await readdir(abs, { encoding: 'buffer' })) as Buffer[];
      names.sort(Buffer.compare).reverse();
      for (const name of names) {
        const nameString = name.toString('latin1');
        stack.push({
          abs: Buffer.concat([abs, Buffer.from('/'), name]),
          rel: rel === '' ? nameString : `${rel}/${nameString}`,
        });
      }
      continue;
    }
    const key = `${st.dev}:${st.ino}`;
    const first = st.nlink > 1n ? seen.get(key) : undefined;
    if (first !== undefined) {
      yield { ...base, type: 'hardlink', linkname: first, body: noBody };
      continue;
    }
    if (st.nlink > 1n) seen.set(key, rel);
    if (st.isFile()) {
      const size = Number(st.size);
      yield { ...base, type: 'file', size, body: () => readFileExactly(abs, size, options.signal) };
    } else if (st.isSymbolicLink()) {
      const target = (await readlink(abs, { encoding: 'buffer' })) as Buffer;
      yield { ...base, type: 'symlink', linkname: target.toString('latin1'), body: noBody };
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      // glibc's dev_t encoding (gnu_dev_major / gnu_dev_minor).
      const rdev = st.rdev;
      yield {
        ...base,
        type: st.isCharacterDevice() ? 'chardev' : 'blockdev',
        devmajor: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)),
        devminor: Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)),
        body: noBody,
      };
    } else if (st.isFIFO()) {
      yield { ...base, type: 'fifo', body: noBody };
    } else if (st.isSocket()) {
      yield { ...base, type: 'socket', body: noBody };
    }
  }
}

async function* noBody(): AsyncGenerator<Uint8Array> {}

async function* readFileExactly(
  path: Buffer,
  size: number,
  signal?: AbortSignal,
): AsyncGenerator<Uint8Array> {
  let read = 0;
  const stream = createReadStream(path, { highWaterMark: 1 << 20, end: size === 0 ? 0 : size - 1, signal });
  if (size === 0) {
    stream.destroy();
    return;
  }
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    read += chunk.byteLength;
    yield chunk;
  }
  if (read !== size) {
    throw new ErofsOciError('io', `${path.toString()} changed while it was read: ${read} of ${size} bytes`);
  }
}

function timestampOf(ns: bigint): Timestamp {
  const sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  let s = sec;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    s -= 1n;
  }
  return { sec: Number(s), nsec: Number(nsec) };
}

/**
 * Reads every extended attribute under `root` with `getfattr -R -d -m - -e hex -h`, keyed by absolute path
 * (latin1 byte string). `system.*` attributes other than POSIX ACLs describe the host filesystem, not the
 * files, and are left out.
 */
async function readAllXattrs(
  root: string,
  options: DirSourceOptions,
): Promise<Map<string, Map<ByteString, Uint8Array>>> {
  const result = new Map<string, Map<ByteString, Uint8Array>>();
  const output = await new Promise<Buffer | null>((resolve, reject) => {
    const child = spawn(
      'getfattr',
      ['-R', '-d', '-m', '-', '-e', 'hex', '--absolute-names', '-h', '--', root],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const chunks: Buffer[] = [];
    const errors: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stderr.on('data', (c: Buffer) => errors.push(c));
    child.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') resolve(null);
      else reject(error);
    });
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(chunks));
      else
        reject(
          new ErofsOciError('io', `getfattr failed on ${root}: ${Buffer.concat(errors).toString().trim()}`),
        );
    });
  });
  if (output === null) {
    options.onWarning?.(
      'getfattr is not installed (Debian package "attr"): extended attributes of dir: sources are not copied',
    );
    return result;
  }
  let current: Map<ByteString, Uint8Array> | undefined;
  for (const line of output.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      current = new Map();
      result.set(unescapeGetfattr(line.slice(8)), current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq <= 0) continue;
    const name = unescapeGetfattr(line.slice(0, eq));
    if (
      name.startsWith('system.') &&
      name !== 'system.posix_acl_access' &&
      name !== 'system.posix_acl_default'
    )
      continue;
    const value = line.slice(eq + 1);
    current.set(name, value.startsWith('0x') ? Buffer.from(value.slice(2), 'hex') : Buffer.alloc(0));
  }
  return result;
}

/** getfattr writes unprintable bytes and backslashes of names as `\ooo` octal escapes. */
function unescapeGetfattr(value: string): string {
  return value.replace(/\\([0-7]{3})/g, (_m, octal: string) =>
    String.fromCharCode(Number.parseInt(octal, 8)),
  );
}
