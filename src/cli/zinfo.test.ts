import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { ErofsOciError } from '../errors.ts';
import { buildZinfo } from '../gzip-index/builder.ts';
import { chunked, gzipMember, testData } from '../gzip-index/testing.ts';
import { decodeZinfo, encodeZinfo } from '../gzip-index/zinfo.ts';
import { parseSize, zinfoCommand } from './zinfo.ts';

const dir = mkdtempSync(join(tmpdir(), 'erofs-oci-zinfo-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function sink(): { stream: Writable; bytes: () => Buffer } {
  const parts: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      parts.push(chunk);
      callback();
    },
  });
  return { stream, bytes: () => Buffer.concat(parts) };
}

function io(stdin: AsyncIterable<Uint8Array> = chunked(new Uint8Array(0), [1])) {
  const stdout = sink();
  const stderr = sink();
  return { io: { stdin, stdout: stdout.stream, stderr: stderr.stream }, stdout, stderr };
}

const data = testData(600_000, 42, 'mixed');
const gz = gzipMember(data, { zlib: { memLevel: 2 } });
const gzPath = join(dir, 'layer.tar.gz');
writeFileSync(gzPath, gz);

describe('zinfoCommand', () => {
  it('zinfoCommand writes the index of a gzip file', async () => {
    const out = join(dir, 'a.zinfo');
    const run = io();
    assert.equal(await zinfoCommand(['--span', '64K', gzPath, out], run.io), 0);
    const expected = encodeZinfo((await buildZinfo(chunked(gz, [1 << 20]), { span: 65536 })).zinfo);
    assert.ok(readFileSync(out).equals(Buffer.from(expected)));
    assert.equal(decodeZinfo(readFileSync(out)).spanSize, 65536);
    assert.equal(run.stdout.bytes().length, 0);
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.includes('.tmp-')),
      [],
    );
  });

  it('zinfoCommand reads stdin and writes stdout with -', async () => {
    const run = io(chunked(gz, [10_000]));
    assert.equal(await zinfoCommand(['-', '-'], run.io), 0);
    const zinfo = decodeZinfo(run.stdout.bytes());
    assert.equal(zinfo.spanSize, 4 * 1024 * 1024);
    assert.equal(zinfo.checkpoints.length, 1);
  });

  it('zinfoCommand prints a JSON summary with --json', async () => {
    const run = io();
    assert.equal(await zinfoCommand(['--json', '--span=131072', gzPath, join(dir, 'b.zinfo')], run.io), 0);
    const summary = JSON.parse(run.stdout.bytes().toString());
    assert.equal(summary.uncompressedSize, 600_000);
    assert.equal(summary.compressedSize, gz.byteLength);
    assert.equal(summary.span, 131072);
    assert.equal(summary.zinfoSize, 12 + summary.checkpoints * 32785);
  });

  it('zinfoCommand fails with corrupt for a truncated input and leaves no output', async () => {
    const bad = join(dir, 'bad.gz');
    writeFileSync(bad, gz.subarray(0, gz.byteLength - 100));
    const out = join(dir, 'bad.zinfo');
    await assert.rejects(
      zinfoCommand([bad, out], io().io),
      (e: unknown) => e instanceof ErofsOciError && e.code === 'corrupt' && /truncated/.test(e.message),
    );
    assert.equal(existsSync(out), false);
  });

  it('zinfoCommand reports a missing input as not-found', async () => {
    await assert.rejects(
      zinfoCommand([join(dir, 'missing.gz'), join(dir, 'c.zinfo')], io().io),
      (e: unknown) =>
        e instanceof ErofsOciError &&
        e.code === 'not-found' &&
        e.message === `Cannot read ${join(dir, 'missing.gz')}: no such file or directory`,
    );
  });

  it('zinfoCommand refuses wrong usage', async () => {
    await assert.rejects(
      zinfoCommand([gzPath], io().io),
      (e: unknown) => e instanceof ErofsOciError && e.code === 'usage',
    );
    await assert.rejects(
      zinfoCommand(['--span', '0', gzPath, join(dir, 'd.zinfo')], io().io),
      /Invalid --span "0": expected a positive size/,
    );
    await assert.rejects(
      zinfoCommand(['--json', gzPath, '-'], io().io),
      /--json cannot be used with OUTPUT -/,
    );
    await assert.rejects(zinfoCommand(['--bogus', gzPath, '-'], io().io), {
      code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION',
    });
  });

  it('parseSize takes bytes and binary suffixes', () => {
    assert.equal(parseSize('4194304'), 4194304);
    assert.equal(parseSize('4M'), 4194304);
    assert.equal(parseSize('64k'), 65536);
    assert.equal(parseSize('1GiB'), 1024 ** 3);
    for (const bad of ['', '-1', '1.5M', 'M', '4T']) assert.throws(() => parseSize(bad), /Invalid --span/);
  });
});
