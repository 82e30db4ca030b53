/**
 * Interoperability with erofs-utils 1.9 (the reference implementation of SPEC §3's zinfo): its
 * `mkfs.erofs --tar=i --gzinfo=FILE` index and ours agree checkpoint by checkpoint, and our reader serves
 * the right bytes from its index. Needs a locally built erofs-utils 1.9: set EROFS_UTILS_BIN to the
 * directory of its binaries (test-support/kernel.ts mkfsErofs19). The gzip files are made
 * by GNU gzip, not zlib, so the scanner also meets a second deflate encoder here.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { mkfsErofs19 } from '../../test-support/kernel.ts';
import { openFileSource } from '../io/file-source.ts';
import { buildZinfo } from './builder.ts';
import { DeflateScanner } from './deflate-scanner.ts';
import { chunked, concat, testData } from './testing.ts';
import { decodeZinfo, WINDOW_SIZE, type Zinfo } from './zinfo.ts';
import { openZinfoSource } from './zinfo-source.ts';

const mkfs = mkfsErofs19() ?? undefined;
const skip = mkfs === undefined ? 'set EROFS_UTILS_BIN to a directory with erofs-utils 1.9+ to run' : false;

const dir = mkdtempSync(join(tmpdir(), 'erofs-oci-gzinfo-interop-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A tar of random and text-like files, ~14 MB, so that 4 MiB spans give several checkpoints. */
function makeTar(name: string): Uint8Array {
  const root = join(dir, `${name}-tree`);
  mkdirSync(join(root, 'sub'), { recursive: true });
  writeFileSync(join(root, 'random.bin'), testData(3_000_000, 1, 'random'));
  writeFileSync(join(root, 'text.txt'), testData(6_000_000, 2, 'text'));
  writeFileSync(join(root, 'sub', 'mixed.bin'), testData(5_000_000, 3, 'mixed'));
  for (let i = 0; i < 50; i++)
    writeFileSync(join(root, 'sub', `small-${i}`), testData(1000 + i * 37, 10 + i, 'text'));
  const tar = join(dir, `${name}.tar`);
  execFileSync('tar', ['--sort=name', '--mtime=@0', '--owner=0', '--group=0', '-C', root, '-cf', tar, '.']);
  return readFileSync(tar);
}

function gzip(bytes: Uint8Array, level: string): Uint8Array {
  return execFileSync('gzip', [`-${level}`, '-c', '-n'], { input: bytes, maxBuffer: 1 << 30 });
}

function theirZinfo(name: string, gz: Uint8Array): Uint8Array {
  const input = join(dir, `${name}.tar.gz`);
  writeFileSync(input, gz);
  const zinfo = join(dir, `${name}.zinfo`);
  execFileSync(mkfs!, ['--quiet', '--tar=i', `--gzinfo=${zinfo}`, join(dir, `${name}.img`), input], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return readFileSync(zinfo);
}

/** Uncompressed offsets where gzip members start. */
function memberStarts(gz: Uint8Array): number[] {
  const starts: number[] = [];
  const scanner = new DeflateScanner((b) => {
    if (b.memberStart) starts.push(b.out);
  });
  scanner.feed(gz);
  scanner.finish();
  return starts;
}

function assertAgree(ours: Zinfo, theirs: Zinfo, gz: Uint8Array): void {
  assert.equal(theirs.spanSize, ours.spanSize);
  assert.deepEqual(
    theirs.checkpoints.map((c) => [c.in, c.out, c.bits]),
    ours.checkpoints.map((c) => [c.in, c.out, c.bits]),
  );
  const starts = memberStarts(gz);
  for (const [k, c] of ours.checkpoints.entries()) {
    // erofs-utils keeps its window in a reused 32 KiB buffer that is neither cleared at the start (its first
    // window is uninitialised memory) nor realigned at member starts: only the bytes since the member start
    // are defined. Those must agree.
    const memberStart = starts.filter((s) => s <= c.out).at(-1) ?? 0;
    const defined = Math.min(WINDOW_SIZE, c.out - memberStart);
    const theirWindow = theirs.checkpoints[k]!.window.subarray(WINDOW_SIZE - defined);
    assert.ok(
      Buffer.from(theirWindow).equals(Buffer.from(c.window.subarray(WINDOW_SIZE - defined))),
      `window ${k}`,
    );
  }
}

describe('zinfo interoperability with erofs-utils 1.9', { skip }, () => {
  const tar = makeTar('layer');

  for (const level of ['1', '6', '9']) {
    it(`buildZinfo agrees with mkfs.erofs --gzinfo checkpoint by checkpoint (gzip -${level})`, async () => {
      const gz = gzip(tar, level);
      const theirs = decodeZinfo(theirZinfo(`single-${level}`, gz));
      const ours = (await buildZinfo(chunked(gz, [1 << 20]))).zinfo;
      assert.ok(ours.checkpoints.length >= 3, `${ours.checkpoints.length} checkpoints`);
      assertAgree(ours, theirs, gz);
    });
  }

  it('buildZinfo agrees with mkfs.erofs --gzinfo on concatenated gzip members', async () => {
    // Split the tar at block boundaries into three members, as parallel compressors do.
    const cuts = [0, 512 * 5000, 512 * 17000, tar.byteLength];
    const gz = concat(cuts.slice(1).map((end, i) => gzip(tar.subarray(cuts[i], end), '6')));
    const theirs = decodeZinfo(theirZinfo('multi', gz));
    const ours = (await buildZinfo(chunked(gz, [1 << 20]))).zinfo;
    assert.ok(ours.checkpoints.length > 3);
    assertAgree(ours, theirs, gz);
  });

  it("openZinfoSource reads the right bytes through erofs-utils' zinfo", async () => {
    const gz = gzip(tar, '6');
    const zinfo = decodeZinfo(theirZinfo('read', gz));
    const blob = await openFileSource(join(dir, 'read.tar.gz'));
    try {
      const source = await openZinfoSource(blob, zinfo);
      const full = gunzipSync(gz);
      assert.equal(source.size, full.byteLength);
      assert.ok(Buffer.from(await source.read(0, full.byteLength)).equals(full));
      for (let k = 0; k < 200; k++) {
        const offset = Math.floor(Math.random() * full.byteLength);
        const length = Math.min(full.byteLength - offset, Math.floor(Math.random() * 300_000));
        assert.ok(
          Buffer.from(await source.read(offset, length)).equals(full.subarray(offset, offset + length)),
          `read ${offset}+${length}`,
        );
      }
    } finally {
      await blob.close();
    }
  });
});
