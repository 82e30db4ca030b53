/**
 * What every bench suite needs around the tools it times.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/**
 * Runs a command and returns its stdout. Asynchronous on purpose: the registry is a child of the bench
 * process whose log pipe must keep draining; a synchronous wait lets the pipe fill and the registry stalls
 * mid-benchmark.
 */
export async function sh(command: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const { stdout } = await execFileAsync(command, args, {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: env ?? process.env,
  });
  return stdout;
}

/** Empties the page cache, so that what follows reads cold. */
export async function dropCaches(): Promise<void> {
  await sh('sync', []);
  await sh('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

/** Seconds `fn` takes. */
export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

export interface Measurement {
  seconds: number;
  maxRssKiB: number;
  status: number;
}

/** Wall time and peak RSS of `command` (bench/measure.py); fails unless it exits 0. */
export async function measure(root: string, command: string[]): Promise<Measurement> {
  const out = await sh('python3', [join(root, 'bench', 'measure.py'), ...command]);
  const result = JSON.parse(out.trim().split('\n').pop() as string) as Measurement;
  if (result.status !== 0) throw new Error(`${command.join(' ')} exited with ${result.status}`);
  return result;
}
