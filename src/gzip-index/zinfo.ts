/**
 * The zinfo file: AWS SOCI's gzip random-access index, as erofs-utils 1.9 writes it with `mkfs.erofs
 * --gzinfo` (SPEC §3). A list of checkpoints, each a place in the compressed stream where inflation can
 * restart at a deflate block boundary, with the 32 KiB of uncompressed data before it (the LZ77 window).
 *
 * Version 2 (what we write, what erofs-utils writes): header, then every checkpoint.
 * Version 1 (old SOCI): the same header (the count includes checkpoint 0), but checkpoint 0 is omitted
 * and implied to sit right after a 10-byte gzip header with an all-zero window. The version is told apart
 * by the file length alone, as soci-snapshotter's `blob_to_zinfo` and erofs-utils' `erofs_gzran_zinfo_open`
 * do.
 */
import { CorruptInputError } from '../errors.ts';
import { defineStruct } from '../io/struct.ts';

/** Deflate's maximum back-reference distance, and so the window every checkpoint carries. */
export const WINDOW_SIZE = 32768;

/** The header (`struct aws_soci_zinfo_header` in erofs-utils lib/gzran.c). */
export const zinfoHeader = defineStruct(
  'zinfo header',
  [
    /** `int32` number of checkpoints (`have`). */
    { name: 'checkpointCount', type: 'u32' },
    /** `int64` the span the index was built with: uncompressed bytes between checkpoints, a lower bound. */
    { name: 'spanSize', type: 'u64' },
  ],
  12,
);

/** One checkpoint (`struct aws_soci_zinfo_ckpt`; soci-snapshotter `PACKED_CHECKPOINT_SIZE`). */
export const zinfoCheckpoint = defineStruct(
  'zinfo checkpoint',
  [
    /** Offset in the compressed blob of the first byte wholly after the block boundary. */
    { name: 'in', type: 'u64' },
    /** Offset in the uncompressed data of the boundary. */
    { name: 'out', type: 'u64' },
    /** 0, or how many high bits of the byte at `in - 1` already belong to the block after the boundary. */
    { name: 'bits', type: 'u8' },
    /** The `WINDOW_SIZE` uncompressed bytes before `out`, oldest first (zero-filled before offset 0). */
    { name: 'window', type: { bytes: WINDOW_SIZE } },
  ],
  17 + WINDOW_SIZE,
);

export interface ZinfoCheckpoint {
  in: number;
  out: number;
  bits: number;
  window: Uint8Array;
}

export interface Zinfo {
  /** The span the index was built with (not a bound on the distance between checkpoints). */
  spanSize: number;
  checkpoints: ZinfoCheckpoint[];
}

export type ZinfoVersion = 1 | 2;

/** The position in the compressed stream, in bits, where inflation from `checkpoint` starts. */
export function checkpointBitOffset(checkpoint: ZinfoCheckpoint): number {
  return checkpoint.in * 8 - checkpoint.bits;
}

/** Serialises `zinfo` in the version 2 layout. */
export function encodeZinfo(zinfo: Zinfo): Uint8Array {
  validateZinfo(zinfo);
  const bytes = new Uint8Array(zinfoHeader.size + zinfo.checkpoints.length * zinfoCheckpoint.size);
  zinfoHeader.encode({ checkpointCount: zinfo.checkpoints.length, spanSize: zinfo.spanSize }, bytes, 0);
  let at = zinfoHeader.size;
  for (const checkpoint of zinfo.checkpoints) {
    zinfoCheckpoint.encode(checkpoint, bytes, at);
    at += zinfoCheckpoint.size;
  }
  return bytes;
}

/**
 * Parses a zinfo file of either version and checks what can be checked without the blob (see
 * `validateZinfo`). Windows are views into `bytes`. Throws `CorruptInputError`.
 */
