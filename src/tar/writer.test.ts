import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseNumber, tarHeader } from './format.ts';
import { readTar } from './reader.ts';
import { END_OF_ARCHIVE, encodeTarHeader } from './writer.ts';

function pad(size: number): Uint8Array {
  return new Uint8Array((512 - (size % 512)) % 512);
}

async function* once(bytes: Uint8Array) {
  yield bytes;
}

describe('tar writer', () => {
  it('writes headers our reader and GNU tar read back', async () => {
    const data = new TextEncoder().encode('hello, tar\n');
    const archive = Buffer.concat([
      encodeTarHeader({ name: 'blobs', kind: 'dir' }),
      encodeTarHeader({ name: 'blobs/file', kind: 'file', size: data.byteLength, mtime: 1700000000 }),
      data,
      pad(data.byteLength),
      END_OF_ARCHIVE,
    ]);
    const seen: string[] = [];
    for await (const entry of readTar(once(archive))) {
      let body = '';
      for await (const chunk of entry.body()) body += Buffer.from(chunk).toString();
      seen.push(`${entry.type} ${entry.path} ${entry.size} ${entry.mtime.sec} ${body}`);
    }
    assert.deepEqual(seen, ['dir blobs/ 0 0 ', 'file blobs/file 11 1700000000 hello, tar\n']);
    const dir = mkdtempSync(join(tmpdir(), 'tar-writer-'));
    try {
      writeFileSync(join(dir, 'a.tar'), archive);
      execFileSync('tar', ['-xf', join(dir, 'a.tar'), '-C', dir]);
      assert.equal(readFileSync(join(dir, 'blobs', 'file'), 'utf8'), 'hello, tar\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('sizes round-trip, past 8 GiB in base-256', () => {
    fc.assert(
      fc.property(fc.oneof(fc.nat(), fc.integer({ min: 8 ** 11 - 2, max: 2 ** 50 })), (size) => {
        const block = encodeTarHeader({ name: 'f', kind: 'file', size });
        const offset = tarHeader.offsetOf('size');
        assert.equal(parseNumber(block, offset, offset + 12), size);
      }),
    );
  });
});
