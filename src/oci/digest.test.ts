import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isErofsOciError } from '../errors.ts';
import { DigestVerifier, digestOf, parseDigest, verifyStream } from './digest.ts';

async function* chunks(parts: Uint8Array[]) {
  yield* parts;
}

async function collect(source: AsyncIterable<Uint8Array>): Promise<number> {
  let total = 0;
  for await (const chunk of source) total += chunk.byteLength;
  return total;
}

describe('parseDigest', () => {
  it('accepts sha256 and sha512 and rejects the rest', () => {
    assert.deepEqual(parseDigest(`sha256:${'0'.repeat(64)}`), { algorithm: 'sha256', hex: '0'.repeat(64) });
    assert.equal(parseDigest(`sha512:${'f'.repeat(128)}`).algorithm, 'sha512');
    assert.throws(
      () => parseDigest(`sha256:${'A'.repeat(64)}`),
      (e) => isErofsOciError(e, 'usage'),
    );
    assert.throws(
      () => parseDigest('sha256'),
      (e) => isErofsOciError(e, 'usage'),
    );
    assert.throws(
      () => parseDigest(`blake3:${'0'.repeat(64)}`),
      (e) => isErofsOciError(e, 'unsupported'),
    );
  });
});

describe('verifyStream', () => {
  it('passes any content split anywhere when digest and size match (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 2000 }),
        fc.array(fc.nat(2000), { maxLength: 8 }),
        async (data, cuts) => {
          const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
          const parts: Uint8Array[] = [];
          let last = 0;
          for (const p of [...points, data.length]) {
            parts.push(data.subarray(last, p));
            last = p;
          }
          assert.equal(
            await collect(verifyStream(chunks(parts), digestOf(data), data.length, 'blob')),
            data.length,
          );
        },
      ),
    );
  });

  it('fails at the end when one byte is flipped', async () => {
    const data = Buffer.from('hello world');
    const digest = digestOf(data);
    const flipped = Buffer.from(data);
    flipped[4]! ^= 1;
    const actual = `sha256:${createHash('sha256').update(flipped).digest('hex')}`;
    let seen = 0;
    await assert.rejects(
      (async () => {
        for await (const chunk of verifyStream(
          chunks([flipped.subarray(0, 5), flipped.subarray(5)]),
          digest,
          data.length,
          'blob x',
        )) {
          seen += chunk.byteLength;
        }
      })(),
      (error) =>
        isErofsOciError(error, 'digest-mismatch') &&
        error.message === `Cannot verify blob x: its content has digest ${actual}`,
    );
    assert.equal(seen, data.length, 'the bytes flow before the verdict at EOF');
  });

  it('fails as soon as there are more bytes than declared, and at the end when fewer', async () => {
    const data = Buffer.from('12345');
    await assert.rejects(
      collect(verifyStream(chunks([data]), digestOf(data), 4, 'b')),
      /more than the 4 bytes/,
    );
    await assert.rejects(
      collect(verifyStream(chunks([data]), digestOf(data), 6, 'b')),
      /it has 5 bytes, its descriptor declares 6/,
    );
  });

  it('counts received bytes for resuming', () => {
    const verifier = new DigestVerifier(digestOf(Buffer.from('abc')), 3, 'b');
    verifier.update(Buffer.from('ab'));
    assert.equal(verifier.received, 2);
    verifier.update(Buffer.from('c'));
    verifier.finish();
  });
});
