/**
 * How far the bytes a mount's layer serves have been checked, for `list --json` (SPEC `serve`): every
 * chunk before it is served (`chunk-verified`); the whole blob, before the mount (a `+zstd` layer without
 * an index is decompressed and checked first) or since every block was fetched, as the layer's disk cache
 * record says (`whole-blob-verified`); or not yet (`not-yet-verified`: bytes served so far were
 * unverified, as any lazy read of a layer without an index must be).
 */
import { isCacheVerified } from '../io/block-cache.ts';
import { type LayerRecord, layerCacheDir, mountDir } from './state.ts';

export type VerificationState = 'chunk-verified' | 'whole-blob-verified' | 'not-yet-verified';

export async function verificationState(
  stateRoot: string,
  mountpoint: string,
  layer: Pick<LayerRecord, 'index' | 'digest' | 'kind' | 'mediaType' | 'verification'>,
): Promise<VerificationState> {
  if (layer.verification === 'chunk-verified') return 'chunk-verified';
  if (layer.kind === 'erofs' && layer.mediaType.endsWith('+zstd')) return 'whole-blob-verified';
  const cacheDir = layerCacheDir(mountDir(stateRoot, mountpoint), layer.index);
  return (await isCacheVerified(cacheDir, layer.digest)) ? 'whole-blob-verified' : 'not-yet-verified';
}
