import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  encodeFuseError,
  FuseInitFlag,
  FuseOpcode,
  FuseOpenFlag,
  fuseAccessIn,
  fuseAttr,
  fuseAttrOut,
  fuseForgetIn,
  fuseGetattrIn,
  fuseGetxattrIn,
  fuseGetxattrOut,
  fuseInHeader,
  fuseInitIn,
  fuseInitOut,
  fuseInterruptIn,
  fuseOpenIn,
  fuseOpenOut,
  fuseOutHeader,
  fuseReadIn,
  fuseReleaseIn,
  fuseStatfsOut,
  opcodeName,
} from './fuse-protocol.ts';

// sizeof() of each struct in include/uapi/linux/fuse.h (7.38).
test('fuse structs have the sizes of their C declarations', () => {
  const sizes: [{ name: string; size: number }, number][] = [
    [fuseInHeader, 40],
    [fuseOutHeader, 16],
    [fuseInitIn, 64],
    [fuseInitOut, 64],
    [fuseAttr, 88],
    [fuseAttrOut, 16], // + fuse_attr = 104, FUSE_COMPAT_ATTR_OUT_SIZE is 96 (7.8 attr)
    [fuseGetattrIn, 16],
    [fuseOpenIn, 8],
    [fuseOpenOut, 16],
    [fuseReadIn, 40],
    [fuseReleaseIn, 24],
    [fuseAccessIn, 8],
    [fuseGetxattrIn, 8],
    [fuseGetxattrOut, 8],
    [fuseStatfsOut, 80],
    [fuseInterruptIn, 8],
    [fuseForgetIn, 8],
  ];
  for (const [struct, size] of sizes) assert.equal(struct.size, size, struct.name);
});

test('fuse struct fields sit at the offsets of their C declarations', () => {
  assert.equal(fuseInHeader.offsetOf('unique'), 8);
  assert.equal(fuseInHeader.offsetOf('pid'), 32);
  assert.equal(fuseInHeader.offsetOf('totalExtlen'), 36);
  assert.equal(fuseInitOut.offsetOf('maxBackground'), 16);
  assert.equal(fuseInitOut.offsetOf('maxWrite'), 20);
  assert.equal(fuseInitOut.offsetOf('maxPages'), 28);
  assert.equal(fuseInitOut.offsetOf('flags2'), 32);
  assert.equal(fuseAttr.offsetOf('mode'), 60);
  assert.equal(fuseAttr.offsetOf('blksize'), 80);
  assert.equal(fuseReadIn.offsetOf('size'), 16);
  assert.equal(fuseReadIn.offsetOf('flags'), 32);
  assert.equal(fuseStatfsOut.offsetOf('bsize'), 40);
});

test('encodeFuseError stores a negated errno as a two’s complement int32', () => {
  const header = fuseOutHeader.encode({ len: 16, error: encodeFuseError(5), unique: 7 });
  assert.equal(new DataView(header.buffer).getInt32(4, true), -5);
  assert.equal(encodeFuseError(0), 0);
  assert.equal(fuseOutHeader.decode(header).unique, 7);
});

test('opcodeName names known opcodes and numbers the rest', () => {
  assert.equal(opcodeName(15), 'READ');
  assert.equal(opcodeName(51), 'opcode 51');
});

// The installed kernel header, when there is one, is the oracle for the numbers we copied.
const header = '/usr/include/linux/fuse.h';
test('fuse constants match the installed include/linux/fuse.h', {
  skip: !existsSync(header) && `no ${header}`,
}, () => {
  const text = readFileSync(header, 'utf8');
  const value = (name: string): number => {
    const define = new RegExp(`#define\\s+${name}\\s+\\(1 << (\\d+)\\)`).exec(text);
    if (define) return 1 << Number(define[1]);
    const member = new RegExp(`\\b${name}\\s*=\\s*(\\d+)`).exec(text);
    if (member) return Number(member[1]);
    throw new Error(`${name} not found in ${header}`);
  };
  for (const [name, code] of Object.entries(FuseOpcode))
    assert.equal(code, value(`FUSE_${name}`), `FUSE_${name}`);
  for (const [name, flag] of Object.entries(FuseInitFlag))
    assert.equal(flag, value(`FUSE_${name}`), `FUSE_${name}`);
  for (const [name, flag] of Object.entries(FuseOpenFlag))
    assert.equal(flag, value(`FOPEN_${name}`), `FOPEN_${name}`);
});
