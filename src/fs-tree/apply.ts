/**
 * Applying layer entries to a tree, whiteouts included (OCI image spec, "Applying Changesets" and
 * "Whiteouts"). Every rule is in `TreeBuilder.add`; each call is one entry of one layer.
 *
 * - `.wh.NAME` removes NAME as left by lower layers; `.wh..wh..opq` hides everything lower layers put in
 *   its directory. Neither touches what the same layer itself adds, before or after the marker.
 * - A later entry replaces an earlier one; a directory entry over a directory only updates attributes.
 * - Missing parents are created. Symlinks are never followed while resolving entry paths.
 * - In `overlay` form (a single layer meant as an overlayfs lower layer) whiteouts are kept the way
 *   overlayfs spells them: a character device 0:0 and `trusted.overlay.opaque=y`.
 */
import { ErofsOciError } from '../errors.ts';
import type { Attributes, ByteString, Directory, Leaf, Node } from './tree.ts';
import { displayName, EMPTY_CONTENT, newDirectory } from './tree.ts';

export type WhiteoutMode = 'apply' | 'overlay' | 'strip';

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';
const AUFS_META_PREFIX = '.wh..wh.';
const OVERLAY_ORIGIN = 'trusted.overlay.origin';
const OVERLAY_OPAQUE = 'trusted.overlay.opaque';
const MAX_NAME = 255;

/** Where an entry came from, for error messages. */
export interface EntryOrigin {
  /** Source name, e.g. `layer.tar`. */
  source: string;
  /** Byte offset of the entry's header in the uncompressed stream. */
  offset?: number;
}

export type EntryNode =
  | { kind: 'dir'; attributes: Attributes }
  | { kind: 'leaf'; leaf: Leaf }
  | { kind: 'hardlink'; target: ByteString };

/** A hardlink whose target is not in the layer: a placeholder leaf that every link to the target shares. */
export interface LowerLink {
  /** The target's path, components joined by `/`. */
  readonly target: ByteString;
  /** Filled in place once the target is found in the layers below (`Object.assign`-style). */
  readonly leaf: Leaf;
  /** The first link entry naming it, for error messages. */
  readonly path: ByteString;
  readonly origin: EntryOrigin;
}

export class TreeBuilder {
  readonly root: Directory;
  readonly #whiteouts: WhiteoutMode;
  readonly #deferLowerLinks: boolean;
  /** Overlay form with `deferLowerLinks`: links to targets below this layer, by target path. */
  readonly lowerLinks = new Map<ByteString, LowerLink>();
  /** Entries added or updated by the current layer, per directory: whiteouts do not apply to them. */
  #touched = new WeakMap<Directory, Set<ByteString>>();
  #rootTouched = false;
  /** Overlay form: the whiteout devices made for `.wh.` entries (an entry of the same name replaces one). */
  #whiteoutNodes = new WeakSet<Node>();

  /**
   * `deferLowerLinks` (overlay form): a hardlink to a target this layer does not have gets a placeholder
   * leaf listed in `lowerLinks`, for the caller to fill from the layers below, instead of an error.
   */
  constructor(options: { whiteouts: WhiteoutMode; root?: Directory; deferLowerLinks?: boolean }) {
    this.#whiteouts = options.whiteouts;
    this.#deferLowerLinks = (options.deferLowerLinks ?? false) && options.whiteouts === 'overlay';
    this.root = options.root ?? newDirectory();
  }

  /** True when some entry set the root directory's own attributes. */
  get rootHasAttributes(): boolean {
    return this.#rootTouched;
  }

  beginLayer(): void {
    this.#touched = new WeakMap();
  }

  /**
   * Checks an entry's path and tells what it is: a whiteout, the root, or a named entry. Call it before
   * streaming a file's data, so bad paths fail before any byte is written.
   */
  classify(path: ByteString, origin: EntryOrigin): ClassifiedPath {
    const parts = splitPath(path, origin);
    if (parts.length === 0) return { kind: 'root' };
    const name = parts[parts.length - 1] as ByteString;
    const parent = parts.slice(0, -1);
    // `.wh..wh.*` names other than the opaque marker are aufs bookkeeping (e.g. `.wh..wh.plnk/`): skipped.
    if (parent.some((part) => part.startsWith(AUFS_META_PREFIX))) return { kind: 'ignored', parent };
    if (name === OPAQUE_MARKER) return { kind: 'opaque', parent };
    if (name.startsWith(WHITEOUT_PREFIX)) {
      const hidden = name.slice(WHITEOUT_PREFIX.length);
      if (hidden.startsWith(WHITEOUT_PREFIX)) return { kind: 'ignored', parent };
      if (hidden === '' || hidden === '.' || hidden === '..') {
        throw entryError(`invalid whiteout name ${quote(name)}`, path, origin);
      }
      return { kind: 'whiteout', parent, name: hidden };
    }
    return { kind: 'entry', parent, name };
  }

