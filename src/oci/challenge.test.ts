import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseWwwAuthenticate } from './challenge.ts';

describe('parseWwwAuthenticate', () => {
  it('parses a distribution Bearer challenge', () => {
    assert.deepEqual(
      parseWwwAuthenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      ),
      [
        {
          scheme: 'bearer',
          params: {
            realm: 'https://auth.docker.io/token',
            service: 'registry.docker.io',
            scope: 'repository:library/alpine:pull',
          },
        },
      ],
    );
  });

  it('parses insufficient_scope with several scopes and spaces around =', () => {
    const [challenge] = parseWwwAuthenticate(
      'Bearer realm = "https://a/token" , service="s", scope="repository:a:pull repository:b:pull", error="insufficient_scope"',
    );
    assert.equal(challenge?.params.error, 'insufficient_scope');
    assert.equal(challenge?.params.scope, 'repository:a:pull repository:b:pull');
    assert.equal(challenge?.params.realm, 'https://a/token');
  });

  it('parses several challenges in one header and across headers', () => {
    const challenges = parseWwwAuthenticate([
      'Basic realm="r1", Bearer realm="r2",service=x',
      'Negotiate abc123==, Digest realm=plain',
    ]);
    assert.deepEqual(
      challenges.map((c) => [c.scheme, c.params, c.token68]),
      [
        ['basic', { realm: 'r1' }, undefined],
        ['bearer', { realm: 'r2', service: 'x' }, undefined],
        ['negotiate', {}, 'abc123=='],
        ['digest', { realm: 'plain' }, undefined],
      ],
    );
  });

  it('unescapes quoted strings and keeps commas inside them', () => {
    const [challenge] = parseWwwAuthenticate('Basic realm="a \\"quoted\\", comma\\\\ and \\x"');
    assert.equal(challenge?.params.realm, 'a "quoted", comma\\ and x');
  });

  it('lowercases scheme and parameter names but not values', () => {
    const [challenge] = parseWwwAuthenticate('BEARER Realm="HTTPS://X/Token"');
    assert.deepEqual(challenge, { scheme: 'bearer', params: { realm: 'HTTPS://X/Token' } });
  });

  it('returns nothing for an absent or empty header', () => {
    assert.deepEqual(parseWwwAuthenticate(undefined), []);
    assert.deepEqual(parseWwwAuthenticate(''), []);
  });

  it('round-trips any parameter values through quoting (property)', () => {
    const name = fc.stringMatching(/^[a-z][a-z0-9_-]{0,8}$/);
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(name, fc.string()), { selector: ([n]) => n, maxLength: 5 }),
        (params) => {
          const quoted = params.map(([n, v]) => `${n}="${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`).join(', ');
          const [challenge] = parseWwwAuthenticate(`Bearer ${quoted}, Basic realm="z"`);
          assert.deepEqual(challenge?.params, Object.fromEntries(params));
        },
      ),
    );
  });
});
