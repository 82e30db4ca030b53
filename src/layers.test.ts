/**
 * Imports go one way: from the CLI down to io, never up or sideways across a floor. Each folder of src/ has a
 * floor; a module may import only from folders on lower floors (and its own folder). A folder not listed here
 * fails the test, so a new concern is placed on purpose.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';

const floors: Record<string, number> = {
  cli: 7,
  snapshotter: 6,
  mount: 5,
  publish: 5,
  nbd: 4,
  oci: 4,
  builder: 4,
  verified: 3,
  tar: 2,
  'gzip-index': 2,
  erofs: 2,
  'chunk-index': 2,
  'fs-tree': 1,
  io: 0,
};
/** Modules at the top of src/ that every floor may import (the one error type), or that import every floor. */
const shared = new Set(['errors.ts']);
const entryPoints = new Set(['index.ts']);

const src = fileURLToPath(new URL('.', import.meta.url));

function* modules(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* modules(path);
    else if (entry.name.endsWith('.ts') && !/\.(test|bench)\.ts$/.test(entry.name)) yield path;
  }
}

function importsOf(path: string): string[] {
  const text = readFileSync(path, 'utf8');
  const found: string[] = [];
  for (const match of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s+'(\.[^']+)'/g))
    found.push(match[1] as string);
  for (const match of text.matchAll(/import\(\s*'(\.[^']+)'\s*\)/g)) found.push(match[1] as string);
  return found;
}

it('src/ imports go from higher floors to lower ones only', () => {
  const violations: string[] = [];
  for (const path of modules(src)) {
    const rel = relative(src, path).split(sep);
    if (rel.length === 1) {
      if (!shared.has(rel[0] as string) && !entryPoints.has(rel[0] as string))
        violations.push(`${rel[0]}: a module at the top of src/ must be listed as shared or an entry point`);
      continue;
    }
    const folder = rel[0] as string;
    const floor = floors[folder];
    if (floor === undefined) {
      violations.push(`src/${folder}/ has no floor in src/layers.test.ts`);
      continue;
    }
    for (const specifier of importsOf(path)) {
      const target = relative(src, join(path, '..', specifier)).split(sep);
      if (target[0] === '..') {
        violations.push(
          `${relative(src, path)} imports ${specifier}, outside src/ (test-support is for tests)`,
        );
        continue;
      }
      if (target.length === 1) {
        if (!shared.has(target[0] as string)) violations.push(`${relative(src, path)} imports ${specifier}`);
        continue;
      }
      const targetFolder = target[0] as string;
      if (targetFolder === folder) continue;
      const targetFloor = floors[targetFolder];
      if (targetFloor === undefined || targetFloor >= floor)
        violations.push(
          `${relative(src, path)} (floor ${floor}) imports ${specifier} (src/${targetFolder}/, floor ${targetFloor ?? '?'})`,
        );
    }
  }
  assert.deepEqual(violations, []);
});