  /** Adds one entry whose path `classify` returned. `attributes` are the whiteout entry's own (overlay form). */
  add(path: ByteString, classified: ClassifiedPath, node: EntryNode, origin: EntryOrigin): void {
    switch (classified.kind) {
      case 'ignored':
        return;
      case 'root':
        if (node.kind !== 'dir') throw entryError('the root can only be a directory', path, origin);
        assignAttributes(this.root, node.attributes);
        this.#rootTouched = true;
        return;
      case 'opaque':
        this.#opaque(path, classified.parent, node, origin);
        return;
      case 'whiteout':
        this.#whiteout(path, classified.parent, classified.name, node, origin);
        return;
      case 'entry':
        this.#entry(path, classified.parent, classified.name, node, origin);
        return;
    }
  }

  #entry(
    path: ByteString,
    parentParts: ByteString[],
    name: ByteString,
    node: EntryNode,
    origin: EntryOrigin,
  ): void {
    const parent = this.#directory(parentParts, path, origin);
    const existing = parent.entries.get(name);
    const touched = this.#isTouched(parent, name);
    let replacement: Node;
    switch (node.kind) {
      case 'dir':
        if (existing?.kind === 'dir') {
          // Overlay markers set by whiteouts met earlier survive the directory's own entry.
          const opaque = existing.xattrs.get(OVERLAY_OPAQUE);
          const origin = existing.xattrs.get(OVERLAY_ORIGIN);
          assignAttributes(existing, node.attributes);
          if (this.#whiteouts === 'overlay' && opaque) existing.xattrs.set(OVERLAY_OPAQUE, opaque);
          if (this.#whiteouts === 'overlay' && origin) existing.xattrs.set(OVERLAY_ORIGIN, origin);
          this.#touch(parent, name);
          return;
        }
        if (existing && touched && !this.#whiteoutNodes.has(existing))
          throw entryError('entry is both a file and a directory in one layer', path, origin);
        replacement = { ...newDirectory(node.attributes), entries: new Map() };
        // Overlay form, `.wh.NAME` then `NAME/` in one layer: a new directory hiding the lower one's
        // contents, which overlayfs spells as an opaque directory.
        if (existing && this.#whiteoutNodes.has(existing))
          replacement.xattrs.set(OVERLAY_OPAQUE, Buffer.from('y'));
        break;
      case 'leaf':
        if (existing?.kind === 'dir' && touched) {
          throw entryError('entry is both a directory and a file in one layer', path, origin);
        }
        replacement = node.leaf;
        break;
      case 'hardlink': {
        const target = this.#resolveLink(node.target, origin, path);
        if (existing?.kind === 'dir' && touched) {
          throw entryError('entry is both a directory and a hardlink in one layer', path, origin);
        }
        replacement = target;
        break;
      }
    }
    parent.entries.set(name, replacement);
    this.#touch(parent, name);
  }

  #whiteout(
    path: ByteString,
    parentParts: ByteString[],
    name: ByteString,
    node: EntryNode,
    origin: EntryOrigin,
  ): void {
    if (this.#whiteouts === 'strip') return;
    const parent = this.#directory(parentParts, path, origin);
    if (this.#whiteouts === 'overlay') {
      const existing = parent.entries.get(name);
      if (existing && this.#isTouched(parent, name) && !this.#whiteoutNodes.has(existing)) {
        // This layer's own NAME already hides the lower one; a directory must hide its contents too.
        if (existing.kind === 'dir') existing.xattrs.set(OVERLAY_OPAQUE, Buffer.from('y'));
        return;
      }
      // As overlayfs creates them: S_IFCHR with mode 0 and device 0:0; owner and mtime from the entry.
      const attributes = node.kind === 'dir' ? node.attributes : node.kind === 'leaf' ? node.leaf : undefined;
      const whiteout: Leaf = {
        kind: 'chardev',
        major: 0,
        minor: 0,
        mode: 0,
        uid: attributes?.uid ?? 0,
        gid: attributes?.gid ?? 0,
        mtime: attributes?.mtime ?? { sec: 0, nsec: 0 },
        xattrs: new Map(),
      };
      this.#whiteoutNodes.add(whiteout);
      parent.entries.set(name, whiteout);
      // Keeps overlayfs from iterating this directory directly, which would expose the whiteouts when the
      // image is the only lower layer (kernel commit b79e05aaa166; erofs-utils marks such directories too).
      parent.xattrs.set(OVERLAY_ORIGIN, new Uint8Array(0));
      this.#touch(parent, name);
      return;
    }
    if (!this.#isTouched(parent, name)) parent.entries.delete(name);
  }

  #opaque(path: ByteString, parentParts: ByteString[], _node: EntryNode, origin: EntryOrigin): void {
    if (this.#whiteouts === 'strip') return;
    const dir = this.#directory(parentParts, path, origin);
    if (this.#whiteouts === 'overlay') {
      dir.xattrs.set(OVERLAY_OPAQUE, Buffer.from('y'));
      return;
    }
    this.#hideLower(dir);
  }

  /** Removes from `dir` everything lower layers put there, keeping what this layer added. */
  #hideLower(dir: Directory): void {
    for (const [name, child] of dir.entries) {
      if (!this.#isTouched(dir, name)) dir.entries.delete(name);
      else if (child.kind === 'dir') this.#hideLower(child);
    }
  }

  /** Resolves `parts` to a directory, creating missing ones and replacing lower-layer non-directories. */
  #directory(parts: ByteString[], path: ByteString, origin: EntryOrigin): Directory {
    let dir = this.root;
    for (const part of parts) {
      const child = dir.entries.get(part);
      if (child?.kind === 'dir') {
        dir = child;
        continue;
      }
      if (child && this.#isTouched(dir, part)) {
        throw entryError(`parent ${quote(part)} is not a directory in the same layer`, path, origin);
      }
      const created = newDirectory();
      dir.entries.set(part, created);
      this.#touch(dir, part);
      dir = created;
    }
    return dir;
  }

  #resolveLink(target: ByteString, origin: EntryOrigin, path: ByteString): Leaf {
    let node: Node | undefined = this.root;
    const parts = splitPath(target, origin);
    for (const part of parts) {
      node = node?.kind === 'dir' ? node.entries.get(part) : undefined;
    }
    if (!node && this.#deferLowerLinks && parts.length > 0) {
      const key = parts.join('/');
      let link = this.lowerLinks.get(key);
      if (!link) {
        const leaf: Leaf = {
          kind: 'file',
          mode: 0,
          uid: 0,
          gid: 0,
          mtime: { sec: 0, nsec: 0 },
          xattrs: new Map(),
          content: EMPTY_CONTENT,
        };
        link = { target: key, leaf, path, origin };
        this.lowerLinks.set(key, link);
      }
      return link.leaf;
    }
    if (!node && this.#whiteouts !== 'apply') {
      // A layer on its own (overlay form) cannot point into the layers below it.
      const error = entryError(
        `hardlink target ${quote(target)} is not in this layer (it may be in a lower layer, which a single-layer image cannot reference)`,
        path,
        origin,
      );
      throw new ErofsOciError('unsupported', error.message);
    }
    if (!node) throw entryError(`hardlink target ${quote(target)} does not exist`, path, origin);
    if (node.kind === 'dir')
      throw entryError(`hardlink target ${quote(target)} is a directory`, path, origin);
    return node;
  }

  #isTouched(dir: Directory, name: ByteString): boolean {
    return this.#touched.get(dir)?.has(name) ?? false;
  }

  #touch(dir: Directory, name: ByteString): void {
    let names = this.#touched.get(dir);
    if (!names) {
      names = new Set();
      this.#touched.set(dir, names);
    }
    names.add(name);
  }
}

