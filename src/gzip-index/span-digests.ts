/**
 * Span digests: a SHA-256 of each zinfo span's uncompressed bytes, so that a hybrid mount can check every
 * span it inflates (the zinfo itself checks only that a span fits the blob's structure, windows and
 * trailers, not that the bytes are the ones the image was built from). They live in a sidecar file beside
 * the zinfo, `ZINFO.span-sha256`, so the zinfo stays byte-for-byte what SOCI and erofs-utils read and write.
 *
 * The sidecar is JSON, declared here once:
 *   { "format": "erofs-oci-span-digests", "version": 1, "algorithm": "sha256",
 *     "zinfo": "sha256:<digest of the zinfo file it goes with>",
 *     "spans": ["<hex>", …] }
 * with one entry per checkpoint: span i is the uncompressed bytes from checkpoint i's offset to checkpoint
 * i+1's, the last one to the end of the gzip stream.
 */
import { createHash } from 'node:crypto';
import { CorruptInputError, ErofsOciError } from '../errors.ts';

export const SPAN_DIGESTS_SUFFIX = '.span-sha256';
const FORMAT = 'erofs-oci-span-digests';
const VERSION = 1;
const HEX = /^[0-9a-f]{64}$/;

export interface SpanDigests {
  /** `sha256:…` of the zinfo file these spans belong to. */
  readonly zinfo: string;
  /** SHA-256 of each span's uncompressed bytes, one per checkpoint. */
  readonly spans: readonly Uint8Array[];
}

export function zinfoDigest(zinfoBytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(zinfoBytes).digest('hex')}`;
}

export function encodeSpanDigests(digests: SpanDigests): Uint8Array {
  const document = {
    format: FORMAT,
    version: VERSION,
    algorithm: 'sha256',
    zinfo: digests.zinfo,
    spans: digests.spans.map((d) => Buffer.from(d).toString('hex')),
  };
  return Buffer.from(`${JSON.stringify(document, null, 1)}\n`, 'utf8');
}

/**
 * Parses a sidecar and checks that it goes with `zinfoBytes` (its digest) and has one digest per
 * checkpoint; `corrupt` otherwise, naming `what`.
 */
export function decodeSpanDigests(
  bytes: Uint8Array,
  zinfoBytes: Uint8Array,
  checkpoints: number,
  what: string,
): SpanDigests {
  let document: unknown;
  try {
    document = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (cause) {
    throw new CorruptInputError(`${what} is not JSON`, undefined, { cause });
  }
  const d = document as {
    format?: unknown;
    version?: unknown;
    algorithm?: unknown;
    zinfo?: unknown;
    spans?: unknown;
  };
  if (d?.format !== FORMAT) throw new CorruptInputError(`${what} is not an ${FORMAT} file`);
  if (d.version !== VERSION || d.algorithm !== 'sha256') {
    throw new ErofsOciError(
      'unsupported',
      `${what}: version ${String(d.version)} / ${String(d.algorithm)} is not supported`,
    );
  }
  const expected = zinfoDigest(zinfoBytes);
  if (d.zinfo !== expected) {
    throw new CorruptInputError(
      `${what} belongs to the zinfo ${String(d.zinfo)}, not to this one (${expected})`,
    );
  }
  if (
    !Array.isArray(d.spans) ||
    d.spans.length !== checkpoints ||
    !d.spans.every((s) => typeof s === 'string' && HEX.test(s))
  ) {
    throw new CorruptInputError(
      `${what} does not hold one SHA-256 for each of the zinfo's ${checkpoints} spans`,
    );
  }
  return { zinfo: expected, spans: (d.spans as string[]).map((s) => new Uint8Array(Buffer.from(s, 'hex'))) };
}
