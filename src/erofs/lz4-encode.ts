/**
 * LZ4 block compressor with a destination limit, as EROFS needs it (erofs-utils uses LZ4_compress_destSize):
 * it takes as much of the input as fits into `capacity` output bytes, so that a physical cluster is filled.
 * Greedy hash-table matching (the LZ4 "fast" strategy). Output follows the block format's end rules: the
 * last 5 bytes are literals and no match starts within the last 12 bytes of the consumed input.
 */

const MIN_MATCH = 4;
const LAST_LITERALS = 5;
const MF_LIMIT = 12;
const MAX_DISTANCE = 65535;
const HASH_BITS = 16;

export interface Lz4Result {
  /** The compressed block. */
  output: Uint8Array;
  /** Input bytes it holds (all of them, unless the capacity ran out). */
  consumed: number;
}

function extraBytes(n: number): number {
  return n < 15 ? 0 : Math.floor((n - 15) / 255) + 1;
}

export function lz4CompressDestSize(input: Uint8Array, capacity: number): Lz4Result {
  const n = input.byteLength;
  const out = new Uint8Array(Math.max(0, capacity));
  const table = new Int32Array(1 << HASH_BITS).fill(-1);
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const hash = (p: number) => Math.imul(view.getUint32(p, true), 2654435761) >>> (32 - HASH_BITS);
  let op = 0;
  let anchor = 0;
  let ip = 0;
  // Room kept after each sequence for a final literal run of 12 bytes (token + literals).
  const reserve = 1 + MF_LIMIT;
  let misses = 0;
  while (ip < n - MF_LIMIT) {
    const h = hash(ip);
    const ref = table[h] as number;
    table[h] = ip;
    if (ref < 0 || ip - ref > MAX_DISTANCE || view.getUint32(ref, true) !== view.getUint32(ip, true)) {
      // Skip ahead faster through data that does not match (LZ4's acceleration).
      ip += 1 + (misses++ >> 6);
      continue;
    }
    misses = 0;
    let start = ip;
    let from = ref;
    // Extend backwards over literals, then forwards up to the last-literals limit.
    while (start > anchor && from > 0 && input[start - 1] === input[from - 1]) {
      start--;
      from--;
    }
    let len = ip - start + MIN_MATCH;
    while (start + len < n - LAST_LITERALS && input[from + len] === input[start + len]) len++;
    const lit = start - anchor;
    const cost = 1 + extraBytes(lit) + lit + 2 + extraBytes(len - MIN_MATCH);
    if (op + cost + reserve > capacity) break;
    op = writeSequence(out, op, input, anchor, lit, start - from, len);
    ip = start + len;
    anchor = ip;
    if (ip - 2 < n - MF_LIMIT && ip >= 2) table[hash(ip - 2)] = ip - 2;
  }
  // Final literals: as many as fit.
  let lastLit = n - anchor;
  const room = capacity - op - 1;
  if (room < 0) return { output: new Uint8Array(0), consumed: 0 };
  while (lastLit > 0 && extraBytes(lastLit) + lastLit > room) {
    lastLit = Math.min(lastLit - 1, room - extraBytes(room));
  }
  op = writeLiterals(out, op, input, anchor, lastLit, 0);
  return { output: out.subarray(0, op), consumed: anchor + lastLit };
}

function writeLength(out: Uint8Array, op: number, n: number): number {
  let rest = n - 15;
  let p = op;
  while (rest >= 255) {
    out[p++] = 255;
    rest -= 255;
  }
  out[p++] = rest;
  return p;
}

function writeLiterals(
  out: Uint8Array,
  op: number,
  input: Uint8Array,
  from: number,
  lit: number,
  matchNibble: number,
): number {
  let p = op;
  out[p++] = (Math.min(lit, 15) << 4) | matchNibble;
  if (lit >= 15) p = writeLength(out, p, lit);
  out.set(input.subarray(from, from + lit), p);
  return p + lit;
}

function writeSequence(
  out: Uint8Array,
  op: number,
  input: Uint8Array,
  anchor: number,
  lit: number,
  offset: number,
  len: number,
): number {
  const ml = len - MIN_MATCH;
  const tokenAt = op;
  let p = writeLiterals(out, op, input, anchor, lit, Math.min(ml, 15));
  out[tokenAt] = ((out[tokenAt] as number) & 0xf0) | Math.min(ml, 15);
  out[p++] = offset & 0xff;
  out[p++] = offset >> 8;
  if (ml >= 15) p = writeLength(out, p, ml);
  return p;
}
