/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), as the EROFS superblock checksum uses it.
 *
 * `crc32c(data, seed)` returns the raw CRC register after feeding `data`, with no final inversion: this is
 * erofs-utils `erofs_crc32c(crc, in, len)` (include/erofs/internal.h) and the kernel's `crc32c()`. The
 * superblock checksum is `crc32c(block, 0xffffffff)`; the conventional CRC-32C value (iSCSI, RFC 3720) is
 * `~crc32c(data) >>> 0`. Chained calls continue a running CRC: `crc32c(b, crc32c(a)) === crc32c(a ++ b)`.
 *
 * Slice-by-8: eight 256-entry tables let the inner loop consume eight bytes per step.
 */
const POLY = 0x82f63b78;

function makeTables(): Uint32Array[] {
  const tables = Array.from({ length: 8 }, () => new Uint32Array(256));
  const t0 = tables[0] as Uint32Array;
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t0[n] = c >>> 0;
  }
  for (let t = 1; t < 8; t++) {
    const prev = tables[t - 1] as Uint32Array;
    const cur = tables[t] as Uint32Array;
    for (let n = 0; n < 256; n++) {
      const p = prev[n] as number;
      cur[n] = ((p >>> 8) ^ (t0[p & 0xff] as number)) >>> 0;
    }
  }
  return tables;
}

const [T0, T1, T2, T3, T4, T5, T6, T7] = makeTables() as [
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
  Uint32Array,
];

export function crc32c(data: Uint8Array, seed = 0xffffffff): number {
  let crc = seed >>> 0;
  let i = 0;
  const n = data.length;
  const end8 = n - (n % 8);
  // Table lookups index with values masked to 0..255, so the `as number` casts below cannot see undefined.
  while (i < end8) {
    const lo =
      (crc ^
        ((data[i] as number) |
          ((data[i + 1] as number) << 8) |
          ((data[i + 2] as number) << 16) |
          ((data[i + 3] as number) << 24))) >>>
      0;
    crc =
      (T7[lo & 0xff] as number) ^
      (T6[(lo >>> 8) & 0xff] as number) ^
      (T5[(lo >>> 16) & 0xff] as number) ^
      (T4[lo >>> 24] as number) ^
      (T3[data[i + 4] as number] as number) ^
      (T2[data[i + 5] as number] as number) ^
      (T1[data[i + 6] as number] as number) ^
      (T0[data[i + 7] as number] as number);
    i += 8;
  }
  while (i < n) {
    crc = (crc >>> 8) ^ (T0[(crc ^ (data[i] as number)) & 0xff] as number);
    i++;
  }
  return crc >>> 0;
}
