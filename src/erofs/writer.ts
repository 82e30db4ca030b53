/**
 * EROFS image writer.
 *
 * Layout of an image (block numbers grow downwards):
 *
 *   block 0..      superblock at byte 1024 (+ device table in index mode)
 *   data area      regular files' full blocks, streamed in the order the source delivers them; a file
 *                  whose tail cannot be packed inline has its tail block here too (zero padded)
 *   meta area      inodes (32-byte slots, nid = offset / 32 from `meta_blkaddr`), each followed by its
 *                  inline xattrs and inline (tail-packed) data or chunk indexes
 *   late data      blocks of directories and symlinks too large to be inlined
 *
 * Putting the metadata last lets file data go straight to its final place while a tar is read: nothing
 * about the metadata is known until the last entry has been seen. Directory blocks follow the inodes, so
 * that everything a `find` needs lies in one run at the end of the image (the meta area also holds the
 * tail-packed data of small files). File tails that will be inlined wait in a
 * spill file (not memory) until the inodes are written.
 *
 * `finish` works in two passes over the same records: `plan` measures everything and assigns nids and block
 * addresses, `emit` serialises. Directory sizes do not depend on nids, so planning needs no serialisation.
 */
import { closeSync, ftruncateSync, openSync, readSync, unlinkSync } from 'node:fs';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteString, Directory, FileContent, Node } from '../fs-tree/tree.ts';
import { fromByteString } from '../fs-tree/tree.ts';
import { crc32c } from '../io/crc32c.ts';
import { FileWriter } from '../io/file-writer.ts';
import { CompressPool, defaultCompressWorkers } from './compress-pool.ts';
import type { CompressedSegment } from './compress-pool.ts';
import {
  CHUNK_FORMAT_BLKBITS_MASK,
  CompressionAlg,
  deflateCfgs,
  FEATURE_INCOMPAT_BIG_PCLUSTER,
  FEATURE_INCOMPAT_COMPR_CFGS,
  FEATURE_INCOMPAT_ZERO_PADDING,
  lz4Cfgs,
  PCLUSTER_MAX_SIZE,
  Z_ADVISE_BIG_PCLUSTER_1,
  Z_ADVISE_BIG_PCLUSTER_2,
  Z_ADVISE_COMPACTED_2B,
  zMapHeader,
  zstdCfgs,
  CHUNK_FORMAT_INDEXES,
  chunkIndex,
  DataLayout,
  deviceSlot,
  dirent,
  EROFS_NAME_LEN,
  EROFS_SUPER_MAGIC_V1,
  EROFS_SUPER_OFFSET,
  encodeDev,
  FEATURE_COMPAT_MTIME,
  FEATURE_COMPAT_SB_CHKSUM,
  FEATURE_INCOMPAT_CHUNKED_FILE,
  FEATURE_INCOMPAT_DEVICE_TABLE,
  FileType,
  I_DATALAYOUT_BIT,
  I_VERSION_EXTENDED,
  INODE_SLOT_SIZE,
  inodeCompact,
  inodeExtended,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  S_IFSOCK,
  superBlock,
  XATTR_PREFIXES,
  xattrEntry,
  xattrIbodyHeader,
} from './format.ts';
import { DEFLATE_WINDOW_BITS, zstdWindowLog } from './pcluster-compress.ts';
import { encodeCompactIndexes, lclusterEntries } from './zindex-writer.ts';

export type BlockSize = 512 | 1024 | 2048 | 4096;

export interface WriterOptions {
  blockSize: BlockSize;
  /**
   * Index mode: file data lives on an external device (the layer's uncompressed tar) that is addressed as
   * device 1 of the device table, with unified block addresses following the image's own blocks.
   */
  externalDevice?: { tag?: string };
  /** In-filesystem compression of regular files (full mode only). */
  compression?: CompressionOptions;
}

export interface CompressionOptions {
  alg: CompressionAlg;
  level?: number;
  /** Bytes per physical cluster: a multiple of the block size, at most 1 MiB. */
  pclusterSize: number;
  /** Worker threads compressing (default: one per core; 0 compresses on the calling thread). */
  workers?: number;
}

/** Files are compressed in segments of this many bytes, each on its own (fixed cuts: reproducible). */
const SEGMENT_SIZE = 4 * 1024 * 1024;
/** Files up to this size are held in memory while compressed; larger ones stream (raw copy spilled). */
const IN_MEMORY_FILE = 16 * 1024 * 1024;
/** Bytes of source data held for files not yet written out, before the reader is held back. */
const HELD_LIMIT = 64 * 1024 * 1024;

export interface FinishOptions {
  /** Build time in seconds since the epoch (superblock `epoch` + `build_time`). */
  buildTime: number;
  /** 16 bytes; all zero for `--uuid clear`. */
  uuid: Uint8Array;
  /** Volume name, at most 16 bytes. */
  label?: string;
  /** Index mode: size in bytes of the external device. */
  externalDeviceSize?: number;
  signal?: AbortSignal;
}

export interface ImageSummary {
  inodes: number;
  blocks: number;
  bytes: number;
  blockSize: number;
  /** Unified address of the external device's first block (index mode). */
  externalDeviceStartBlock?: number;
}

/** Largest inode record header we may choose, used to decide at ingest time whether a tail can be inlined. */
const WORST_INODE_SIZE = inodeExtended.size;

const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;

export class ImageWriter {
  readonly blockSize: BlockSize;
  readonly #path: string;
  readonly #out: FileWriter;
  readonly #spillPath: string;
  readonly #spill: FileWriter;
  readonly #spillFd: number;
  readonly #external: boolean;
  readonly #externalTag: string;
  readonly #compression: CompressionOptions | undefined;
  readonly #pool: CompressPool | null;
  /** Files are placed in the data area in the order they were given, through this chain. */
  #tail: Promise<void> = Promise.resolve();
  #failure: unknown = null;
  #held = 0;
  #rawSpill: { path: string; fd: number } | null = null;
  #closed = false;

