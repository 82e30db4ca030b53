/**
 * Options every command that reads an image shares (SPEC §1): credentials, transport, platform and layer
 * selection, and opening the image they describe.
 */
import { ErofsOciError } from '../errors.ts';
import type { ImageSource, LayerDescriptor } from '../oci/index.ts';
import { openImageSource } from '../oci/index.ts';
import type { CommandIo } from './io.ts';

/** How to reach a registry: credentials, TLS and timeouts (commands that pick no image take only these). */
export const connectionOptions = {
  authfile: { type: 'string' },
  username: { type: 'string' },
  'password-stdin': { type: 'boolean' },
  insecure: { type: 'boolean' },
  'ca-file': { type: 'string' },
  timeout: { type: 'string' },
} as const;

export const registryOptions = {
  platform: { type: 'string' },
  layer: { type: 'string' },
  blob: { type: 'string' },
  ...connectionOptions,
} as const;

export const registryHelp = `Image options:
  --platform OS/ARCH[/VARIANT]  pick from an index (default: this host's platform)
  --layer N           one layer, 0-based; negative counts from the top (-1 = top); standalone
                      chunk-index entries are not layers and are not counted
  --blob sha256:HEX   one layer, by digest
Registry options:
  --authfile FILE     credentials file (else $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
                      $DOCKER_CONFIG/config.json, ~/.docker/config.json, incl. credential helpers)
  --username U        with --password-stdin: credentials for this registry
  --password-stdin    read the password from stdin
  --insecure          allow plain HTTP and unverified TLS
  --ca-file FILE      extra trusted root certificates (PEM)
  --timeout SECONDS   time budget of one registry operation, retries included (default 30)
`;

export interface RegistryValues {
  /** A password already read (by a command that needs it twice); otherwise --password-stdin reads one. */
  password?: string;
  platform?: string;
  layer?: string;
  blob?: string;
  authfile?: string;
  username?: string;
  'password-stdin'?: boolean;
  insecure?: boolean;
  'ca-file'?: string;
  timeout?: string;
}

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

export async function openImageFromOptions(
  ref: string,
  values: RegistryValues,
  io: CommandIo,
): Promise<ImageSource> {
  let password = values.password;
  if ((password !== undefined || values['password-stdin']) && values.username === undefined) {
    throw new ErofsOciError('usage', '--password-stdin needs --username');
  }
  if (password === undefined && values['password-stdin']) {
    password = (await readAll(io.stdin)).replace(/\r?\n$/, '');
  } else if (password === undefined && values.username !== undefined) {
    throw new ErofsOciError(
      'usage',
      '--username needs --password-stdin (passwords are never taken as arguments)',
    );
  }
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    const seconds = Number(values.timeout);
    if (!Number.isFinite(seconds) || seconds <= 0)
      throw new ErofsOciError('usage', `--timeout is not a number of seconds: ${values.timeout}`);
    timeoutMs = seconds * 1000;
  }
  return openImageSource(ref, {
    platform: values.platform,
    auth: {
      ...(values.authfile === undefined ? {} : { authFile: values.authfile }),
      ...(values.username === undefined ? {} : { username: values.username }),
      ...(password === undefined ? {} : { password }),
    },
    insecure: values.insecure ?? false,
    ...(values['ca-file'] === undefined ? {} : { caFile: values['ca-file'] }),
    ...(timeoutMs === undefined ? {} : { timeoutMs }),
    signal: io.signal,
  });
}

/** The layers `--layer` / `--blob` select (all when neither is given), bottom first. */
export function selectLayers(layers: LayerDescriptor[], values: RegistryValues): LayerDescriptor[] {
  if (values.layer !== undefined && values.blob !== undefined) {
    throw new ErofsOciError('usage', '--layer and --blob cannot be used together');
  }
  if (values.layer !== undefined) {
    if (!/^-?\d+$/.test(values.layer))
      throw new ErofsOciError('usage', `--layer is not a number: ${values.layer}`);
    const n = Number(values.layer);
    const index = n < 0 ? layers.length + n : n;
    const layer = layers[index];
    if (!layer) {
      throw new ErofsOciError(
        'not-found',
        `layer ${n} does not exist: the image has ${layers.length} layers (0..${layers.length - 1})`,
      );
    }
    return [layer];
  }
  if (values.blob !== undefined) {
    const layer = layers.find((l) => l.digest === values.blob);
    if (!layer) {
      throw new ErofsOciError('not-found', `no layer ${values.blob} in the image`, {
        hint: `its layers are ${layers.map((l) => l.digest).join(', ')}`,
      });
    }
    return [layer];
  }
  return layers;
}

/** True for an argument that names an image rather than a tar: or dir: source. */
export function isImageReference(value: string): boolean {
  return !value.startsWith('tar:') && !value.startsWith('dir:');
}

/**
 * node:util parseArgs refuses `--layer -1` (a value that looks like an option); users write it that way,
 * so a negative number after `--layer` is joined to it (`--layer=-1`) before parsing.
 */
export function joinNegativeLayer(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const next = args[i + 1];
    if (args[i] === '--layer' && next !== undefined && /^-\d+$/.test(next)) {
      out.push(`--layer=${next}`);
      i++;
    } else {
      out.push(args[i] as string);
    }
  }
  return out;
}
