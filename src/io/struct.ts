/**
 * Declarative little-endian binary layouts. Every on-disk or on-wire structure of the project is declared
 * once as a table of named fields; encoders and decoders are derived from the table, so no parser reads a
 * field by a hand-written offset.
 */
import { CorruptInputError } from '../errors.ts';

export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'u16be' | 'u32be' | 'u64be' | { bytes: number };

export interface FieldSpec {
  readonly name: string;
  readonly type: FieldType;
}

export interface Field extends FieldSpec {
  readonly offset: number;
  readonly size: number;
}

type FieldValue<T extends FieldType> = T extends { bytes: number } ? Uint8Array : number;

export type StructValue<F extends readonly FieldSpec[]> = {
  [K in F[number] as K['name']]: FieldValue<K['type']>;
};

export interface Struct<F extends readonly FieldSpec[]> {
  readonly name: string;
  readonly size: number;
  readonly fields: readonly Field[];
  /** Encodes `value` (missing fields are zero) into `target` at `offset`, or into a new buffer. */
  encode(value: Partial<StructValue<F>>, target?: Uint8Array, offset?: number): Uint8Array;
  /** Decodes the structure found at `offset` of `source`. Byte fields are views into `source`. */
  decode(source: Uint8Array, offset?: number): StructValue<F>;
  offsetOf(name: F[number]['name']): number;
}

function sizeOf(type: FieldType): number {
  if (typeof type === 'object') return type.bytes;
  switch (type) {
    case 'u8':
      return 1;
    case 'u16':
    case 'u16be':
      return 2;
    case 'u32':
    case 'u32be':
      return 4;
    case 'u64':
    case 'u64be':
      return 8;
  }
}

const TWO_32 = 2 ** 32;

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function writeU64(dv: DataView, at: number, value: number, littleEndian: boolean): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 value out of range: ${value}`);
  const hi = Math.floor(value / TWO_32);
  const lo = value >>> 0;
  dv.setUint32(littleEndian ? at : at + 4, lo, littleEndian);
  dv.setUint32(littleEndian ? at + 4 : at, hi, littleEndian);
}

function readU64(dv: DataView, at: number, littleEndian: boolean, structName: string, field: string): number {
  const lo = dv.getUint32(littleEndian ? at : at + 4, littleEndian);
  const hi = dv.getUint32(littleEndian ? at + 4 : at, littleEndian);
  const value = hi * TWO_32 + lo;
  if (!Number.isSafeInteger(value)) {
    throw new CorruptInputError(`${structName}.${field} is too large (${hi}:${lo})`, at);
  }
  return value;
}

/**
 * Declares a structure. `expectedSize`, when given, is checked against the sum of the field sizes so a
 * declaration that drifts from its C header fails at load time.
 */
export function defineStruct<const F extends readonly FieldSpec[]>(
  name: string,
  specs: F,
  expectedSize?: number,
): Struct<F> {
  const fields: Field[] = [];
  const byName = new Map<string, Field>();
  let offset = 0;
  for (const spec of specs) {
    if (byName.has(spec.name)) throw new Error(`${name}: duplicate field ${spec.name}`);
    const field: Field = { name: spec.name, type: spec.type, offset, size: sizeOf(spec.type) };
    fields.push(field);
    byName.set(spec.name, field);
    offset += field.size;
  }
  const size = offset;
  if (expectedSize !== undefined && expectedSize !== size) {
    throw new Error(`${name}: fields add up to ${size} bytes, expected ${expectedSize}`);
  }

  return {
    name,
    size,
    fields,
    offsetOf(fieldName) {
      const field = byName.get(fieldName);
      if (!field) throw new Error(`${name}: no field ${fieldName}`);
      return field.offset;
    },
    encode(value, target, at = 0) {
      const buf = target ?? new Uint8Array(size);
      if (at + size > buf.byteLength) throw new RangeError(`${name}: ${size} bytes do not fit at ${at}`);
      const dv = view(buf);
      const values = value as Record<string, number | Uint8Array | undefined>;
      for (const field of fields) {
        const v = values[field.name];
        const p = at + field.offset;
        if (typeof field.type === 'object') {
          buf.fill(0, p, p + field.size);
          if (v !== undefined) {
            if (!(v instanceof Uint8Array) || v.byteLength > field.size) {
              throw new RangeError(`${name}.${field.name}: expected at most ${field.size} bytes`);
            }
            buf.set(v, p);
          }
          continue;
        }
        const n = (v ?? 0) as number;
        if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
          throw new RangeError(`${name}.${field.name}: not an unsigned integer: ${String(v)}`);
        }
        if (field.size < 8 && n >= 2 ** (field.size * 8)) {
          throw new RangeError(`${name}.${field.name}: ${n} does not fit in ${field.size} bytes`);
        }
        switch (field.type) {
          case 'u8':
            dv.setUint8(p, n);
            break;
          case 'u16':
            dv.setUint16(p, n, true);
            break;
          case 'u16be':
            dv.setUint16(p, n, false);
            break;
          case 'u32':
            dv.setUint32(p, n, true);
            break;
          case 'u32be':
            dv.setUint32(p, n, false);
            break;
          case 'u64':
            writeU64(dv, p, n, true);
            break;
          case 'u64be':
            writeU64(dv, p, n, false);
            break;
        }
      }
      return buf;
    },
    decode(source, at = 0) {
      if (at < 0 || at + size > source.byteLength) {
        throw new CorruptInputError(`${name}: ${size} bytes needed, ${source.byteLength - at} available`, at);
      }
      const dv = view(source);
      const out: Record<string, number | Uint8Array> = {};
      for (const field of fields) {
        const p = at + field.offset;
        switch (field.type) {
          case 'u8':
            out[field.name] = dv.getUint8(p);
            break;
          case 'u16':
            out[field.name] = dv.getUint16(p, true);
            break;
          case 'u16be':
            out[field.name] = dv.getUint16(p, false);
            break;
          case 'u32':
            out[field.name] = dv.getUint32(p, true);
            break;
          case 'u32be':
            out[field.name] = dv.getUint32(p, false);
            break;
          case 'u64':
            out[field.name] = readU64(dv, p, true, name, field.name);
            break;
          case 'u64be':
            out[field.name] = readU64(dv, p, false, name, field.name);
            break;
          default:
            out[field.name] = source.subarray(p, p + field.size);
        }
      }
      return out as StructValue<F>;
    },
  };
}
