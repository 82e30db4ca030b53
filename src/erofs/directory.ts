/** Directory blocks and their dirents, checked (include/erofs_fs.h `struct erofs_dirent`; Linux fs/erofs/dir.c). */
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import { type ByteString, displayName, toByteString } from '../fs-tree/tree.ts';
import type { ReadOptions } from '../io/byte-source.ts';
import { positionOf, readData } from './data-map.ts';
import { decodeAt } from './decode.ts';
import { DataLayout, dirent, EROFS_NAME_LEN, FileType, I_DOT_OMITTED_BIT } from './format.ts';
import type { ImageContext } from './image-context.ts';
import type { Inode } from './inode.ts';

export interface DirEntry {
  name: ByteString;
  nid: number;
  /** `EROFS_FT_*` of the dirent. */
  fileType: number;
}

/** All dirents of a directory, `.` and `..` checked and set apart. */
export async function readDirectory(
  ctx: ImageContext,
  inode: Inode,
  options: ReadOptions,
): Promise<{ entries: DirEntry[]; parent: number }> {
  const nid = inode.nid;
  if (inode.type !== 'dir') {
    throw new ErofsOciError('usage', `Cannot list inode ${nid}: it is a ${inode.type}, not a directory`);
  }
  if (inode.layout === DataLayout.chunkBased) {
    throw new ErofsOciError(
      'unsupported',
      `Cannot list directory inode ${nid}: data layout ${inode.layout} is not supported`,
    );
  }
  const bs = ctx.blockSize;
  const entries: DirEntry[] = [];
  let dot: number | undefined;
  let parent: number | undefined;
  let previous: Uint8Array | undefined;
  for (let blockStart = 0; blockStart < inode.size; blockStart += bs) {
    const length = Math.min(bs, inode.size - blockStart);
    const block = await readData(ctx, inode, blockStart, length, options);
    const what = `Cannot read directory inode ${nid} block ${blockStart / bs}`;
    const blockAt = await positionOf(ctx, inode, blockStart, options);
    const at = (p: number) => blockAt + p;
    if (length < dirent.size) {
      throw new CorruptInputError(`${what}: ${length} bytes cannot hold a dirent`, at(0));
    }
    const firstNameoff = decodeAt(dirent, block, 0, what, at(0)).nameoff;
    if (firstNameoff < dirent.size || firstNameoff % dirent.size !== 0 || firstNameoff >= length) {
      throw new CorruptInputError(
        `${what}: first name offset ${firstNameoff} is out of range`,
        at(dirent.offsetOf('nameoff')),
      );
    }
    const count = firstNameoff / dirent.size;
    for (let i = 0; i < count; i++) {
      const de = decodeAt(dirent, block, i * dirent.size, what, at(0));
      const nameoff = de.nameoff;
      let nameEnd: number;
      if (i + 1 < count) {
        nameEnd = decodeAt(dirent, block, (i + 1) * dirent.size, what, at(0)).nameoff;
      } else {
        // The last name runs to the first NUL or the end of the block.
        const nul = block.indexOf(0, nameoff);
        nameEnd = nul === -1 || nul > length ? length : nul;
      }
      if (nameoff < firstNameoff || nameEnd > length || nameEnd <= nameoff) {
        throw new CorruptInputError(
          `${what}: dirent ${i} name offset ${nameoff} (next ${nameEnd}) is out of range`,
          at(i * dirent.size + dirent.offsetOf('nameoff')),
        );
      }
      const nameBytes = block.subarray(nameoff, nameEnd);
      if (nameBytes.byteLength > EROFS_NAME_LEN || nameBytes.includes(0x2f) || nameBytes.includes(0)) {
        throw new CorruptInputError(`${what}: dirent ${i} has an invalid name`, at(nameoff));
      }
      if (previous && Buffer.compare(previous, nameBytes) >= 0) {
        throw new CorruptInputError(
          `${what}: names are not sorted (${JSON.stringify(displayName(toByteString(nameBytes)))} after ${JSON.stringify(displayName(toByteString(previous)))})`,
          at(nameoff),
        );
      }
      previous = nameBytes;
      if (de.fileType > FileType.symlink) {
        throw new CorruptInputError(
          `${what}: dirent ${i} has unknown file type ${de.fileType}`,
          at(i * dirent.size),
        );
      }
      const name = toByteString(nameBytes);
      if (name === '.') dot = de.nid;
      else if (name === '..') parent = de.nid;
      else entries.push({ name, nid: de.nid, fileType: de.fileType });
    }
  }
  const where = await positionOf(ctx, inode, 0, options);
  const dotOmitted = ((inode.format >> I_DOT_OMITTED_BIT) & 1) === 1;
  if (dot === undefined && !dotOmitted) {
    throw new CorruptInputError(`Cannot read directory inode ${nid}: it has no . entry`, where);
  }
  if (dot !== undefined && dot !== nid) {
    throw new CorruptInputError(
      `Cannot read directory inode ${nid}: its . entry points at inode ${dot}`,
      where,
    );
  }
  if (parent === undefined) {
    throw new CorruptInputError(`Cannot read directory inode ${nid}: it has no .. entry`, where);
  }
  return { entries, parent };
}
