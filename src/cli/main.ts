/**
 * The `erofs-oci` command: dispatches subcommands and turns errors into one `erofs-oci: …` line and the
 * exit status of SPEC §4.
 */
import { readFileSync } from 'node:fs';
import { ErofsOciError, exitStatusFor } from '../errors.ts';
import type { CommandIo } from './io.ts';

type Handler = (args: string[], io: CommandIo) => Promise<number>;

const commands: Record<string, { summary: string; load: () => Promise<Handler>; internal?: boolean }> = {
  build: {
    summary: 'write an EROFS image from layers or a directory',
    load: async () => (await import('./build.ts')).buildCommand,
  },
  convert: {
    summary: 'publish an image with EROFS-native layers (erofs-image-spec)',
    load: async () => (await import('./convert.ts')).convertCommand,
  },
  serve: {
    summary: 'export one layer as a lazily read NBD device',
    load: async () => (await import('./serve.ts')).serveCommand,
  },
  'serve-layers': {
    summary: 'the serving process of a lazy mount (started by mount and reattach)',
    load: async () => (await import('./serve.ts')).serveLayersCommand,
    internal: true,
  },
  zinfo: {
    summary: 'build a random-access index (zinfo) of a gzip stream',
    load: async () => (await import('./zinfo.ts')).zinfoCommand as Handler,
  },
  mount: {
    summary: 'mount an image lazily from a registry (root)',
    load: async () => (await import('./mount.ts')).mountCommand,
  },
  umount: {
    summary: 'unmount a lazy mount and stop its processes',
    load: async () => (await import('./mount.ts')).umountCommand,
  },
  list: {
    summary: 'list lazy mounts, their processes and health',
    load: async () => (await import('./mount.ts')).listCommand,
  },
  reattach: {
    summary: 'restart the dead servers of a lazy mount without unmounting',
    load: async () => (await import('./mount.ts')).reattachCommand,
  },
  snapshotter: {
    summary: 'a containerd snapshotter running containers from lazy EROFS mounts (root)',
    load: async () => (await import('./snapshotter.ts')).snapshotterCommand,
  },
  inspect: {
    summary: 'show an EROFS image: superblock, listings, file metadata',
    load: async () => (await import('./inspect.ts')).inspectCommand as Handler,
  },
};

const usage = () => `Usage: erofs-oci COMMAND [options]

Turns OCI container images into EROFS filesystems.

Commands:
${Object.entries(commands)
  .filter(([, c]) => !c.internal)
  .map(([name, c]) => `  ${name.padEnd(13)}${c.summary}`)
  .join('\n')}

Run \`erofs-oci COMMAND --help\` for a command's options.
`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

export async function main(argv: string[], partialIo: Partial<CommandIo> = {}): Promise<number> {
  const controller = new AbortController();
  const io: CommandIo = {
    stdin: partialIo.stdin ?? process.stdin,
    stdout: partialIo.stdout ?? process.stdout,
    stderr: partialIo.stderr ?? process.stderr,
    stderrIsTty: partialIo.stderrIsTty ?? Boolean(process.stderr.isTTY),
    signal: partialIo.signal ?? controller.signal,
  };
  const debug = argv.includes('--debug');
  const [name, ...args] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    io.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V') {
    io.stdout.write(`${version()}\n`);
    return 0;
  }
  const command = commands[name];
  if (!command) {
    io.stderr.write(`erofs-oci: unknown command ${JSON.stringify(name)}\n${usage()}`);
    return 2;
  }
  const onSignal = () => controller.abort(new ErofsOciError('aborted', 'interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const handler = await command.load();
    return await handler(args, io);
  } catch (error) {
    reportError(name, error, io, debug);
    if (controller.signal.aborted) return 130;
    return isParseArgsError(error) ? 2 : exitStatusFor(error);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** node:util parseArgs throws TypeErrors with ERR_PARSE_ARGS_* codes for bad options: usage errors. */
function isParseArgsError(error: unknown): boolean {
  return (
    typeof (error as { code?: unknown })?.code === 'string' &&
    (error as { code: string }).code.startsWith('ERR_PARSE_ARGS')
  );
}

function reportError(command: string, error: unknown, io: CommandIo, debug: boolean): void {
  if (isParseArgsError(error)) {
    // Node's own messages run over several sentences; one line names the problem and where help is.
    const message = (error as Error).message.split('. ')[0]?.replace(/^Unknown option/, 'unknown option');
    io.stderr.write(`erofs-oci: ${command}: ${message} (see erofs-oci ${command} --help)\n`);
    return;
  }
  if (error instanceof ErofsOciError) {
    io.stderr.write(`erofs-oci: ${command}: ${error.message}\n`);
    if (error.hint) io.stderr.write(`hint: ${error.hint}\n`);
  } else {
    io.stderr.write(`erofs-oci: ${command}: internal error: ${(error as Error)?.message ?? String(error)}\n`);
  }
  if (debug) {
    let cause: unknown = error;
    while (cause) {
      io.stderr.write(`  ${(cause as Error).stack ?? String(cause)}\n`);
      cause = (cause as Error).cause;
    }
  }
}
