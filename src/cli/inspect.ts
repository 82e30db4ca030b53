/**
 * `erofs-oci inspect [--json] IMAGE.erofs [PATH]` (SPEC §2): superblock facts, a directory listing, or one
 * file's metadata and xattrs, read with the project's own EROFS reader (src/erofs/reader.ts), so it works on
 * images the running kernel cannot mount and without root. `--cat` writes a file's bytes to stdout.
 */
import { parseArgs } from 'node:util';
import { DataLayout } from '../erofs/format.ts';
import {
  type DirEntry,
  type ErofsImage,
  type Inode,
  openImage,
  type SuperblockInfo,
} from '../erofs/reader.ts';
import { abortedError, ErofsOciError, throwIfAborted } from '../errors.ts';
import { type ByteString, displayName, fromByteString, type Timestamp } from '../fs-tree/tree.ts';
import type { ByteSource } from '../io/byte-source.ts';
import { openFileSource } from '../io/file-source.ts';

export interface InspectIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  signal?: AbortSignal;
}

const USAGE = `Usage: erofs-oci inspect [options] IMAGE.erofs [PATH]

Shows an EROFS image with erofs-oci's own reader (no mount, no root needed).
Without PATH: the superblock (block size, UUID, label, build time, inode and
block counts, features, devices). With PATH: the listing of a directory, or
the metadata and extended attributes of anything else. Symlinks in PATH are
not followed. Compressed images (lz4, lz4hc, deflate, zstd) are read too.

Options:
  --json              print the same as one JSON object
  -d, --directory     show a directory's own metadata instead of its listing
  --cat               write the contents of the regular file PATH to stdout
  --device FILE       an extra device of the image's device table (repeat in
                      table order); without it, data on an extra device is
                      read from IMAGE at the device's unified address, as for
                      an index-mode image concatenated with its layer tar
  --debug             show the causes of errors
  -h, --help          show this help
`;

const CAT_CHUNK = 1 << 20;

export async function inspectCommand(args: string[], io: InspectIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      directory: { type: 'boolean', short: 'd' },
      cat: { type: 'boolean' },
      device: { type: 'string', multiple: true },
      debug: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    io.stdout.write(USAGE);
    return 0;
  }
  const [imagePath, path, ...extra] = positionals;
  if (imagePath === undefined) {
    throw new ErofsOciError('usage', 'missing IMAGE (see erofs-oci inspect --help)');
  }
  if (extra.length > 0) {
    throw new ErofsOciError(
      'usage',
      `unexpected argument ${JSON.stringify(extra[0])} (see erofs-oci inspect --help)`,
    );
  }
  if (values.cat && path === undefined) {
    throw new ErofsOciError('usage', '--cat needs a PATH inside the image');
  }
  const signal = io.signal;
  const opened: (ByteSource & { close(): Promise<void> })[] = [];
  try {
    const source = await openFileSource(imagePath, { signal });
    opened.push(source);
    const devices = [];
    for (const device of values.device ?? []) {
      const dev = await openFileSource(device, { signal });
      opened.push(dev);
      devices.push(dev);
    }
    const image = await openImage(source, { devices: devices.length > 0 ? devices : undefined, signal });
    if (path === undefined) {
      const sb = image.superblock;
      io.stdout.write(
        values.json
          ? `${JSON.stringify(superblockJson(sb, source.size), null, 2)}\n`
          : superblockText(sb, source.size),
      );
      return 0;
    }
    // The command line is UTF-8; names in the image are byte strings.
    const bytePath: ByteString = Buffer.from(path, 'utf8').toString('latin1');
    const inode = await image.lookup(bytePath, { signal });
    if (values.cat) {
      if (inode.type !== 'file') {
        throw new ErofsOciError('usage', `Cannot --cat ${path}: it is a ${inode.type}, not a regular file`);
      }
      await cat(image, inode, io.stdout, signal);
      return 0;
    }
    const target = inode.type === 'symlink' ? await image.readlink(inode, { signal }) : undefined;
    if (inode.type === 'dir' && !values.directory) {
      const rows: Row[] = [];
      for (const entry of await image.readdir(inode, { signal })) {
        throwIfAborted(signal);
        const child = await image.readInode(entry.nid, { signal });
        rows.push({
          entry,
          inode: child,
          target: child.type === 'symlink' ? await image.readlink(child, { signal }) : undefined,
        });
      }
      if (values.json) {
        const json = {
          ...inodeJson(bytePath, inode, target),
          entries: rows.map((r) => inodeJson(r.entry.name, r.inode, r.target)),
        };
        io.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
      } else {
        io.stdout.write(listing(rows));
      }
      return 0;
    }
    io.stdout.write(
      values.json
        ? `${JSON.stringify(inodeJson(bytePath, inode, target), null, 2)}\n`
        : inodeText(bytePath, inode, target),
    );
    return 0;
  } finally {
    for (const s of opened) await s.close();
  }
}

