/**
 * The device holder process: `node holder-main.ts CONFIG.json` (started detached by `spawnHolder`).
 *
 * Reads the `HolderConfig` and serves every device in it, one FUSE file each (runHolder), side by side;
 * then writes the ready file: `{ ok: true, pid, devices }` once the kernel has initialised every FUSE
 * connection, or `{ ok: false, code, message }` when one could not be started (the others are stopped
 * again). Logs to the config's log file, each line naming its device. Exits once every FUSE file is
 * unmounted (`umount FILE` by anyone, or SIGTERM when nothing is mounted on them any more). SIGTERM while
 * EROFS is still mounted on a file leaves that one served (logged): the holder must outlive every user of
 * its devices.
 */
import { appendFileSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { ErofsOciError, exitStatusFor } from '../errors.ts';
import { type Holder, type HolderConfig, type HolderDevice, type HolderReady, runHolder } from './holder.ts';

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
// Detached from the starting terminal: a hangup there is no reason to drop the devices.
process.on('SIGHUP', () => log('Ignoring SIGHUP'));

function start(device: HolderDevice): Promise<Holder> {
  const name = basename(device.mountpoint);
  return runHolder({
    mountpoint: device.mountpoint,
    socketPath: device.socketPath,
    ...(device.exportName !== undefined && { exportName: device.exportName }),
    ...(device.size !== undefined && { size: device.size }),
    ...(config.ioTimeoutMs !== undefined && { ioTimeoutMs: config.ioTimeoutMs }),
    ...(device.fsname !== undefined && { fsname: device.fsname }),
    log: (line) => log(`${name}: ${line}`),
  });
}

for (const device of config.devices) log(`Starting: ${device.mountpoint} from unix:${device.socketPath}`);
const started = await Promise.allSettled(config.devices.map(start));
const holders = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
if (failed) {
  const error: unknown = failed.reason;
  const code = error instanceof ErofsOciError ? error.code : 'internal';
  const message = (error as Error).message;
  log(`Cannot start: ${message}`);
  await Promise.allSettled(holders.map((h) => h.stop()));
  writeReady({ ok: false, pid: process.pid, code, message });
  process.exit(exitStatusFor(error));
}

const stop = (signal: string) => {
  for (const holder of holders) {
    log(`${signal}: unmounting ${holder.mount.mountpoint}`);
    holder.stop().catch((error: unknown) => {
      log(`Still serving ${holder.mount.mountpoint}: ${(error as Error).message}`);
    });
  }
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

writeReady({
  ok: true,
  pid: process.pid,
  devices: holders.map((h) => ({ mountpoint: h.mount.mountpoint, size: h.source.size })),
});
await Promise.all(holders.map((h) => h.done));
log('Every device unmounted; exiting');
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
  const fail = (what: string) => {
    process.stderr.write(`Cannot use holder config ${path}: ${what}\n`);
    process.exit(2);
  };
  for (const key of ['logFile', 'readyFile'] as const) {
    if (typeof value[key] !== 'string' || value[key] === '') fail(`"${key}" must be a non-empty string`);
  }
  if (!Array.isArray(value.devices) || value.devices.length === 0) fail('"devices" must be a non-empty list');
  for (const device of value.devices ?? []) {
    for (const key of ['mountpoint', 'socketPath'] as const) {
      if (typeof device?.[key] !== 'string' || device[key] === '')
        fail(`every device's "${key}" must be a non-empty string`);
    }
  }
  return value as HolderConfig;
}
