import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { Field, FieldSpec, Struct } from '../io/struct.ts';
import {
  chunkIndex,
  decodeDev,
  deviceSlot,
  dirent,
  encodeDev,
  inodeCompact,
  inodeExtended,
  superBlock,
  xattrEntry,
  xattrIbodyHeader,
} from './format.ts';

/**
 * Sizes and offsets as erofs-utils include/erofs_fs.h (1.9) lays them out; the offsets are worked out by hand
 * from the header's member list so that a field inserted, dropped or resized in format.ts is caught here.
 */
const expected: { struct: Struct<readonly FieldSpec[]>; size: number; offsets: Record<string, number> }[] = [
  {
    struct: superBlock,
    size: 128,
    offsets: {
      magic: 0,
      checksum: 4,
      featureCompat: 8,
      blkszbits: 12,
      sbExtslots: 13,
      rootnid2b: 14,
      inos: 16,
      epoch: 24,
      fixedNsec: 32,
      blocksLo: 36,
      metaBlkaddr: 40,
      xattrBlkaddr: 44,
      uuid: 48,
      volumeName: 64,
      featureIncompat: 80,
      availableComprAlgs: 84,
      extraDevices: 86,
      devtSlotoff: 88,
      dirblkbits: 90,
      xattrPrefixCount: 91,
      xattrPrefixStart: 92,
      packedNid: 96,
      xattrFilterReserved: 104,
      ishareXattrPrefixId: 105,
      buildTime: 108,
      rootnid8b: 112,
      reserved2: 120,
    },
  },
  {
    struct: deviceSlot,
    size: 128,
    offsets: { tag: 0, blocksLo: 64, uniaddrLo: 68, blocksHi: 72, uniaddrHi: 74, reserved: 76 },
  },
  {
    struct: inodeCompact,
    size: 32,
    offsets: {
      format: 0,
      xattrIcount: 2,
      mode: 4,
      nlink: 6,
      size: 8,
      mtime: 12,
      u: 16,
      ino: 20,
      uid: 24,
      gid: 26,
      reserved: 28,
    },
  },
  {
    struct: inodeExtended,
    size: 64,
    offsets: {
      format: 0,
      xattrIcount: 2,
      mode: 4,
      nb: 6,
      size: 8,
      u: 16,
      ino: 20,
      uid: 24,
      gid: 28,
      mtime: 32,
      mtimeNsec: 40,
      nlink: 44,
      reserved2: 48,
    },
  },
  { struct: xattrIbodyHeader, size: 12, offsets: { nameFilter: 0, sharedCount: 4, reserved2: 5 } },
  { struct: xattrEntry, size: 4, offsets: { nameLen: 0, nameIndex: 1, valueSize: 2 } },
  { struct: chunkIndex, size: 8, offsets: { startblkHi: 0, deviceId: 2, startblkLo: 4 } },
  { struct: dirent, size: 12, offsets: { nid: 0, nameoff: 8, fileType: 10, reserved: 11 } },
];

for (const { struct, size, offsets } of expected) {
  test(`${struct.name} is ${size} bytes`, () => {
    assert.equal(struct.size, size);
  });

  test(`${struct.name} fields cover every byte once`, () => {
    let end = 0;
    for (const field of struct.fields) {
      assert.equal(
        field.offset,
        end,
        `${struct.name}.${field.name} starts at ${field.offset}, expected ${end}`,
      );
      assert.ok(field.size > 0, `${struct.name}.${field.name} is empty`);
      end = field.offset + field.size;
    }
    assert.equal(end, size);
  });

  test(`${struct.name} field offsets match include/erofs_fs.h`, () => {
    for (const [name, offset] of Object.entries(offsets)) {
      assert.equal(struct.offsetOf(name), offset, `${struct.name}.${name}`);
    }
  });

  test(`${struct.name} decode(encode(v)) returns v`, () => {
    fc.assert(
      fc.property(fc.tuple(...struct.fields.map(arbitraryFor)), fc.nat({ max: 16 }), (values, at) => {
        const value = Object.fromEntries(struct.fields.map((f, i) => [f.name, values[i]]));
        const buf = new Uint8Array(at + struct.size + 3).fill(0xa5);
        struct.encode(value, buf, at);
        assert.deepEqual(struct.decode(buf, at), value);
        // Bytes outside the struct are left alone.
        assert.ok(buf.subarray(0, at).every((b) => b === 0xa5));
        assert.ok(buf.subarray(at + struct.size).every((b) => b === 0xa5));
      }),
      { numRuns: 200 },
    );
  });
}

function arbitraryFor(field: Field): fc.Arbitrary<number | Uint8Array> {
  if (typeof field.type === 'object') return fc.uint8Array({ minLength: field.size, maxLength: field.size });
  if (field.size === 8) return fc.maxSafeNat();
  return fc.integer({ min: 0, max: 2 ** (field.size * 8) - 1 });
}

test('superBlock decodes little-endian fields at their header offsets', () => {
  const buf = new Uint8Array(128);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, 0xe0f5e1e2, true);
  dv.setUint32(40, 0x01020304, true);
  dv.setUint16(86, 3, true);
  dv.setUint32(108, 1234567, true);
  const sb = superBlock.decode(buf);
  assert.equal(sb.magic, 0xe0f5e1e2);
  assert.equal(sb.metaBlkaddr, 0x01020304);
  assert.equal(sb.extraDevices, 3);
  assert.equal(sb.buildTime, 1234567);
});

test('encodeDev and decodeDev round-trip Linux new_encode_dev for 12-bit majors and 20-bit minors', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xfff }), fc.integer({ min: 0, max: 0xfffff }), (major, minor) => {
      assert.deepEqual(decodeDev(encodeDev(major, minor)), { major, minor });
    }),
  );
  // makedev(8, 1) as stored by mkfs.erofs: 0x801; makedev(1, 3): 0x103; minor 256 moves to bits 20+.
  assert.equal(encodeDev(8, 1), 0x801);
  assert.equal(encodeDev(1, 3), 0x103);
  assert.equal(encodeDev(0, 256), 0x100000);
});
