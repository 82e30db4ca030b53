import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import { type EntryNode, splitPath, TreeBuilder, type WhiteoutMode } from './apply.ts';
import { type Attributes, type Directory, EMPTY_CONTENT, type Node } from './tree.ts';

const attrs = (mode = 0o644): Attributes => ({
  mode,
  uid: 0,
  gid: 0,
  mtime: { sec: 1, nsec: 0 },
  xattrs: new Map(),
});
const file = (): EntryNode => ({ kind: 'leaf', leaf: { kind: 'file', ...attrs(), content: EMPTY_CONTENT } });
const dir = (): EntryNode => ({ kind: 'dir', attributes: attrs(0o755) });
const link = (target: string): EntryNode => ({ kind: 'hardlink', target });

type Layer = [string, EntryNode][];

function apply(layers: Layer[], whiteouts: WhiteoutMode = 'apply'): TreeBuilder {
  const tree = new TreeBuilder({ whiteouts });
  for (const layer of layers) {
    tree.beginLayer();
    for (const [path, node] of layer) {
      const origin = { source: 'test' };
      tree.add(path, tree.classify(path, origin), node, origin);
    }
  }
  return tree;
}

/** Paths of the tree, directories with a trailing slash. */
function listing(root: Directory): string[] {
  const out: string[] = [];
  const walk = (d: Directory, prefix: string) => {
    for (const [name, child] of [...d.entries].sort(([a], [b]) => (a < b ? -1 : 1))) {
      out.push(`${prefix}${name}${child.kind === 'dir' ? '/' : ''}`);
      if (child.kind === 'dir') walk(child, `${prefix}${name}/`);
    }
  };
  walk(root, '');
  return out;
}

function lookup(root: Directory, path: string): Node | undefined {
  let node: Node | undefined = root;
  for (const part of path.split('/')) node = node?.kind === 'dir' ? node.entries.get(part) : undefined;
  return node;
}

