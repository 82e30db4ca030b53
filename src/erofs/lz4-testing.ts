/**
 * Test code only: the system `lz4` tool as an independent decoder of our raw LZ4 blocks.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const lz4Available: boolean = await run('lz4', ['--version']).then(
  () => true,
  () => false,
);

/**
 * `block` (a raw LZ4 block) wrapped in an LZ4 frame: magic, FLG (version 01, block independence), BD
 * (4 MiB blocks), header checksum byte (xxh32 >> 8 & 0xff of FLG BD: 0x73 for 0x60 0x70), the block, end
 * mark.
 */
export function lz4Frame(block: Uint8Array): Buffer {
  const size = Buffer.alloc(4);
  size.writeUInt32LE(block.byteLength);
  return Buffer.concat([
    Buffer.from([0x04, 0x22, 0x4d, 0x18, 0x60, 0x70, 0x73]),
    size,
    block,
    Buffer.alloc(4),
  ]);
}

/** What `lz4 -d` makes of `block`, in a temporary directory of its own. */
export async function lz4ToolDecode(block: Uint8Array): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'lz4-tool-'));
  try {
    await writeFile(join(dir, 'f.lz4'), lz4Frame(block));
    await run('lz4', ['-d', '-q', '-f', join(dir, 'f.lz4'), join(dir, 'out')]);
    return await readFile(join(dir, 'out'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The size of `lz4 -LEVEL` on `input` with 4 MiB dependent blocks (a frame, so a few bytes over the block). */
export async function lz4ToolSize(input: Uint8Array, level: number): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'lz4-tool-'));
  try {
    await writeFile(join(dir, 'in'), input);
    await run('lz4', [`-${level}`, '-q', '-f', '-B4', '-BD', join(dir, 'in'), join(dir, 'ref.lz4')]);
    return (await readFile(join(dir, 'ref.lz4'))).byteLength;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** One LZ4 block made by the lz4 tool: a frame without checksums holding a single compressed block. */
export async function lz4ToolBlock(data: Uint8Array): Promise<Uint8Array> {
  const dir = await mkdtemp(join(tmpdir(), 'lz4-'));
  try {
    await writeFile(join(dir, 'in'), data);
    await run('lz4', [
      '-q',
      '-f',
      '-B7',
      '-BD',
      '--no-frame-crc',
      '--content-size',
      join(dir, 'in'),
      join(dir, 'out'),
    ]);
    const frame = await readFile(join(dir, 'out'));
    // Magic (4), FLG, BD, content size (8), HC (1): 15 bytes of header; then block size (4) and the block.
    const size = frame.readUInt32LE(15);
    assert.equal(size & 0x80000000, 0, 'the block is compressed');
    return frame.subarray(19, 19 + size);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
