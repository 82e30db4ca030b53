import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { inflateRawSync } from 'node:zlib';
import {
  alignmentPrefix,
  EMPTY_DYNAMIC_BLOCK_BITS,
  EMPTY_FIXED_BLOCK_BITS,
  prefixBitsForTest,
} from './realign.ts';

/** A final fixed-Huffman block holding the literal 'A', starting at bit `shift` of its first byte. */
function finalBlockA(shift: number, lowBits: number): Uint8Array {
  const bits: number[] = [1, 1, 0]; // BFINAL, BTYPE 01 (LSB first)
  const code = 0x30 + 0x41; // literals 0..143 are the 8-bit codes 0x30.., sent most significant bit first
  for (let i = 7; i >= 0; i--) bits.push((code >>> i) & 1);
  for (let i = 0; i < 7; i++) bits.push(0); // end of block
  const bytes = new Uint8Array(Math.ceil((shift + bits.length) / 8));
  bytes[0] = lowBits & ((1 << shift) - 1);
  bits.forEach((b, i) => {
    bytes[(shift + i) >>> 3]! |= b << ((shift + i) & 7);
  });
  return bytes;
}

describe('alignmentPrefix', () => {
  it('alignmentPrefix builds on empty blocks of the documented bit lengths, reaching every residue mod 8', () => {
    assert.equal(prefixBitsForTest(2).bits, EMPTY_FIXED_BLOCK_BITS);
    assert.equal(prefixBitsForTest(1).bits, EMPTY_DYNAMIC_BLOCK_BITS);
    for (let residue = 0; residue < 8; residue++) assert.equal(prefixBitsForTest(residue).bits % 8, residue);
  });

  it('alignmentPrefix lets zlib start at any bit of a byte, with no output of its own', () => {
    for (let bits = 1; bits <= 7; bits++) {
      // The checkpoint's byte: its low 8 - bits bits belong to the previous block (garbage here), its high
      // `bits` bits start the block we want.
      const shift = 8 - bits;
      const stream = finalBlockA(shift, 0b1010101);
      const prefix = alignmentPrefix(bits, stream[0]!);
      const fed = new Uint8Array(prefix.byteLength + stream.byteLength - 1);
      fed.set(prefix, 0);
      fed.set(stream.subarray(1), prefix.byteLength);
      assert.equal(Buffer.from(inflateRawSync(fed)).toString(), 'A', `bits ${bits}`);
    }
  });

  it('alignmentPrefix leaves the dictionary in place for back-references', () => {
    // A fixed block: match of length 3 at distance 3 (symbol 257, distance symbol 2), then end of block.
    const bits: number[] = [1, 1, 0];
    const put = (value: number, n: number) => {
      for (let i = n - 1; i >= 0; i--) bits.push((value >>> i) & 1);
    };
    put(0b0000001, 7);
    put(2, 5);
    put(0, 7);
    for (let b = 1; b <= 7; b++) {
      const shift = 8 - b;
      const stream = new Uint8Array(Math.ceil((shift + bits.length) / 8));
      bits.forEach((bit, i) => {
        stream[(shift + i) >>> 3]! |= bit << ((shift + i) & 7);
      });
      const prefix = alignmentPrefix(b, stream[0]!);
      const fed = Buffer.concat([prefix, stream.subarray(1)]);
      const out = inflateRawSync(fed, { dictionary: Buffer.from('xyzabc') });
      assert.equal(out.toString(), 'abc');
    }
  });

  it('alignmentPrefix refuses bit counts outside 1..7', () => {
    assert.throws(() => alignmentPrefix(0, 0), RangeError);
    assert.throws(() => alignmentPrefix(8, 0), RangeError);
  });
});
