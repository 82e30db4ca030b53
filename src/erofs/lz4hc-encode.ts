/**
 * LZ4 "high compression" block compressor with a destination limit (what mkfs.erofs -zlz4hc gets from
 * LZ4_compress_HC_destSize): the same block format as lz4-encode.ts, but every position is entered into
 * hash chains (a head per 15-bit hash, a 16-bit distance to the previous position with the same hash), up to
 * `attempts` earlier positions are compared for the longest match, and matches are chosen lazily: before a
 * match is written, the encoder looks for a longer one starting within it (two matches ahead), shortening or
 * dropping the first when the next pays more. Modelled on the strategy of lz4's lib/lz4hc.c (levels 3-9);
 * levels 10-12 (lz4's optimal parser) search longer chains with the same parser here.
 */
import {
  finish,
  LAST_LITERALS,
  type Lz4Result,
  MAX_DISTANCE,
  MF_LIMIT,
  MIN_MATCH,
  matchLength,
  RESERVE,
  scratchOutput,
  sequenceCost,
  writeSequence,
} from './lz4-encode.ts';

const HASH_BITS = 15;
/** Matches shorter than this are worth shortening for a better next match (lz4hc's OPTIMAL_ML). */
const OPTIMAL_ML = 18;
/** A match this long ends the chain walk: longer candidates would save little and cost much (zero runs). */
const NICE_LENGTH = 1024;
export const LZ4HC_DEFAULT_LEVEL = 9;

/** Chain positions compared per search at `level` (lz4's table for 3-9: 2^(level-1)). */
export function lz4hcAttempts(level: number): number {
  const l = level < 1 ? LZ4HC_DEFAULT_LEVEL : Math.min(12, Math.max(3, level));
  return l <= 9 ? 1 << (l - 1) : ([512, 2048, 16384][l - 10] as number);
}

// Reused between calls, as in lz4-encode.ts: hash heads hold `position + base`, so entries of earlier calls
// are below `base` and never followed; chain slots are only reached from positions of the current call.
let heads = new Int32Array(1 << HASH_BITS);
const chain = new Uint16Array(1 << 16);
let base = 0;

interface Match {
  len: number;
  offset: number;
  /** The match starts this many bytes before the searched position. */
  back: number;
}
const NONE: Match = { len: 0, offset: 0, back: 0 };

class HcState {
  readonly input: Uint8Array;
  readonly view: DataView;
  readonly off: number;
  readonly attempts: number;
  nextToUpdate = 0;

  constructor(input: Uint8Array, off: number, attempts: number) {
    this.input = input;
    this.view = new DataView(input.buffer, input.byteOffset, input.byteLength);
    this.off = off;
    this.attempts = attempts;
  }

  hash(p: number): number {
    return Math.imul(this.view.getUint32(p, true), -1640531535) >>> (32 - HASH_BITS);
  }

  /** Enters positions up to `ip` (exclusive) into the chains. */
  insert(ip: number): void {
    const off = this.off;
    for (let p = this.nextToUpdate; p < ip; p++) {
      const h = this.hash(p);
      const prev = (heads[h] as number) - off;
      const delta = prev < 0 ? MAX_DISTANCE : p - prev;
      chain[p & 0xffff] = delta > MAX_DISTANCE ? MAX_DISTANCE : delta;
      heads[h] = p + off;
    }
    if (ip > this.nextToUpdate) this.nextToUpdate = ip;
  }

  /**
   * The longest match for `ip` longer than `longest`, ending by `high`, which may start up to
   * `ip - low` bytes earlier (extended backwards); NONE if there is none.
   */
  widerMatch(ip: number, low: number, high: number, longest: number): Match {
    const input = this.input;
    const view = this.view;
    this.insert(ip);
    const lowest = ip > MAX_DISTANCE ? ip - MAX_DISTANCE : 0;
    const lookBack = ip - low;
    const pattern = view.getUint32(ip, true);
    let best = NONE;
    let tries = this.attempts;
    let candidate = (heads[this.hash(ip)] as number) - this.off;
    while (candidate >= lowest && tries-- > 0) {
      if (candidate >= ip) {
        // Entered by a search further ahead (the parser went back): not an earlier position.
        candidate -= chain[candidate & 0xffff] as number;
        continue;
      }
      // Quick rejection: a longer match must agree at its would-be last two bytes.
      const at = low + longest - 1;
      const mat = candidate - lookBack + longest - 1;
      if (
        mat >= 0 &&
        input[at] === input[mat] &&
        input[at + 1] === input[mat + 1] &&
        view.getUint32(candidate, true) === pattern
      ) {
        let back = 0;
        while (
          back < lookBack &&
          candidate - back > 0 &&
          input[ip - back - 1] === input[candidate - back - 1]
        ) {
          back++;
        }
        const len = back + MIN_MATCH + matchLength(input, view, ip + MIN_MATCH, candidate + MIN_MATCH, high);
        if (len > longest) {
          longest = len;
          best = { len, offset: ip - candidate, back };
          if (len >= NICE_LENGTH) break;
        }
      }
      candidate -= chain[candidate & 0xffff] as number;
    }
    return best;
  }
}

