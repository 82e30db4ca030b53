import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadPieces, piecesPath, savePieces } from './range-overlay-store.ts';

test('overlay pieces kept on disk load back as they were; damaged or foreign files are ignored', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'erofs-oci-pieces-'));
  try {
    const path = piecesPath(dir, 'sha256:abc');
    const pieces = [
      { offset: 0, bytes: Uint8Array.from([1, 2, 3]) },
      { offset: 4096, bytes: new Uint8Array(5000).fill(7) },
    ];
    assert.equal(await loadPieces(path, 10_000), undefined);
    await savePieces(path, pieces);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.deepEqual(await loadPieces(path, 10_000), pieces);
    // Pieces beyond the object's size belong to another object.
    assert.equal(await loadPieces(path, 9000), undefined);
    const bytes = await readFile(path);
    bytes.writeUInt8((bytes.at(-1) as number) ^ 1, bytes.length - 1);
    await writeFile(path, bytes);
    assert.equal(await loadPieces(path, 10_000), undefined);
    await writeFile(path, 'not pieces at all');
    assert.equal(await loadPieces(path, 10_000), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