export function decodeZinfo(bytes: Uint8Array): Zinfo & { version: ZinfoVersion } {
  if (bytes.byteLength < zinfoHeader.size) {
    throw new CorruptInputError(
      `Cannot parse zinfo: it has ${bytes.byteLength} bytes, fewer than the ${zinfoHeader.size}-byte header`,
    );
  }
  const header = zinfoHeader.decode(bytes, 0);
  const count = header.checkpointCount;
  // The count is a C int32: the top bit set means a negative count.
  if (count === 0 || count >= 2 ** 31) {
    throw new CorruptInputError(
      `Cannot parse zinfo: checkpoint count is ${count | 0}, expected at least 1`,
      0,
    );
  }
  const v2Length = zinfoHeader.size + count * zinfoCheckpoint.size;
  let version: ZinfoVersion;
  if (bytes.byteLength === v2Length) version = 2;
  else if (bytes.byteLength === v2Length - zinfoCheckpoint.size) version = 1;
  else {
    throw new CorruptInputError(
      `Cannot parse zinfo: ${bytes.byteLength} bytes do not fit ${count} checkpoints ` +
        `(version 2 needs ${v2Length} bytes, version 1 needs ${v2Length - zinfoCheckpoint.size})`,
    );
  }
  const checkpoints: ZinfoCheckpoint[] = [];
  if (version === 1) {
    // soci-snapshotter blob_to_zinfo: the omitted first checkpoint follows a header without optional fields.
    checkpoints.push({ in: 10, out: 0, bits: 0, window: new Uint8Array(WINDOW_SIZE) });
  }
  for (let at = zinfoHeader.size; at < bytes.byteLength; at += zinfoCheckpoint.size) {
    checkpoints.push(zinfoCheckpoint.decode(bytes, at));
  }
  const zinfo = { spanSize: header.spanSize, checkpoints };
  validateZinfo(zinfo);
  return { ...zinfo, version };
}

/**
 * Checks the invariants every valid index has: a positive span, at least one checkpoint, the first at
 * uncompressed offset 0, bit counts 0..7, and checkpoints in stream order (strictly increasing compressed
 * bit position, non-decreasing uncompressed offset: empty gzip members give equal offsets). With
 * `blobSize`, also that every checkpoint lies inside the blob.
 */
export function validateZinfo(zinfo: Zinfo, blobSize?: number): void {
  if (!Number.isSafeInteger(zinfo.spanSize) || zinfo.spanSize <= 0) {
    throw new CorruptInputError(`Invalid zinfo: span size is ${zinfo.spanSize}, expected a positive number`);
  }
  const { checkpoints } = zinfo;
  if (checkpoints.length === 0) throw new CorruptInputError('Invalid zinfo: it has no checkpoints');
  let previous: ZinfoCheckpoint | undefined;
  for (const [i, c] of checkpoints.entries()) {
    if (!Number.isSafeInteger(c.in) || !Number.isSafeInteger(c.out) || c.in < 0 || c.out < 0) {
      throw new CorruptInputError(`Invalid zinfo: checkpoint ${i} has offsets in=${c.in} out=${c.out}`);
    }
    if (!Number.isInteger(c.bits) || c.bits < 0 || c.bits > 7) {
      throw new CorruptInputError(`Invalid zinfo: checkpoint ${i} has bit offset ${c.bits}, expected 0..7`);
    }
    if (c.bits !== 0 && c.in === 0) {
      throw new CorruptInputError(
        `Invalid zinfo: checkpoint ${i} has ${c.bits} bits before compressed offset 0`,
      );
    }
    if (c.window.byteLength !== WINDOW_SIZE) {
      throw new CorruptInputError(`Invalid zinfo: checkpoint ${i} has a ${c.window.byteLength}-byte window`);
    }
    if (i === 0 && c.out !== 0) {
      throw new CorruptInputError(
        `Invalid zinfo: checkpoint 0 is at uncompressed offset ${c.out}, expected 0`,
      );
    }
    if (previous && (checkpointBitOffset(c) <= checkpointBitOffset(previous) || c.out < previous.out)) {
      throw new CorruptInputError(
        `Invalid zinfo: checkpoint ${i} (in=${c.in} bits=${c.bits} out=${c.out}) is not after checkpoint ` +
          `${i - 1} (in=${previous.in} bits=${previous.bits} out=${previous.out})`,
      );
    }
    if (blobSize !== undefined && c.in > blobSize) {
      throw new CorruptInputError(
        `Invalid zinfo: checkpoint ${i} is at compressed offset ${c.in}, beyond the end of the ${blobSize}-byte blob`,
      );
    }
    previous = c;
  }
}
