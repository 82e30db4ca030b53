#!/usr/bin/env python3
"""Generate layer tarballs (and source trees) for the build integration tests.

Independent of the project's code: python3 standard library (tarfile writes the headers) plus the
`zstd` command for zstd layers. Everything is deterministic for a given --seed, so a failing test can
be reproduced with the same command line.

Usage:
  fixtures.py layers SET OUTDIR [--seed N] [--compression none|gzip|zstd|mixed]
      Writes OUTDIR/layer-0.tar[.gz|.zst], layer-1…, and prints {"layers": [PATH, ...]} on stdout.
      SET is one of: types, sizes, xattrs, names, numbers, bigdir, everything, whiteouts, overlay,
      demo.
  fixtures.py bad CASE OUTDIR [--seed N]
      Writes one or more layers that a build must reject; prints {"layers": [...]}. CASE is one of
      BAD_CASES below.
  fixtures.py bigfile OUT [--size BYTES] [--meta FILE]
      Streams a plain tar with one large file (mostly zeros, marker bytes at the start, around the
      4 GiB boundary and at the end) to OUT ("-" = stdout) without holding it in memory; writes
      {"path", "size", "sha256", "mode", "uid", "gid", "mtime"} to FILE when given.
  fixtures.py tree OUTDIR [--seed N]
      Creates a directory tree with every file type, including a socket (which tar cannot carry),
      for `dir:` sources.
"""

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import random
import socket
import stat
import subprocess
import sys
import tarfile
import urllib.parse

MTIME = 1700000000
BLOCK = 512

# A v2 file capability (struct vfs_cap_data, include/uapi/linux/capability.h): magic_etc =
# VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, then permitted/inheritable for words 0 and 1.
# Permitted: CAP_NET_BIND_SERVICE (bit 10) and CAP_NET_RAW (bit 13).
CAPABILITY_V2 = bytes.fromhex('01000002' '00240000' '00000000' '00000000' '00000000')


def as_str(name) -> str:
    """tarfile wants str; bytes that are not UTF-8 travel as surrogate escapes and come out raw."""
    if isinstance(name, bytes):
        return name.decode('utf-8', 'surrogateescape')
    return name


class Entry:
    """One tar member to write. `fmt` picks the header format for this member alone, so one archive
    can mix PAX, GNU and ustar members the way real layers built by different tools do."""

    def __init__(self, name, kind='file', data=b'', mode=None, uid=0, gid=0, mtime=MTIME, pax_mtime=None,
                 link='', dev=(0, 0), xattrs=None, lib_xattrs=None, raw_lib_xattrs=None, fmt='pax',
                 pax=None, uname='', gname=''):
        self.name = as_str(name)
        self.kind = kind
        self.data = data
        # Symlinks get 0777 as every Linux archiver writes: Linux has no lchmod, so other bits could
        # not be reproduced by an extracting oracle and would test nothing a user relies on.
        default_mode = {'dir': 0o755, 'symlink': 0o777}.get(kind, 0o644)
        self.mode = mode if mode is not None else default_mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.pax_mtime = pax_mtime
        self.link = as_str(link)
        self.dev = dev
        self.xattrs = xattrs or {}
        self.lib_xattrs = lib_xattrs or {}
        self.raw_lib_xattrs = raw_lib_xattrs or {}
        self.fmt = fmt
        self.pax = pax or {}
        self.uname = uname
        self.gname = gname

    def size(self) -> int:
        if self.kind != 'file':
            return 0
        return self.data[0] if isinstance(self.data, tuple) else len(self.data)

    def header(self) -> bytes:
        info = tarfile.TarInfo(self.name)
        info.type = {
            'file': tarfile.REGTYPE,
            'dir': tarfile.DIRTYPE,
            'symlink': tarfile.SYMTYPE,
            'hardlink': tarfile.LNKTYPE,
            'chardev': tarfile.CHRTYPE,
            'blockdev': tarfile.BLKTYPE,
            'fifo': tarfile.FIFOTYPE,
        }[self.kind]
        info.mode = self.mode
        info.uid = self.uid
        info.gid = self.gid
        info.uname = self.uname
        info.gname = self.gname
        info.mtime = self.mtime
        info.size = self.size()
        info.linkname = self.link
        info.devmajor, info.devminor = self.dev
        pax = dict(self.pax)
        if self.pax_mtime is not None:
            pax['mtime'] = self.pax_mtime
        for name, value in self.xattrs.items():
            pax['SCHILY.xattr.' + name] = value.decode('utf-8', 'surrogateescape')
        for name, value in self.lib_xattrs.items():
            # libarchive's form: URL-encoded name, unpadded base64 value (archive_write_set_format_pax.c).
            key = 'LIBARCHIVE.xattr.' + urllib.parse.quote(name, safe='')
            pax[key] = base64.b64encode(value).decode('ascii').rstrip('=')
        for key, value in self.raw_lib_xattrs.items():
            pax['LIBARCHIVE.xattr.' + key] = value
        if pax and self.fmt != 'pax':
            raise ValueError('%s: PAX records need the pax format' % self.name)
        info.pax_headers = pax
        fmt = {'pax': tarfile.PAX_FORMAT, 'gnu': tarfile.GNU_FORMAT, 'ustar': tarfile.USTAR_FORMAT}[self.fmt]
        return info.tobuf(fmt, 'utf-8', 'surrogateescape')

    def chunks(self):
        if self.kind != 'file':
            return
        if isinstance(self.data, tuple):
            yield from self.data[1]()
        else:
            yield self.data