/** Compresses as much of `input` as fits into `capacity` bytes (see the module comment). */
export function lz4hcCompressDestSize(input: Uint8Array, capacity: number, level: number): Lz4Result {
  const n = input.byteLength;
  if (base > 0x3fff_0000 - n) {
    heads = new Int32Array(1 << HASH_BITS);
    base = 0;
  }
  const off = base + 1;
  base += n + MAX_DISTANCE + 2;
  const s = new HcState(input, off, lz4hcAttempts(level));
  const out = scratchOutput(capacity);
  const mfLimit = n - MF_LIMIT;
  const matchEnd = n - LAST_LITERALS;
  let op = 0;
  let anchor = 0;
  let ip = 0;
  // Writes the match `m` at `at` after the literals from `anchor`; false when it does not fit.
  const encode = (at: number, m: Match): boolean => {
    const lit = at - anchor;
    if (op + sequenceCost(lit, m.len) + RESERVE > capacity) return false;
    op = writeSequence(out, op, input, anchor, lit, m.offset, m.len);
    anchor = at + m.len;
    return true;
  };
  const shorten = (m: Match, by: number): Match => ({ len: m.len - by, offset: m.offset, back: 0 });

  // The parser's stages, as lz4hc's: 1 finds a first match m1 at ip; 2 looks for a longer m2 starting
  // within m1; 3 (with m1 < m2 ascending) looks for a longer m3 starting within m2.
  let stage = 1;
  let m1 = NONE;
  let start0 = 0;
  let m0 = NONE;
  let start2 = 0;
  let m2 = NONE;
  let start3 = 0;
  let m3 = NONE;
  for (;;) {
    if (stage === 1) {
      if (ip >= mfLimit) break;
      m1 = s.widerMatch(ip, ip, matchEnd, MIN_MATCH - 1);
      if (m1.len < MIN_MATCH) {
        ip++;
        continue;
      }
      start0 = ip;
      m0 = m1;
      stage = 2;
      continue;
    }
    if (stage === 2) {
      if (ip + m1.len < mfLimit) {
        start2 = ip + m1.len - 2;
        m2 = s.widerMatch(start2, ip, matchEnd, m1.len);
        start2 -= m2.back;
      } else {
        m2 = NONE;
      }
      if (m2.len <= m1.len) {
        if (!encode(ip, m1)) break;
        ip = anchor;
        stage = 1;
        continue;
      }
      if (start0 < ip && start2 < ip + m0.len) {
        // m1 replaced an earlier match that m2 overlaps as much: take the earlier one back.
        ip = start0;
        m1 = m0;
      }
      if (start2 - ip < 3) {
        // m1 is too short before m2: drop it.
        ip = start2;
        m1 = m2;
        continue;
      }
      stage = 3;
      continue;
    }
    if (start2 - ip < OPTIMAL_ML) {
      // Let m1 keep up to OPTIMAL_ML bytes (leaving m2 at least MIN_MATCH), m2 starting after them.
      let len = Math.min(m1.len, OPTIMAL_ML);
      if (ip + len > start2 + m2.len - MIN_MATCH) len = start2 - ip + m2.len - MIN_MATCH;
      const correction = len - (start2 - ip);
      if (correction > 0) {
        start2 += correction;
        m2 = shorten(m2, correction);
      }
    }
    if (start2 + m2.len < mfLimit) {
      start3 = start2 + m2.len - 3;
      m3 = s.widerMatch(start3, start2, matchEnd, m2.len);
      start3 -= m3.back;
    } else {
      m3 = NONE;
    }
    if (m3.len <= m2.len) {
      // No better third match: write m1 (cut where m2 starts) and m2.
      if (start2 < ip + m1.len) m1 = shorten(m1, ip + m1.len - start2);
      if (!encode(ip, m1) || !encode(start2, m2)) break;
      ip = anchor;
      stage = 1;
      continue;
    }
    if (start3 < ip + m1.len + 3) {
      // m3 leaves too little room for m2: drop m2.
      if (start3 >= ip + m1.len) {
        // m1 ends before m3: write m1; m3 becomes the first match, m2 (cut after m1) its fallback.
        if (start2 < ip + m1.len) {
          const correction = ip + m1.len - start2;
          start2 += correction;
          m2 = shorten(m2, correction);
          if (m2.len < MIN_MATCH) {
            start2 = start3;
            m2 = m3;
          }
        }
        if (!encode(ip, m1)) break;
        ip = start3;
        m1 = m3;
        start0 = start2;
        m0 = m2;
        stage = 2;
        continue;
      }
      start2 = start3;
      m2 = m3;
      continue;
    }
    // Three ascending matches: write m1, cut where m2 starts (or m2 shortened to leave m1 OPTIMAL_ML).
    if (start2 < ip + m1.len) {
      if (start2 - ip < OPTIMAL_ML) {
        let len = Math.min(m1.len, OPTIMAL_ML);
        if (ip + len > start2 + m2.len - MIN_MATCH) len = start2 - ip + m2.len - MIN_MATCH;
        m1 = { len, offset: m1.offset, back: 0 };
        const correction = len - (start2 - ip);
        if (correction > 0) {
          start2 += correction;
          m2 = shorten(m2, correction);
        }
      } else {
        m1 = { len: start2 - ip, offset: m1.offset, back: 0 };
      }
    }
    if (!encode(ip, m1)) break;
    ip = start2;
    m1 = m2;
    start2 = start3;
    m2 = m3;
  }
  return finish(out, op, input, anchor, capacity);
}
