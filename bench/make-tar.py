#!/usr/bin/env python3
"""Writes a benchmark layer tarball: many small files plus a few large ones (deterministic, seeded).

usage: make-tar.py OUTPUT SMALL_FILES LARGE_FILES LARGE_MIB [PREFIX]

PREFIX (default none) is put before every file name and seeds the generator, so layers made with
different prefixes differ while sharing their directories (as stacked image layers do).
"""
import io
import random
import sys
import tarfile

out, small, large, large_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prefix = sys.argv[5] + "-" if len(sys.argv) > 5 else ""
rng = random.Random(42 if not prefix else prefix)
# Text-like content compresses like real layers do; a pool of random blocks keeps generation fast.
pool = bytes(rng.getrandbits(8) for _ in range(1 << 20))
words = b" ".join(rng.choice([b"lib", b"usr", b"share", b"config", b"0x1f", b"return", b"static"]) for _ in range(1 << 17))


def content(n, text):
    src = words if text else pool
    reps = n // len(src) + 1
    start = rng.randrange(len(src))
    return (src[start:] + src * reps)[:n]


with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
    for d in range(200):
        info = tarfile.TarInfo(f"usr/share/pkg{d:03d}")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = 1700000000
        tar.addfile(info)
    for i in range(small):
        size = rng.choice([0, 17, 300, 1200, 4095, 4096, 4097, 6000, 9000, 16000])
        info = tarfile.TarInfo(f"usr/share/pkg{i % 200:03d}/{prefix}file-{i:06d}.txt")
        info.size = size
        info.mode = 0o644
        info.mtime = 1700000000
        tar.addfile(info, io.BytesIO(content(size, i % 2 == 0)))
    for i in range(large):
        size = large_mib << 20
        info = tarfile.TarInfo(f"opt/big/{prefix}blob-{i}.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = 1700000000

        class Stream(io.RawIOBase):
            def __init__(self, n):
                self.left = n

            def readable(self):
                return True

            def readinto(self, b):
                n = min(len(b), self.left, len(pool))
                b[:n] = pool[:n]
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Stream(size), 1 << 20))