class Global:
    """A PAX global extended header ('g')."""

    def __init__(self, records):
        self.records = records

    def header(self) -> bytes:
        return tarfile.TarInfo.create_pax_global_header(self.records)

    def size(self) -> int:
        return 0

    def chunks(self):
        return iter(())


def write_tar(records, out) -> None:
    """Write records as a tar stream to the binary file object `out`, streaming file data."""
    for record in records:
        out.write(record.header())
        written = 0
        for chunk in record.chunks():
            out.write(chunk)
            written += len(chunk)
        if written != record.size():
            raise ValueError('data of %r is %d bytes, header says %d' % (record.name, written, record.size()))
        if written % BLOCK:
            out.write(bytes(BLOCK - written % BLOCK))
    out.write(bytes(2 * BLOCK))


def compress(raw: bytes, compression: str) -> bytes:
    if compression == 'none':
        return raw
    if compression == 'gzip':
        buffer = io.BytesIO()
        # mtime=0 and no file name: byte-identical output for identical input.
        with gzip.GzipFile(fileobj=buffer, mode='wb', mtime=0, filename='') as gz:
            gz.write(raw)
        return buffer.getvalue()
    if compression == 'zstd':
        return subprocess.run(['zstd', '-q', '-c', '-3', '--check'], input=raw, stdout=subprocess.PIPE,
                              check=True).stdout
    raise ValueError('unknown compression %s' % compression)


SUFFIX = {'none': '.tar', 'gzip': '.tar.gz', 'zstd': '.tar.zst'}


def write_layers(layers, outdir, compression) -> list:
    os.makedirs(outdir, exist_ok=True)
    paths = []
    cycle = ['gzip', 'zstd', 'none']
    for index, records in enumerate(layers):
        kind = cycle[index % len(cycle)] if compression == 'mixed' else compression
        buffer = io.BytesIO()
        write_tar(records, buffer)
        path = os.path.join(outdir, 'layer-%d%s' % (index, SUFFIX[kind]))
        with open(path, 'wb') as f:
            f.write(compress(buffer.getvalue(), kind))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------
# Layer sets. Each returns a list of layers; a layer is a list of Entry/Global records.


def set_types(rnd: random.Random):
    """Every entry type tar can carry, special mode bits and owners."""
    return [[
        Entry('dir', 'dir'),
        Entry('dir/sub', 'dir', mode=0o700, uid=1000, gid=1000),
        Entry('dir/sticky', 'dir', mode=0o1777),
        Entry('dir/setgid', 'dir', mode=0o2775, gid=50),
        Entry('dir/empty-dir', 'dir', mode=0o555),
        Entry('dir/empty-file', 'file', b''),
        Entry('dir/small', 'file', b'hello, erofs\n', mode=0o640, uid=33, gid=33),
        Entry('dir/random', 'file', rnd.randbytes(10000)),
        Entry('dir/setuid', 'file', b'#!/bin/sh\n', mode=0o4755),
        Entry('dir/setgid-file', 'file', b'#!/bin/sh\n', mode=0o2711),
        Entry('dir/sticky-file', 'file', b'x', mode=0o1644),
        Entry('dir/all-bits', 'file', b'y', mode=0o7777),
        Entry('dir/no-bits', 'file', b'z', mode=0o000),
        Entry('dir/sub/deep', 'file', b'deep\n', uid=1000, gid=1000),
        Entry('dir/symlink-rel', 'symlink', link='small'),
        Entry('dir/symlink-abs', 'symlink', link='/etc/passwd'),
        Entry('dir/symlink-dangling', 'symlink', link='../does/not/exist'),
        Entry('dir/symlink-dir', 'symlink', link='sub', uid=7, gid=8),
        Entry('dir/symlink-long', 'symlink', link='t/' * 500 + 'end'),
        Entry('dir/symlink-max', 'symlink', link='m' * 4095),
        # Three names for one inode (nlink 3), across directories.
        Entry('dir/hardlink-a', 'file', b'shared content\n', mode=0o600, uid=5, gid=6),
        Entry('dir/hardlink-b', 'hardlink', link='dir/hardlink-a'),
        Entry('dir/sub/hardlink-c', 'hardlink', link='dir/hardlink-a'),
        Entry('dir/hardlink-empty', 'file', b''),
        Entry('dir/hardlink-empty2', 'hardlink', link='dir/hardlink-empty'),
        Entry('dir/fifo', 'fifo', mode=0o620, uid=2, gid=3),
        Entry('dir/hardlink-fifo', 'hardlink', link='dir/fifo'),
        Entry('dir/hardlink-symlink', 'hardlink', link='dir/symlink-rel'),
        Entry('dev', 'dir'),
        Entry('dev/null', 'chardev', mode=0o666, dev=(1, 3)),
        Entry('dev/tty0', 'chardev', mode=0o620, gid=5, dev=(4, 0)),
        Entry('dev/big-minor', 'chardev', dev=(4095, 1048575)),
        Entry('dev/sda', 'blockdev', mode=0o660, gid=6, dev=(8, 0)),
        Entry('dev/nvme', 'blockdev', mode=0o600, dev=(259, 70000)),
        Entry('dev/zero-zero', 'blockdev', dev=(0, 0)),
        Entry('owners', 'dir'),
        Entry('owners/u65535', 'file', b'a', uid=65535, gid=65535),
        Entry('owners/u65536', 'file', b'b', uid=65536, gid=65537),
        Entry('owners/u100000', 'file', b'c', uid=100000, gid=200000),
        Entry('owners/u-max', 'file', b'd', uid=4294967294, gid=4294967293),
        Entry('owners/dir-owned', 'dir', uid=123456, gid=654321),
        Entry('owners/fifo-owned', 'fifo', uid=70000, gid=80000),
        Entry('owners/symlink-owned', 'symlink', link='u65535', uid=90000, gid=90001),
        Entry('top-file', 'file', rnd.randbytes(4097), mode=0o755),
    ]]


