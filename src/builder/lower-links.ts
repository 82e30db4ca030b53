/**
 * Hardlinks from one layer into the layers below it, resolved so that the layer stands alone. A tar layer
 * may link to a file an earlier layer wrote (`ln lower new` in a container build); an EROFS layer cannot
 * point into another image, so the target is copied in: every link of the layer to that target becomes one
 * inode of this layer (a hardlink group within it) with the target's metadata and data as the layers below
 * leave them (whiteouts, replacements and their own hardlinks applied). The lower file itself stays where it
 * is: in the stacked overlay the two paths show the same bytes but are no longer one inode.
 *
 * Two passes over the lower layers, only when a layer has such links: first the metadata of all of them is
 * applied to a tree (file data recorded as offsets in each layer's tar, nothing stored), which says where
 * each target's bytes are; then the layers holding targets are read once more and those bytes are written
 * into the image. Every lower layer is read to its end, so its digest is checked before the build completes.
 */
import type { ImageWriter } from '../erofs/writer.ts';
import { xattrBodySize } from '../erofs/writer.ts';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import { entryError, type LowerLink, TreeBuilder } from '../fs-tree/apply.ts';
import {
  type ByteString,
  displayName,
  type Leaf,
  type Node,
  nodeSize,
  type RegularFile,
} from '../fs-tree/tree.ts';
import { decompress } from '../io/decompress.ts';
import { readTar } from '../tar/reader.ts';
import { entryNode } from './source-entry.ts';

/** A layer below the one being built (compressed or not), opened on demand. */
export interface LowerLayer {
  name: string;
  open(signal: AbortSignal): AsyncIterable<Uint8Array>;
}

/** Where a lower regular file's bytes are: layer index and data offset in its uncompressed tar. */
interface DataAt {
  layer: number;
  offset: number;
}

export async function copyLowerLinks(
  tree: TreeBuilder,
  lowers: readonly LowerLayer[],
  writer: ImageWriter,
  signal: AbortSignal | undefined,
): Promise<void> {
  const links = [...tree.lowerLinks.values()];
  const { found, dataOf } = await lowerTargets(links, lowers, signal);
  // Links to different paths of one lower inode share one inode here too.
  const canonical = new Map<Leaf, LowerLink>();
  const merged = new Map<Leaf, Leaf>();
  for (const link of links) {
    const target = found.get(link) as Leaf;
    const first = canonical.get(target);
    if (first) merged.set(link.leaf, first.leaf);
    else canonical.set(target, link);
  }
  if (merged.size > 0) replaceLeaves(tree.root, merged);

  // Fill the placeholders: metadata now, file data while reading the layers that hold it.
  const wanted = new Map<number, Map<number, { leaf: Leaf; from: Leaf }>>();
  for (const [target, link] of canonical) {
    fill(link.leaf, target);
    if (target.kind !== 'file' || target.content.size === 0) continue;
    const at = dataOf.get(target) as DataAt;
    let byOffset = wanted.get(at.layer);
    if (!byOffset) {
      byOffset = new Map();
      wanted.set(at.layer, byOffset);
    }
    byOffset.set(at.offset, { leaf: link.leaf, from: target });
  }
  for (const [layer, byOffset] of [...wanted].sort((a, b) => a[0] - b[0])) {
    const lower = lowers[layer] as LowerLayer;
    let copied = 0;
    for await (const entry of readLayer(lower, signal)) {
      throwIfAborted(signal);
      const target = entry.type === 'file' ? byOffset.get(entry.dataOffset as number) : undefined;
      if (!target || entry.size !== nodeSize(target.from)) continue;
      const inline = xattrBodySize(target.from.xattrs);
      (target.leaf as RegularFile).content = await writer.writeFileData(entry.body(), entry.size, inline, {
        signal,
      });
      copied++;
    }
    if (copied !== byOffset.size) {
      throw new ErofsOciError(
        'corrupt',
        `${lower.name}: changed between two reads (hardlink targets missing)`,
      );
    }
  }
}

/** Pass 1: the lower layers' metadata merged; every link's target found in it (or a clear error). */
async function lowerTargets(
  links: readonly LowerLink[],
  lowers: readonly LowerLayer[],
  signal: AbortSignal | undefined,
): Promise<{ found: Map<LowerLink, Leaf>; dataOf: WeakMap<Leaf, DataAt> }> {
  const tree = new TreeBuilder({ whiteouts: 'apply' });
  const dataOf = new WeakMap<Leaf, DataAt>();
  for (const [layer, lower] of lowers.entries()) {
    tree.beginLayer();
    for await (const entry of readLayer(lower, signal)) {
      throwIfAborted(signal);
      const origin = { source: lower.name, offset: entry.headerOffset };
      const classified = tree.classify(entry.path, origin);
      const size = entry.type === 'file' && classified.kind === 'entry' ? entry.size : 0;
      const node = entryNode(entry, { kind: 'external', size, offset: entry.dataOffset ?? 0 });
      if (node.kind === 'leaf' && node.leaf.kind === 'file') {
        dataOf.set(node.leaf, { layer, offset: entry.dataOffset ?? 0 });
      }
      tree.add(entry.path, classified, node, origin);
    }
  }
  const found = new Map<LowerLink, Leaf>();
  for (const link of links) {
    let node: Node | undefined = tree.root;
    for (const part of link.target.split('/'))
      node = node?.kind === 'dir' ? node.entries.get(part) : undefined;
    if (!node || node.kind === 'dir') {
      const why = node
        ? `is a directory in the layers below`
        : `is neither in this layer nor in the ${lowers.length} below it`;
      throw entryError(
        `hardlink target ${JSON.stringify(displayName(link.target))} ${why}`,
        link.path,
        link.origin,
      );
    }
    found.set(link, node);
  }
  return { found, dataOf };
}

function readLayer(lower: LowerLayer, signal: AbortSignal | undefined) {
  return readTar(decompress(lower.open(signal ?? new AbortController().signal), { signal }), { signal });
}

/** The placeholder takes the lower leaf's kind and metadata (its own copy of the xattrs). */
function fill(placeholder: Leaf, from: Leaf): void {
  const target = placeholder as unknown as Record<string, unknown>;
  for (const key of Object.keys(target)) delete target[key];
  Object.assign(target, { ...from, xattrs: new Map(from.xattrs) });
  if (from.kind === 'file') target.content = { kind: 'blocks', size: 0, startBlock: 0, tail: null };
}

function replaceLeaves(dir: Node, merged: Map<Leaf, Leaf>): void {
  if (dir.kind !== 'dir') return;
  for (const [name, child] of dir.entries as Map<ByteString, Node>) {
    if (child.kind === 'dir') replaceLeaves(child, merged);
    else {
      const to = merged.get(child);
      if (to) dir.entries.set(name, to);
    }
  }
}
