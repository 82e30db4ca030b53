/**
 * A gzip stream scanner that finds deflate block boundaries (RFC 1951 §3.2.3) without producing output.
 *
 * node:zlib cannot stop at block boundaries (no `Z_BLOCK`, no `data_type`), so an index builder has to
 * find them itself. This scanner decodes every Huffman symbol (a block ends with its end-of-block symbol,
 * which can only be found by decoding all symbols before it) but never copies a byte: literals count one,
 * matches count their length, distances are only skipped. The bytes themselves come from native zlib,
 * running at the same time in the thread pool (see builder.ts); the scanner is told about every input
 * chunk first so that it is always ahead of the native decoder.
 *
 * Positions follow zlib's `inflate(Z_BLOCK)` conventions, which the zinfo format inherits: at a boundary,
 * `in` counts every byte of which a bit has been consumed, and `bits` is the number of unconsumed high
 * bits left in byte `in - 1` (`strm->data_type & 7`).
 */
import { CorruptInputError } from '../errors.ts';
import { checkHeaderLength, gzipTrailer, parseGzipHeader } from './gzip-header.ts';

export interface BlockBoundary {
  /** Offset of the first compressed byte wholly after the boundary. */
  in: number;
  /** How many high bits of the byte at `in - 1` lie after the boundary (0..7). */
  bits: number;
  /** Uncompressed offset of the boundary, all members counted. */
  out: number;
  /** True for the boundary right after a member header, before its first block. */
  memberStart: boolean;
}

export interface ScanSummary {
  compressedSize: number;
  uncompressedSize: number;
  members: number;
}

// Phases of the scan. Plain numbers keep the hot loop's comparisons cheap.
const MEMBER_HEADER = 0;
const BLOCK_HEADER = 1;
const STORED = 2;
const HUFFMAN = 3;
const TRAILER = 4;
const BETWEEN_MEMBERS = 5;

// Table entries are `value << 4 | codeLength`; 0 marks a bit pattern that is no code (incomplete codes).
// A negative entry `~base` links a root-table slot to a sub-table at `base` for codes longer than the root.
// Literal/length values: 0 literal; `extra << 9 | base` a match length; EOB_VALUE; INVALID_VALUE (286, 287).
const EOB_VALUE = 1 << 14;
const INVALID_VALUE = 1 << 15;
// Distance values: `extra << 15 | base`; extra 15 marks the invalid symbols 30 and 31.
const INVALID_DISTANCE = 15 << 15;

