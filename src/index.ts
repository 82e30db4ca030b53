/**
 * erofs-oci as a library (SPEC §5): the same features as the command line, as a typed ESM API. Every
 * asynchronous call takes an `AbortSignal` in its options.
 */
export {
  type BuildMode,
  type BuildOptions,
  type BuildSource,
  type BuildSummary,
  build,
} from './builder/build.ts';
export { type ErofsImage, type Inode, openImage as openErofsImage } from './erofs/reader.ts';
export { type BlockSize, ImageWriter } from './erofs/writer.ts';
export { ErofsOciError, type ErrorCode, exitStatusFor } from './errors.ts';
export { TreeBuilder } from './fs-tree/apply.ts';
export type { Directory, Leaf, Node } from './fs-tree/tree.ts';
export {
  buildZinfo,
  createZinfoBuilder,
  decodeZinfo,
  encodeZinfo,
  openZinfoSource,
  type Zinfo,
} from './gzip-index/index.ts';
export { openBlockCache } from './io/block-cache.ts';
export type { ByteSource, ReadOptions } from './io/byte-source.ts';
export { concatSources } from './io/concat-source.ts';
export { decompress, detectCompression } from './io/decompress.ts';
export { openFileSource } from './io/file-source.ts';
export { serveNbd } from './nbd/server.ts';
export {
  blobByteSource,
  type ImageSource,
  type LayerDescriptor,
  openImageSource as openImage,
  parseSourceReference,
} from './oci/index.ts';
export { readTar, type TarEntry } from './tar/reader.ts';
