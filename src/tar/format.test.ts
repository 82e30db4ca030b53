import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  HeaderBlock,
  headerChecksums,
  isZeroBlock,
  paddingAfter,
  parseNumber,
  TAR_BLOCK_SIZE,
  tarHeader,
} from './format.ts';

/** Offsets and sizes of `struct posix_header` in GNU tar's src/tar.h (the comments there give them). */
const GNU_TAR_H: Array<[string, number, number]> = [
  ['name', 0, 100],
  ['mode', 100, 8],
  ['uid', 108, 8],
  ['gid', 116, 8],
  ['size', 124, 12],
  ['mtime', 136, 12],
  ['chksum', 148, 8],
  ['typeflag', 156, 1],
  ['linkname', 157, 100],
  ['magic', 257, 6],
  ['version', 263, 2],
  ['uname', 265, 32],
  ['gname', 297, 32],
  ['devmajor', 329, 8],
  ['devminor', 337, 8],
  ['prefix', 345, 155],
  ['padding', 500, 12],
];

/** A header block as Python's tarfile writes it (an independent writer). */
function pythonHeader(format: 'USTAR' | 'GNU' | 'PAX', name: string, extra = ''): Buffer {
  const script = `
import sys, tarfile
t = tarfile.TarInfo(${JSON.stringify(name)})
t.size = 5; t.mode = 0o4755; t.uid = 1000; t.gid = 100; t.mtime = 1700000000
${extra}
sys.stdout.buffer.write(t.tobuf(tarfile.${format}_FORMAT, 'utf-8', 'surrogateescape'))`;
  return execFileSync('python3', ['-c', script]);
}

describe('tarHeader', () => {
  test('tarHeader matches the field offsets and sizes of GNU tar.h and tiles 512 bytes', () => {
    assert.equal(tarHeader.size, TAR_BLOCK_SIZE);
    assert.deepEqual(
      tarHeader.fields.map((f) => [f.name, f.offset, f.size]),
      GNU_TAR_H,
    );
    let next = 0;
    for (const field of tarHeader.fields) {
      assert.equal(field.offset, next, `${field.name} starts where the previous field ends`);
      next += field.size;
    }
    assert.equal(next, TAR_BLOCK_SIZE);
  });
});

describe('parseNumber', () => {
  const ascii = (s: string): Uint8Array => Buffer.from(s, 'latin1');
  test('parseNumber reads octal with the terminators and padding real writers use', () => {
    assert.equal(parseNumber(ascii('0000644\0')), 0o644);
    assert.equal(parseNumber(ascii('  644 \0\0')), 0o644);
    assert.equal(parseNumber(ascii('00000001750 ')), 1000);
    assert.equal(parseNumber(ascii('777777777777')), 8 ** 12 - 1); // 12 digits, no terminator
    assert.equal(parseNumber(ascii('\0\0\0\0\0\0\0\0')), 0);
    assert.equal(parseNumber(ascii('        ')), 0);
    assert.equal(parseNumber(ascii('\x000644\0\0')), 0o644); // NUL left by an overflowing previous field
  });

  test('parseNumber rejects non-octal content', () => {
    assert.equal(parseNumber(ascii('0000648\0')), undefined);
    assert.equal(parseNumber(ascii('64 4\0\0\0\0')), undefined);
    assert.equal(parseNumber(ascii('-000001\0')), undefined);
    assert.equal(parseNumber(ascii('abc\0\0\0\0\0')), undefined);
    assert.equal(parseNumber(new Uint8Array(0)), undefined);
  });

  test('parseNumber reads GNU base-256, positive and negative, up to 2^53', () => {
    assert.equal(parseNumber(Uint8Array.from([0x80, 0, 0, 0, 0, 0, 0x01, 0x00])), 256);
    assert.equal(parseNumber(Uint8Array.from([0x80, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0])), 2 ** 32);
    assert.equal(
      parseNumber(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe])),
      -2,
    );
    assert.equal(parseNumber(Uint8Array.from([0x80, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0])), undefined); // 2^77
    assert.equal(
      parseNumber(Uint8Array.from([0x80, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])),
      2 ** 53 - 1,
    );
    assert.equal(parseNumber(Uint8Array.from([0x80, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0])), undefined); // 2^53
  });

  test('parseNumber agrees with Python tarfile on numbers it writes (octal and GNU base-256)', () => {
    const header = pythonHeader('GNU', 'n', 't.uid = 2**40; t.gid = 0o7777777; t.mtime = -12345');
    const block = new HeaderBlock(header);
    assert.equal(block.number('uid'), 2 ** 40);
    assert.equal(block.number('gid'), 0o7777777);
    assert.equal(block.number('mtime'), -12345);
    assert.equal(block.number('size'), 5);
    assert.equal(block.number('mode'), 0o4755);
  });

  test('parseNumber parses every octal string of every width', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 8 ** 11 - 1 }), fc.integer({ min: 1, max: 12 }), (n, width) => {
        const digits = n.toString(8);
        fc.pre(digits.length <= width);
        const field = Buffer.alloc(12);
        field.write(digits.padStart(width, '0'), 'latin1');
        assert.equal(parseNumber(field), n);
      }),
    );
  });
});