const LENGTH_BASE = [
  3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195,
  227, 258,
];
const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DISTANCE_BASE = [
  1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097,
  6145, 8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA = [
  0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
];
/** The order in which code-length code lengths are stored (RFC 1951 §3.2.7). */
const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

const LITERAL_VALUES = new Int32Array(288);
for (let s = 0; s < 288; s++) {
  if (s < 256) LITERAL_VALUES[s] = 0;
  else if (s === 256) LITERAL_VALUES[s] = EOB_VALUE;
  else if (s <= 285) LITERAL_VALUES[s] = (LENGTH_EXTRA[s - 257]! << 9) | LENGTH_BASE[s - 257]!;
  else LITERAL_VALUES[s] = INVALID_VALUE;
}
const DISTANCE_VALUES = new Int32Array(32);
for (let s = 0; s < 32; s++) {
  DISTANCE_VALUES[s] = s < 30 ? (DISTANCE_EXTRA[s]! << 15) | DISTANCE_BASE[s]! : INVALID_DISTANCE;
}
const CODE_LENGTH_VALUES = Int32Array.from({ length: 19 }, (_, s) => s);

const LITERAL_ROOT_BITS = 10;
const DISTANCE_ROOT_BITS = 8;
const MAX_CODE_BITS = 15;
/** Room for a root table plus a full-depth sub-table behind every root slot. */
const LITERAL_TABLE_SIZE = (1 << LITERAL_ROOT_BITS) + (1 << MAX_CODE_BITS);
const DISTANCE_TABLE_SIZE = (1 << DISTANCE_ROOT_BITS) + (1 << MAX_CODE_BITS);

interface HuffmanTable {
  table: Int32Array;
  rootBits: number;
  subBits: number;
}

/**
 * Builds a canonical Huffman decoding table (RFC 1951 §3.2.2) for `lengths[0..count)`. Over-subscribed
 * codes are refused; incomplete ones are accepted, their missing patterns left invalid (0), because zlib
 * accepts some (a single distance code) and refuses the others itself.
 */
function buildTable(
  lengths: Uint8Array,
  count: number,
  values: Int32Array,
  target: HuffmanTable,
  maxRootBits: number,
  what: string,
): void {
  const blCount = new Uint16Array(MAX_CODE_BITS + 1);
  let maxLength = 0;
  for (let s = 0; s < count; s++) {
    const l = lengths[s]!;
    blCount[l]!++;
    if (l > maxLength) maxLength = l;
  }
  blCount[0] = 0;
  let left = 1;
  for (let l = 1; l <= MAX_CODE_BITS; l++) {
    left = (left << 1) - blCount[l]!;
    if (left < 0) throw new Error(`over-subscribed ${what} code`);
  }
  const rootBits = Math.max(1, Math.min(maxLength, maxRootBits));
  const subBits = Math.max(0, maxLength - rootBits);
  const table = target.table;
  table.fill(0, 0, 1 << rootBits);
  const nextCode = new Uint16Array(MAX_CODE_BITS + 2);
  for (let l = 1, code = 0; l <= MAX_CODE_BITS; l++) {
    code = (code + blCount[l - 1]!) << 1;
    nextCode[l] = code;
  }
  let nextSub = 1 << rootBits;
  const rootMask = (1 << rootBits) - 1;
  for (let s = 0; s < count; s++) {
    const l = lengths[s]!;
    if (l === 0) continue;
    const code = nextCode[l]!++;
    // Deflate packs Huffman codes most significant bit first into an LSB-first bit stream: reverse them.
    let reversed = 0;
    for (let i = 0; i < l; i++) reversed |= ((code >>> i) & 1) << (l - 1 - i);
    if (l <= rootBits) {
      const entry = (values[s]! << 4) | l;
      for (let i = reversed; i <= rootMask; i += 1 << l) table[i] = entry;
      continue;
    }
    const slot = reversed & rootMask;
    let base: number;
    if (table[slot]! < 0) base = ~table[slot]!;
    else {
      base = nextSub;
      nextSub += 1 << subBits;
      table.fill(0, base, nextSub);
      table[slot] = ~base;
    }
    const subLength = l - rootBits;
    const entry = (values[s]! << 4) | subLength;
    for (let i = reversed >>> rootBits; i < 1 << subBits; i += 1 << subLength) table[base + i] = entry;
  }
  target.rootBits = rootBits;
  target.subBits = subBits;
}

function fixedTables(): { literal: HuffmanTable; distance: HuffmanTable } {
  const lengths = new Uint8Array(288);
  lengths.fill(8, 0, 144).fill(9, 144, 256).fill(7, 256, 280).fill(8, 280, 288);
  const literal = { table: new Int32Array(LITERAL_TABLE_SIZE), rootBits: 0, subBits: 0 };
  buildTable(lengths, 288, LITERAL_VALUES, literal, LITERAL_ROOT_BITS, 'literal/length');
  const distance = { table: new Int32Array(DISTANCE_TABLE_SIZE), rootBits: 0, subBits: 0 };
  buildTable(new Uint8Array(32).fill(5), 32, DISTANCE_VALUES, distance, DISTANCE_ROOT_BITS, 'distance');
  return { literal, distance };
}

const FIXED = fixedTables();

/** Thrown inside header parsing when the buffered input ends first; never escapes the scanner. */
const NEED_MORE = Symbol('need more input');

/** Bytes kept after the input so the symbol loop can run to the very end on the final call. */
const PADDING = 16;
/** The symbol loop stops this many bytes before the buffered end, enough for any one symbol (48 bits). */
const SYMBOL_MARGIN = 8;

export class DeflateScanner {
  readonly #onBoundary: (boundary: BlockBoundary) => void;
  /** Buffered input; `#buf[0]` is at stream offset `#base`; `#len` bytes are real, the rest padding. */
  #buf: Uint8Array = new Uint8Array(0);
  #len = 0;
  #base = 0;
  /** Consumed bit position in `#buf`. */
  #bitPos = 0;
  #phase = MEMBER_HEADER;
  #final = false;
  #lastBlock = false;
  #storedLeft = 0;
  #totalOut = 0;
  #memberOut = 0;
  #members = 0;
  #literal: HuffmanTable = FIXED.literal;
  #distance: HuffmanTable = FIXED.distance;
  readonly #dynamicLiteral: HuffmanTable = {
    table: new Int32Array(LITERAL_TABLE_SIZE),
    rootBits: 0,
    subBits: 0,
  };
  readonly #dynamicDistance: HuffmanTable = {
    table: new Int32Array(DISTANCE_TABLE_SIZE),
    rootBits: 0,
    subBits: 0,
  };
  readonly #codeLengths = new Uint8Array(286 + 30);
  readonly #codeLengthTable: HuffmanTable = { table: new Int32Array(1 << 7), rootBits: 0, subBits: 0 };

  constructor(onBoundary: (boundary: BlockBoundary) => void) {
    this.#onBoundary = onBoundary;
  }

  /** Stream offset up to which every byte has been fully consumed (a native decoder may be fed this far). */
  get consumedBytes(): number {
    return this.#base + (this.#bitPos >>> 3);
  }

  /** Scans `chunk`, reporting the boundaries it completes. Throws `CorruptInputError`. */
  feed(chunk: Uint8Array): void {
    if (this.#final) throw new Error('DeflateScanner.feed after finish');
    if (chunk.byteLength === 0) return;
    this.#append(chunk, 0);
    this.#run();
  }

  /** Scans what is left and checks that the stream ended at the end of a member. */
  finish(): ScanSummary {
    if (!this.#final) {
      this.#final = true;
      this.#append(new Uint8Array(0), PADDING);
      this.#run();
    }
    const at = this.#base + (this.#bitPos >>> 3);
    if (this.#members === 0 && this.#phase === MEMBER_HEADER) {
      throw new CorruptInputError(
        this.#len === 0
          ? 'Cannot index gzip stream: the input is empty'
          : 'Cannot index gzip stream: truncated header',
        at,
      );
    }
    if (this.#phase !== BETWEEN_MEMBERS) {
      throw new CorruptInputError(
        `Cannot index gzip stream: it is truncated (ends inside ${this.#where()})`,
        at,
      );
    }
    return { compressedSize: at, uncompressedSize: this.#totalOut, members: this.#members };
  }

  #where(): string {
    switch (this.#phase) {
      case MEMBER_HEADER:
        return `the header of member ${this.#members + 1}`;
      case TRAILER:
        return `the trailer of member ${this.#members}`;
      default:
        return `the deflate data of member ${this.#members}`;
    }
  }

  /** Drops consumed bytes and appends `chunk` plus `padding` zero bytes. */
  #append(chunk: Uint8Array, padding: number): void {
    const keepFrom = this.#bitPos >>> 3;
    const kept = this.#len - keepFrom;
    if (kept === 0 && padding === 0) {
      this.#buf = chunk;
    } else {
      const buf = new Uint8Array(kept + chunk.byteLength + padding);
      buf.set(this.#buf.subarray(keepFrom, this.#len), 0);
      buf.set(chunk, kept);
      this.#buf = buf;
    }
    this.#base += keepFrom;
    this.#bitPos &= 7;
    this.#len = kept + chunk.byteLength;
  }

  #run(): void {
    for (;;) {
      switch (this.#phase) {
        case MEMBER_HEADER:
          if (!this.#memberHeader()) return;
          break;
        case BLOCK_HEADER: {
          const start = this.#bitPos;
          try {
            this.#blockHeader();
          } catch (error) {
            if (error !== NEED_MORE) throw error;
            // Wait for more input (finish() reports truncation if none comes).
            this.#bitPos = start;
            return;
          }
          break;
        }
        case STORED: {
          const pos = this.#bitPos >>> 3;
          const n = Math.min(this.#storedLeft, this.#len - pos);
          this.#bitPos += n * 8;
          this.#storedLeft -= n;
          this.#totalOut += n;
          this.#memberOut += n;
          if (this.#storedLeft > 0) return;
          this.#endOfBlock();
          break;
        }
        case HUFFMAN:
          if (!this.#symbols()) return;
          this.#endOfBlock();
          break;
        case TRAILER: {
          const pos = this.#bitPos >>> 3;
          if (this.#len - pos < gzipTrailer.size) return;
          const trailer = gzipTrailer.decode(this.#buf, pos);
          if (trailer.isize !== this.#memberOut % 2 ** 32) {
            throw new CorruptInputError(
              `Cannot index gzip stream: member ${this.#members} has ${this.#memberOut} bytes but its trailer ` +
                `says ${trailer.isize} (mod 2^32)`,
              this.#base + pos,
            );
          }
          this.#bitPos += gzipTrailer.size * 8;
          this.#phase = BETWEEN_MEMBERS;
          break;
        }
        case BETWEEN_MEMBERS:
          if (this.#bitPos >>> 3 >= this.#len) return;
          this.#phase = MEMBER_HEADER;
          break;
      }
    }
  }

  #memberHeader(): boolean {
    const start = this.#bitPos >>> 3;
    const what =
      this.#members === 0
        ? 'gzip stream'
        : `data after gzip member ${this.#members} (trailing garbage or a corrupt member header)`;
    const view = this.#buf.subarray(0, this.#len);
    const end = parseGzipHeader(view, start, this.#base + start, what);
    if (end < 0) {
      checkHeaderLength(this.#len - start, this.#base + start);
      return false;
    }
    this.#bitPos = end * 8;
    this.#members++;
    this.#memberOut = 0;
    this.#phase = BLOCK_HEADER;
    this.#report(true);
    return true;
  }

  #report(memberStart: boolean): void {
    const bit = this.#base * 8 + this.#bitPos;
    const inByte = Math.ceil(bit / 8);
    this.#onBoundary({ in: inByte, bits: inByte * 8 - bit, out: this.#totalOut, memberStart });
  }

  #endOfBlock(): void {
    if (this.#lastBlock) {
      // The trailer starts at the next byte boundary (RFC 1952 §2.2).
      this.#bitPos = (this.#bitPos + 7) & ~7;
      this.#phase = TRAILER;
      return;
    }
    this.#phase = BLOCK_HEADER;
    this.#report(false);
  }

  /** Reads `n` (≤ 16) bits for header parsing, or throws NEED_MORE. */
  #bits(n: number): number {
    const pos = this.#bitPos;
    if (pos + n > this.#len * 8) throw NEED_MORE;
    const i = pos >>> 3;
    const buf = this.#buf;
    const word = buf[i]! | ((buf[i + 1] ?? 0) << 8) | ((buf[i + 2] ?? 0) << 16);
    this.#bitPos = pos + n;
    return (word >>> (pos & 7)) & ((1 << n) - 1);
  }

  #corrupt(message: string): CorruptInputError {
    return new CorruptInputError(
      `Cannot index gzip stream: ${message} in member ${this.#members}`,
      this.#base + (this.#bitPos >>> 3),
    );
  }

  #blockHeader(): void {
    this.#lastBlock = this.#bits(1) === 1;
    const type = this.#bits(2);
    if (type === 0) {
      this.#bitPos = (this.#bitPos + 7) & ~7;
      const len = this.#bits(16);
      const nlen = this.#bits(16);
      if ((len ^ 0xffff) !== nlen)
        throw this.#corrupt(`stored block length ${len} does not match its complement`);
      this.#storedLeft = len;
      this.#phase = STORED;
      return;
    }
    if (type === 1) {
      this.#literal = FIXED.literal;
      this.#distance = FIXED.distance;
      this.#phase = HUFFMAN;
      return;
    }
    if (type === 3) throw this.#corrupt('invalid block type 3');
    this.#dynamicHeader();
    this.#phase = HUFFMAN;
  }

  /** A dynamic Huffman block header (RFC 1951 §3.2.7). */
  #dynamicHeader(): void {
    const nlen = this.#bits(5) + 257;
    const ndist = this.#bits(5) + 1;
    const ncode = this.#bits(4) + 4;
    if (nlen > 286 || ndist > 30)
      throw this.#corrupt(`too many length (${nlen}) or distance (${ndist}) symbols`);
    const lengths = this.#codeLengths;
    lengths.fill(0, 0, 19);
    for (let i = 0; i < ncode; i++) lengths[CODE_LENGTH_ORDER[i]!] = this.#bits(3);
    const clt = this.#codeLengthTable;
    try {
      buildTable(lengths, 19, CODE_LENGTH_VALUES, clt, 7, 'code length');
    } catch (error) {
      throw this.#corrupt((error as Error).message);
    }
    const total = nlen + ndist;
    const codeLengths = new Uint8Array(total);
    for (let i = 0; i < total; ) {
      const symbol = this.#decodeSlow(clt);
      if (symbol < 16) {
        codeLengths[i++] = symbol;
        continue;
      }
      let repeat: number;
      let value = 0;
      if (symbol === 16) {
        if (i === 0) throw this.#corrupt('repeat of a code length with no previous length');
        value = codeLengths[i - 1]!;
        repeat = 3 + this.#bits(2);
      } else if (symbol === 17) repeat = 3 + this.#bits(3);
      else repeat = 11 + this.#bits(7);
      if (i + repeat > total) throw this.#corrupt('code lengths repeat past the last symbol');
      codeLengths.fill(value, i, i + repeat);
      i += repeat;
    }
    if (codeLengths[256] === 0) throw this.#corrupt('missing end-of-block code');
    try {
      buildTable(
        codeLengths,
        nlen,
        LITERAL_VALUES,
        this.#dynamicLiteral,
        LITERAL_ROOT_BITS,
        'literal/length',
      );
      buildTable(
        codeLengths.subarray(nlen),
        ndist,
        DISTANCE_VALUES,
        this.#dynamicDistance,
        DISTANCE_ROOT_BITS,
        'distance',
      );
    } catch (error) {
      throw this.#corrupt((error as Error).message);
    }
    this.#literal = this.#dynamicLiteral;
    this.#distance = this.#dynamicDistance;
  }

  /** Decodes one symbol of a single-level table (the code-length code), or throws NEED_MORE. */
  #decodeSlow(t: HuffmanTable): number {
    const pos = this.#bitPos;
    const i = pos >>> 3;
    const buf = this.#buf;
    const word = buf[i]! | ((buf[i + 1] ?? 0) << 8) | ((buf[i + 2] ?? 0) << 16);
    const entry = t.table[(word >>> (pos & 7)) & ((1 << t.rootBits) - 1)]!;
    const length = entry & 15;
    // Bits past the buffered input read as zero: an invalid or too long code there only means "wait".
    if (pos + (length === 0 ? t.rootBits : length) > this.#len * 8) throw NEED_MORE;
    if (length === 0) throw this.#corrupt('invalid code-length code');
    this.#bitPos = pos + length;
    return entry >>> 4;
  }

  /**
   * Decodes symbols until the end-of-block symbol (returns true) or until the buffered input may not hold
   * a whole symbol (returns false, state at the last whole symbol). On the final call the buffer is padded
   * so decoding can run to the end; running past the real input means the stream is truncated.
   */
  #symbols(): boolean {
    const buf = this.#buf;
    const lit = this.#literal.table;
    const litRoot = this.#literal.rootBits;
    const litRootMask = (1 << litRoot) - 1;
    const litSubMask = (1 << this.#literal.subBits) - 1;
    const dist = this.#distance.table;
    const distRoot = this.#distance.rootBits;
    const distRootMask = (1 << distRoot) - 1;
    const distSubMask = (1 << this.#distance.subBits) - 1;
    const len = this.#len;
    const realBits = len * 8;
    // Stop early enough that a symbol never reads past the buffer: real bytes, or real plus padding at the end.
    const limit = this.#final ? len + PADDING - SYMBOL_MARGIN : len - SYMBOL_MARGIN;
    let pos = this.#bitPos >>> 3;
    let hold = 0;
    let nbits = 0;
    const skip = this.#bitPos & 7;
    if (skip !== 0) {
      hold = buf[pos++]! >>> skip;
      nbits = 8 - skip;
    }
    let out = this.#memberOut;
    const startOut = out;
    let done = false;
    // Refills add two bytes when fewer than 16 bits are held, so `hold` never exceeds 31 bits and a symbol
    // loads at most 7 bytes (SYMBOL_MARGIN). Literals, the commonest symbol, take the shortest path.
    while (pos <= limit) {
      // Truncation shows only on the final call, when decoding reaches the zero padding.
      if (pos > len && pos * 8 - nbits > realBits) break;
      if (nbits < 16) {
        hold |= (buf[pos]! | (buf[pos + 1]! << 8)) << nbits;
        pos += 2;
        nbits += 16;
      }
      let entry = lit[hold & litRootMask]!;
      if (entry < 0) {
        hold >>>= litRoot;
        nbits -= litRoot;
        entry = lit[~entry + (hold & litSubMask)]!;
      }
      const length = entry & 15;
      hold >>>= length;
      nbits -= length;
      if (entry < 16) {
        if (length === 0) {
          this.#savePosition(pos, nbits, out, startOut);
          throw this.#symbolError('invalid literal/length code', pos);
        }
        out++;
        continue;
      }
      const value = entry >>> 4;
      if (value < EOB_VALUE) {
        const extra = value >>> 9;
        if (nbits < extra) {
          hold |= buf[pos++]! << nbits;
          nbits += 8;
        }
        const matchLength = (value & 511) + (hold & ((1 << extra) - 1));
        hold >>>= extra;
        nbits -= extra;
        if (nbits < 15) {
          hold |= (buf[pos]! | (buf[pos + 1]! << 8)) << nbits;
          pos += 2;
          nbits += 16;
        }
        let dentry = dist[hold & distRootMask]!;
        if (dentry < 0) {
          hold >>>= distRoot;
          nbits -= distRoot;
          dentry = dist[~dentry + (hold & distSubMask)]!;
        }
        const dlength = dentry & 15;
        const dvalue = dentry >>> 4;
        const dextra = dvalue >>> 15;
        if (dlength === 0 || dextra === 15) {
          this.#savePosition(pos, nbits, out, startOut);
          throw this.#symbolError('invalid distance code', pos);
        }
        hold >>>= dlength;
        nbits -= dlength;
        if (nbits < dextra) {
          hold |= (buf[pos]! | (buf[pos + 1]! << 8)) << nbits;
          pos += 2;
          nbits += 16;
        }
        const distance = (dvalue & 0x7fff) + (hold & ((1 << dextra) - 1));
        hold >>>= dextra;
        nbits -= dextra;
        // A match may only reach back into the member's own output (zlib: "invalid distance too far back").
        if (distance > out) {
          this.#savePosition(pos, nbits, out, startOut);
          throw this.#symbolError(`distance ${distance} reaches before the start of the member`, pos);
        }
        out += matchLength;
        continue;
      }
      if (value === EOB_VALUE) {
        done = true;
        break;
      }
      this.#savePosition(pos, nbits, out, startOut);
      throw this.#symbolError('invalid literal/length symbol', pos);
    }
    this.#savePosition(pos, nbits, out, startOut);
    if (this.#bitPos > realBits) throw this.#truncated();
    return done;
  }

  /** A decoding error, unless decoding had run into the zero padding: then the input is just truncated. */
  #symbolError(message: string, pos: number): CorruptInputError {
    return pos > this.#len ? this.#truncated() : this.#corrupt(message);
  }

  #truncated(): CorruptInputError {
    return new CorruptInputError(
      `Cannot index gzip stream: it is truncated (ends inside the deflate data of member ${this.#members})`,
      this.#base + this.#len,
    );
  }

  #savePosition(pos: number, nbits: number, out: number, startOut: number): void {
    this.#bitPos = pos * 8 - nbits;
    this.#totalOut += out - startOut;
    this.#memberOut = out;
  }
}
