/**
 * The pieces a range overlay (range-overlay.ts) holds, kept on disk beside a block cache entry so that a
 * server restarted without the origin (reattach while the registry is down) still answers the metadata
 * it fetched. One file per object, replaced atomically, mode 0600:
 *   "EROFSOCI-PIECES1" (16 bytes), u32 count, then per piece u64 offset, u32 length, u32 CRC-32C, bytes.
 * A damaged or foreign file is ignored (the pieces are fetched again); only pieces within `size` load.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c } from './crc32c.ts';
import { writeFileAtomically } from './files.ts';

const MAGIC = Buffer.from('EROFSOCI-PIECES1');

export interface StoredPiece {
  offset: number;
  bytes: Uint8Array;
}

export function piecesPath(cacheDir: string, cacheId: string): string {
  const key = createHash('sha256').update(cacheId).digest('hex').slice(0, 40);
  return join(cacheDir, `${key}.pieces`);
}

export async function savePieces(path: string, pieces: readonly StoredPiece[]): Promise<void> {
  const total = pieces.reduce((sum, p) => sum + 16 + p.bytes.byteLength, MAGIC.length + 4);
  const out = Buffer.alloc(total);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(pieces.length, MAGIC.length);
  let at = MAGIC.length + 4;
  for (const p of pieces) {
    out.writeBigUInt64LE(BigInt(p.offset), at);
    out.writeUInt32LE(p.bytes.byteLength, at + 8);
    out.writeUInt32LE(crc32c(p.bytes), at + 12);
    out.set(p.bytes, at + 16);
    at += 16 + p.bytes.byteLength;
  }
  await writeFileAtomically(path, out, 0o600);
}

/** The stored pieces, or undefined when there is no file or it is damaged. */
export async function loadPieces(path: string, size: number): Promise<StoredPiece[] | undefined> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch {
    return undefined;
  }
  if (bytes.length < MAGIC.length + 4 || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  const count = bytes.readUInt32LE(MAGIC.length);
  const pieces: StoredPiece[] = [];
  let at = MAGIC.length + 4;
  for (let i = 0; i < count; i++) {
    if (at + 16 > bytes.length) return undefined;
    const offset = Number(bytes.readBigUInt64LE(at));
    const length = bytes.readUInt32LE(at + 8);
    const crc = bytes.readUInt32LE(at + 12);
    if (at + 16 + length > bytes.length || offset + length > size) return undefined;
    const piece = new Uint8Array(bytes.subarray(at + 16, at + 16 + length));
    if (crc32c(piece) !== crc) return undefined;
    pieces.push({ offset, bytes: piece });
    at += 16 + length;
  }
  return pieces;
}