export type ClassifiedPath =
  | { kind: 'root' }
  | { kind: 'entry'; parent: ByteString[]; name: ByteString }
  | { kind: 'whiteout'; parent: ByteString[]; name: ByteString }
  | { kind: 'opaque'; parent: ByteString[] }
  | { kind: 'ignored'; parent: ByteString[] };

/**
 * Splits an archive path into components: leading `/` and `./` and empty or `.` components are dropped;
 * `..` is refused outright (an entry must never reach outside the tree, and no real layer needs it).
 */
export function splitPath(path: ByteString, origin: EntryOrigin): ByteString[] {
  const parts: ByteString[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw entryError('path contains ".." and could escape the root', path, origin);
    if (part.length > MAX_NAME) {
      throw entryError(`name is ${part.length} bytes long, longer than ${MAX_NAME}`, path, origin);
    }
    if (part.includes('\0')) throw entryError('name contains a NUL byte', path, origin);
    parts.push(part);
  }
  return parts;
}

function assignAttributes(target: Attributes, source: Attributes): void {
  target.mode = source.mode;
  target.uid = source.uid;
  target.gid = source.gid;
  target.mtime = source.mtime;
  target.xattrs = new Map(source.xattrs);
}

function quote(name: ByteString): string {
  return JSON.stringify(displayName(name));
}

export function entryError(message: string, path: ByteString, origin: EntryOrigin): ErofsOciError {
  const where = origin.offset === undefined ? origin.source : `${origin.source} at offset ${origin.offset}`;
  return new ErofsOciError('corrupt', `${where}: entry ${quote(path)}: ${message}`);
}
