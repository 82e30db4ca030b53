import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import {
  formatRegistryReference,
  parseRegistryReference,
  parseSourceReference,
  registryApiHost,
} from './reference.ts';

const DIGEST = `sha256:${'a'.repeat(64)}`;

describe('parseRegistryReference', () => {
  const cases: [string, string, string, string | undefined, string | undefined][] = [
    ['alpine', 'docker.io', 'library/alpine', 'latest', undefined],
    ['alpine:3.20', 'docker.io', 'library/alpine', '3.20', undefined],
    ['docker://alpine', 'docker.io', 'library/alpine', 'latest', undefined],
    ['user/app', 'docker.io', 'user/app', 'latest', undefined],
    ['docker.io/alpine', 'docker.io', 'library/alpine', 'latest', undefined],
    ['index.docker.io/library/alpine:1', 'docker.io', 'library/alpine', '1', undefined],
    ['ghcr.io/org/team/app:v1.2-rc_3', 'ghcr.io', 'org/team/app', 'v1.2-rc_3', undefined],
    ['localhost/app', 'localhost', 'app', 'latest', undefined],
    ['localhost:5000/app:x', 'localhost:5000', 'app', 'x', undefined],
    ['127.0.0.1:5000/a/b', '127.0.0.1:5000', 'a/b', 'latest', undefined],
    ['[::1]:5000/a', '[::1]:5000', 'a', 'latest', undefined],
    ['Registry.Example.COM/a', 'registry.example.com', 'a', 'latest', undefined],
    [`alpine@${DIGEST}`, 'docker.io', 'library/alpine', undefined, DIGEST],
    [`host:1/a:t@${DIGEST}`, 'host:1', 'a', 't', DIGEST],
    ['a__b/c-d.e/f---g', 'docker.io', 'a__b/c-d.e/f---g', 'latest', undefined],
  ];
  for (const [input, registry, repository, tag, digest] of cases) {
    it(`parses ${input}`, () => {
      const ref = parseRegistryReference(input);
      assert.deepEqual(ref, { kind: 'registry', registry, repository, tag, digest });
    });
  }

  const invalid: [string, RegExp][] = [
    ['', /empty/],
    ['Alpine', /lowercase/],
    ['host.io/', /empty component/],
    ['a//b', /empty component/],
    ['a:b:c', /not valid/],
    ['alpine:-bad', /tag "-bad" is not valid/],
    ['alpine@sha256:abc', /64 lowercase hex/],
    ['alpine@md5:0123', /not supported/],
    [`a/${'b'.repeat(260)}`, /longer than 255/],
    ['-x.io/a', /registry host/],
  ];
  for (const [input, message] of invalid) {
    it(`rejects ${JSON.stringify(input)}`, () => {
      assert.throws(
        () => parseRegistryReference(input),
        (error) => isErofsOciError(error, 'usage') && message.test(error.message),
      );
    });
  }

  it('round-trips through formatRegistryReference', () => {
    assert.equal(
      formatRegistryReference(parseRegistryReference('alpine')),
      'docker.io/library/alpine:latest',
    );
    assert.equal(formatRegistryReference(parseRegistryReference(`h:1/a@${DIGEST}`)), `h:1/a@${DIGEST}`);
  });
});

describe('registryApiHost', () => {
  it('maps docker.io to registry-1.docker.io and leaves others alone', () => {
    assert.equal(registryApiHost('docker.io'), 'registry-1.docker.io');
    assert.equal(registryApiHost('localhost:5000'), 'localhost:5000');
  });
});

describe('parseSourceReference', () => {
  it('parses oci: with tag, digest and neither', () => {
    assert.deepEqual(parseSourceReference('oci:/tmp/lay:v1'), {
      kind: 'oci',
      path: '/tmp/lay',
      tag: 'v1',
      digest: undefined,
    });
    assert.deepEqual(parseSourceReference('oci:lay'), {
      kind: 'oci',
      path: 'lay',
      tag: undefined,
      digest: undefined,
    });
    assert.deepEqual(parseSourceReference(`oci:/a@b/lay@${DIGEST}`), {
      kind: 'oci',
      path: '/a@b/lay',
      tag: undefined,
      digest: DIGEST,
    });
  });
  it('parses archives', () => {
    assert.deepEqual(parseSourceReference('oci-archive:/x.tar:t'), {
      kind: 'oci-archive',
      path: '/x.tar',
      tag: 't',
    });
    assert.deepEqual(parseSourceReference('docker-archive:/x.tar'), {
      kind: 'docker-archive',
      path: '/x.tar',
      reference: undefined,
    });
    assert.deepEqual(parseSourceReference('docker-archive:/x.tar:app:1'), {
      kind: 'docker-archive',
      path: '/x.tar',
      reference: 'app:1',
    });
  });
  it('treats the rest as registry references', () => {
    assert.equal(parseSourceReference('docker://busybox').kind, 'registry');
    assert.equal(parseSourceReference('quay.io/a/b:1').kind, 'registry');
  });
  it('rejects file-tree sources, unknown transports and empty paths', () => {
    for (const input of ['tar:x.tar', 'dir:/x', 'http://x/y', 'oci:', 'oci-archive:']) {
      assert.throws(
        () => parseSourceReference(input),
        (error) => isErofsOciError(error, 'usage'),
        input,
      );
    }
  });
});
