/**
 * Micro-benchmark (not run by tests): `nbdcopy EXPORT null:` of the same 300 MB through our server and
 * through nbdkit, reporting MB/s (best of N runs).
 *
 *   node src/nbd/server.bench.ts [--size-mb 300] [--runs 3]
 *
 * Needs libnbd-bin (nbdcopy) and nbdkit. Exports compared:
 * - ours/memory: serveNbd over `memorySource` (this process), which copies each range it returns;
 * - ours/memory-views: serveNbd over a source returning views of the bytes (no copy): the server alone;
 * - ours/file: serveNbd over a file source on tmpfs (page cache);
 * - ours/block-cache: serveNbd over createBlockCache over an in-memory range fetch, cold and then warm;
 * - nbdkit/memory: `nbdkit memory`, filled with the same bytes first;
 * - nbdkit/file: `nbdkit file` on the same tmpfs file.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createBlockCache } from '../io/block-cache.ts';
import { openFileSource } from '../io/file-source.ts';
import { memorySource } from '../io/memory-source.ts';
import { serveNbd } from './server.ts';

const { values } = parseArgs({
  options: { 'size-mb': { type: 'string', default: '300' }, runs: { type: 'string', default: '3' } },
});
const size = Number(values['size-mb']) * 1_000_000;
const runs = Number(values.runs);
const bytes = new Uint8Array(randomBytes(size));
// tmpfs, so that the file variants measure the servers rather than a disk.
const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'nbd-bench-'));
const file = join(dir, 'export.img');
await writeFile(file, bytes);

function run(command: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

/** Best MB/s of `runs` full copies of `uri` to nowhere. */
async function measure(uri: string, extra: string[] = [], times = runs): Promise<number> {
  let best = 0;
  for (let i = 0; i < times; i++) {
    const started = process.hrtime.bigint();
    const result = await run('nbdcopy', [...extra, uri, 'null:']);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (result.code !== 0) throw new Error(`nbdcopy ${uri} failed: ${result.stderr}`);
    best = Math.max(best, size / 1e6 / seconds);
  }
  return best;
}

async function waitForSocket(path: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(path); i++) await new Promise((resolve) => setTimeout(resolve, 25));
  if (!existsSync(path)) throw new Error(`no socket at ${path}`);
}

async function withNbdkit<T>(name: string, args: string[], body: (uri: string) => Promise<T>): Promise<T> {
  const socket = join(dir, `${name}.sock`);
  const child: ChildProcess = spawn('nbdkit', ['-f', '-U', socket, ...args], { stdio: 'ignore' });
  try {
    await waitForSocket(socket);
    return await body(`nbd+unix:///?socket=${socket}`);
  } finally {
    child.kill();
    await new Promise((resolve) => child.once('exit', resolve));
  }
}

const results: { export: string; mbPerSecond: number }[] = [];
const record = (name: string, mbPerSecond: number) => {
  results.push({ export: name, mbPerSecond: Math.round(mbPerSecond) });
  console.log(`${name.padEnd(34)} ${mbPerSecond.toFixed(0).padStart(6)} MB/s`);
};

try {
  console.log(
    `nbdcopy of ${size / 1e6} MB to null:, best of ${runs} (default nbdcopy settings unless noted)`,
  );
  const memory = await serveNbd(memorySource(bytes), {
    listen: { kind: 'unix', path: join(dir, 'ours-memory.sock') },
  });
  record('ours/memory', await measure(memory.uri));
  record('ours/memory (1 connection)', await measure(memory.uri, ['--connections=1']));
  await memory.close();
  const views = {
    size,
    read: async (offset: number, length: number) => bytes.subarray(offset, offset + length),
  };
  const viewServer = await serveNbd(views, { listen: { kind: 'unix', path: join(dir, 'ours-views.sock') } });
  record('ours/memory-views', await measure(viewServer.uri));
  record('ours/memory-views (1 connection)', await measure(viewServer.uri, ['--connections=1']));
  await viewServer.close();

  const fileSource = await openFileSource(file);
  const onFile = await serveNbd(fileSource, { listen: { kind: 'unix', path: join(dir, 'ours-file.sock') } });
  record('ours/file', await measure(onFile.uri));
  await onFile.close();
  await fileSource.close();

  const cache = createBlockCache(async (offset, length) => bytes.slice(offset, offset + length), {
    size,
    memoryBytes: 2 * size,
  });
  const cached = await serveNbd(cache, { listen: { kind: 'unix', path: join(dir, 'ours-cache.sock') } });
  record('ours/block-cache (cold)', await measure(cached.uri, [], 1));
  record('ours/block-cache (warm)', await measure(cached.uri));
  await cached.close();
  await cache.close();

  await withNbdkit('kit-memory', ['memory', `size=${size}`], async (uri) => {
    const fill = await run('nbdcopy', [file, uri]);
    if (fill.code !== 0) throw new Error(`filling nbdkit memory failed: ${fill.stderr}`);
    record('nbdkit/memory', await measure(uri));
    record('nbdkit/memory (1 connection)', await measure(uri, ['--connections=1']));
  });
  await withNbdkit('kit-file', ['file', file], async (uri) => {
    record('nbdkit/file', await measure(uri));
  });
  console.log(JSON.stringify({ sizeBytes: size, runs, results }));
} finally {
  await rm(dir, { recursive: true, force: true });
}