SIZES = sorted({
    0, 1, 2, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 4031, 4032, 4033, 4063, 4064, 4065, 4095,
    4096, 4097, 8127, 8128, 8159, 8160, 8161, 8191, 8192, 8193, 12287, 12288, 12289, 16383, 16384, 16385,
    65535, 65536, 65537, 448, 449, 480, 481, (1 << 20) - 1, 1 << 20, (1 << 20) + 3,
})


def set_sizes(rnd: random.Random):
    """Sizes around 512- and 4096-byte block multiples and around the room left after compact (32 B)
    and extended (64 B) inodes, so both tail packing and the plain layout are hit for both block sizes."""
    entries = [Entry('sizes', 'dir')]
    for size in SIZES:
        entries.append(Entry('sizes/random-%07d' % size, 'file', rnd.randbytes(size)))
    for size in (4096, 8192 + 7, 65536):
        entries.append(Entry('sizes/zeros-%07d' % size, 'file', bytes(size)))
    # Same sizes with an xattr (bigger inode, less room for an inline tail) and an old mtime (forces
    # the extended inode in writers that use compact inodes only for the build time).
    for size in (4000, 4031, 4032, 4033, 4063, 4064, 4065, 4095, 4097, 449, 481):
        entries.append(Entry('sizes/xattr-%07d' % size, 'file', rnd.randbytes(size),
                             xattrs={'user.pad': b'p' * 40}, mtime=12345))
    return [entries]


def set_xattrs(rnd: random.Random):
    """Extended attributes: PAX SCHILY.xattr.* and LIBARCHIVE.xattr.*, every namespace, binary values."""
    many = {'user.many.%02d' % i: rnd.randbytes(64) for i in range(30)}
    entries = [
        Entry('x', 'dir', xattrs={'user.dir': b'1', 'trusted.dir': b'td'}),
        Entry('x/plain', 'file', b'data', xattrs={
            'user.foo': b'bar',
            'user.empty': b'',
            'user.binary': b'\x00\x01\xff\xfe\x00',
            'trusted.t': b'trusted value',
            'security.capability': CAPABILITY_V2,
            'security.selinux': b'system_u:object_r:bin_t:s0\x00',
        }),
        Entry('x/cap-setuid', 'file', b'#!/bin/true\n', mode=0o4755, xattrs={'security.capability': CAPABILITY_V2}),
        Entry('x/many', 'file', b'many', xattrs=many),
        Entry('x/long-value', 'file', b'', xattrs={'user.long': rnd.randbytes(1500)}),
        Entry('x/long-name', 'file', b'', xattrs={'user.' + 'n' * 200: b'v'}),
        Entry('x/symlink', 'symlink', link='plain', xattrs={'trusted.sym': b'on a symlink'}),
        Entry('x/fifo', 'fifo', xattrs={'trusted.fifo': b'on a fifo'}),
        Entry('x/dev', 'chardev', dev=(1, 5), xattrs={'trusted.dev': b'on a device'}),
        Entry('x/empty-dir', 'dir', mode=0o711, xattrs={'user.only': b'dir'}),
        Entry('x/libarchive', 'file', b'lib', lib_xattrs={
            'user.lib': b'libarchive value',  # 16 bytes: unpadded base64 drops one '='
            'user.a=b': b'\x00\xff',  # '=' in the name only survives URL-encoding
            'user.three': b'abc',  # a multiple of 3: no padding question
            'trusted.lib': b'T',
        }),
        # Standard (padded) base64 as some writers produce; libarchive's reader accepts it.
        Entry('x/libarchive-padded', 'file', b'lib2', raw_lib_xattrs={'user.padded': 'YWI='}),
        # The same attribute on both carriers, as bsdtar writes it.
        Entry('x/both', 'file', b'both', xattrs={'user.both': b'same'}, lib_xattrs={'user.both': b'same'}),
        Entry('x/hardlink', 'hardlink', link='x/plain'),
    ]
    # One attribute on many files: writers may share it (EROFS shared xattrs).
    for i in range(12):
        entries.append(Entry('x/shared-%02d' % i, 'file', b'%d' % i,
                             xattrs={'user.shared': b'same value everywhere', 'user.own': b'%d' % i}))
    return [entries]


NON_UTF8 = b'latin1-\xe9t\xe9'


