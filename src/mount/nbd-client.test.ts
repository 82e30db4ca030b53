import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isErofsOciError } from '../errors.ts';
import { formatNbdAddress, parseNbdAddress } from './nbd-client.ts';

test('parseNbdAddress reads unix:PATH and tcp:HOST:PORT', () => {
  assert.deepEqual(parseNbdAddress('unix:/run/erofs-oci/a.sock'), {
    kind: 'unix',
    path: '/run/erofs-oci/a.sock',
  });
  assert.deepEqual(parseNbdAddress('tcp:127.0.0.1:10809'), { kind: 'tcp', host: '127.0.0.1', port: 10809 });
  assert.deepEqual(parseNbdAddress('tcp:[::1]:10809'), { kind: 'tcp', host: '::1', port: 10809 });
});

test('parseNbdAddress rejects anything else with a usage error', () => {
  for (const text of ['unix:', 'tcp:host', 'tcp:host:0', 'tcp:host:70000', '/path', 'nbd://x']) {
    assert.throws(
      () => parseNbdAddress(text),
      (error) =>
        isErofsOciError(error, 'usage') && error.message.includes('expected unix:PATH or tcp:HOST:PORT'),
      text,
    );
  }
});

test('formatNbdAddress round-trips through parseNbdAddress', () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.record({ kind: fc.constant('unix' as const), path: fc.string({ minLength: 1 }) }),
        fc.record({
          kind: fc.constant('tcp' as const),
          host: fc.domain(),
          port: fc.integer({ min: 1, max: 65535 }),
        }),
      ),
      (address) => {
        assert.deepEqual(parseNbdAddress(formatNbdAddress(address)), { ...address });
      },
    ),
  );
});
