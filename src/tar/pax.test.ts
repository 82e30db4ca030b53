import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { isErofsOciError } from '../errors.ts';
import { applyPaxRecords, emptyPaxValues, type PaxFailure, parsePaxRecords, parsePaxTime } from './pax.ts';

/** Encodes records the way every pax writer does: the length counts itself. */
function record(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let length = body.length + 1;
  while (`${length}${body}`.length !== length) length++;
  return `${length}${body}`;
}

const bytes = (s: string): Uint8Array => Buffer.from(s, 'latin1');

class Failed extends Error {
  readonly reason: string;
  readonly at: number;
  constructor(reason: string, at: number) {
    super(reason);
    this.reason = reason;
    this.at = at;
  }
}
const fail: PaxFailure = (reason, at) => {
  throw new Failed(reason, at);
};

function failureOf(action: () => unknown): { reason: string; at: number } {
  try {
    action();
  } catch (error) {
    if (error instanceof Failed) return { reason: error.reason, at: error.at };
    throw error;
  }
  assert.fail('expected a failure');
}

describe('parsePaxRecords', () => {
  test('parsePaxRecords splits records whose values hold newlines, "=" and any bytes', () => {
    const data =
      record('path', 'a/b=c\nd') + record('SCHILY.xattr.user.bin', '\x00\xff\n') + record('mtime', '1.5');
    assert.deepEqual(parsePaxRecords(bytes(data), fail), [
      { key: 'path', value: 'a/b=c\nd', at: 0 },
      { key: 'SCHILY.xattr.user.bin', value: '\x00\xff\n', at: record('path', 'a/b=c\nd').length },
      { key: 'mtime', value: '1.5', at: data.length - record('mtime', '1.5').length },
    ]);
  });

  test('parsePaxRecords ignores NUL padding after the last record', () => {
    assert.deepEqual(parsePaxRecords(bytes(`${record('uid', '5')}\0\0\0`), fail), [
      { key: 'uid', value: '5', at: 0 },
    ]);
  });

  test('parsePaxRecords names what is wrong with a malformed record and where', () => {
    const good = record('uid', '5');
    assert.deepEqual(
      failureOf(() => parsePaxRecords(bytes(`${good}x9 a=b\n`), fail)),
      {
        reason: 'record length "x9" is not a decimal number',
        at: good.length,
      },
    );
    assert.deepEqual(
      failureOf(() => parsePaxRecords(bytes('11 path=abc\n'), fail)),
      {
        reason: 'record of length 11 does not end with a newline',
        at: 0,
      },
    );
    assert.deepEqual(
      failureOf(() => parsePaxRecords(bytes('99 path=abc\n'), fail)),
      {
        reason: 'record length 99 runs past the end of the header',
        at: 0,
      },
    );
    assert.deepEqual(
      failureOf(() => parsePaxRecords(bytes('11 pathabc\n'), fail)),
      {
        reason: 'record "pathabc" has no \'=\'',
        at: 0,
      },
    );
    assert.deepEqual(
      failureOf(() => parsePaxRecords(bytes('2 \n'), fail)),
      { reason: 'record length 2 is too short', at: 0 },
    );
    assert.deepEqual(
      failureOf(() => parsePaxRecords(bytes('7 =abc\n'), fail)),
      { reason: 'record has an empty keyword', at: 0 },
    );
    assert.deepEqual(
      failureOf(() => parsePaxRecords(bytes('12path=abc\n'), fail)).reason,
      'record length "12path=abc\\n" is not a decimal number',
    );
  });

  test('parsePaxRecords either parses or reports any bytes, never throws anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (data) => {
        try {
          parsePaxRecords(data, fail);
        } catch (error) {
          assert.ok(error instanceof Failed, String(error));
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('parsePaxTime', () => {
  test('parsePaxTime keeps nanoseconds and handles negative times', () => {
    assert.deepEqual(parsePaxTime('1700000000.123456789'), { sec: 1700000000, nsec: 123456789 });
    assert.deepEqual(parsePaxTime('1700000000.1234567899'), { sec: 1700000000, nsec: 123456789 });
    assert.deepEqual(parsePaxTime('1700000000.5'), { sec: 1700000000, nsec: 500000000 });
    assert.deepEqual(parsePaxTime('1700000000'), { sec: 1700000000, nsec: 0 });
    assert.deepEqual(parsePaxTime('1.'), { sec: 1, nsec: 0 });
    assert.deepEqual(parsePaxTime('-1.25'), { sec: -2, nsec: 750000000 });
    assert.deepEqual(parsePaxTime('-5'), { sec: -5, nsec: 0 });
    assert.deepEqual(parsePaxTime('-0.5'), { sec: -1, nsec: 500000000 });
    assert.deepEqual(parsePaxTime('-0'), { sec: 0, nsec: 0 });
  });

  test('parsePaxTime rejects what is not a decimal time', () => {
    for (const bad of ['', '1e9', 'abc', '1.5.5', ' 1', '+1', '--1', '99999999999999999']) {
      assert.equal(parsePaxTime(bad), undefined, bad);
    }
  });
});

describe('applyPaxRecords', () => {
  const rec = (key: string, value: string) => ({ key, value, at: 7 });

  test('applyPaxRecords takes path, linkpath, size, ids, mtime, device numbers and xattrs for an entry', () => {
    const into = emptyPaxValues();
    applyPaxRecords(
      [
        rec('path', 'p\xff'),
        rec('linkpath', 'l'),
        rec('size', '9007199254740991'),
        rec('uid', '4294967296'),
        rec('gid', '0'),
        rec('mtime', '-1.5'),
        rec('SCHILY.devmajor', '300'),
        rec('SCHILY.devminor', '70000'),
        rec('SCHILY.xattr.user.a', '\x00\xff'),
        rec('SCHILY.xattr.user.empty', ''),
        rec('LIBARCHIVE.xattr.user.%3D%25x', Buffer.from([1, 2, 250]).toString('base64')),
        rec('LIBARCHIVE.xattr.user.nopad', 'AQ'),
        rec('atime', '5'),
        rec('uname', 'root'),
        rec('SCHILY.acl.access', 'user::rwx'),
      ],
      into,
      'entry',
      fail,
    );
    assert.deepEqual(into, {
      path: 'p\xff',
      linkpath: 'l',
      size: 2 ** 53 - 1,
      uid: 2 ** 32,
      gid: 0,
      mtime: { sec: -2, nsec: 500000000 },
      devmajor: 300,
      devminor: 70000,
      xattrs: new Map([
        ['user.a', Buffer.from([0, 0xff])],
        ['user.empty', Buffer.alloc(0)],
        ['user.=%x', Buffer.from([1, 2, 250])],
        ['user.nopad', Buffer.from([1])],
      ]),
    });
  });

  test('applyPaxRecords: an empty value deletes (null for an entry, unset for globals)', () => {
    const entry = emptyPaxValues();
    applyPaxRecords([rec('uid', '5'), rec('uid', ''), rec('path', '')], entry, 'entry', fail);
    assert.equal(entry.uid, null);
    assert.equal(entry.path, null);
    const global = emptyPaxValues();
    applyPaxRecords([rec('uid', '5'), rec('uid', '')], global, 'global', fail);
    assert.equal(global.uid, undefined);
  });

  test('applyPaxRecords ignores path, linkpath and size in a global header', () => {
    const global = emptyPaxValues();
    applyPaxRecords(
      [
        rec('path', 'x'),
        rec('linkpath', 'y'),
        rec('size', '5'),
        rec('gid', '7'),
        rec('SCHILY.xattr.user.g', 'v'),
      ],
      global,
      'global',
      fail,
    );
    assert.deepEqual(global, { gid: 7, xattrs: new Map([['user.g', Buffer.from('v')]]) });
  });

  test('applyPaxRecords reports numbers that are not numbers, at their record', () => {
    for (const [key, value] of [
      ['size', '12a'],
      ['uid', '-1'],
      ['gid', ' 1'],
      ['size', '99999999999999999'],
      ['mtime', 'yesterday'],
    ] as const) {
      assert.deepEqual(
        failureOf(() => applyPaxRecords([rec(key, value)], emptyPaxValues(), 'entry', fail)),
        { reason: `${key} ${JSON.stringify(value)} is not a number`, at: 7 },
      );
    }
    assert.deepEqual(
      failureOf(() =>
        applyPaxRecords([rec('LIBARCHIVE.xattr.user.x', '!!')], emptyPaxValues(), 'entry', fail),
      ),
      { reason: 'LIBARCHIVE.xattr.user.x value is not base64', at: 7 },
    );
  });

  test('applyPaxRecords refuses GNU sparse files as unsupported', () => {
    assert.throws(
      () => applyPaxRecords([rec('GNU.sparse.major', '1')], emptyPaxValues(), 'entry', fail),
      (e) => isErofsOciError(e, 'unsupported') && /GNU sparse files are not supported/.test(e.message),
    );
  });
});
