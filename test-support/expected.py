#!/usr/bin/env python3
"""Produce the tree a stack of layer tarballs should give, without using the project's code.

The file data and metadata come from GNU tar extracting each layer as root
(`tar --xattrs --xattrs-include='*' --numeric-owner -xpf`). Around it sits a small, separate
implementation of the OCI layer rules (image-spec layer.md "Whiteouts"), written from the spec:

  merged (default)  Before extracting layer N: every `.wh.NAME` of layer N deletes NAME from what the
                    lower layers left, every `.wh..wh..opq` empties its directory of lower content, and
                    every entry of layer N removes a lower entry of another type at its path (a file
                    replaces a directory and its subtree; a directory replaces a file or symlink). Then
                    GNU tar extracts layer N, whiteout files excluded. Whiteouts apply to lower layers
                    only, so an entry in the same layer survives its own layer's whiteout.
  overlay           One layer, whiteouts kept in the overlayfs form: `.wh.NAME` becomes a character
                    device 0:0 named NAME with mode 0000 (as overlayfs creates them, and as
                    mkfs.erofs --aufs writes them) and the whiteout entry's owner and mtime;
                    `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on its directory. (mkfs.erofs
                    also marks each directory holding whiteouts with an empty
                    `trusted.overlay.origin`; that is optional and left to the comparison.)
  strip             One layer, whiteout entries dropped.

What GNU tar does not do, this script does after each extraction:
  - LIBARCHIVE.xattr.* records (URL-encoded name, base64 value): GNU tar 1.34 ignores them.
  - A directory an upper layer redefines gets exactly that entry's xattrs (tar only adds).
  - Directory mtimes: extracting into a directory, or deleting from it, changes its mtime. Every
    directory that some surviving entry defines gets the mtime of the last entry that defined it.

Directories that no entry defines (missing parents, created implicitly) have no defined metadata;
their paths are printed so that the comparison checks only that they exist and are directories.

Usage: expected.py [--mode merged|overlay|strip] OUTDIR LAYER...
Prints {"implicitDirs": [PATH, ...]} (paths escaped as in snapshot.py) on stdout.
"""

import argparse
import base64
import gzip
import json
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from snapshot import escape  # noqa: E402

WHITEOUT = b'.wh.'
OPAQUE = b'.wh..wh..opq'
GZIP_MAGIC = b'\x1f\x8b'
ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'