def set_names(rnd: random.Random):
    """Long names in every encoding tar has, names that are not UTF-8, odd characters, a root entry,
    './' prefixes and a global PAX header."""
    long_dir = 'long-' + 'd' * 250  # 255 bytes
    name255 = 'n' * 255
    pax_path = '/'.join(['p' * 60] * 6)  # 365 bytes, components < 255
    gnu_path = '/'.join(['g' * 80] * 5)
    ustar_path = 'u' * 100 + '/' + 'v' * 90  # fits prefix (155) + name (100)
    entries = [
        Global({'comment': 'generated by fixtures.py; a global header must not become a file'}),
        # The root itself: its metadata must reach the image's root inode.
        Entry('./', 'dir', mode=0o750, uid=0, gid=0, pax_mtime='1600000000.25'),
        Entry('./dot-prefixed', 'file', b'dot\n'),
        Entry('names', 'dir'),
        Entry('names/' + name255, 'file', b'255-byte name'),
        Entry('names/' + long_dir, 'dir'),
        Entry('names/' + long_dir + '/' + name255, 'file', b'two long components'),
        Entry('names/' + pax_path.split('/')[0], 'dir'),
        Entry('names/' + '/'.join(pax_path.split('/')[:2]), 'dir'),
        Entry('names/' + '/'.join(pax_path.split('/')[:3]), 'dir'),
        Entry('names/' + '/'.join(pax_path.split('/')[:4]), 'dir'),
        Entry('names/' + '/'.join(pax_path.split('/')[:5]), 'dir'),
        Entry('names/' + pax_path, 'file', b'pax path'),
        Entry('names/pax-longlink', 'hardlink', link='names/' + pax_path),
        Entry('names/pax-longsymlink', 'symlink', link='names/' + pax_path),
        Entry('names/' + '/'.join(gnu_path.split('/')[:1]), 'dir', fmt='gnu'),
        Entry('names/' + '/'.join(gnu_path.split('/')[:2]), 'dir', fmt='gnu'),
        Entry('names/' + '/'.join(gnu_path.split('/')[:3]), 'dir', fmt='gnu'),
        Entry('names/' + '/'.join(gnu_path.split('/')[:4]), 'dir', fmt='gnu'),
        Entry('names/' + gnu_path, 'file', b'gnu L', fmt='gnu'),
        Entry('names/gnu-longlink', 'hardlink', link='names/' + gnu_path, fmt='gnu'),
        Entry('names/gnu-longsymlink', 'symlink', link='names/' + gnu_path, fmt='gnu'),
        Entry('names/' + ustar_path.split('/')[0], 'dir', fmt='ustar'),
        Entry('names/' + ustar_path, 'file', b'ustar prefix', fmt='ustar'),
        # Names that are not UTF-8, in the three header forms (PAX uses hdrcharset=BINARY).
        Entry(b'names/pax-' + NON_UTF8, 'file', b'pax latin1'),
        Entry(b'names/gnu-' + NON_UTF8, 'file', b'gnu latin1', fmt='gnu'),
        Entry(b'names/ustar-' + NON_UTF8, 'file', b'ustar latin1', fmt='ustar'),
        Entry(b'names/gnu-long-' + NON_UTF8 * 20, 'file', b'gnu long latin1', fmt='gnu'),
        Entry(b'names/symlink-' + NON_UTF8, 'symlink', link=b'target-' + NON_UTF8 + b'\xff'),
        Entry('names/utf8-ünïcödé-日本語-🙂', 'file', b'utf-8'),
        Entry('names/with space', 'file', b''),
        Entry('names/new\nline', 'file', b''),
        Entry('names/tab\there', 'file', b''),
        Entry('names/back\\slash', 'file', b''),
        Entry('names/quote"\'', 'file', b''),
        Entry('names/*star?[x]', 'file', b''),
        Entry('names/-dash', 'file', b''),
        Entry('names/..dots', 'file', b''),
        Entry('names/...', 'file', b''),
        Entry('names/ustar-dir-no-slash', 'dir', fmt='ustar'),
    ]
    return [entries]


def set_numbers(rnd: random.Random):
    """Numeric fields: GNU base-256, PAX overrides, mtimes with and without nanoseconds."""
    return [[
        Entry('num', 'dir'),
        # GNU base-256: values that do not fit the octal fields.
        Entry('num/base256-ids', 'file', b'b256', uid=3000000, gid=4000000, fmt='gnu'),
        Entry('num/base256-mtime', 'file', b'far future', mtime=9000000000, fmt='gnu'),
        Entry('num/octal-max-mtime', 'file', b'', mtime=8 ** 11 - 1, fmt='ustar'),
        Entry('num/past-2106', 'file', b'', mtime=(1 << 32) + 5),
        # PAX records override the header fields.
        Entry('num/pax-ids', 'file', b'', uid=5000000, gid=6000000),
        Entry('num/pax-ns', 'file', b'ns', pax_mtime='1700000000.123456789'),
        Entry('num/pax-ns-short', 'file', b'', pax_mtime='1700000000.5'),
        Entry('num/pax-ns-one', 'file', b'', pax_mtime='1700000000.000000001'),
        Entry('num/pax-ns-max', 'file', b'', pax_mtime='1700000000.999999999'),
        Entry('num/pax-int', 'file', b'', pax_mtime='1700000001'),
        Entry('num/pax-zero-frac', 'file', b'', pax_mtime='1700000002.000000000'),
        Entry('num/mtime-zero', 'file', b'', mtime=0),
        Entry('num/mtime-one', 'file', b'', mtime=1),
        Entry('num/ns-dir', 'dir', pax_mtime='1500000000.987654321'),
        Entry('num/ns-dir/ns-symlink', 'symlink', link='x', pax_mtime='1400000000.111111111'),
        Entry('num/ns-fifo', 'fifo', pax_mtime='1300000000.222222222'),
        Entry('num/ns-dev', 'chardev', dev=(10, 200), pax_mtime='1200000000.333333333'),
        Entry('num/pax-size', 'file', b'0123456789', pax={'size': '10'}),
    ]]


