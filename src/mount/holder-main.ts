/**
 * The device holder process: `node holder-main.ts CONFIG.json` (started detached by `spawnHolder`).
 *
 * Reads the `HolderConfig`, serves the FUSE file (runHolder), then writes the ready file: `{ ok: true, pid,
 * ... }` once the kernel has initialised the FUSE connection, or `{ ok: false, code, message }` when starting
 * failed. Logs to the config's log file. Exits after the FUSE file is unmounted (`umount FILE` by anyone, or
 * SIGTERM when nothing is mounted on the file any more). SIGTERM while EROFS is still mounted on the file
 * is refused (logged): the holder must outlive every user of the device.
 */
import { appendFileSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { ErofsOciError, exitStatusFor } from '../errors.ts';
import { type Holder, type HolderConfig, type HolderReady, runHolder } from './holder.ts';

const configPath = process.argv[2];
if (!configPath) {
  process.stderr.write('usage: holder-main.ts CONFIG.json\n');
  process.exit(2);
}

const config = readConfig(configPath);

function log(line: string): void {
  try {
    appendFileSync(config.logFile, `${new Date().toISOString()} holder[${process.pid}] ${line}\n`);
  } catch {
    // Nowhere else to report to: the process is detached from any terminal.
  }
}

function writeReady(ready: HolderReady): void {
  const temporary = `${config.readyFile}.${process.pid}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(ready)}\n`, { mode: 0o600 });
  renameSync(temporary, config.readyFile);
}

process.on('uncaughtException', (error) => {
  log(`Fatal: ${error.stack ?? error.message}`);
  process.exit(1);
});
process.on('unhandledRejection', (error) => {
  log(
    `Fatal: unhandled rejection: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
  );
  process.exit(1);
});
// Detached from the starting terminal: a hangup there is no reason to drop the device.
process.on('SIGHUP', () => log('Ignoring SIGHUP'));

let holder: Holder;
try {
  log(`Starting: ${config.mountpoint} from unix:${config.socketPath}`);
  holder = await runHolder({
    mountpoint: config.mountpoint,
    socketPath: config.socketPath,
    ...(config.exportName !== undefined && { exportName: config.exportName }),
    ...(config.size !== undefined && { size: config.size }),
    ...(config.ioTimeoutMs !== undefined && { ioTimeoutMs: config.ioTimeoutMs }),
    ...(config.fsname !== undefined && { fsname: config.fsname }),
    log,
  });
} catch (error) {
  const code = error instanceof ErofsOciError ? error.code : 'internal';
  const message = (error as Error).message;
  log(`Cannot start: ${message}`);
  writeReady({ ok: false, pid: process.pid, code, message });
  process.exit(exitStatusFor(error));
}

const stop = (signal: string) => {
  log(`${signal}: unmounting ${holder.mount.mountpoint}`);
  holder.stop().catch((error: unknown) => {
    log(`Still serving: ${(error as Error).message}`);
  });
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

writeReady({ ok: true, pid: process.pid, mountpoint: holder.mount.mountpoint, size: holder.source.size });
await holder.done;
log('Unmounted; exiting');
process.exit(0);

function readConfig(path: string): HolderConfig {
  let value: Partial<HolderConfig>;
  try {
    // Synchronous on purpose: nothing else runs before the config is known.
    value = JSON.parse(readFileSync(path, 'utf8')) as Partial<HolderConfig>;
  } catch (error) {
    process.stderr.write(`Cannot read holder config ${path}: ${(error as Error).message}\n`);
    process.exit(2);
  }
  for (const key of ['mountpoint', 'socketPath', 'logFile', 'readyFile'] as const) {
    if (typeof value[key] !== 'string' || value[key] === '') {
      process.stderr.write(`Cannot use holder config ${path}: "${key}" must be a non-empty string\n`);
      process.exit(2);
    }
  }
  return value as HolderConfig;
}
