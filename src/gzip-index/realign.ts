/**
 * Restarting native raw inflate at a checkpoint that is not byte-aligned.
 *
 * zlib's way is `inflatePrime(strm, bits, byte >> (8 - bits))`, which node:zlib does not expose. Shifting
 * the whole compressed span by a few bits is no answer either: a stored block later in the span starts at
 * a byte boundary *of the original stream*, so the shifted data would misplace it. Instead we prepend a
 * few deflate blocks that produce no output and whose total length is chosen so that the checkpoint's bits
 * land exactly where they were in their byte: `8 - bits` bits modulo 8. The last byte of the prefix then
 * shares its high `bits` bits with the checkpoint's byte, and every later byte keeps its original bit
 * alignment. zlib decodes the empty blocks, leaves its window (the checkpoint's window, given as the
 * dictionary) untouched, and continues with the real data.
 *
 * Two empty blocks are enough to reach every residue:
 *  - an empty fixed-Huffman block (RFC 1951 §3.2.6): BFINAL=0, BTYPE=01, end-of-block 0000000: 10 bits;
 *  - an empty dynamic-Huffman block (§3.2.7) whose only code is end-of-block with a 1-bit code: 97 bits.
 * 97 ≡ 1 and 10 ≡ 2 (mod 8), so `dynamic? + k × fixed` gives every residue from 0 to 7.
 *
 * zlib accepts the dynamic block: its literal/length code is incomplete but has a single 1-bit code, which
 * zlib's inflate_table allows ("left > 0 && (type == CODES || max != 1)"), and a distance code with no
 * codes at all, which it also allows (a block without matches needs none).
 */

/** LSB-first bit writer (RFC 1951 §3.1.1). Huffman codes are passed already bit-reversed. */
class BitWriter {
  readonly bytes: number[] = [];
  length = 0;

  write(value: number, count: number): void {
    for (let i = 0; i < count; i++) {
      const byte = this.length >>> 3;
      if (byte === this.bytes.length) this.bytes.push(0);
      this.bytes[byte]! |= ((value >>> i) & 1) << (this.length & 7);
      this.length++;
    }
  }
}

function emptyFixedBlock(w: BitWriter): void {
  w.write(0, 1); // BFINAL
  w.write(1, 2); // BTYPE 01: fixed Huffman codes
  w.write(0, 7); // end-of-block: 7-bit code 0000000
}

/** Order in which the code-length code lengths are stored (RFC 1951 §3.2.7). */
const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

function emptyDynamicBlock(w: BitWriter): void {
  w.write(0, 1); // BFINAL
  w.write(2, 2); // BTYPE 10: dynamic Huffman codes
  w.write(0, 5); // HLIT: 257 literal/length codes
  w.write(10, 5); // HDIST: 11 distance codes (so that one repeat code 18 can cover all of them)
  // The code-length alphabet uses two symbols, both 1-bit codes: 1 (code 0) and 18 (code 1). The lengths are
  // stored in CODE_LENGTH_ORDER up to the last non-zero one (symbol 1, at index 17): HCLEN = 18 - 4.
  const ncode = CODE_LENGTH_ORDER.indexOf(1) + 1;
  w.write(ncode - 4, 4);
  for (const symbol of CODE_LENGTH_ORDER.slice(0, ncode)) w.write(symbol === 1 || symbol === 18 ? 1 : 0, 3);
  // 257 + 11 code lengths: symbols 0..255 unused, 256 (end-of-block) length 1, distances unused.
  w.write(1, 1); // 18: repeat zero 11 + 127 = 138 times
  w.write(127, 7);
  w.write(1, 1); // 18: repeat zero 11 + 107 = 118 times (256 so far)
  w.write(107, 7);
  w.write(0, 1); // 1: symbol 256 has length 1
  w.write(1, 1); // 18: repeat zero 11 times (the 11 distance codes)
  w.write(0, 7);
  w.write(0, 1); // end-of-block: the 1-bit code 0
}

/** Bit lengths of the two empty blocks, checked by the tests. */
export const EMPTY_FIXED_BLOCK_BITS = 10;
export const EMPTY_DYNAMIC_BLOCK_BITS = 97;

/** The prefix blocks for `residue` = prefix length modulo 8. */
function prefixBlocks(residue: number): BitWriter {
  const w = new BitWriter();
  let fixedBlocks = residue / 2;
  if (residue % 2 === 1) {
    emptyDynamicBlock(w);
    fixedBlocks = (residue - 1) / 2;
  }
  for (let i = 0; i < fixedBlocks; i++) emptyFixedBlock(w);
  return w;
}

/**
 * The bytes to feed a raw inflater before the compressed bytes from `in` on, for a checkpoint with
 * `bits` (1..7) bits in `previousByte` (the byte at `in - 1`). For `bits` 0 no prefix is needed: start at
 * `in`. The result's last byte combines the prefix's final bits with the checkpoint's high bits.
 */
export function alignmentPrefix(bits: number, previousByte: number): Uint8Array {
  if (!Number.isInteger(bits) || bits < 1 || bits > 7) throw new RangeError(`bits must be 1..7, not ${bits}`);
  const residue = 8 - bits;
  const w = prefixBlocks(residue);
  if (w.length % 8 !== residue)
    throw new Error(`alignment prefix has ${w.length} bits, expected ${residue} mod 8`);
  const bytes = Uint8Array.from(w.bytes);
  const lowMask = (1 << residue) - 1;
  bytes[bytes.length - 1] = (bytes[bytes.length - 1]! & lowMask) | (previousByte & ~lowMask & 0xff);
  return bytes;
}

/** For tests: the prefix blocks alone, as (bytes, bit length). */
export function prefixBitsForTest(residue: number): { bytes: Uint8Array; bits: number } {
  const w = prefixBlocks(residue);
  return { bytes: Uint8Array.from(w.bytes), bits: w.length };
}
