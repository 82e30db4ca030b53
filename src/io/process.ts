/** Process liveness, for lock files and the pids of mount records; the environment of our Node children. */
import { readFileSync } from 'node:fs';
import { getCompileCacheDir } from 'node:module';

/**
 * Whether process `pid` exists and has not exited. A zombie (exited, not yet reaped by its parent) counts
 * as gone: detached servers are reparented to whatever init the machine runs, and some reap only every
 * few seconds, so `kill(pid, 0)` alone would keep reporting them alive long after they ended.
 */
export function isProcessAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (error) {
    // EPERM: it exists but belongs to someone else.
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // /proc/PID/stat: "PID (COMM) STATE ..."; COMM may hold spaces and parentheses, so split at the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    // No /proc (or it vanished between the two checks): trust kill(2).
    return true;
  }
}

/**
 * The environment for a Node process we start on one of our modules directly (not through
 * bin/erofs-oci.js): ours, plus the compile cache this process uses, which the entry point chose as
 * private to its user. Without one, the environment as it is.
 */
export function compileCacheEnv(): NodeJS.ProcessEnv {
  const dir = getCompileCacheDir();
  return dir === undefined ? process.env : { ...process.env, NODE_COMPILE_CACHE: dir };
}
