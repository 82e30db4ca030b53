/** Random access into gzip streams: zinfo indexes (SOCI v2 as erofs-utils writes them) and a byte source over them. */
export {
  buildZinfo,
  createZinfoBuilder,
  DEFAULT_SPAN,
  type ZinfoBuilder,
  type ZinfoBuilderOptions,
  type ZinfoBuildResult,
} from './builder.ts';
export {
  decodeZinfo,
  encodeZinfo,
  validateZinfo,
  WINDOW_SIZE,
  type Zinfo,
  type ZinfoCheckpoint,
  type ZinfoVersion,
} from './zinfo.ts';
export {
  openZinfoSource,
  type ZinfoSource,
  type ZinfoSourceOptions,
  type ZinfoSourceStats,
} from './zinfo-source.ts';
export {
  decodeSpanDigests,
  encodeSpanDigests,
  SPAN_DIGESTS_SUFFIX,
  type SpanDigests,
  zinfoDigest,
} from './span-digests.ts';
