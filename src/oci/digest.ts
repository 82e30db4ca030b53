/**
 * Content digests (https://github.com/opencontainers/image-spec/blob/main/descriptor.md#digests) and the
 * verifier every blob stream goes through: bytes are hashed as they pass and the stream fails at its end
 * when the digest or size is wrong (the go-containerregistry `internal/verify` pattern, SPEC §1 last line).
 */
import { createHash, type Hash } from 'node:crypto';
import { ErofsOciError } from '../errors.ts';

export type DigestAlgorithm = 'sha256' | 'sha512';

const hexLength: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export interface ParsedDigest {
  readonly algorithm: DigestAlgorithm;
  readonly hex: string;
}

/** Parses and validates a digest such as `sha256:<64 hex>`. `what` names it in the error. */
export function parseDigest(digest: string, what = 'digest'): ParsedDigest {
  if (!DIGEST_GRAMMAR.test(digest)) {
    throw new ErofsOciError('usage', `Invalid ${what} ${JSON.stringify(digest)}: expected ALGORITHM:HEX`);
  }
  const colon = digest.indexOf(':');
  const algorithm = digest.slice(0, colon);
  const hex = digest.slice(colon + 1);
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw new ErofsOciError(
      'unsupported',
      `Cannot verify ${what} ${digest}: algorithm ${algorithm} is not supported`,
    );
  }
  if (hex.length !== hexLength[algorithm] || !/^[0-9a-f]+$/.test(hex)) {
    throw new ErofsOciError(
      'usage',
      `Invalid ${what} ${JSON.stringify(digest)}: ${algorithm} needs ${hexLength[algorithm]} lowercase hex digits`,
    );
  }
  return { algorithm, hex };
}

export function isDigest(value: string): boolean {
  try {
    parseDigest(value);
    return true;
  } catch {
    // Not a digest: that is the answer, not an error.
    return false;
  }
}

export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

/** Shortens a digest for messages: `sha256:0123456789ab`. */
export function shortDigest(digest: string): string {
  const colon = digest.indexOf(':');
  return colon < 0 ? digest : digest.slice(0, colon + 13);
}

/**
 * Hashes bytes as they pass. `update` fails as soon as more than `size` bytes arrive; `finish` fails when
 * the total or the digest is wrong. Both throw 'digest-mismatch' errors naming `what`.
 */
export class DigestVerifier {
  readonly digest: string;
  readonly size: number;
  readonly what: string;
  #hash: Hash;
  #received = 0;

  constructor(digest: string, size: number, what: string) {
    this.digest = digest;
    this.size = size;
    this.what = what;
    this.#hash = createHash(parseDigest(digest, what).algorithm);
  }

  /** Bytes verified so far: where a resumed download continues. */
  get received(): number {
    return this.#received;
  }

  update(chunk: Uint8Array): void {
    if (this.#received + chunk.byteLength > this.size) {
      throw new ErofsOciError(
        'digest-mismatch',
        `Cannot verify ${this.what}: more than the ${this.size} bytes its descriptor declares`,
      );
    }
    this.#hash.update(chunk);
    this.#received += chunk.byteLength;
  }

  finish(): void {
    if (this.#received !== this.size) {
      throw new ErofsOciError(
        'digest-mismatch',
        `Cannot verify ${this.what}: it has ${this.#received} bytes, its descriptor declares ${this.size}`,
      );
    }
    const actual = `${this.digest.slice(0, this.digest.indexOf(':'))}:${this.#hash.digest('hex')}`;
    if (actual !== this.digest) {
      throw new ErofsOciError(
        'digest-mismatch',
        `Cannot verify ${this.what}: its content has digest ${actual}`,
      );
    }
  }
}

/** Verifies a whole buffer against a digest and size. */
export function verifyBytes(bytes: Uint8Array, digest: string, size: number | undefined, what: string): void {
  const verifier = new DigestVerifier(digest, size ?? bytes.byteLength, what);
  verifier.update(bytes);
  verifier.finish();
}

/** Passes `source` through a verifier: the last `next()` throws when the content is wrong. */
export async function* verifyStream(
  source: AsyncIterable<Uint8Array>,
  digest: string,
  size: number,
  what: string,
): AsyncGenerator<Uint8Array, void, undefined> {
  const verifier = new DigestVerifier(digest, size, what);
  for await (const chunk of source) {
    verifier.update(chunk);
    yield chunk;
  }
  verifier.finish();
}