describe('headerChecksums', () => {
  test('headerChecksums computes the unsigned and the signed sum with the field read as spaces', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 512, maxLength: 512 }), (block) => {
        let unsigned = 0;
        let signed = 0;
        for (let i = 0; i < 512; i++) {
          const b = i >= 148 && i < 156 ? 0x20 : block[i]!;
          unsigned += b;
          signed += b > 127 ? b - 256 : b;
        }
        assert.deepEqual(headerChecksums(block), { unsigned, signed });
      }),
    );
  });

  test('headerChecksums matches the checksum Python tarfile records', () => {
    const header = pythonHeader('PAX', 'dir/file');
    assert.equal(new HeaderBlock(header).number('chksum'), headerChecksums(header).unsigned);
  });
});

describe('HeaderBlock', () => {
  test('HeaderBlock tells ustar, GNU, star and v7 headers apart', () => {
    assert.equal(new HeaderBlock(pythonHeader('USTAR', 'a')).format, 'ustar');
    assert.equal(new HeaderBlock(pythonHeader('PAX', 'a')).format, 'ustar');
    assert.equal(new HeaderBlock(pythonHeader('GNU', 'a')).format, 'gnu');
    const v7 = Buffer.from(pythonHeader('USTAR', 'a'));
    v7.fill(0, 257);
    assert.equal(new HeaderBlock(v7).format, 'v7');
    const star = Buffer.from(pythonHeader('USTAR', 'a'));
    star.write('tar\0', 508, 'latin1');
    assert.equal(new HeaderBlock(star).format, 'star');
  });

  test('HeaderBlock reads string fields up to their NUL or their full width, as bytes', () => {
    const header = pythonHeader('USTAR', `${'p'.repeat(150)}/${'n'.repeat(100)}`);
    const block = new HeaderBlock(header);
    assert.equal(block.string('name'), 'n'.repeat(100)); // fills the field: no NUL
    assert.equal(block.string('prefix'), 'p'.repeat(150));
    assert.equal(block.string('prefix', 131), 'p'.repeat(131));
    assert.equal(block.typeflag, 0x30);
    const latin1 = pythonHeader('GNU', 'caf\udce9'); // the byte 0xe9 through surrogateescape
    assert.equal(new HeaderBlock(latin1).string('name'), 'caf\xe9');
  });
});

describe('isZeroBlock', () => {
  test('isZeroBlock ignores the checksum field only', () => {
    const block = new Uint8Array(512);
    assert.equal(isZeroBlock(block), true);
    block.set([0x30, 0x30], 150);
    assert.equal(isZeroBlock(block), true);
    block[511] = 1;
    assert.equal(isZeroBlock(block), false);
  });
});

describe('paddingAfter', () => {
  test('paddingAfter pads data to the next 512-byte boundary', () => {
    assert.deepEqual([0, 1, 511, 512, 513, 1024].map(paddingAfter), [0, 511, 1, 0, 511, 0]);
  });
});
