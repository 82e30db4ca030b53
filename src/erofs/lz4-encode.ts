/**
 * LZ4 block compressor with a destination limit, as EROFS needs it (erofs-utils uses LZ4_compress_destSize):
 * it takes as much of the input as fits into `capacity` output bytes, so that a physical cluster is filled.
 * Greedy hash-table matching (the LZ4 "fast" strategy); the HC strategy (hash chains, lazy matching) lives
 * in lz4hc-encode.ts and shares the sequence writer below. Output follows the block format's end rules: the
 * last 5 bytes are literals and no match starts within the last 12 bytes of the consumed input.
 */

export const MIN_MATCH = 4;
export const LAST_LITERALS = 5;
export const MF_LIMIT = 12;
export const MAX_DISTANCE = 65535;
const HASH_BITS = 16;

export interface Lz4Result {
  /** The compressed block. */
  output: Uint8Array;
  /** Input bytes it holds (all of them, unless the capacity ran out). */
  consumed: number;
}

/** Bytes a run length of `n` needs after its token nibble. */
export function extraBytes(n: number): number {
  return n < 15 ? 0 : Math.floor((n - 15) / 255) + 1;
}

/** Output bytes of one sequence (token, literals, offset, match length). */
export function sequenceCost(lit: number, matchLength: number): number {
  return 1 + extraBytes(lit) + lit + 2 + extraBytes(matchLength - MIN_MATCH);
}

/** Room kept after each sequence for a final literal run of 12 bytes (token + literals). */
export const RESERVE = 1 + MF_LIMIT;

// Scratch space reused between calls (each worker thread has its own module instance). The hash table
// holds `position + base`; `base` moves past every earlier call's positions, so no clearing is needed.
let table = new Int32Array(1 << HASH_BITS);
let base = 0;
let scratch = new Uint8Array(0);

/** A scratch output buffer of at least `capacity` bytes (valid until the next call). */
export function scratchOutput(capacity: number): Uint8Array {
  if (scratch.byteLength < capacity) scratch = new Uint8Array(Math.max(capacity, 1 << 16));
  return scratch;
}

/** Bytes from `a` and `b` that are equal, up to `limit` (exclusive end of `a`'s run). */
export function matchLength(input: Uint8Array, view: DataView, a: number, b: number, limit: number): number {
  const start = a;
  while (a + 4 <= limit) {
    const diff = view.getUint32(a, true) ^ view.getUint32(b, true);
    if (diff !== 0) return a - start + ((31 - Math.clz32(diff & -diff)) >> 3);
    a += 4;
    b += 4;
  }
  while (a < limit && input[a] === input[b]) {
    a++;
    b++;
  }
  return a - start;
}

export function lz4CompressDestSize(input: Uint8Array, capacity: number): Lz4Result {
  const n = input.byteLength;
  if (base > 0x3fff_0000 - n) {
    table = new Int32Array(1 << HASH_BITS);
    base = 0;
  }
  // Entries below `low` belong to earlier calls.
  const low = base + 1;
  const off = low;
  base += n + MAX_DISTANCE + 2;
  const out = scratchOutput(capacity);
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const shift = 32 - HASH_BITS;
  let op = 0;
  let anchor = 0;
  let ip = 0;
  let misses = 0;
  const mfEnd = n - MF_LIMIT;
  const matchEnd = n - LAST_LITERALS;
  while (ip < mfEnd) {
    const word = view.getUint32(ip, true);
    const h = Math.imul(word, -1640531535) >>> shift;
    const ref = (table[h] as number) - off;
    table[h] = ip + off;
    if (ref < 0 || ip - ref > MAX_DISTANCE || view.getUint32(ref, true) !== word) {
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
    const len = ip - start + MIN_MATCH + matchLength(input, view, ip + MIN_MATCH, ref + MIN_MATCH, matchEnd);
    const lit = start - anchor;
    if (op + sequenceCost(lit, len) + RESERVE > capacity) break;
    op = writeSequence(out, op, input, anchor, lit, start - from, len);
    ip = start + len;
    anchor = ip;
    if (ip - 2 < mfEnd && ip >= 2) {
      table[Math.imul(view.getUint32(ip - 2, true), -1640531535) >>> shift] = ip - 2 + off;
    }
  }
  return finish(out, op, input, anchor, capacity);
}

/** Appends the final literal run (as much of the rest as fits) and copies the block out. */
export function finish(out: Uint8Array, op: number, input: Uint8Array, anchor: number, capacity: number) {
  let lastLit = input.byteLength - anchor;
  const room = capacity - op - 1;
  if (room < 0) return { output: new Uint8Array(0), consumed: 0 };
  while (lastLit > 0 && extraBytes(lastLit) + lastLit > room) {
    lastLit = Math.min(lastLit - 1, room - extraBytes(room));
  }
  op = writeLiterals(out, op, input, anchor, lastLit, 0);
  return { output: out.slice(0, op), consumed: anchor + lastLit };
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
  out[p++] = (lit < 15 ? lit << 4 : 0xf0) | matchNibble;
  if (lit >= 15) p = writeLength(out, p, lit);
  if (lit > 32) {
    out.set(input.subarray(from, from + lit), p);
    return p + lit;
  }
  for (let i = 0; i < lit; i++) out[p + i] = input[from + i] as number;
  return p + lit;
}

/** Writes literals `input[anchor, anchor + lit)` and a match of `len` bytes at distance `offset`. */
export function writeSequence(
  out: Uint8Array,
  op: number,
  input: Uint8Array,
  anchor: number,
  lit: number,
  offset: number,
  len: number,
): number {
  const ml = len - MIN_MATCH;
  let p = writeLiterals(out, op, input, anchor, lit, ml < 15 ? ml : 15);
  out[p++] = offset & 0xff;
  out[p++] = offset >> 8;
  if (ml >= 15) p = writeLength(out, p, ml);
  return p;
}
