/**
 * Test fixtures for the EROFS reader and `inspect`: a directory tree with every file type and the awkward
 * cases (hardlinks, xattrs of every namespace, long and non-UTF-8 names, multi-block directories, sizes
 * around block multiples), images of it made by erofs-utils `mkfs.erofs`, and a description of the tree as
 * the local kernel reports it (lstat, readlink, listxattr) to compare readers against.
 *
 * Needs root (device nodes, trusted.* xattrs, chown), `mkfs.erofs` (Debian `erofs-utils`) and `python3`.
 * Test code only.
 */
import { execFile } from 'node:child_process';
import {
  access,
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type ByteString, fromByteString, toByteString } from '../fs-tree/tree.ts';

const run = promisify(execFile);

export async function hasMkfsErofs(): Promise<boolean> {
  try {
    await run('mkfs.erofs', ['--help']).catch((e: { code?: unknown; stdout?: string }) => {
      // mkfs.erofs 1.5 exits 1 after printing its usage; only a missing binary matters.
      if (e.code === 'ENOENT') throw e;
    });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
}

/** A deterministic byte pattern so that misplaced blocks are detected. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

async function setXattr(path: string, name: string, value: string | Uint8Array): Promise<void> {
  const hex = Buffer.from(value).toString('hex');
  await run('python3', [
    '-c',
    'import os,sys; os.setxattr(os.fsencode(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3]), follow_symlinks=False)',
    path,
    name,
    hex,
  ]);
}

async function touch(path: string, sec: number, nsec: number): Promise<void> {
  await run('python3', [
    '-c',
    'import os,sys; os.utime(os.fsencode(sys.argv[1]), ns=(int(sys.argv[2]), int(sys.argv[2])), follow_symlinks=False)',
    path,
    String(BigInt(sec) * 1_000_000_000n + BigInt(nsec)),
  ]);
}

/** Builds the fixture tree in `root` (which must not exist). */
export async function makeFixtureTree(root: string): Promise<void> {
  await mkdir(root);
  // Files of sizes around block multiples (4 KiB blocks; also 512-byte multiples).
  const sizes = [0, 1, 511, 512, 513, 4095, 4096, 4097, 8191, 8192, 8193, 12388, 100_000, 300_001];
  await mkdir(join(root, 'sizes'));
  for (const [i, size] of sizes.entries()) {
    await writeFile(join(root, 'sizes', `f${size}`), pattern(size, i + 1));
  }
  // Every file type.
  await mkdir(join(root, 'types'));
  await writeFile(join(root, 'types', 'regular'), 'regular file\n');
  await symlink('regular', join(root, 'types', 'symlink'));
  await symlink(`${'long/'.repeat(200)}target`, join(root, 'types', 'long-symlink'));
  await symlink('../sizes', join(root, 'types', 'dir-symlink'));
  await run('mknod', [join(root, 'types', 'null'), 'c', '1', '3']);
  await run('mknod', [join(root, 'types', 'sda1'), 'b', '8', '1']);
  await run('mknod', [join(root, 'types', 'bigdev'), 'c', '259', '70000']);
  await run('mknod', [join(root, 'types', 'whiteout'), 'c', '0', '0']);
  await run('mkfifo', [join(root, 'types', 'fifo')]);
  await run('python3', [
    '-c',
    'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])',
    join(root, 'types', 'socket'),
  ]);
  await mkdir(join(root, 'types', 'empty-dir'));
  // Hardlinks: one inode under three names in two directories.
  await writeFile(join(root, 'types', 'linked'), pattern(5000, 99));
  await link(join(root, 'types', 'linked'), join(root, 'types', 'linked-2'));
  await link(join(root, 'types', 'linked'), join(root, 'sizes', 'linked-3'));
  // Xattrs in every namespace mkfs.erofs stores with a short prefix; one shared by many files.
  await mkdir(join(root, 'xattrs'));
  for (let i = 0; i < 6; i++) {
    const f = join(root, 'xattrs', `x${i}`);
    await writeFile(f, `file ${i}\n`);
    await setXattr(f, 'user.shared', 'same value everywhere');
    await setXattr(f, `user.own${i}`, `value ${i}`);
  }
  await setXattr(join(root, 'xattrs', 'x0'), 'trusted.overlay.opaque', 'y');
  await setXattr(join(root, 'xattrs', 'x0'), 'security.label', 'system_u:object_r:etc_t');
  await setXattr(join(root, 'xattrs', 'x1'), 'user.big', pattern(1500, 7));
  await setXattr(join(root, 'xattrs', 'x1'), 'user.empty', '');
  await setXattr(join(root, 'xattrs'), 'trusted.overlay.opaque', 'y');
  await symlink('x0', join(root, 'xattrs', 'link'));
  await setXattr(join(root, 'xattrs', 'link'), 'trusted.on-symlink', 'v');
  // Names: long (mkfs.erofs 1.5 fails on 255 bytes, so 254), non-UTF-8 bytes, sorting neighbours of `.` and `..`.
  await mkdir(join(root, 'names'));
  await writeFile(join(root, 'names', 'n'.repeat(254)), 'long name');
  await writeFile(
    Buffer.concat([Buffer.from(join(root, 'names/')), Buffer.from([0xff, 0xfe, 0x41])]),
    'latin1',
  );
  for (const name of ['-dash', '!bang', '.hidden', '..dots', 'é-utf8', ' space', 'UPPER', 'lower']) {
    await writeFile(join(root, 'names', name), name);
  }
  // A directory spanning several blocks.
  await mkdir(join(root, 'many'));
  for (let i = 0; i < 600; i++)
    await writeFile(join(root, 'many', `entry-${String(i).padStart(5, '0')}-padding`), '');
  // Deep nesting.
  let deep = join(root, 'deep');
  for (let i = 0; i < 12; i++) {
    await mkdir(deep);
    deep = join(deep, `level${i}`);
  }
  await writeFile(deep, 'bottom');
  // Modes and owners (uid 100000 does not fit a compact inode).
  await mkdir(join(root, 'modes'));
  const modes: [string, number, number, number][] = [
    ['setuid', 0o4755, 0, 0],
    ['setgid', 0o2711, 1000, 1000],
    ['none', 0o000, 65534, 65534],
    ['biguid', 0o644, 100_000, 200_000],
  ];
  for (const [name, mode, uid, gid] of modes) {
    await writeFile(join(root, 'modes', name), name);
    await chmod(join(root, 'modes', name), mode);
    await chown(join(root, 'modes', name), uid, gid);
  }
  await mkdir(join(root, 'modes', 'sticky'));
  await chmod(join(root, 'modes', 'sticky'), 0o1777);
  // Times with nanoseconds, and one beyond 2^32 seconds (needs an extended inode).
  await touch(join(root, 'modes', 'setuid'), 1_234_567_890, 123_456_789);
  await touch(join(root, 'modes', 'setgid'), 5_000_000_000, 999_999_999);
  await touch(join(root, 'types', 'symlink'), 1_600_000_000, 42);
}

/**
 * Adds `dirs` directories of `perDir` small files of random bytes (100 bytes, growing by `step` per file)
 * under ROOT/many: the shape in which erofs-utils scatters inodes and directory blocks among the data.
 */
export async function addManySmallFiles(
  root: string,
  dirs: number,
  perDir: number,
  step: number,
): Promise<void> {
  await run('python3', [
    '-c',
    `import os,sys
r,dirs,per,step=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4])
for d in range(dirs):
  p=os.path.join(r,'many','d%02d'%d); os.makedirs(p)
  for f in range(per):
    open(os.path.join(p,'f%03d'%f),'wb').write(os.urandom(100+f*step))`,
    root,
    String(dirs),
    String(perDir),
    String(step),
  ]);
}

export interface MkfsImage {
  path: string;
  /** `--blobdev` file, if any. */
  blob?: string;
}

/** Runs mkfs.erofs (quietly) with `args` to make `image` from `dir`. */
export async function mkfs(image: string, dir: string, args: string[] = []): Promise<void> {
  await run('mkfs.erofs', ['--quiet', ...args, image, dir]);
}

export interface ExpectedNode {
  path: ByteString;
  type: 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  mtime: { sec: number; nsec: number };
  rdev: { major: number; minor: number } | null;
  target?: ByteString;
  xattrs: Map<ByteString, Uint8Array>;
}

/** Describes the tree at `root` as the running kernel reports it, depth first in byte order of names. */
export async function describeTree(root: string): Promise<ExpectedNode[]> {
  const xattrDump = JSON.parse(
    (
      await run(
        'python3',
        [
          '-c',
          `
import os, sys, json
out = {}
root = os.fsencode(sys.argv[1])
for d, dirs, files in os.walk(root):
    for p in [d] + [os.path.join(d, n) for n in dirs + files]:
        rel = b'/' if p == root else b'/' + os.path.relpath(p, root)
        out[rel.hex()] = {n: os.getxattr(p, n, follow_symlinks=False).hex() for n in os.listxattr(p, follow_symlinks=False)}
print(json.dumps(out))
`,
          root,
        ],
        { maxBuffer: 64 * 1024 * 1024 },
      )
    ).stdout,
  ) as Record<string, Record<string, string>>;

  const out: ExpectedNode[] = [];
  async function visit(path: Buffer, rel: ByteString): Promise<void> {
    const st = await lstat(path, { bigint: true });
    const type = st.isFile()
      ? 'file'
      : st.isDirectory()
        ? 'dir'
        : st.isSymbolicLink()
          ? 'symlink'
          : st.isCharacterDevice()
            ? 'chardev'
            : st.isBlockDevice()
              ? 'blockdev'
              : st.isFIFO()
                ? 'fifo'
                : 'socket';
    const rdev = Number(st.rdev);
    const xattrs = new Map<ByteString, Uint8Array>();
    for (const [name, hex] of Object.entries(xattrDump[Buffer.from(rel, 'latin1').toString('hex')] ?? {})) {
      xattrs.set(toByteString(Buffer.from(name, 'utf8')), Buffer.from(hex, 'hex'));
    }
    const node: ExpectedNode = {
      path: rel,
      type,
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: type === 'dir' ? -1 : Number(st.size),
      nlink: Number(st.nlink),
      ino: Number(st.ino),
      mtime: { sec: Number(st.mtimeNs / 1_000_000_000n), nsec: Number(st.mtimeNs % 1_000_000_000n) },
      rdev:
        type === 'chardev' || type === 'blockdev'
          ? // glibc major()/minor() from a Linux dev_t.
            {
              major: ((rdev >>> 8) & 0xfff) | Number((st.rdev >> 32n) & ~0xfffn),
              minor: (rdev & 0xff) | ((rdev >>> 12) & 0xfff00),
            }
          : null,
      xattrs,
    };
    if (type === 'symlink') node.target = toByteString(await readlink(path, { encoding: 'buffer' }));
    out.push(node);
    if (type === 'dir') {
      const names = (await readdir(path, { encoding: 'buffer' })).sort(Buffer.compare);
      for (const name of names) {
        await visit(
          Buffer.concat([path, Buffer.from('/'), name]),
          `${rel === '/' ? '' : rel}/${toByteString(name)}`,
        );
      }
    }
  }
  await visit(Buffer.from(root), '/');
  return out;
}

export async function fileBytes(root: string, rel: ByteString): Promise<Buffer> {
  return readFile(Buffer.concat([Buffer.from(root), fromByteString(rel)]));
}

export async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
