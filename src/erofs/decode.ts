/** Small decoding helpers shared by the reader's modules. */
import { CorruptInputError } from '../errors.ts';
import { type ByteString, toByteString } from '../fs-tree/tree.ts';
import type { FieldSpec, Struct, StructValue } from '../io/struct.ts';

/** Decodes `struct` at `offset` of `bytes`, reporting failures at `base + offset` of the image. */
export function decodeAt<F extends readonly FieldSpec[]>(
  struct: Struct<F>,
  bytes: Uint8Array,
  offset: number,
  what: string,
  base: number,
): StructValue<F> {
  try {
    return struct.decode(bytes, offset);
  } catch (error) {
    if (error instanceof CorruptInputError) {
      const reason = error.message.replace(/ \(at offset \d+\)$/, '');
      throw new CorruptInputError(`${what}: ${reason}`, base + (error.offset ?? offset), { cause: error });
    }
    throw error;
  }
}

export function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

export function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

export function cString(bytes: Uint8Array): ByteString {
  const nul = bytes.indexOf(0);
  return toByteString(nul === -1 ? bytes : bytes.subarray(0, nul));
}

export function formatUuid(bytes: Uint8Array): string {
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