interface Row {
  entry: DirEntry;
  inode: Inode;
  target: ByteString | undefined;
}

async function cat(
  image: ErofsImage,
  inode: Inode,
  out: NodeJS.WritableStream,
  signal?: AbortSignal,
): Promise<void> {
  for (let offset = 0; offset < inode.size; offset += CAT_CHUNK) {
    const chunk = await image.readFile(inode, offset, CAT_CHUNK, { signal });
    if (!out.write(chunk)) await waitForDrain(out, signal);
  }
}

function waitForDrain(out: NodeJS.WritableStream, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      out.off('drain', onDrain);
      reject(abortedError(signal));
    };
    const onDrain = () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    };
    out.once('drain', onDrain);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

// ---- formatting ------------------------------------------------------------------------------------------

const LAYOUT_NAMES: Record<number, string> = {
  [DataLayout.flatPlain]: 'flat-plain',
  [DataLayout.compressedFull]: 'compressed-full',
  [DataLayout.flatInline]: 'flat-inline',
  [DataLayout.compressedCompact]: 'compressed-compact',
  [DataLayout.chunkBased]: 'chunk-based',
};

/** `2023-11-14T22:13:20.123456789Z`; seconds outside what Date can show as `@SECONDS.NANOS`. */
export function isoTime(t: Timestamp): string {
  const ms = t.sec * 1000;
  const nanos = String(t.nsec).padStart(9, '0');
  if (!Number.isSafeInteger(ms) || Math.abs(ms) > 8.64e15) return `@${t.sec}.${nanos}`;
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, `.${nanos}Z`);
}

const TYPE_CHARS: Record<Inode['type'], string> = {
  file: '-',
  dir: 'd',
  symlink: 'l',
  chardev: 'c',
  blockdev: 'b',
  fifo: 'p',
  socket: 's',
};

/** `ls -l` mode string: `drwxr-xr-x`, with s/S, t/T for setuid, setgid and sticky. */
export function modeString(type: Inode['type'], mode: number): string {
  const rwx = (bits: number, special: boolean, char: string) =>
    `${bits & 4 ? 'r' : '-'}${bits & 2 ? 'w' : '-'}${special ? (bits & 1 ? char : char.toUpperCase()) : bits & 1 ? 'x' : '-'}`;
  return (
    TYPE_CHARS[type] +
    rwx((mode >> 6) & 7, (mode & 0o4000) !== 0, 's') +
    rwx((mode >> 3) & 7, (mode & 0o2000) !== 0, 's') +
    rwx(mode & 7, (mode & 0o1000) !== 0, 't')
  );
}

function show(name: ByteString): string {
  return displayName(name);
}

function sizeColumn(inode: Inode): string {
  return inode.rdev ? `${inode.rdev.major}, ${inode.rdev.minor}` : String(inode.size);
}

function listing(rows: Row[]): string {
  const cells = rows.map((r) => [
    modeString(r.inode.type, r.inode.mode),
    String(r.inode.nlink),
    String(r.inode.uid),
    String(r.inode.gid),
    sizeColumn(r.inode),
    isoTime(r.inode.mtime),
    show(r.entry.name) + (r.target !== undefined ? ` -> ${show(r.target)}` : ''),
  ]);
  const widths = [1, 2, 3, 4].map((i) => Math.max(0, ...cells.map((c) => (c[i] as string).length)));
  return cells
    .map((c) => {
      const [mode, nlink, uid, gid, size, mtime, name] = c as [
        string,
        string,
        string,
        string,
        string,
        string,
        string,
      ];
      return `${mode} ${nlink.padStart(widths[0] as number)} ${uid.padEnd(widths[1] as number)} ${gid.padEnd(widths[2] as number)} ${size.padStart(widths[3] as number)} ${mtime} ${name}\n`;
    })
    .join('');
}

function xattrValueText(value: Uint8Array): string {
  const text = Buffer.from(value).toString('utf8');
  // Printable UTF-8 is shown quoted; anything else as hex, as getfattr -e hex would.
  if (Buffer.from(text, 'utf8').equals(Buffer.from(value)) && !/[\x00-\x1f\x7f]/.test(text))
    return JSON.stringify(text);
  return `0x${Buffer.from(value).toString('hex')}`;
}