describe('TreeBuilder', () => {
  it('overlay form: .wh.NAME then NAME/ in one layer is an opaque directory; NAME then .wh.NAME keeps NAME', () => {
    const tree = apply(
      [
        [
          ['d/.wh.x', file()],
          ['d/x/', dir()],
          ['d/y', file()],
          ['d/.wh.y', file()],
          ['d/z/', dir()],
          ['d/.wh.z', file()],
        ],
      ],
      'overlay',
    );
    const x = lookup(tree.root, 'd/x');
    assert.equal(x?.kind, 'dir');
    assert.equal(Buffer.from(x.xattrs.get('trusted.overlay.opaque') ?? []).toString(), 'y');
    assert.equal(lookup(tree.root, 'd/y')?.kind, 'file');
    const z = lookup(tree.root, 'd/z');
    assert.equal(Buffer.from(z?.xattrs.get('trusted.overlay.opaque') ?? []).toString(), 'y');
  });

  it('overlay form with deferLowerLinks: links to a missing target share one placeholder', () => {
    const tree = new TreeBuilder({ whiteouts: 'overlay', deferLowerLinks: true });
    tree.beginLayer();
    for (const [path, node] of [
      ['a', link('lower/t')],
      ['b', link('./lower//t')],
      ['own', file()],
      ['c', link('own')],
    ] as [string, EntryNode][]) {
      const origin = { source: 'test' };
      tree.add(path, tree.classify(path, origin), node, origin);
    }
    assert.deepEqual([...tree.lowerLinks.keys()], ['lower/t']);
    assert.equal(lookup(tree.root, 'a'), lookup(tree.root, 'b'));
    assert.equal(lookup(tree.root, 'a'), tree.lowerLinks.get('lower/t')?.leaf);
    assert.equal(lookup(tree.root, 'c'), lookup(tree.root, 'own'));
  });

  it('creates missing parents', () => {
    const tree = apply([[['a/b/c', file()]]]);
    assert.deepEqual(listing(tree.root), ['a/', 'a/b/', 'a/b/c']);
  });

  it('deletes lower entries named by .wh. files and leaves no whiteout behind', () => {
    const tree = apply([
      [
        ['etc/', dir()],
        ['etc/passwd', file()],
        ['etc/shadow', file()],
      ],
      [['etc/.wh.passwd', file()]],
    ]);
    assert.deepEqual(listing(tree.root), ['etc/', 'etc/shadow']);
  });

  it('does not let a whiteout remove what its own layer adds', () => {
    const tree = apply([
      [['a', file()]],
      [
        ['a', file()],
        ['.wh.a', file()],
      ],
    ]);
    assert.deepEqual(listing(tree.root), ['a']);
  });

  it('opaque directories hide lower content but keep the same layer entries', () => {
    const tree = apply([
      [
        ['d/old', file()],
        ['d/sub/old', file()],
      ],
      [
        ['d/new1', file()],
        ['d/sub/', dir()],
        ['d/.wh..wh..opq', file()],
        ['d/new2', file()],
      ],
    ]);
    assert.deepEqual(listing(tree.root), ['d/', 'd/new1', 'd/new2', 'd/sub/']);
  });

  it('replaces files by directories and directories by files across layers', () => {
    const tree = apply([
      [
        ['x', file()],
        ['y/inner', file()],
      ],
      [
        ['x/inside', file()],
        ['y', file()],
      ],
    ]);
    assert.deepEqual(listing(tree.root), ['x/', 'x/inside', 'y']);
  });

  it('rejects an entry that is both file and directory in one layer', () => {
    assert.throws(
      () =>
        apply([
          [
            ['x', file()],
            ['x/inside', file()],
          ],
        ]),
      (e: unknown) => isErofsOciError(e, 'corrupt') && /not a directory in the same layer/.test(e.message),
    );
    assert.throws(
      () =>
        apply([
          [
            ['x/', dir()],
            ['x', file()],
          ],
        ]),
      (e: unknown) => isErofsOciError(e, 'corrupt') && /both a directory and a file/.test(e.message),
    );
  });

  it('shares one leaf between hardlinks, also into lower layers', () => {
    const tree = apply([[['a', file()]], [['b/c', link('a')]]]);
    assert.equal(lookup(tree.root, 'a'), lookup(tree.root, 'b/c'));
  });

  it('rejects hardlinks to missing targets and to directories', () => {
    assert.throws(() => apply([[['b', link('missing')]]]), /does not exist/);
    assert.throws(
      () =>
        apply([
          [
            ['d/', dir()],
            ['b', link('d')],
          ],
        ]),
      /is a directory/,
    );
  });

  it('refuses .. in paths and over-long names', () => {
    assert.throws(() => apply([[['a/../../etc/passwd', file()]]]), /could escape the root/);
    assert.throws(() => apply([[[`${'n'.repeat(256)}`, file()]]]), /longer than 255/);
  });

  it('keeps whiteouts in overlayfs form for a single layer', () => {
    const tree = apply(
      [
        [
          ['d/.wh.gone', file()],
          ['d/.wh..wh..opq', file()],
          ['d/kept', file()],
        ],
      ],
      'overlay',
    );
    const gone = lookup(tree.root, 'd/gone');
    assert.equal(gone?.kind, 'chardev');
    assert.deepEqual(gone?.kind === 'chardev' ? [gone.major, gone.minor] : [], [0, 0]);
    assert.equal(
      Buffer.from(lookup(tree.root, 'd')?.xattrs.get('trusted.overlay.opaque') ?? []).toString(),
      'y',
    );
  });

  it('drops whiteouts with strip', () => {
    const tree = apply(
      [
        [
          ['d/.wh.gone', file()],
          ['d/.wh..wh..opq', file()],
          ['d/kept', file()],
        ],
      ],
      'strip',
    );
    assert.deepEqual(listing(tree.root), ['d/', 'd/kept']);
    assert.equal(lookup(tree.root, 'd')?.xattrs.size, 0);
  });

  it('ignores aufs metadata names', () => {
    const tree = apply([
      [
        ['.wh..wh.plnk/123', file()],
        ['.wh..wh.aufs', file()],
      ],
    ]);
    assert.deepEqual(listing(tree.root), []);
  });
});

describe('splitPath', () => {
  it('drops leading slashes, ./ and empty components', () => {
    assert.deepEqual(splitPath('./a//b/./c/', { source: 't' }), ['a', 'b', 'c']);
    assert.deepEqual(splitPath('/', { source: 't' }), []);
  });
});