def set_bigdir(rnd: random.Random):
    """A directory with thousands of entries (spans many directory blocks) and names up to 255 bytes."""
    entries = [Entry('big', 'dir', mode=0o755)]
    for i in range(3000):
        name = 'big/%05d-' % i + 'x' * rnd.randrange(0, 250)
        pick = rnd.random()
        if pick < 0.8:
            entries.append(Entry(name, 'file', b''))
        elif pick < 0.9:
            entries.append(Entry(name, 'file', rnd.randbytes(rnd.randrange(1, 300))))
        elif pick < 0.95:
            entries.append(Entry(name, 'symlink', link='%05d' % rnd.randrange(3000)))
        else:
            entries.append(Entry(name, 'dir'))
    return [entries]


def set_everything(rnd: random.Random):
    """types + sizes + xattrs + names + numbers + bigdir in one layer."""
    records = []
    for generate in (set_names, set_types, set_sizes, set_xattrs, set_numbers, set_bigdir):
        records.extend(generate(rnd)[0])
    # A global header must stay first; move any to the front.
    records.sort(key=lambda record: not isinstance(record, Global))
    return [records]


def set_whiteouts(rnd: random.Random):
    """Three layers exercising whiteouts, opaque directories, replacement and hardlinks across layers."""
    layer0 = [
        Entry('etc', 'dir'),
        Entry('etc/passwd', 'file', b'root:x:0:0\n'),
        Entry('etc/conf.d', 'dir'),
        Entry('etc/conf.d/a.conf', 'file', b'a'),
        Entry('etc/conf.d/b.conf', 'file', b'b'),
        Entry('usr', 'dir'),
        Entry('usr/bin', 'dir'),
        Entry('usr/bin/tool', 'file', rnd.randbytes(4097), mode=0o755),
        Entry('usr/bin/tool2', 'hardlink', link='usr/bin/tool'),
        Entry('var', 'dir'),
        Entry('var/lib', 'dir'),
        Entry('var/lib/state', 'file', b'state'),
        Entry('opq', 'dir', mode=0o750),
        Entry('opq/old1', 'file', b'old1'),
        Entry('opq/sub', 'dir'),
        Entry('opq/sub/old2', 'file', b'old2'),
        Entry('opq/replaced', 'file', b'lower version'),
        Entry('delete', 'dir'),
        Entry('delete/a', 'file', b'a'),
        Entry('delete/b', 'file', b'b'),
        Entry('delete/subdir', 'dir'),
        Entry('delete/subdir/nested', 'dir'),
        Entry('delete/subdir/nested/file', 'file', b'nested'),
        Entry('swap', 'dir'),
        Entry('swap/file-to-dir', 'file', b'was a file'),
        Entry('swap/dir-to-file', 'dir'),
        Entry('swap/dir-to-file/child', 'file', b'child'),
        Entry('swap/file-to-symlink', 'file', b'f'),
        Entry('swap/symlink-to-file', 'symlink', link='somewhere'),
        Entry('swap/fifo-to-dev', 'fifo'),
        Entry('xattr-dir', 'dir', mode=0o755, xattrs={'user.lower': b'1', 'user.kept-name': b'lower'}),
        Entry('xattr-dir/child', 'file', b'c'),
        Entry('base', 'dir'),
        Entry('base/target', 'file', b'hardlink target from layer 0\n', mode=0o640, uid=11, gid=12),
        Entry('wh-same', 'dir'),
        Entry('wh-same/x', 'file', b'lower x'),
        Entry('dirmeta', 'dir', mode=0o700, uid=1, gid=1, pax_mtime='1000000000.5'),
        Entry('dirmeta/keep', 'file', b'k'),
    ]
    layer1 = [
        Entry('etc', 'dir'),
        Entry('etc/.wh.passwd', 'file', b''),
        Entry('etc/conf.d/.wh.a.conf', 'file', b''),
        Entry('delete', 'dir', mtime=MTIME + 10),
        Entry('delete/.wh.subdir', 'file', b''),
        Entry('delete/.wh.does-not-exist', 'file', b''),
        Entry('opq', 'dir', mode=0o755, mtime=MTIME + 20),
        Entry('opq/.wh..wh..opq', 'file', b''),
        Entry('opq/new', 'file', b'new in layer 1'),
        Entry('opq/sub', 'dir'),
        Entry('opq/sub/new2', 'file', b'new2'),
        Entry('opq/replaced', 'file', b'upper version'),
        Entry('swap/file-to-dir', 'dir', mode=0o711),
        Entry('swap/file-to-dir/inner', 'file', b'inner'),
        Entry('swap/dir-to-file', 'file', b'now a file'),
        Entry('swap/file-to-symlink', 'symlink', link='file-to-dir'),
        Entry('swap/symlink-to-file', 'file', b'now a file too'),
        Entry('swap/fifo-to-dev', 'chardev', dev=(1, 7)),
        Entry('usr/bin/tool', 'file', b'replaced tool\n', mode=0o755),
        Entry('base/link', 'hardlink', link='base/target'),
        # No entries for new/, new/deep, …: the writer must create the parents.
        Entry('new/deep/missing/parents/file', 'file', b'parents were missing'),
        Entry('xattr-dir', 'dir', mode=0o705, mtime=MTIME + 30,
              xattrs={'user.upper': b'2', 'user.kept-name': b'upper'}),
        # A whiteout applies to lower layers only: the same layer's x stays.
        Entry('wh-same/.wh.x', 'file', b''),
        Entry('wh-same/x', 'file', b'upper x'),
        # Children added without redefining the directory keep its layer-0 metadata.
        Entry('dirmeta/added', 'file', b'added'),
    ]
    layer2 = [
        Entry('etc/passwd', 'file', b'root:x:0:0:re-added\n'),
        Entry('base/.wh.target', 'file', b''),
        Entry('.wh.var', 'file', b''),
        Entry('opq/.wh.new', 'file', b''),
        Entry('new/deep', 'dir', mode=0o700, mtime=MTIME + 40),
        Entry('new/deep/missing/parents/file2', 'hardlink', link='new/deep/missing/parents/file'),
        Entry('swap/.wh.dir-to-file', 'file', b''),
        Entry('swap/dir-to-file', 'dir'),
        Entry('top-new', 'file', b'top'),
    ]
    return [layer0, layer1, layer2]