function inodeText(path: ByteString, inode: Inode, target: ByteString | undefined): string {
  const lines: [string, string][] = [
    ['path', show(path)],
    ['nid', String(inode.nid)],
    ['type', inode.type],
    ['mode', `${(inode.mode & 0o7777).toString(8).padStart(4, '0')} (${modeString(inode.type, inode.mode)})`],
    ['uid', String(inode.uid)],
    ['gid', String(inode.gid)],
    ['size', String(inode.size)],
    ['nlink', String(inode.nlink)],
    ['mtime', isoTime(inode.mtime)],
    ['inode', `${inode.extended ? 'extended' : 'compact'}, ${LAYOUT_NAMES[inode.layout] ?? inode.layout}`],
  ];
  if (target !== undefined) lines.push(['target', show(target)]);
  if (inode.rdev) lines.push(['device', `${inode.rdev.major}, ${inode.rdev.minor}`]);
  for (const [name, value] of inode.xattrs) lines.push([`xattr ${show(name)}`, xattrValueText(value)]);
  return lines.map(([k, v]) => `${k}: ${v}\n`).join('');
}

function inodeJson(path: ByteString, inode: Inode, target: ByteString | undefined): Record<string, unknown> {
  const name = (path
    .split('/')
    .filter((c) => c !== '')
    .at(-1) ?? '/') as ByteString;
  return {
    name: show(name),
    // Names that are not UTF-8 cannot round-trip through a JSON string; give their bytes too.
    ...(Buffer.from(show(name), 'utf8').equals(fromByteString(name))
      ? {}
      : { nameHex: fromByteString(name).toString('hex') }),
    nid: inode.nid,
    type: inode.type,
    mode: inode.mode & 0o7777,
    modeString: modeString(inode.type, inode.mode),
    uid: inode.uid,
    gid: inode.gid,
    size: inode.size,
    nlink: inode.nlink,
    mtime: { sec: inode.mtime.sec, nsec: inode.mtime.nsec, iso: isoTime(inode.mtime) },
    rdev: inode.rdev,
    ...(target !== undefined ? { target: show(target) } : {}),
    inode: inode.extended ? 'extended' : 'compact',
    layout: LAYOUT_NAMES[inode.layout] ?? inode.layout,
    xattrs: [...inode.xattrs].map(([n, v]) => ({ name: show(n), hex: Buffer.from(v).toString('hex') })),
  };
}

function superblockText(sb: SuperblockInfo, fileSize: number): string {
  const lines: [string, string][] = [
    ['block size', String(sb.blockSize)],
    ['uuid', sb.uuid],
    ['label', show(sb.volumeName)],
    ['build time', isoTime(sb.buildTime)],
    ['inodes', String(sb.inodeCount)],
    ['blocks', `${sb.blocks} (${sb.blocks * sb.blockSize} bytes; file is ${fileSize} bytes)`],
    ['meta block', String(sb.metaBlkaddr)],
    ['xattr block', String(sb.xattrBlkaddr)],
    ['root nid', String(sb.rootNid)],
    ['features', sb.features.join(' ') || '(none)'],
    [
      'checksum',
      sb.checksum === null ? '(none)' : `0x${sb.checksum.toString(16).padStart(8, '0')} (verified)`,
    ],
    ['devices', String(sb.devices.length)],
  ];
  for (const [i, d] of sb.devices.entries()) {
    lines.push([
      `device ${i + 1}`,
      `tag ${JSON.stringify(show(d.tag))}, ${d.blocks} blocks at unified block ${d.uniaddr}`,
    ]);
  }
  return lines.map(([k, v]) => `${k}: ${v}\n`).join('');
}

function superblockJson(sb: SuperblockInfo, fileSize: number): Record<string, unknown> {
  return {
    blockSize: sb.blockSize,
    uuid: sb.uuid,
    label: show(sb.volumeName),
    buildTime: { sec: sb.buildTime.sec, nsec: sb.buildTime.nsec, iso: isoTime(sb.buildTime) },
    inodes: sb.inodeCount,
    blocks: sb.blocks,
    imageSize: sb.blocks * sb.blockSize,
    fileSize,
    metaBlkaddr: sb.metaBlkaddr,
    xattrBlkaddr: sb.xattrBlkaddr,
    rootNid: sb.rootNid,
    featureCompat: sb.featureCompat,
    featureIncompat: sb.featureIncompat,
    features: sb.features,
    checksum: sb.checksum,
    devices: sb.devices.map((d) => ({ tag: show(d.tag), blocks: d.blocks, uniaddr: d.uniaddr })),
  };
}
