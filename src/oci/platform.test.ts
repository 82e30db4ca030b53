import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import {
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  parsePlatform,
  platformMatches,
  selectPlatform,
} from './platform.ts';

describe('normalizePlatform', () => {
  it('gives arm64 the v8 variant and arm the v7 variant', () => {
    assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'arm64' }), {
      os: 'linux',
      architecture: 'arm64',
      variant: 'v8',
    });
    assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'arm' }), {
      os: 'linux',
      architecture: 'arm',
      variant: 'v7',
    });
    assert.deepEqual(normalizePlatform({ os: 'Linux', architecture: 'aarch64' }), {
      os: 'linux',
      architecture: 'arm64',
      variant: 'v8',
    });
    assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'x86_64' }), {
      os: 'linux',
      architecture: 'amd64',
    });
    assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'armhf' }), {
      os: 'linux',
      architecture: 'arm',
      variant: 'v7',
    });
  });
});

describe('platformMatches', () => {
  const p = (text: string) => parsePlatform(text);
  it('treats arm64 and arm64/v8 as the same', () => {
    assert.ok(platformMatches(p('linux/arm64'), p('linux/arm64/v8')));
    assert.ok(platformMatches(p('linux/arm64/v8'), p('linux/arm64')));
  });
  it('treats arm and arm/v7 as the same, but not arm/v6', () => {
    assert.ok(platformMatches(p('linux/arm'), p('linux/arm/v7')));
    assert.ok(!platformMatches(p('linux/arm'), p('linux/arm/v6')));
    assert.ok(!platformMatches(p('linux/arm/v6'), p('linux/arm/v7')));
  });
  it('lets a platform without variant take any variant of an architecture without a default one', () => {
    assert.ok(platformMatches(p('linux/amd64'), p('linux/amd64/v3')));
    assert.ok(!platformMatches(p('linux/amd64/v2'), p('linux/amd64/v3')));
  });
  it('never matches another OS or architecture', () => {
    assert.ok(!platformMatches(p('linux/amd64'), p('windows/amd64')));
    assert.ok(!platformMatches(p('linux/amd64'), p('linux/arm64')));
  });
});

describe('selectPlatform', () => {
  const entries = [
    { name: 'amd64-v3', platform: { os: 'linux', architecture: 'amd64', variant: 'v3' } },
    { name: 'amd64', platform: { os: 'linux', architecture: 'amd64' } },
    { name: 'arm64', platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    { name: 'arm', platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    { name: 'attestation', platform: { os: 'unknown', architecture: 'unknown' } },
    { name: 'none' },
  ];
  it('prefers an exact match to a variant wildcard', () => {
    assert.equal(selectPlatform(entries, parsePlatform('linux/amd64'), 'x').name, 'amd64');
    assert.equal(selectPlatform(entries, parsePlatform('linux/arm64'), 'x').name, 'arm64');
    assert.equal(selectPlatform(entries, parsePlatform('linux/arm'), 'x').name, 'arm');
  });
  it('lists the offered platforms when nothing matches', () => {
    assert.throws(
      () => selectPlatform(entries, parsePlatform('linux/s390x'), 'index test'),
      (error) =>
        isErofsOciError(error, 'not-found') &&
        error.message ===
          'Cannot find platform linux/s390x in index test: it offers linux/amd64/v3, linux/amd64, linux/arm64/v8, linux/arm/v7',
    );
  });
});

describe('parsePlatform', () => {
  it('parses two and three parts and rejects others', () => {
    assert.deepEqual(parsePlatform('linux/arm/v7'), { os: 'linux', architecture: 'arm', variant: 'v7' });
    assert.equal(formatPlatform(parsePlatform('linux/amd64')), 'linux/amd64');
    for (const bad of ['linux', 'linux/', 'a/b/c/d', '/amd64']) {
      assert.throws(
        () => parsePlatform(bad),
        (error) => isErofsOciError(error, 'usage'),
        bad,
      );
    }
  });
});

describe('hostPlatform', () => {
  it('describes this machine in OCI terms', () => {
    const host = hostPlatform();
    assert.equal(host.os, 'linux');
    const expected: Record<string, string> = { x64: 'amd64', arm64: 'arm64' };
    if (expected[process.arch]) assert.equal(host.architecture, expected[process.arch]);
  });
});
