/**
 * Standalone chunk-index entries of `manifest.layers[]` (erofs-image-spec §3.4.3, §3.8 rule 4): an
 * `application/vnd.erofs.chunk-index.v1` entry is no filesystem layer but the chunk index of the entry
 * right before it. They are folded into that layer's descriptor (`chunkIndex`), so every consumer sees
 * filesystem layers only and `--layer N` counts those. A misplaced one (first, last, after another index,
 * or whose `org.erofs.chunk-index.target` names another layer) makes the manifest malformed: `corrupt`.
 */
import { checkStandaloneTarget, isStandaloneChunkIndex } from '../chunk-index/standalone.ts';
import { CorruptInputError, ErofsOciError } from '../errors.ts';
import type { Descriptor, LayerDescriptor } from './image.ts';
import { layerFormat } from './media-types.ts';

export function foldChunkIndexLayers(layers: readonly Descriptor[], name: string): LayerDescriptor[] {
  const out: LayerDescriptor[] = [];
  for (const [i, layer] of layers.entries()) {
    if (!isStandaloneChunkIndex(layer)) {
      out.push({
        ...layer,
        format: layerFormat(layer.mediaType, `layer ${i} (${layer.digest}) of ${name}`),
        manifestIndex: i,
      });
      continue;
    }
    const where = `manifest entry ${i} (chunk index ${layer.digest}) of ${name}`;
    const previous = out.at(-1);
    if (
      i === 0 ||
      i === layers.length - 1 ||
      previous === undefined ||
      isStandaloneChunkIndex(layers[i - 1]!)
    ) {
      throw new CorruptInputError(
        `${where}: a standalone chunk index must follow the layer it indexes and must not be the last entry`,
      );
    }
    if (previous.format.kind !== 'erofs') {
      throw new CorruptInputError(`${where}: the layer before it is not an EROFS layer`);
    }
    try {
      checkStandaloneTarget(previous, layer);
    } catch (error) {
      if (!(error instanceof ErofsOciError)) throw error;
      throw new ErofsOciError(error.code, `${where}: ${error.message}`, { cause: error });
    }
    out[out.length - 1] = { ...previous, chunkIndex: layer };
  }
  return out;
}