def set_overlay(rnd: random.Random):
    """One layer with whiteouts, for the single-layer (overlayfs) form and --strip-whiteouts. Every
    whiteout sits in a directory the layer defines, so the stripped form has no question about
    directories that exist only because of a whiteout."""
    return [[
        Entry('a', 'dir'),
        Entry('a/.wh.gone', 'file', b'', mode=0o600, uid=10, gid=20, pax_mtime='1650000000.75'),
        Entry('a/.wh.gone-dir', 'file', b''),
        Entry('a/kept', 'file', b'kept'),
        Entry('b', 'dir', mode=0o750, xattrs={'user.b': b'b'}),
        Entry('b/.wh..wh..opq', 'file', b''),
        Entry('b/own', 'file', b'own entry of the opaque directory'),
        Entry('b/sub', 'dir'),
        Entry('b/sub/.wh.deeper', 'file', b''),
        Entry('c', 'dir'),
        Entry('c/.wh..wh..opq', 'file', b''),
        Entry('.wh.top', 'file', b''),
        Entry('plain', 'file', b'plain'),
    ]]


def set_lowerlinks(rnd: random.Random):
    """Layers whose hardlinks point into the layers below them, as container builds make them: a plain
    file (with xattrs and odd owner), a lower hardlink group, a target replaced in a middle layer, a
    symlink, an empty file, a target the top layer removes, and a link inside one layer for contrast."""
    layer0 = [
        Entry('data', 'dir'),
        Entry('data/orig', 'file', rnd.randbytes(10000), mode=0o640, uid=5, gid=6, xattrs={'user.x': b'lower'}),
        Entry('data/chain-a', 'file', b'chain content\n', mode=0o600),
        Entry('data/chain-b', 'hardlink', link='data/chain-a'),
        Entry('data/replaced', 'file', b'version 0\n'),
        Entry('data/sym', 'symlink', link='orig'),
        Entry('data/empty', 'file', b''),
        Entry('data/doomed', 'file', b'removed by the top layer\n'),
    ]
    layer1 = [
        Entry('data/replaced', 'file', b'version 1 from the middle layer\n', mode=0o751),
        Entry('other', 'dir'),
        Entry('other/mid', 'file', rnd.randbytes(5000)),
    ]
    layer2 = [
        Entry('data/link', 'hardlink', link='data/orig'),
        Entry('data/link2', 'hardlink', link='data/orig'),
        Entry('elsewhere', 'dir'),
        Entry('elsewhere/c', 'hardlink', link='data/chain-b'),
        Entry('elsewhere/a', 'hardlink', link='data/chain-a'),
        Entry('data/r', 'hardlink', link='data/replaced'),
        Entry('data/sym-link', 'hardlink', link='data/sym'),
        Entry('data/empty-link', 'hardlink', link='data/empty'),
        Entry('data/m', 'hardlink', link='other/mid'),
        Entry('data/doomed-link', 'hardlink', link='data/doomed'),
        Entry('data/own', 'file', b'own file of the top layer\n'),
        Entry('data/own-link', 'hardlink', link='data/own'),
    ]
    layer3 = [
        Entry('data', 'dir'),
        Entry('data/.wh.doomed', 'file', b''),
    ]
    return [layer0, layer1, layer2, layer3]


def set_demo(rnd: random.Random):
    """A small two-layer image for the README demo: a base layer and an update that deletes a file."""
    base = [
        Entry('etc', 'dir'),
        Entry('etc/os-release', 'file', b'NAME="erofs-oci demo"\nVERSION_ID=1\n'),
        Entry('etc/motd', 'file', b'This file is deleted by the second layer.\n'),
        Entry('usr', 'dir'),
        Entry('usr/bin', 'dir'),
        Entry('usr/bin/hello', 'file', b'#!/bin/sh\necho "hello from an EROFS image"\n', mode=0o755),
        Entry('usr/bin/hi', 'hardlink', link='usr/bin/hello'),
        Entry('usr/bin/ping', 'file', b'#!/bin/sh\n', mode=0o755,
              xattrs={'security.capability': CAPABILITY_V2}),
        Entry('usr/share', 'dir'),
        Entry('usr/share/data.bin', 'file', rnd.randbytes(100000)),
        Entry('dev', 'dir'),
        Entry('dev/null', 'chardev', mode=0o666, dev=(1, 3)),
        Entry('tmp', 'dir', mode=0o1777),
    ]
    update = [
        Entry('etc/.wh.motd', 'file', b''),
        Entry('etc/os-release', 'file', b'NAME="erofs-oci demo"\nVERSION_ID=2\n',
              pax_mtime='1700000100.123456789'),
        Entry('bin', 'symlink', link='usr/bin'),
    ]
    return [base, update]


SETS = {
    'demo': set_demo,
    'types': set_types,
    'sizes': set_sizes,
    'xattrs': set_xattrs,
    'names': set_names,
    'numbers': set_numbers,
    'bigdir': set_bigdir,
    'everything': set_everything,
    'whiteouts': set_whiteouts,
    'overlay': set_overlay,
    'lowerlinks': set_lowerlinks,
}