  private constructor(path: string, options: WriterOptions) {
    this.blockSize = options.blockSize;
    this.#path = path;
    this.#external = options.externalDevice !== undefined;
    this.#externalTag = options.externalDevice?.tag ?? '';
    this.#compression = options.compression;
    const fd = openSync(path, 'w+', 0o644);
    this.#spillPath = `${path}.tails`;
    try {
      this.#spillFd = openSync(this.#spillPath, 'w+', 0o600);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    this.#spill = new FileWriter(this.#spillFd);
    this.#out = new FileWriter(fd, this.#headerBlocks() * this.blockSize);
    this.#pool = this.#compression
      ? new CompressPool(this.#compression.workers ?? defaultCompressWorkers())
      : null;
  }

  /** Creates `path` (truncating it) and prepares to receive file data. */
  static create(path: string, options: WriterOptions): ImageWriter {
    if (![512, 1024, 2048, 4096].includes(options.blockSize)) {
      throw new ErofsOciError(
        'usage',
        `unsupported block size ${options.blockSize}: use 512, 1024, 2048 or 4096`,
      );
    }
    const c = options.compression;
    if (c) {
      if (options.externalDevice) {
        throw new ErofsOciError('usage', 'index mode cannot compress: its file data lives in the tar');
      }
      if (!Object.values(CompressionAlg).includes(c.alg) || c.alg === CompressionAlg.lzma) {
        throw new ErofsOciError('unsupported', `cannot compress with algorithm ${c.alg}`);
      }
      if (
        !Number.isSafeInteger(c.pclusterSize) ||
        c.pclusterSize < options.blockSize ||
        c.pclusterSize % options.blockSize !== 0 ||
        c.pclusterSize > PCLUSTER_MAX_SIZE
      ) {
        throw new ErofsOciError(
          'usage',
          `pcluster size ${c.pclusterSize} must be a multiple of the block size (${options.blockSize}) up to 1 MiB`,
        );
      }
    }
    try {
      return new ImageWriter(path, options);
    } catch (error) {
      throw new ErofsOciError('io', `cannot create ${path}: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Blocks before the data area: superblock and, in index mode, the device table. */
  #headerBlocks(): number {
    const end =
      DEVICE_TABLE_OFFSET +
      (this.#external ? deviceSlot.size : 0) +
      (this.#compression ? compressionConfigs(this.#compression, this.blockSize).byteLength : 0);
    return Math.ceil(end / this.blockSize);
  }

  /**
   * Streams a regular file's bytes into the data area. `inlineOverhead` is the size of the inode's inline
   * xattrs, needed to decide whether the tail can be packed after the inode.
   */
  async writeFileData(
    body: AsyncIterable<Uint8Array>,
    size: number,
    inlineOverhead: number,
    options: { signal?: AbortSignal } = {},
  ): Promise<FileContent> {
    if (this.#compression) return this.#writeCompressible(body, size, inlineOverhead, options.signal);
    return this.#writeFlat(body, size, inlineOverhead, options.signal);
  }

  async #writeFlat(
    body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    size: number,
    inlineOverhead: number,
    signal: AbortSignal | undefined,
  ): Promise<FileContent> {
    const options = { signal };
    const bs = this.blockSize;
    const fullBytes = size - (size % bs);
    const tailLength = size - fullBytes;
    const inlineTail = tailLength > 0 && WORST_INODE_SIZE + inlineOverhead + tailLength <= bs;
    const startBlock = this.#out.position / bs;
    const spillOffset = this.#spill.position;
    let written = 0;
    for await (const chunk of body) {
      throwIfAborted(options.signal);
      if (written + chunk.byteLength > size)
        throw new ErofsOciError('internal', 'file body longer than its size');
      if (!inlineTail || written + chunk.byteLength <= fullBytes) {
        this.#out.write(chunk);
      } else {
        const split = Math.max(0, fullBytes - written);
        if (split > 0) this.#out.write(chunk.subarray(0, split));
        this.#spill.write(chunk.subarray(split));
      }
      written += chunk.byteLength;
      if (this.#out.backlogged) await this.#out.relieve();
    }
    if (written !== size) {
      throw new ErofsOciError('internal', `file body ended after ${written} of ${size} bytes`);
    }
    this.#out.padTo(Math.ceil(this.#out.position / bs) * bs);
    if (size === 0) return { kind: 'blocks', size: 0, startBlock: 0, tail: null };
    return {
      kind: 'blocks',
      size,
      startBlock,
      tail: inlineTail ? { spillOffset, length: tailLength } : null,
    };
  }

  /**
   * Compression mode: the file is read whole (or, when large, segment by segment), its segments are
   * compressed on the pool, and it is placed in the data area, compressed if that saves a block and plain
   * otherwise, in the order files were given. The returned content is filled in when the file is placed
   * (by `finish` at the latest).
   */
  async #writeCompressible(
    body: AsyncIterable<Uint8Array>,
    size: number,
    inlineOverhead: number,
    signal: AbortSignal | undefined,
  ): Promise<FileContent> {
    this.#throwIfFailed();
    const compression = this.#compression as CompressionOptions;
    const pool = this.#pool as CompressPool;
    const bs = this.blockSize;
    if (size > IN_MEMORY_FILE) {
      await this.#drain();
      return this.#writeLargeCompressible(body, size, inlineOverhead, signal);
    }
    const segments = await readSegments(body, size, signal);
    while (this.#held > HELD_LIMIT) {
      await this.#tail.catch(() => {});
      this.#throwIfFailed();
    }
    const content = { ...EMPTY_BLOCKS } as FileContent;
    const jobs: Promise<CompressedSegment>[] = [];
    if (size > bs) {
      for (const segment of segments) jobs.push((await pool.compress(segment, this.#compressOptions())).done);
    }
    this.#held += size;
    this.#enqueue(async () => {
      const results = await Promise.all(jobs);
      this.#held -= size;
      const blocks = results.reduce((sum, r) => sum + r.blocks, 0);
      if (results.length > 0 && blocks < Math.ceil(size / bs)) {
        Object.assign(content, this.#placeCompressed(results, size, compression.alg));
      } else {
        Object.assign(content, await this.#writeFlat(segments, size, inlineOverhead, signal));
      }
    });
    return content;
  }

  /** A large file: streamed through the pool in order, its raw bytes spilled in case it does not shrink. */
  async #writeLargeCompressible(
    body: AsyncIterable<Uint8Array>,
    size: number,
    inlineOverhead: number,
    signal: AbortSignal | undefined,
  ): Promise<FileContent> {
    const compression = this.#compression as CompressionOptions;
    const pool = this.#pool as CompressPool;
    const bs = this.blockSize;
    const start = this.#out.position;
    this.#rawSpill ??= { path: `${this.#path}.raw`, fd: openSync(`${this.#path}.raw`, 'w+', 0o600) };
    const raw = new FileWriter(this.#rawSpill.fd, 0);
    const extents: PlacedExtent[] = [];
    let blocks = 0;
    const jobs: Promise<CompressedSegment>[] = [];
    const place = (segment: CompressedSegment) => {
      for (const e of segment.extents) extents.push({ ...e, pblk: e.pblk + start / bs + blocks });
      blocks += segment.blocks;
      this.#out.write(segment.bytes);
    };
    for await (const segment of segmentsOf(body, size, signal)) {
      raw.write(segment);
      jobs.push((await pool.compress(segment, this.#compressOptions())).done);
      while (jobs.length > 2) place(await (jobs.shift() as Promise<CompressedSegment>));
    }
    for (const job of jobs) place(await job);
    await raw.settle();
    if (blocks < Math.ceil(size / bs)) {
      return {
        kind: 'compressed',
        size,
        alg: compression.alg,
        startBlock: start / bs,
        blocks,
        bigPcluster: compression.pclusterSize > bs,
        extents,
      };
    }
    // Background writes of the compressed attempt must land before the raw bytes overwrite them.
    await this.#out.settle();
    this.#out.rewind(start);
    const fd = this.#rawSpill.fd;
    function* rawChunks(): Generator<Uint8Array> {
      for (let at = 0; at < size; at += SEGMENT_SIZE) {
        const chunk = Buffer.allocUnsafe(Math.min(SEGMENT_SIZE, size - at));
        readExactly(fd, chunk, 0, chunk.byteLength, at);
        yield chunk;
      }
    }
    return this.#writeFlat(rawChunks(), size, inlineOverhead, signal);
  }

  #compressOptions() {
    const c = this.#compression as CompressionOptions;
    return {
      alg: c.alg,
      blockSize: this.blockSize,
      pclusterSize: c.pclusterSize,
      ...(c.level === undefined ? {} : { level: c.level }),
    };
  }

  #placeCompressed(results: CompressedSegment[], size: number, alg: number): FileContent {
    const bs = this.blockSize;
    const startBlock = this.#out.position / bs;
    const extents: PlacedExtent[] = [];
    let blocks = 0;
    for (const r of results) {
      for (const e of r.extents) extents.push({ ...e, pblk: e.pblk + startBlock + blocks });
      blocks += r.blocks;
      this.#out.write(r.bytes);
    }
    const bigPcluster = (this.#compression as CompressionOptions).pclusterSize > bs;
    return { kind: 'compressed', size, alg, startBlock, blocks, bigPcluster, extents };
  }

  #enqueue(step: () => Promise<void>): void {
    const next = this.#tail.then(() => {
      if (this.#closed) throw new ErofsOciError('internal', 'image writer closed');
      return step();
    });
    next.catch((error: unknown) => {
      this.#failure ??= error;
    });
    this.#tail = next;
  }

  async #drain(): Promise<void> {
    await this.#tail.catch(() => {});
    this.#throwIfFailed();
  }

  #throwIfFailed(): void {
    if (this.#failure !== null) throw this.#failure;
  }

  /** Lays out and writes all metadata, the superblock, and closes the image. */
  async finish(root: Directory, options: FinishOptions): Promise<ImageSummary> {
    await this.#drain();
    throwIfAborted(options.signal);
    await this.#spill.settle();
    await this.#out.settle();
    const plan = planMetadata(root, {
      blockSize: this.blockSize,
      buildTime: options.buildTime,
      metaStart: this.#out.position / this.blockSize,
      external: this.#external,
    });
    throwIfAborted(options.signal);
    const externalStart = plan.totalBlocks;
    this.#emit(plan);
    const header = this.#header(plan, options, externalStart);
    this.#out.pwrite(header, 0);
    const bytes = plan.totalBlocks * this.blockSize;
    await this.#out.settle();
    ftruncateSync(this.#out.fd, bytes);
    // No fsync, as mkfs.erofs, tar and cp: the rename that follows makes the image appear only when whole
    // to any process; durability across power loss is the caller's `sync` to ask for (it cost 13% here).
    this.close();
    return {
      inodes: plan.inodes.length,
      blocks: plan.totalBlocks,
      bytes,
      blockSize: this.blockSize,
      ...(this.#external ? { externalDeviceStartBlock: externalStart } : {}),
    };
  }

  /** Closes files and removes the spill file; the image itself is left for the caller to rename or delete. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#out.close();
    this.#spill.close();
    this.#pool?.close();
    try {
      unlinkSync(this.#spillPath);
    } catch {
      // Already gone: nothing to clean up.
    }
    if (this.#rawSpill) {
      closeSync(this.#rawSpill.fd);
      try {
        unlinkSync(this.#rawSpill.path);
      } catch {
        // Already gone.
      }
    }
  }

  /** Deletes the (partial) image. */
  discard(): void {
    this.close();
    try {
      unlinkSync(this.#path);
    } catch {
      // Never created or already removed.
    }
  }

  #emit(plan: MetadataPlan): void {
    const bs = this.blockSize;
    this.#out.padTo(plan.metaBlkaddr * bs);
    this.#out.flush();

    const meta = Buffer.alloc(plan.metaBlocks * bs);
    for (const inode of plan.inodes) {
      const at = inode.nid * INODE_SLOT_SIZE;
      encodeInode(inode, meta, at, plan.epoch);
      let p = at + inode.isize;
      if (inode.xattrBody) {
        meta.set(inode.xattrBody, p);
        p += inode.xattrBody.byteLength;
      }
      if (inode.zindex) {
        meta.set(inode.zindex, alignUp(p, 8));
        continue;
      }
      if (inode.chunk) {
        p = alignUp(p, chunkIndex.size);
        const content = (inode.node as { content: FileContent }).content;
        if (content.kind !== 'external')
          throw new Error('unreachable: chunked inode without external content');
        const first = content.offset / bs;
        for (let i = 0; i < inode.chunk.count; i++) {
          const block = first + i * inode.chunk.chunkBlocks;
          chunkIndex.encode(
            { deviceId: 1, startblkLo: block % 2 ** 32, startblkHi: 0 },
            meta,
            p + i * chunkIndex.size,
          );
        }
        continue;
      }
      if (inode.inlineLength === 0) continue;
      const node = inode.node;
      if (node.kind === 'dir') {
        meta.set(dirBlocks(inode, bs, true), p);
      } else if (node.kind === 'symlink') {
        meta.write(node.target.slice(node.target.length - inode.inlineLength), p, 'latin1');
      } else if (node.kind === 'file' && node.content.kind === 'blocks' && node.content.tail) {
        const { spillOffset, length } = node.content.tail;
        readExactly(this.#spillFd, meta, p, length, spillOffset);
      }
    }
    this.#out.write(meta);
    // Late data: directory blocks and symlink targets that are not inlined, right after the inodes.
    for (const record of plan.lateData) {
      this.#out.padTo(record.startBlock * bs);
      const bytes = record.kind === 'dir' ? dirBlocks(record.inode, bs, false) : record.bytes;
      this.#out.write(bytes);
    }
    this.#out.padTo(plan.totalBlocks * bs);
    this.#out.flush();
  }

  #header(plan: MetadataPlan, options: FinishOptions, externalStart: number): Buffer {
    const bs = this.blockSize;
    const header = Buffer.alloc(this.#headerBlocks() * bs);
    const label = Buffer.from(options.label ?? '', 'utf8');
    if (label.byteLength > 16)
      throw new ErofsOciError('usage', `volume label is longer than 16 bytes: ${options.label}`);
    if (options.uuid.byteLength !== 16) throw new ErofsOciError('usage', 'uuid must be 16 bytes');
    let featureIncompat = 0;
    if (plan.inodes.some((inode) => inode.chunk)) featureIncompat |= FEATURE_INCOMPAT_CHUNKED_FILE;
    const compression = this.#compression;
    if (compression) {
      // As mkfs.erofs: 0PADDING always, the configurations always (their bit is also BIG_PCLUSTER's).
      featureIncompat |= FEATURE_INCOMPAT_ZERO_PADDING | FEATURE_INCOMPAT_COMPR_CFGS;
      if (compression.pclusterSize > bs) featureIncompat |= FEATURE_INCOMPAT_BIG_PCLUSTER;
      compressionConfigs(compression, bs).copy(header, DEVICE_TABLE_OFFSET);
    }
    if (this.#external) {
      featureIncompat |= FEATURE_INCOMPAT_DEVICE_TABLE;
      const size = options.externalDeviceSize ?? 0;
      const blocks = Math.ceil(size / bs);
      const tag = Buffer.from(this.#externalTag, 'utf8').subarray(0, 64);
      deviceSlot.encode(
        {
          tag,
          blocksLo: blocks % 2 ** 32,
          blocksHi: Math.floor(blocks / 2 ** 32),
          uniaddrLo: externalStart % 2 ** 32,
          uniaddrHi: Math.floor(externalStart / 2 ** 32),
        },
        header,
        DEVICE_TABLE_OFFSET,
      );
    }
    superBlock.encode(
      {
        magic: EROFS_SUPER_MAGIC_V1,
        checksum: 0,
        featureCompat: FEATURE_COMPAT_SB_CHKSUM | FEATURE_COMPAT_MTIME,
        blkszbits: Math.log2(bs),
        rootnid2b: plan.rootNid,
        inos: plan.inodes.length,
        epoch: plan.epoch,
        fixedNsec: 0,
        buildTime: options.buildTime - plan.epoch,
        blocksLo: plan.totalBlocks,
        metaBlkaddr: plan.metaBlkaddr,
        xattrBlkaddr: 0,
        uuid: options.uuid,
        volumeName: label,
        featureIncompat,
        availableComprAlgs: compression ? 1 << compression.alg : 0,
        extraDevices: this.#external ? 1 : 0,
        devtSlotoff: this.#external ? DEVICE_TABLE_OFFSET / deviceSlot.size : 0,
      },
      header,
      EROFS_SUPER_OFFSET,
    );
    // erofs-utils `erofs_superblock_csum_verify`: the rest of the superblock's block (or one block when
    // blocks are smaller than the superblock offset), checksum field zero, crc32c seeded with ~0.
    const length = bs > EROFS_SUPER_OFFSET ? bs - EROFS_SUPER_OFFSET : bs;
    const region = Buffer.alloc(length);
    header.copy(region, 0, EROFS_SUPER_OFFSET, Math.min(header.byteLength, EROFS_SUPER_OFFSET + length));
    const checksum = crc32c(region);
    header.writeUInt32LE(checksum, EROFS_SUPER_OFFSET + superBlock.offsetOf('checksum'));
    return header;
  }
}

type PlacedExtent = { length: number; raw: boolean; pblk: number; blocks: number };

const EMPTY_BLOCKS: FileContent = { kind: 'blocks', size: 0, startBlock: 0, tail: null };

/** A file's whole body in `SEGMENT_SIZE` pieces (each its own buffer). */
async function readSegments(
  body: AsyncIterable<Uint8Array>,
  size: number,
  signal: AbortSignal | undefined,
): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const segment of segmentsOf(body, size, signal)) out.push(segment);
  return out;
}

/** Regroups a file's body into `SEGMENT_SIZE` pieces (the last one shorter), checking its length. */
async function* segmentsOf(
  body: AsyncIterable<Uint8Array>,
  size: number,
  signal: AbortSignal | undefined,
): AsyncGenerator<Uint8Array> {
  let segment = new Uint8Array(Math.min(SEGMENT_SIZE, size));
  let filled = 0;
  let total = 0;
  for await (const chunk of body) {
    throwIfAborted(signal);
    if (total + chunk.byteLength > size)
      throw new ErofsOciError('internal', 'file body longer than its size');
    total += chunk.byteLength;
    let at = 0;
    while (at < chunk.byteLength) {
      const n = Math.min(chunk.byteLength - at, segment.byteLength - filled);
      segment.set(chunk.subarray(at, at + n), filled);
      filled += n;
      at += n;
      if (filled === segment.byteLength && filled > 0) {
        yield segment;
        segment = new Uint8Array(Math.min(SEGMENT_SIZE, size - total + (chunk.byteLength - at)));
        filled = 0;
      }
    }
  }
  if (total !== size) throw new ErofsOciError('internal', `file body ended after ${total} of ${size} bytes`);
}

/** The superblock's compression configurations (COMPR_CFGS), written right after it. */
function compressionConfigs(c: CompressionOptions, blockSize: number): Buffer {
  let cfg: Buffer;
  if (c.alg === CompressionAlg.lz4) {
    cfg = Buffer.alloc(lz4Cfgs.size);
    lz4Cfgs.encode({ maxDistance: 0xffff, maxPclusterblks: c.pclusterSize / blockSize }, cfg, 0);
  } else if (c.alg === CompressionAlg.deflate) {
    cfg = Buffer.alloc(deflateCfgs.size);
    deflateCfgs.encode({ windowbits: DEFLATE_WINDOW_BITS }, cfg, 0);
  } else {
    cfg = Buffer.alloc(zstdCfgs.size);
    zstdCfgs.encode({ format: 0, windowlog: zstdWindowLog(c.pclusterSize) - 10 }, cfg, 0);
  }
  const out = Buffer.alloc(2 + cfg.byteLength);
  out.writeUInt16LE(cfg.byteLength, 0);
  cfg.copy(out, 2);
  return out;
}

/** The device table follows the 128-byte superblock, in 128-byte slots. */
const DEVICE_TABLE_OFFSET = EROFS_SUPER_OFFSET + superBlock.size;

function readExactly(fd: number, target: Buffer, at: number, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, target, at + done, length - done, position + done);
    if (n === 0) throw new ErofsOciError('io', 'spill file ended early');
    done += n;
  }
}

function alignUp(value: number, unit: number): number {
  return Math.ceil(value / unit) * unit;
}

// ---------------------------------------------------------------------------------------------------------
// Planning

interface DirEntryPlan {
  name: Buffer;
  target: InodePlan | null; // null: '.' or '..' resolved at emit time
  dot: 0 | 1 | 2; // 0 = ordinary entry, 1 = '.', 2 = '..'
}

interface InodePlan {
  node: Node;
  parent: InodePlan | null;
  nid: number;
  ino: number;
  nlink: number;
  size: number;
  compact: boolean;
  isize: number;
  xattrBody: Buffer | null;
  layout: DataLayout;
  /** Bytes of data stored right after the inode (tail-packed data). */
  inlineLength: number;
  /** Block where the data (not inline) starts; 0xffffffff when there is none. */
  startBlock: number;
  chunk: { format: number; count: number; chunkBlocks: number } | null;
  /** Compressed files: map header and compact indexes, stored at `alignUp(isize + xattrs, 8)`. */
  zindex: Uint8Array | null;
  /** Directories: sorted entries split into blocks. */
  dirBlocks: DirEntryPlan[][] | null;
}

interface LateData {
  kind: 'dir' | 'symlink';
  inode: InodePlan;
  startBlock: number;
  bytes: Buffer;
}

interface MetadataPlan {
  inodes: InodePlan[];
  rootNid: number;
  epoch: number;
  lateData: LateData[];
  metaBlkaddr: number;
  metaBlocks: number;
  totalBlocks: number;
}

interface PlanOptions {
  blockSize: number;
  buildTime: number;
  /** First block after the streamed file data: where the meta area starts. */
  metaStart: number;
  external: boolean;
}

function planMetadata(root: Directory, options: PlanOptions): MetadataPlan {
  const bs = options.blockSize;
  // Compact inodes store mtime as u32 seconds after `epoch` (erofs-utils: epoch = max(0, T - UINT32_MAX)).
  const epoch = Math.max(0, options.buildTime - U32_MAX);
  if (options.buildTime < 0) throw new ErofsOciError('usage', 'the build time must not be before 1970');

  // Breadth-first order keeps a directory's children close to each other in the meta area.
  const inodes: InodePlan[] = [];
  const byNode = new Map<Node, InodePlan>();
  const visit = (node: Node, parent: InodePlan | null): InodePlan => {
    const known = byNode.get(node);
    if (known) {
      known.nlink++;
      return known;
    }
    const plan: InodePlan = {
      node,
      parent,
      nid: 0,
      ino: inodes.length + 1,
      nlink: node.kind === 'dir' ? 2 : 1,
      size: 0,
      compact: false,
      isize: 0,
      xattrBody: null,
      layout: DataLayout.flatPlain,
      inlineLength: 0,
      startBlock: U32_MAX,
      chunk: null,
      zindex: null,
      dirBlocks: null,
    };
    inodes.push(plan);
    byNode.set(node, plan);
    return plan;
  };
  const rootPlan = visit(root, null);
  rootPlan.parent = rootPlan;
  for (let i = 0; i < inodes.length; i++) {
    const dir = inodes[i] as InodePlan;
    if (dir.node.kind !== 'dir') continue;
    const entries: DirEntryPlan[] = [
      { name: Buffer.from('.'), target: null, dot: 1 },
      { name: Buffer.from('..'), target: null, dot: 2 },
    ];
    for (const [name, child] of dir.node.entries) {
      const nameBytes = fromByteString(name);
      validateName(name, nameBytes);
      if (child.kind === 'dir') {
        if (byNode.has(child)) throw new ErofsOciError('internal', 'a directory is linked twice in the tree');
        dir.nlink++;
      }
      entries.push({ name: nameBytes, target: visit(child, dir), dot: 0 });
    }
    entries.sort((a, b) => Buffer.compare(a.name, b.name));
    dir.dirBlocks = splitDirBlocks(entries, bs);
    const blocks = dir.dirBlocks;
    const last = blocks[blocks.length - 1] as DirEntryPlan[];
    dir.size = (blocks.length - 1) * bs + blockUsage(last);
  }

  const lateData: LateData[] = [];
  // Late data blocks are numbered from 0 here and moved behind the meta area once its size is known.
  let nextLateBlock = 0;
  for (const inode of inodes) {
    const node = inode.node;
    inode.xattrBody = encodeXattrs(node.xattrs);
    const xattrSize = inode.xattrBody?.byteLength ?? 0;
    if (node.kind === 'file') inode.size = node.content.size;
    else if (node.kind === 'symlink') inode.size = node.target.length;
    if (node.kind !== 'dir' && node.kind !== 'file' && node.kind !== 'symlink') inode.startBlock = 0;
    inode.compact = fitsCompact(node, inode, epoch);
    inode.isize = inode.compact ? inodeCompact.size : inodeExtended.size;

    if (node.kind === 'file') {
      const content = node.content;
      if (content.kind === 'external') {
        // As erofs-utils (lib/blobchunk.c, tarerofs_write_chunkes): the smallest power-of-two chunk that
        // covers the whole file, so one index normally suffices; chunks address device 1 (the tar) in its
        // own block numbers, which a flat `[image][tar]` file resolves through the slot's unified address.
        if (content.size === 0) {
          inode.layout = DataLayout.flatPlain;
        } else {
          if (content.offset % bs !== 0) {
            throw new ErofsOciError(
              'internal',
              `external data offset ${content.offset} is not block aligned`,
            );
          }
          if ((content.offset + content.size) / bs > U32_MAX) {
            throw new ErofsOciError(
              'unsupported',
              'layer too large for 32-bit block addresses in index mode',
            );
          }
          const blkbits = Math.log2(bs);
          const sizeBits = content.size <= 1 ? 0 : Math.floor(Math.log2(content.size - 1)) + 1;
          const chunkBits = Math.min(CHUNK_FORMAT_BLKBITS_MASK, Math.max(blkbits, sizeBits) - blkbits);
          inode.layout = DataLayout.chunkBased;
          inode.chunk = {
            format: CHUNK_FORMAT_INDEXES | chunkBits,
            count: Math.ceil(content.size / (bs * 2 ** chunkBits)),
            chunkBlocks: 2 ** chunkBits,
          };
        }
      } else if (content.kind === 'compressed') {
        inode.layout = DataLayout.compressedCompact;
        inode.startBlock = content.blocks; // i_u.compressed_blocks
        inode.zindex = compressedIndex(content, bs, alignUp(inode.isize + xattrSize, 8));
      } else if (content.size === 0) {
        inode.layout = DataLayout.flatPlain;
      } else {
        inode.startBlock = content.size >= bs ? content.startBlock : U32_MAX;
        if (content.tail) {
          inode.layout = DataLayout.flatInline;
          inode.inlineLength = content.tail.length;
        } else {
          inode.layout = DataLayout.flatPlain;
          inode.startBlock = content.startBlock;
        }
      }
    } else if (node.kind === 'symlink' || node.kind === 'dir') {
      const size = inode.size;
      const tail = size % bs;
      const full = size - tail;
      const canInline = tail > 0 && inode.isize + xattrSize + tail <= bs;
      if (canInline) {
        inode.layout = DataLayout.flatInline;
        inode.inlineLength = tail;
      } else {
        inode.layout = DataLayout.flatPlain;
      }
      const lateBytes = canInline ? full : size;
      if (lateBytes > 0) {
        inode.startBlock = nextLateBlock;
        const bytes =
          node.kind === 'symlink'
            ? Buffer.from(node.target, 'latin1').subarray(0, lateBytes)
            : Buffer.alloc(0);
        lateData.push({ kind: node.kind, inode, startBlock: nextLateBlock, bytes });
        nextLateBlock += Math.ceil(lateBytes / bs);
      }
    }
  }

  // Meta area: assign nids. An inode and its inline data never cross a block boundary. The kernel uses the
  // nid as the inode number, and inode number 0 reads as "no inode" to user space (readdir d_ino 0), so
  // the first slot stays empty.
  let position = INODE_SLOT_SIZE;
  for (const inode of inodes) {
    position = alignUp(position, INODE_SLOT_SIZE);
    let recordSize = inode.isize + (inode.xattrBody?.byteLength ?? 0);
    if (inode.chunk) recordSize = alignUp(recordSize, chunkIndex.size) + inode.chunk.count * chunkIndex.size;
    if (inode.zindex) recordSize = alignUp(recordSize, 8) + inode.zindex.byteLength;
    recordSize += inode.inlineLength;
    const mustFit = inode.inlineLength > 0 || inode.chunk !== null;
    const spaceInBlock = bs - (position % bs);
    if ((mustFit && recordSize > spaceInBlock && recordSize <= bs) || inode.isize > spaceInBlock) {
      position += spaceInBlock;
    }
    inode.nid = position / INODE_SLOT_SIZE;
    position += recordSize;
  }
  const metaBlkaddr = options.metaStart;
  // erofs-utils 1.5's fsck (Debian 12's fsck.erofs) reads the 12 bytes after every inode without xattrs
  // as an xattr header (fsck/main.c erofs_verify_xattr), so an inode ending exactly at the end of the image
  // fails there as "failed to read xattr header". The kernel and later fsck versions do not read them; a
  // metadata area that ends the image exactly at a block boundary still gets a spare block.
  const spare = nextLateBlock === 0 && position % bs === 0 ? 1 : 0;
  const metaBlocks = Math.max(1, Math.ceil(position / bs) + spare);
  const lateStart = metaBlkaddr + metaBlocks;
  for (const record of lateData) {
    record.startBlock += lateStart;
    record.inode.startBlock = record.startBlock;
  }
  if (rootPlan.nid > U16_MAX) throw new ErofsOciError('internal', 'root nid does not fit in 16 bits');
  if (lateStart + nextLateBlock > U32_MAX) {
    throw new ErofsOciError('unsupported', 'image too large for 32-bit block addresses');
  }
  return {
    inodes,
    rootNid: rootPlan.nid,
    epoch,
    lateData,
    metaBlkaddr,
    metaBlocks,
    totalBlocks: lateStart + nextLateBlock,
  };
}

/**
 * Map header and compact indexes (4B/2B) of a compressed file, as mkfs.erofs writes them: lcluster = block,
 * big pclusters when the superblock has them. `headerOffset`: the header's offset from the inode (only its
 * position modulo 32 matters, and inodes are 32-byte aligned).
 */
function compressedIndex(
  content: Extract<FileContent, { kind: 'compressed' }>,
  bs: number,
  headerOffset: number,
): Uint8Array {
  const blockBits = Math.log2(bs);
  const big = content.bigPcluster;
  const indexes = encodeCompactIndexes(lclusterEntries(content.extents, blockBits, big), {
    headerStart: headerOffset,
    lclusterBits: blockBits,
    compacted2b: true,
    bigPcluster: big,
    firstBlock: content.startBlock,
  });
  const out = new Uint8Array(zMapHeader.size + indexes.byteLength);
  zMapHeader.encode(
    {
      advise: Z_ADVISE_COMPACTED_2B | (big ? Z_ADVISE_BIG_PCLUSTER_1 | Z_ADVISE_BIG_PCLUSTER_2 : 0),
      algorithmtype: content.alg,
      clusterbits: 0,
    },
    out,
    0,
  );
  out.set(indexes, zMapHeader.size);
  return out;
}

function validateName(name: ByteString, bytes: Buffer): void {
  if (bytes.byteLength === 0 || bytes.byteLength > EROFS_NAME_LEN || name === '.' || name === '..') {
    throw new ErofsOciError(
      'corrupt',
      `invalid file name ${JSON.stringify(name)} (${bytes.byteLength} bytes)`,
    );
  }
  if (bytes.includes(0x2f) || bytes.includes(0)) {
    throw new ErofsOciError('corrupt', `file name contains '/' or NUL: ${JSON.stringify(name)}`);
  }
}

const DIRENT_SIZE = dirent.size;

function blockUsage(entries: DirEntryPlan[]): number {
  let used = 0;
  for (const entry of entries) used += DIRENT_SIZE + entry.name.byteLength;
  return used;
}

/** Greedy split of sorted entries into directory blocks: all dirents first, then all names. */
function splitDirBlocks(entries: DirEntryPlan[], bs: number): DirEntryPlan[][] {
  const blocks: DirEntryPlan[][] = [];
  let current: DirEntryPlan[] = [];
  let used = 0;
  for (const entry of entries) {
    const need = DIRENT_SIZE + entry.name.byteLength;
    if (used + need > bs) {
      blocks.push(current);
      current = [];
      used = 0;
    }
    current.push(entry);
    used += need;
  }
  blocks.push(current);
  return blocks;
}

function fileTypeOf(node: Node): number {
  switch (node.kind) {
    case 'dir':
      return FileType.dir;
    case 'file':
      return FileType.regFile;
    case 'symlink':
      return FileType.symlink;
    case 'chardev':
      return FileType.chrdev;
    case 'blockdev':
      return FileType.blkdev;
    case 'fifo':
      return FileType.fifo;
    case 'socket':
      return FileType.sock;
  }
}

function modeOf(node: Node): number {
  const perm = node.mode & 0o7777;
  switch (node.kind) {
    case 'dir':
      return S_IFDIR | perm;
    case 'file':
      return S_IFREG | perm;
    case 'symlink':
      return S_IFLNK | perm;
    case 'chardev':
      return S_IFCHR | perm;
    case 'blockdev':
      return S_IFBLK | perm;
    case 'fifo':
      return S_IFIFO | perm;
    case 'socket':
      return S_IFSOCK | perm;
  }
}

/**
 * Serialises a directory's blocks. With `inlineOnly` the last (partial) block is returned when it is
 * inlined; otherwise the blocks stored in the late data area (all full blocks, plus the last one when it is
 * not inlined), zero padded to whole blocks.
 */
function dirBlocks(inode: InodePlan, bs: number, inlineOnly: boolean): Buffer {
  const blocks = inode.dirBlocks as DirEntryPlan[][];
  const inlined = inode.inlineLength > 0;
  const first = inlineOnly ? blocks.length - 1 : 0;
  const end = inlineOnly || !inlined ? blocks.length : blocks.length - 1;
  const out = Buffer.alloc(inlineOnly ? inode.inlineLength : (end - first) * bs);
  for (let b = first; b < end; b++) {
    const entries = blocks[b] as DirEntryPlan[];
    const base = inlineOnly ? 0 : (b - first) * bs;
    let nameOffset = entries.length * DIRENT_SIZE;
    entries.forEach((entry, i) => {
      const target =
        entry.dot === 1 ? inode : entry.dot === 2 ? (inode.parent as InodePlan) : (entry.target as InodePlan);
      dirent.encode(
        { nid: target.nid, nameoff: nameOffset, fileType: fileTypeOf(target.node), reserved: 0 },
        out,
        base + i * DIRENT_SIZE,
      );
      entry.name.copy(out, base + nameOffset);
      nameOffset += entry.name.byteLength;
    });
  }
  return out;
}

function fitsCompact(node: Node, inode: InodePlan, epoch: number): boolean {
  const delta = node.mtime.sec - epoch;
  return (
    node.uid <= U16_MAX &&
    node.gid <= U16_MAX &&
    inode.nlink <= U16_MAX &&
    inode.size <= U32_MAX &&
    node.mtime.nsec === 0 &&
    delta >= 0 &&
    delta <= U32_MAX
  );
}

function encodeInode(inode: InodePlan, target: Buffer, at: number, epoch: number): void {
  const node = inode.node;
  let u: number;
  if (node.kind === 'chardev' || node.kind === 'blockdev') u = encodeDev(node.major, node.minor);
  else if (node.kind === 'fifo' || node.kind === 'socket') u = 0;
  else if (inode.chunk) u = inode.chunk.format;
  else u = inode.startBlock;
  const xattrIcount = inode.xattrBody ? (inode.xattrBody.byteLength - xattrIbodyHeader.size) / 4 + 1 : 0;
  const format = (inode.compact ? 0 : I_VERSION_EXTENDED) | (inode.layout << I_DATALAYOUT_BIT);
  if (inode.compact) {
    inodeCompact.encode(
      {
        format,
        xattrIcount,
        mode: modeOf(node),
        nlink: inode.nlink,
        size: inode.size,
        mtime: node.mtime.sec - epoch,
        u,
        ino: inode.ino,
        uid: node.uid,
        gid: node.gid,
      },
      target,
      at,
    );
  } else {
    inodeExtended.encode(
      {
        format,
        xattrIcount,
        mode: modeOf(node),
        nb: 0,
        size: inode.size,
        u,
        ino: inode.ino,
        uid: node.uid,
        gid: node.gid,
        mtime: 0,
        mtimeNsec: node.mtime.nsec,
        nlink: inode.nlink,
      },
      target,
      at,
    );
    // i_mtime is a signed 64-bit value: files may predate 1970.
    target.writeBigInt64LE(BigInt(node.mtime.sec), at + inodeExtended.offsetOf('mtime'));
  }
}

/** Inline xattr body (header + entries), or null when there are none. Sorted for reproducible images. */
export function encodeXattrs(xattrs: Map<ByteString, Uint8Array>): Buffer | null {
  if (xattrs.size === 0) return null;
  const entries: { index: number; suffix: Buffer; value: Uint8Array }[] = [];
  for (const [name, value] of xattrs) {
    let best: { index: number; prefix: string } | undefined;
    for (const candidate of XATTR_PREFIXES) {
      const isAcl = candidate.index === 2 || candidate.index === 3;
      const matches = isAcl ? name === candidate.prefix : name.startsWith(candidate.prefix);
      if (matches && (!best || candidate.prefix.length > best.prefix.length)) best = candidate;
    }
    if (!best) {
      throw new ErofsOciError(
        'unsupported',
        `extended attribute ${JSON.stringify(name)} has no EROFS name prefix`,
      );
    }
    const suffix = fromByteString(name.slice(best.prefix.length));
    if (suffix.byteLength > 255)
      throw new ErofsOciError('unsupported', `extended attribute name too long: ${name}`);
    if (value.byteLength > U16_MAX) {
      throw new ErofsOciError('unsupported', `extended attribute ${name} is larger than 64 KiB`);
    }
    entries.push({ index: best.index, suffix, value });
  }
  entries.sort((a, b) => a.index - b.index || Buffer.compare(a.suffix, b.suffix));
  let size = xattrIbodyHeader.size;
  for (const e of entries) size += alignUp(xattrEntry.size + e.suffix.byteLength + e.value.byteLength, 4);
  if ((size - xattrIbodyHeader.size) / 4 + 1 > U16_MAX) {
    throw new ErofsOciError('unsupported', 'extended attributes of one file exceed 256 KiB');
  }
  const body = Buffer.alloc(size);
  xattrIbodyHeader.encode({ nameFilter: 0, sharedCount: 0 }, body, 0);
  let p = xattrIbodyHeader.size;
  for (const e of entries) {
    xattrEntry.encode(
      { nameLen: e.suffix.byteLength, nameIndex: e.index, valueSize: e.value.byteLength },
      body,
      p,
    );
    e.suffix.copy(body, p + xattrEntry.size);
    body.set(e.value, p + xattrEntry.size + e.suffix.byteLength);
    p += alignUp(xattrEntry.size + e.suffix.byteLength + e.value.byteLength, 4);
  }
  return body;
}

/** Size of the inline xattr body for `xattrs` (what `writeFileData` needs as `inlineOverhead`). */
export function xattrBodySize(xattrs: Map<ByteString, Uint8Array>): number {
  return encodeXattrs(xattrs)?.byteLength ?? 0;
}
