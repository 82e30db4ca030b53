#!/usr/bin/env python3
"""Print a canonical JSON description of a directory tree: the oracle's view of a filesystem.

The integration tests snapshot a kernel-mounted EROFS image and an independently produced expected
tree (GNU tar extraction, see expected.py) with this script and compare the two. It is deliberately
independent of the project's TypeScript code: python3 standard library only, lstat only, symlinks are
never followed.

Output (stdout), keys sorted, one JSON object:
  {
    "entries": { PATH: ENTRY, ... },      # PATH relative to the root, "." is the root itself
    "hardlinks": [[PATH, PATH, ...], ...], # non-directories sharing an inode, each group sorted
    "problems": [TEXT, ...]                # what no filesystem should show, e.g. inode number 0
  }
ENTRY fields:
  type   file | dir | symlink | chardev | blockdev | fifo | socket
  mode   permission bits incl. setuid/setgid/sticky, as a 4-digit octal string ("4755")
  uid, gid, nlink
  mtime  st_mtime_ns as a decimal string (JSON numbers lose precision beyond 2**53)
  size, sha256   regular files only (the hash is streamed: files may be larger than memory)
  target         symlinks: the target, escaped like paths
  rdev           character/block devices: "MAJOR:MINOR"
  xattrs         {NAME: VALUE_HEX}, names escaped like paths; omitted when there are none

Directory sizes are never reported: they are filesystem-specific (ext4 rounds to blocks, tmpfs counts
entries, EROFS reports the bytes of its dirent blocks).

Paths, symlink targets and xattr names are byte strings. They are printed as text where the bytes are
valid UTF-8; every byte that is not is written as \\xNN and a literal backslash as \\\\, so the escaping
is reversible and two different byte strings never print the same.

Options:
  --no-root          leave out the root directory's own entry (its metadata comes from the mount point
                     or from the extraction directory, not from the source, in most comparisons)
  --no-dir-mtime     leave out directory mtimes (for trees where extraction order changed them)
  --exclude-xattr N  ignore extended attributes named N (repeatable; e.g. security.selinux on hosts
                     with an LSM that labels every file)
"""

import argparse
import hashlib
import json
import os
import stat
import sys

CHUNK = 1 << 20


def escape(raw: bytes) -> str:
    """Reversible text form of a byte string: UTF-8 where valid, \\xNN for other bytes, \\\\ for '\\'."""
    out = []
    text = raw.decode('utf-8', 'surrogateescape')
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append('\\x%02x' % (code - 0xDC00))
        elif ch == '\\':
            out.append('\\\\')
        else:
            out.append(ch)
    return ''.join(out)


def file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, 'file'),
        (stat.S_ISDIR, 'dir'),
        (stat.S_ISLNK, 'symlink'),
        (stat.S_ISCHR, 'chardev'),
        (stat.S_ISBLK, 'blockdev'),
        (stat.S_ISFIFO, 'fifo'),
        (stat.S_ISSOCK, 'socket'),
    ):
        if test(mode):
            return name
    raise ValueError('unknown file type in mode %o' % mode)


def sha256_of(path: bytes) -> str:
    digest = hashlib.sha256()
    # O_NOFOLLOW: the entry was lstat'ed as a regular file; never read through a symlink swapped in.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def read_xattrs(path: bytes, excluded: set) -> dict:
    result = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as error:
        # Filesystems (or entry types) without xattr support have none to report.
        if error.errno in (getattr(os, 'ENOTSUP', 95), 95):
            return result
        raise
    for name in names:
        raw_name = os.fsencode(name)
        if raw_name.decode('utf-8', 'surrogateescape') in excluded:
            continue
        value = os.getxattr(path, name, follow_symlinks=False)
        result[escape(raw_name)] = value.hex()
    return dict(sorted(result.items()))


def describe(path: bytes, st: os.stat_result, options) -> dict:
    kind = file_type(st.st_mode)
    entry = {
        'type': kind,
        'mode': '%04o' % stat.S_IMODE(st.st_mode),
        'uid': st.st_uid,
        'gid': st.st_gid,
        'nlink': st.st_nlink,
    }
    if not (kind == 'dir' and options.no_dir_mtime):
        entry['mtime'] = str(st.st_mtime_ns)
    if kind == 'file':
        entry['size'] = st.st_size
        entry['sha256'] = sha256_of(path)
    elif kind == 'symlink':
        entry['target'] = escape(os.readlink(path))
    elif kind in ('chardev', 'blockdev'):
        entry['rdev'] = '%d:%d' % (os.major(st.st_rdev), os.minor(st.st_rdev))
    xattrs = read_xattrs(path, options.exclude_xattr)
    if xattrs:
        entry['xattrs'] = xattrs
    return entry


def snapshot(root: bytes, options) -> dict:
    entries = {}
    inodes = {}
    root_st = os.lstat(root)
    if not stat.S_ISDIR(root_st.st_mode):
        raise SystemExit('snapshot.py: %s is not a directory' % os.fsdecode(root))
    problems = []
    # Inode number 0 means "no inode" to userland: glibc's readdir skips dirents carrying it, so a
    # directory whose inode is 0 loses '.' and its children's '..' in every listing.
    if root_st.st_ino == 0:
        problems.append('.: inode number 0')
    if not options.no_root:
        entries['.'] = describe(root, root_st, options)
    # An explicit stack instead of os.walk: os.walk swallows errors and sorts nothing.
    stack = [b'']
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        for name in sorted(os.listdir(abs_dir)):
            rel = os.path.join(rel_dir, name) if rel_dir else name
            abs_path = os.path.join(root, rel)
            st = os.lstat(abs_path)
            entries[escape(rel)] = describe(abs_path, st, options)
            if st.st_ino == 0:
                problems.append('%s: inode number 0' % escape(rel))
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
            else:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(escape(rel))
    hardlinks = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return {'entries': dict(sorted(entries.items())), 'hardlinks': hardlinks, 'problems': problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root')
    parser.add_argument('--no-root', action='store_true')
    parser.add_argument('--no-dir-mtime', action='store_true')
    parser.add_argument('--exclude-xattr', action='append', default=[])
    options = parser.parse_args()
    options.exclude_xattr = set(options.exclude_xattr)
    result = snapshot(os.fsencode(options.root), options)
    json.dump(result, sys.stdout, indent=1, sort_keys=True, ensure_ascii=False)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
