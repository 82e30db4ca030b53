/**
 * The independent side of the build tests: fixture layers (fixtures.py), the tree they should give
 * (expected.py: GNU tar plus the OCI whiteout rules), and a readable comparison of two snapshots.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { check, type Snapshot, type SnapshotEntry, testSupportDir } from './kernel.ts';

export type LayerSet =
  | 'types'
  | 'sizes'
  | 'xattrs'
  | 'names'
  | 'numbers'
  | 'bigdir'
  | 'everything'
  | 'whiteouts'
  | 'overlay'
  | 'lowerlinks';

export type Compression = 'none' | 'gzip' | 'zstd' | 'mixed';

export type BadCase =
  | 'truncated-gzip'
  | 'gzip-crc'
  | 'corrupt-zstd'
  | 'truncated-zstd'
  | 'bad-checksum'
  | 'size-past-end'
  | 'truncated-header'
  | 'dotdot'
  | 'dotdot-nested'
  | 'dotdot-hardlink'
  | 'hardlink-missing'
  | 'hardlink-missing-stacked'
  | 'hardlink-dir'
  | 'name-too-long'
  | 'second-layer';

const python = (script: string) => join(testSupportDir, script);

/** Writes the layer tarballs of `set` into `outdir`; returns their paths, lowest layer first. */
export async function generateLayers(
  set: LayerSet,
  outdir: string,
  options: { seed?: number; compression?: Compression } = {},
): Promise<string[]> {
  const out = await check('python3', [
    python('fixtures.py'),
    'layers',
    set,
    outdir,
    '--seed',
    String(options.seed ?? 1),
    '--compression',
    options.compression ?? 'none',
  ]);
  return (JSON.parse(out) as { layers: string[] }).layers;
}

/** Writes the layers of a bad-input case into `outdir`; returns their paths. */
export async function generateBadInput(badCase: BadCase, outdir: string): Promise<string[]> {
  const out = await check('python3', [python('fixtures.py'), 'bad', badCase, outdir]);
  return (JSON.parse(out) as { layers: string[] }).layers;
}

/** Creates a directory tree with every file type (socket included) at `outdir`, for `dir:` sources. */
export async function generateTree(outdir: string, seed = 1): Promise<void> {
  await check('python3', [python('fixtures.py'), 'tree', outdir, '--seed', String(seed)]);
}

/** The command line that streams the large-file layer to stdout and its metadata to `metaFile`. */
export function bigFileCommand(metaFile: string, size?: number): { command: string; args: string[] } {
  const args = [python('fixtures.py'), 'bigfile', '-', '--meta', metaFile];
  if (size !== undefined) args.push('--size', String(size));
  return { command: 'python3', args };
}

export type ExpectedMode = 'merged' | 'overlay' | 'strip';

/**
 * Extracts `layers` into the empty directory `outdir` the independent way (GNU tar + whiteout rules).
 * Returns the directories no entry defined (created as missing parents): their metadata is unspecified.
 */
export async function buildExpected(
  outdir: string,
  layers: string[],
  mode: ExpectedMode = 'merged',
): Promise<{ implicitDirs: string[] }> {
  const out = await check('python3', [python('expected.py'), '--mode', mode, outdir, ...layers]);
  return JSON.parse(out) as { implicitDirs: string[] };
}

export interface CompareOptions {
  /** Paths whose metadata is unspecified: only their presence, type and nlink are compared. */
  loosePaths?: Iterable<string>;
  /** Leave the root entry out of the comparison. */
  ignoreRoot?: boolean;
  /** Xattr names that may appear or differ on either side (checked separately by the caller). */
  ignoreXattrs?: string[];
  /** Leave directory mtimes out of the comparison. */
  ignoreDirMtimes?: boolean;
}

const LOOSE_FIELDS: (keyof SnapshotEntry)[] = ['mode', 'uid', 'gid', 'mtime', 'xattrs'];

function normalise(entry: SnapshotEntry, loose: boolean, options: CompareOptions): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...entry };
  if (loose) for (const field of LOOSE_FIELDS) delete copy[field];
  if (options.ignoreDirMtimes && entry.type === 'dir') delete copy.mtime;
  if (copy.xattrs && options.ignoreXattrs) {
    const xattrs = { ...(copy.xattrs as Record<string, string>) };
    for (const name of options.ignoreXattrs) delete xattrs[name];
    copy.xattrs = Object.keys(xattrs).length > 0 ? xattrs : undefined;
  }
  if (copy.xattrs === undefined) delete copy.xattrs;
  return copy;
}

function show(value: unknown): string {
  return typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value);
}

/** Differences between two snapshots as readable lines; empty when they agree. */
export function diffSnapshots(expected: Snapshot, actual: Snapshot, options: CompareOptions = {}): string[] {
  const loose = new Set(options.loosePaths ?? []);
  const lines: string[] = [];
  const paths = new Set([...Object.keys(expected.entries), ...Object.keys(actual.entries)]);
  for (const path of [...paths].sort()) {
    if (options.ignoreRoot && path === '.') continue;
    const want = expected.entries[path];
    const have = actual.entries[path];
    if (!have) {
      lines.push(`missing from image: ${path} (${want!.type})`);
      continue;
    }
    if (!want) {
      lines.push(`unexpected in image: ${path} (${have.type})`);
      continue;
    }
    const a = normalise(want, loose.has(path), options);
    const b = normalise(have, loose.has(path), options);
    for (const field of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (show(a[field]) !== show(b[field])) {
        lines.push(`${path}: ${field} expected ${show(a[field])}, image has ${show(b[field])}`);
      }
    }
  }
  const groups = (snapshot: Snapshot) =>
    snapshot.hardlinks
      .filter((group) => !options.ignoreRoot || !group.includes('.'))
      .map((g) => g.join(' = '));
  const wantGroups = new Set(groups(expected));
  const haveGroups = new Set(groups(actual));
  for (const group of wantGroups) if (!haveGroups.has(group)) lines.push(`hardlink group missing: ${group}`);
  for (const group of haveGroups)
    if (!wantGroups.has(group)) lines.push(`unexpected hardlink group: ${group}`);
  for (const problem of expected.problems ?? []) lines.push(`expected tree is unsound: ${problem}`);
  for (const problem of actual.problems ?? []) lines.push(`image: ${problem}`);
  return lines;
}

/** Fails with a readable list of differences (at most `limit` lines) unless the snapshots agree. */
export function assertSameTree(
  expected: Snapshot,
  actual: Snapshot,
  options: CompareOptions = {},
  limit = 60,
): void {
  const lines = diffSnapshots(expected, actual, options);
  if (lines.length === 0) return;
  const shown = lines.slice(0, limit).join('\n  ');
  const more = lines.length > limit ? `\n  … and ${lines.length - limit} more` : '';
  assert.fail(`the mounted image differs from the expected tree in ${lines.length} ways:\n  ${shown}${more}`);
}

/** Inodes a snapshot describes: every directory plus every distinct non-directory (hardlinks count once). */
export function countInodes(snapshot: Snapshot): number {
  const extraNames = snapshot.hardlinks.reduce((sum, group) => sum + group.length - 1, 0);
  return Object.keys(snapshot.entries).length - extraNames;
}