# ---------------------------------------------------------------------------------------------------
# Bad input: each case writes layers that a build must reject.


def tar_bytes(records) -> bytes:
    buffer = io.BytesIO()
    write_tar(records, buffer)
    return buffer.getvalue()


def good_records(rnd):
    return set_types(rnd)[0]


def bad_truncated_gzip(rnd):
    data = compress(tar_bytes(good_records(rnd)), 'gzip')
    return [('layer.tar.gz', data[: len(data) * 6 // 10])]


def bad_gzip_crc(rnd):
    data = bytearray(compress(tar_bytes(good_records(rnd)), 'gzip'))
    data[-8] ^= 0xFF  # first byte of the CRC32 trailer (RFC 1952 section 2.3)
    return [('layer.tar.gz', bytes(data))]


def bad_corrupt_zstd(rnd):
    data = bytearray(compress(tar_bytes(good_records(rnd)), 'zstd'))
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0x5A
    return [('layer.tar.zst', bytes(data))]


def bad_truncated_zstd(rnd):
    data = compress(tar_bytes(good_records(rnd)), 'zstd')
    return [('layer.tar.zst', data[: len(data) // 2])]


def bad_checksum(rnd):
    data = bytearray(tar_bytes([Entry('ok', 'file', b'ok'), Entry('bad', 'file', b'bad')]))
    data[BLOCK * 2] ^= 0x01  # first byte of the second header's name; checksum left as it was
    return [('layer.tar', bytes(data))]


def bad_size_past_end(rnd):
    records = [Entry('ok', 'file', b'ok'), Entry('huge', 'file', rnd.randbytes(100000))]
    data = tar_bytes(records)
    return [('layer.tar', data[: 3 * BLOCK + 1000])]


def bad_truncated_header(rnd):
    data = tar_bytes([Entry('ok', 'file', b'ok'), Entry('next', 'file', b'next')])
    return [('layer.tar', data[: 2 * BLOCK + 300])]


def bad_dotdot(rnd):
    return [('layer.tar', tar_bytes([Entry('ok', 'file', b'ok'), Entry('../escape', 'file', b'out')]))]


def bad_dotdot_nested(rnd):
    return [('layer.tar', tar_bytes([Entry('a', 'dir'), Entry('a/../../escape', 'file', b'out')]))]


def bad_dotdot_hardlink(rnd):
    return [('layer.tar', tar_bytes([Entry('a', 'file', b'a'), Entry('b', 'hardlink', link='../a')]))]


def bad_hardlink_missing(rnd):
    return [('layer.tar', tar_bytes([Entry('a', 'file', b'a'), Entry('b', 'hardlink', link='missing')]))]


def bad_hardlink_missing_stacked(rnd):
    """The target is in no layer at all: corrupt whatever the stacking."""
    lower = tar_bytes([Entry('a', 'file', b'a')])
    upper = tar_bytes([Entry('b', 'hardlink', link='missing')])
    return [('layer-0.tar', lower), ('layer-1.tar', upper)]


def bad_hardlink_dir(rnd):
    return [('layer.tar', tar_bytes([Entry('d', 'dir'), Entry('h', 'hardlink', link='d')]))]


def bad_name_too_long(rnd):
    return [('layer.tar', tar_bytes([Entry('ok', 'dir'), Entry('ok/' + 'n' * 256, 'file', b'256-byte name')]))]


def bad_second_layer(rnd):
    """A good first layer and a corrupt second one: nothing may be written."""
    good = compress(tar_bytes(good_records(rnd)), 'gzip')
    bad = compress(tar_bytes(good_records(rnd)), 'gzip')
    return [('layer-0.tar.gz', good), ('layer-1.tar.gz', bad[: len(bad) - 100])]


BAD_CASES = {
    'truncated-gzip': bad_truncated_gzip,
    'gzip-crc': bad_gzip_crc,
    'corrupt-zstd': bad_corrupt_zstd,
    'truncated-zstd': bad_truncated_zstd,
    'bad-checksum': bad_checksum,
    'size-past-end': bad_size_past_end,
    'truncated-header': bad_truncated_header,
    'dotdot': bad_dotdot,
    'dotdot-nested': bad_dotdot_nested,
    'dotdot-hardlink': bad_dotdot_hardlink,
    'hardlink-missing': bad_hardlink_missing,
    'hardlink-missing-stacked': bad_hardlink_missing_stacked,
    'hardlink-dir': bad_hardlink_dir,
    'name-too-long': bad_name_too_long,
    'second-layer': bad_second_layer,
}


# ---------------------------------------------------------------------------------------------------
# A large file, streamed.

BIG_MARKERS = 4096


def big_chunks(size: int):
    """Mostly zeros; distinct marker bytes at the start, straddling 4 GiB and at the end, so that a
    writer truncating offsets to 32 bits or dropping the tail produces a different hash."""
    markers = {}
    for offset in (0, (1 << 32) - BIG_MARKERS // 2, size - BIG_MARKERS):
        if 0 <= offset < size:
            markers[offset] = hashlib.sha256(b'marker %d' % offset).digest() * (BIG_MARKERS // 32)
    zeros = bytes(1 << 20)
    position = 0
    for offset in sorted(markers):
        while position < offset:
            step = min(len(zeros), offset - position)
            yield zeros[:step]
            position += step
        # Markers may overlap when the size is close to 4 GiB: the earlier one wins where they do.
        chunk = markers[offset][position - offset: size - offset]
        yield chunk
        position += len(chunk)
    while position < size:
        step = min(len(zeros), size - position)
        yield zeros[:step]
        position += step


def cmd_bigfile(args):
    size = args.size
    meta = {'path': 'big/file', 'size': size, 'mode': '0644', 'uid': 1234, 'gid': 5678,
            'mtime': str(MTIME * 10 ** 9 + 123456789)}
    digest = hashlib.sha256()

    def hashed():
        for chunk in big_chunks(size):
            digest.update(chunk)
            yield chunk

    records = [
        Entry('big', 'dir'),
        Entry('big/file', 'file', (size, hashed), uid=1234, gid=5678, pax_mtime='%d.123456789' % MTIME),
        Entry('big/after', 'file', b'an entry after the large one\n'),
    ]
    out = sys.stdout.buffer if args.out == '-' else open(args.out, 'wb')
    try:
        write_tar(records, out)
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    meta['sha256'] = digest.hexdigest()
    if args.meta:
        with open(args.meta, 'w') as f:
            json.dump(meta, f)


# ---------------------------------------------------------------------------------------------------
# A directory tree for dir: sources.


def cmd_tree(args):
    rnd = random.Random(args.seed)
    root = args.outdir
    os.makedirs(root, exist_ok=True)
    j = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    os.mkdir(j('d'))
    os.mkdir(j('d', 'sub'), 0o700)
    for size in (0, 1, 4095, 4096, 4097, 100000):
        with open(j('d', 'file-%d' % size), 'wb') as f:
            f.write(rnd.randbytes(size))
    with open(j('d', 'setuid'), 'wb') as f:
        f.write(b'#!/bin/sh\n')
    os.chmod(j('d', 'setuid'), 0o4755)
    os.mkdir(j('d', 'sticky'))
    os.chmod(j('d', 'sticky'), 0o1777)
    os.symlink('file-1', j('d', 'symlink'))
    os.symlink('/nowhere/' + 'z' * 300, j('d', 'symlink-long'))
    os.link(j('d', 'file-1'), j('d', 'hardlink'))
    os.link(j('d', 'file-1'), j('d', 'sub', 'hardlink2'))
    os.mknod(j('d', 'chardev'), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(j('d', 'blockdev'), stat.S_IFBLK | 0o640, os.makedev(259, 70000))
    os.mkfifo(j('d', 'fifo'), 0o644)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(j('d', 'socket'))
    finally:
        sock.close()
    os.chmod(j('d', 'socket'), 0o755)
    os.lchown(j('d', 'socket'), 4000, 4001)
    with open(j('d', 'xattrs'), 'wb') as f:
        f.write(b'x')
    os.setxattr(j('d', 'xattrs'), 'user.a', b'1')
    os.setxattr(j('d', 'xattrs'), 'trusted.b', b'\x00\x01')
    os.setxattr(j('d', 'xattrs'), 'security.capability', CAPABILITY_V2)
    os.setxattr(j('d'), 'user.dir', b'dir')
    os.setxattr(j('d', 'symlink'), 'trusted.sym', b's', follow_symlinks=False)
    with open(os.path.join(os.fsencode(root), b'd', NON_UTF8), 'wb') as f:
        f.write(b'latin1 name')
    with open(j('d', 'owned'), 'wb') as f:
        f.write(b'o')
    os.chown(j('d', 'owned'), 100000, 200000)
    os.mkdir(j('d', 'big'))
    for i in range(1500):
        with open(j('d', 'big', '%04d-' % i + 'y' * rnd.randrange(0, 250)), 'wb'):
            pass
    # Times last, deepest first: creating entries changes their directory's mtime.
    paths = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            paths.append(os.path.join(dirpath, name))
    paths.sort(key=lambda p: -p.count(b'/'))
    for index, path in enumerate(paths):
        ns = (MTIME + index) * 10 ** 9 + rnd.randrange(10 ** 9)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(MTIME * 10 ** 9 + 1, MTIME * 10 ** 9 + 1))


def main():
    parser = argparse.ArgumentParser(description='Generate test fixtures for erofs-oci.')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('layers')
    p.add_argument('set', choices=sorted(SETS))
    p.add_argument('outdir')
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--compression', choices=['none', 'gzip', 'zstd', 'mixed'], default='none')
    p = sub.add_parser('bad')
    p.add_argument('case', choices=sorted(BAD_CASES))
    p.add_argument('outdir')
    p.add_argument('--seed', type=int, default=1)
    p = sub.add_parser('bigfile')
    p.add_argument('out')
    p.add_argument('--size', type=int, default=(1 << 32) + 12289)
    p.add_argument('--meta')
    p = sub.add_parser('tree')
    p.add_argument('outdir')
    p.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()

    if args.command == 'layers':
        layers = SETS[args.set](random.Random(args.seed))
        paths = write_layers(layers, args.outdir, args.compression)
        print(json.dumps({'layers': paths}))
    elif args.command == 'bad':
        os.makedirs(args.outdir, exist_ok=True)
        paths = []
        for name, data in BAD_CASES[args.case](random.Random(args.seed)):
            path = os.path.join(args.outdir, name)
            with open(path, 'wb') as f:
                f.write(data)
            paths.append(path)
        print(json.dumps({'layers': paths}))
    elif args.command == 'bigfile':
        cmd_bigfile(args)
    elif args.command == 'tree':
        cmd_tree(args)


if __name__ == '__main__':
    main()
