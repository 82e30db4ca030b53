#!/usr/bin/env -S node --max-semi-space-size=2
// Entry point. It is plain JavaScript so that an older system Node can still start it: on Node < 24 it
// re-executes itself with the Node 24 the project pins as a dev dependency (node_modules/.bin/node).
// `--max-semi-space-size=2` (MiB, V8's young generation; the default grows to 16-32): a build streams
// hundreds of MB through short-lived buffers, and the default let ~60 MB of dead young objects stand in
// RSS (252 -> 180 MiB peak on the registry-build bench image, same wall time). It has to be given at start.
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SEMI_SPACE = ['--max-semi-space-size=2'];
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  const pinned = fileURLToPath(new URL('../node_modules/.bin/node', import.meta.url));
  if (!existsSync(pinned)) {
    process.stderr.write(
      `erofs-oci: Node.js ${process.versions.node} is too old: Node.js 24 or newer is needed (run \`npm ci\` in the checkout to get the pinned one)\n`,
    );
    process.exit(6);
  }
  const child = spawnSync(pinned, [...SEMI_SPACE, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
  });
  if (child.signal) process.kill(process.pid, child.signal);
  process.exit(child.status ?? 1);
}
// Caches compiled (and type-stripped) modules across runs: starts in ~0.1 s instead of ~0.4 s and spares
// the ~40 MB that loading the TypeScript stripper costs. The cache holds code this process runs, as root
// for mounts: it lives in the user's own cache directory, created 0700 and used only when it and its parent
// belong to this user and nobody else can write to them. Node's default, a shared directory in /tmp that
// another user could have created first, would let that user put code into our process.
const { enableCompileCache } = await import('node:module');
const cacheDir = privateCompileCacheDir();
if (cacheDir !== null) enableCompileCache?.(cacheDir);
const { main } = await import('../src/cli/main.ts');
const status = await main(process.argv.slice(2));
// Exit as soon as the output is flushed: idle keep-alive connections and timers of libraries must not keep
// a finished command (or a stopped server) alive.
await new Promise((resolve) => process.stdout.write('', resolve));
await new Promise((resolve) => process.stderr.write('', resolve));
process.exit(status);

/** `$XDG_CACHE_HOME/erofs-oci/node-compile-cache` (else under `~/.cache`) when it is private, else null. */
function privateCompileCacheDir() {
  const base = process.env.XDG_CACHE_HOME || (process.env.HOME ? join(process.env.HOME, '.cache') : '');
  if (!base.startsWith('/')) return null;
  const own = join(base, 'erofs-oci');
  const dir = join(own, 'node-compile-cache');
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const path of [own, dir]) {
      const stat = lstatSync(path);
      if (!stat.isDirectory() || stat.uid !== process.getuid?.() || (stat.mode & 0o077) !== 0) return null;
    }
    return dir;
  } catch {
    // No cache: slower start, same behaviour.
    return null;
  }
}
