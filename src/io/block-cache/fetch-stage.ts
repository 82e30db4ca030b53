/**
 * What a fetched block becomes before it is cached: the one place between the origin and the caches.
 *
 * The stage receives each block's bytes as the origin sent them (a block of the cache's grid, whole) and
 * resolves with the bytes to cache and serve for it; rejecting fails the reads waiting for the block, and
 * nothing of it is cached (a later read fetches it again). Today it is the identity. Issue 13 puts here
 * the check of each chunk against its digest (anchors at chunk boundaries make each chunk whole blocks)
 * and, for compressed layers, the decompression of a chunk's frame. What the stage returns is what the
 * memory and disk caches keep and what the whole-object digest (`digest`) hashes: a stage that changes
 * bytes comes with its own checks in place of that digest.
 */
export type FetchStage = (block: number, fetched: Uint8Array) => Uint8Array | Promise<Uint8Array>;

/** Cache the bytes as fetched. */
export const asFetched: FetchStage = (_block, fetched) => fetched;