def decompress(layer: str, into: str) -> str:
    """Plain tar copy of a layer (tarfile cannot read zstd; GNU tar then reads the same bytes)."""
    with open(layer, 'rb') as f:
        magic = f.read(4)
    out = os.path.join(into, os.path.basename(layer) + '.plain.tar')
    if magic[:2] == GZIP_MAGIC:
        with gzip.open(layer, 'rb') as src, open(out, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    elif magic == ZSTD_MAGIC:
        with open(out, 'wb') as dst:
            subprocess.run(['zstd', '-q', '-d', '-c', layer], stdout=dst, check=True)
    else:
        shutil.copyfile(layer, out)
    return out


def member_path(info: tarfile.TarInfo) -> bytes:
    """The member's path relative to the root, normalised like a tar extractor does: no leading './'
    or '/', no trailing '/', '.' for the root itself."""
    raw = info.name.encode('utf-8', 'surrogateescape')
    path = posixpath.normpath(b'/' + raw).lstrip(b'/')
    return path or b'.'


def member_xattrs(info: tarfile.TarInfo) -> dict:
    """All xattrs a member carries: SCHILY.xattr.NAME=VALUE and LIBARCHIVE.xattr.URLNAME=BASE64."""
    result = {}
    for key, value in info.pax_headers.items():
        raw_value = value.encode('utf-8', 'surrogateescape')
        if key.startswith('SCHILY.xattr.'):
            result[key[len('SCHILY.xattr.'):].encode('utf-8', 'surrogateescape')] = raw_value
        elif key.startswith('LIBARCHIVE.xattr.'):
            name = urllib.parse.unquote_to_bytes(key[len('LIBARCHIVE.xattr.'):])
            padded = raw_value.rstrip(b'=') + b'=' * (-len(raw_value.rstrip(b'=')) % 4)
            result[name] = base64.b64decode(padded, validate=True)
    return result


def mtime_ns(info: tarfile.TarInfo) -> int:
    """The member's mtime in ns, exact: PAX 'mtime' is parsed from its decimal text, not a float."""
    text = info.pax_headers.get('mtime')
    if text is None:
        return int(info.mtime) * 10 ** 9
    whole, _, frac = text.partition('.')
    return int(whole) * 10 ** 9 + int((frac + '000000000')[:9])


def lexists(path: bytes) -> bool:
    return os.path.lexists(path)


def is_dir(path: bytes) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def remove(path: bytes) -> None:
    if is_dir(path):
        shutil.rmtree(path)
    elif lexists(path):
        os.unlink(path)


def forget(defined: dict, path: bytes) -> None:
    """Drop the recorded definitions of path and everything below it."""
    prefix = path + b'/'
    for key in [k for k in defined if k == path or k.startswith(prefix)]:
        del defined[key]


def forget_below(defined: dict, path: bytes) -> None:
    prefix = b'' if path == b'.' else path + b'/'
    for key in [k for k in defined if k != b'.' and k.startswith(prefix) and k != path]:
        del defined[key]


def gnu_tar_extract(plain: str, outdir: str) -> None:
    command = [
        'tar', '-x', '-f', plain, '-C', outdir,
        '--numeric-owner', '--same-owner', '--same-permissions',
        '--xattrs', '--xattrs-include=*',
        # Whiteouts are applied by this script, never extracted as files.
        '--exclude=.wh.*',
        # LIBARCHIVE.xattr.* (applied below) and hdrcharset are unknown to GNU tar 1.34.
        '--warning=no-unknown-keyword',
    ]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise SystemExit('expected.py: %s failed (%d): %s' % (' '.join(command), result.returncode,
                                                              result.stderr.decode(errors='replace')))


def read_members(plain: str) -> list:
    with tarfile.open(plain, 'r:', encoding='utf-8', errors='surrogateescape') as archive:
        return [(member_path(info), info) for info in archive.getmembers()]


def set_xattrs_exactly(path: bytes, wanted: dict) -> None:
    for name in os.listxattr(path, follow_symlinks=False):
        if os.fsencode(name) not in wanted:
            os.removexattr(path, name, follow_symlinks=False)
    for name, value in wanted.items():
        os.setxattr(path, name, value, follow_symlinks=False)


def apply_layer(outdir: bytes, plain: str, defined: dict, mode: str, implicit_whiteout_dirs: set) -> None:
    members = read_members(plain)
    at = lambda rel: outdir if rel == b'.' else os.path.join(outdir, rel)  # noqa: E731

    whiteouts = []
    entries = []
    for path, info in members:
        base = posixpath.basename(path)
        if base.startswith(WHITEOUT):
            whiteouts.append((path, info))
        else:
            entries.append((path, info))

    if mode == 'merged':
        # 1. Whiteouts act on lower layers only: apply them before this layer's entries exist.
        for path, _info in whiteouts:
            parent, base = posixpath.split(path)
            parent = parent or b'.'
            if base == OPAQUE:
                if is_dir(at(parent)):
                    for name in os.listdir(at(parent)):
                        remove(os.path.join(at(parent), name))
                forget_below(defined, parent)
            else:
                target = posixpath.join(parent, base[len(WHITEOUT):]) if parent != b'.' else base[len(WHITEOUT):]
                remove(at(target))
                forget(defined, target)
        # 2. An entry replaces a lower entry of another kind (and a non-directory always).
        for path, info in entries:
            if path == b'.':
                continue
            if lexists(at(path)) and not (info.isdir() and is_dir(at(path))):
                remove(at(path))
                forget(defined, path)

    # Which directories existed before this layer: a redefinition replaces their xattrs.
    preexisting = {path for path, info in entries if info.isdir() and is_dir(at(path))}

    gnu_tar_extract(plain, os.fsdecode(outdir))

    # 3. What GNU tar leaves out: LIBARCHIVE xattrs, exact xattrs of redefined directories.
    for path, info in entries:
        if info.islnk():
            continue
        wanted = member_xattrs(info)
        if info.isdir() and path in preexisting:
            set_xattrs_exactly(at(path), wanted)
        else:
            for name, value in wanted.items():
                os.setxattr(at(path), name, value, follow_symlinks=False)
        if info.isdir():
            defined[path] = mtime_ns(info)
        else:
            forget(defined, path)

    if mode == 'overlay':
        for path, info in whiteouts:
            parent, base = posixpath.split(path)
            parent = parent or b'.'
            if not is_dir(at(parent)):
                os.makedirs(at(parent))
                implicit_whiteout_dirs.add(parent)
            if base == OPAQUE:
                os.setxattr(at(parent), b'trusted.overlay.opaque', b'y', follow_symlinks=False)
            else:
                device = os.path.join(at(parent), base[len(WHITEOUT):])
                remove(device)
                os.mknod(device, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                os.lchown(device, info.uid, info.gid)
                ns = mtime_ns(info)
                os.utime(device, ns=(ns, ns), follow_symlinks=False)


def build_expected(outdir: bytes, layers: list, mode: str) -> list:
    if mode != 'merged' and len(layers) != 1:
        raise SystemExit('expected.py: --mode %s takes exactly one layer' % mode)
    defined = {}
    implicit_whiteout_dirs = set()
    with tempfile.TemporaryDirectory(prefix='expected-') as scratch:
        for layer in layers:
            plain = decompress(layer, scratch)
            apply_layer(outdir, plain, defined, mode, implicit_whiteout_dirs)
            os.unlink(plain)

    # Directory mtimes last: every change inside a directory above moved its mtime.
    for path, ns in defined.items():
        full = outdir if path == b'.' else os.path.join(outdir, path)
        if is_dir(full):
            os.utime(full, ns=(ns, ns), follow_symlinks=False)

    implicit = []
    for dirpath, dirnames, _filenames in os.walk(outdir):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, outdir)
            if rel not in defined and not os.path.islink(full):
                implicit.append(escape(rel))
    return sorted(implicit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mode', choices=['merged', 'overlay', 'strip'], default='merged')
    parser.add_argument('outdir')
    parser.add_argument('layers', nargs='+')
    args = parser.parse_args()
    outdir = os.fsencode(os.path.abspath(args.outdir))
    os.makedirs(outdir, exist_ok=True)
    if os.listdir(outdir):
        raise SystemExit('expected.py: %s is not empty' % args.outdir)
    os.umask(0)
    implicit = build_expected(outdir, args.layers, args.mode)
    print(json.dumps({'implicitDirs': implicit}, ensure_ascii=False))


if __name__ == '__main__':
    main()
