/**
 * Writing tar headers: POSIX ustar blocks for directories and regular files (what an `oci-archive:` needs),
 * numbers in octal, sizes past the octal field's 8 GiB in GNU base-256 (which GNU tar, bsdtar and Go's
 * archive/tar read). Names must fit the 100-byte name field.
 */
import { ErofsOciError } from '../errors.ts';
import { TAR_BLOCK_SIZE, TypeFlag, tarHeader } from './format.ts';

export interface TarHeaderInput {
  name: string;
  kind: 'file' | 'dir';
  size?: number;
  mode?: number;
  /** Seconds since the epoch. */
  mtime?: number;
}

function octal(value: number, width: number): Uint8Array {
  const digits = value.toString(8).padStart(width - 1, '0');
  if (digits.length > width - 1) throw new RangeError(`${value} does not fit ${width - 1} octal digits`);
  return new TextEncoder().encode(`${digits}\0`);
}

/** GNU base-256: high bit of the first byte set, the value big-endian in the rest. */
function base256(value: number, width: number): Uint8Array {
  const bytes = new Uint8Array(width);
  let rest = BigInt(value);
  for (let i = width - 1; i > 0; i--) {
    bytes[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  bytes[0] = 0x80;
  return bytes;
}

export function encodeTarHeader(input: TarHeaderInput): Uint8Array {
  const name = new TextEncoder().encode(
    input.kind === 'dir' && !input.name.endsWith('/') ? `${input.name}/` : input.name,
  );
  if (name.byteLength > 100) throw new ErofsOciError('internal', `tar name too long: ${input.name}`);
  const size = input.kind === 'dir' ? 0 : (input.size ?? 0);
  const block = tarHeader.encode({
    name,
    mode: octal(input.mode ?? (input.kind === 'dir' ? 0o755 : 0o644), 8),
    uid: octal(0, 8),
    gid: octal(0, 8),
    size: size < 8 ** 11 ? octal(size, 12) : base256(size, 12),
    mtime: octal(input.mtime ?? 0, 12),
    chksum: new TextEncoder().encode('        '),
    typeflag: input.kind === 'dir' ? TypeFlag.directory : TypeFlag.regular,
    magic: new TextEncoder().encode('ustar\0'),
    version: new TextEncoder().encode('00'),
  });
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK_SIZE; i++) sum += block[i] as number;
  block.set(new TextEncoder().encode(`${sum.toString(8).padStart(6, '0')}\0 `), tarHeader.offsetOf('chksum'));
  return block;
}

/** The two zero blocks that end an archive. */
export const END_OF_ARCHIVE = new Uint8Array(2 * TAR_BLOCK_SIZE);
