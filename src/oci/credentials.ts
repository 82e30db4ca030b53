/**
 * Registry credentials, looked up as skopeo, podman and docker do (SPEC §1 "Registry options"):
 * explicit `--username`/`--password-stdin`, else `--authfile FILE` alone, else the first of
 * `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`,
 * `~/.docker/config.json` that knows the registry. In each file `credHelpers[host]` wins, then an `auths`
 * entry (`auth` = base64 `user:password`, or `username`/`password`, or `identitytoken`), then the default
 * `credsStore` helper. Helpers are `docker-credential-NAME` programs speaking the `get` protocol of
 * https://github.com/docker/docker-credential-helpers: server URL on stdin, JSON `{Username, Secret}` out.
 *
 * Secrets never appear in errors: messages name files, hosts, helpers and users only.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import { DOCKER_HUB } from './reference.ts';

export type Credential =
  | { readonly kind: 'basic'; readonly username: string; readonly password: string }
  /** An OAuth2 refresh token (`identitytoken`), exchanged at the token realm (docker login with SSO). */
  | { readonly kind: 'identity-token'; readonly username: string | undefined; readonly token: string };

export interface AuthOptions {
  /** `--username`; with `password` (from `--password-stdin`) it overrides every file. */
  username?: string;
  password?: string;
  /** `--authfile FILE`: only this file is consulted. */
  authFile?: string;
  /** Environment for the lookup chain and helper programs; defaults to `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
}

export interface CredentialLookup {
  readonly credential: Credential | undefined;
  /** Where it came from, for messages: `--username`, a file path, or `docker-credential-NAME`. */
  readonly origin: string | undefined;
}

/** The files consulted, in order, when no `--authfile` is given. */
export function authFileCandidates(env: Readonly<Record<string, string | undefined>>): string[] {
  const files: string[] = [];
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE);
  if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  if (env.DOCKER_CONFIG) files.push(join(env.DOCKER_CONFIG, 'config.json'));
  const home = env.HOME || homedir();
  files.push(join(home, '.docker', 'config.json'));
  return files;
}

/** Docker Hub is written under several names; docker itself uses its v1 index URL. */
const DOCKER_HUB_KEYS = ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com'];
const DOCKER_HUB_SERVER_URL = 'https://index.docker.io/v1/';

/** `https://host/v1/` → `host`, `host/ns/repo` stays: the keys docker and podman write normalise so. */
export function normalizeAuthKey(key: string): string {
  let text = key.trim();
  const scheme = /^[a-z]+:\/\//i.exec(text);
  if (scheme) {
    text = text.slice(scheme[0].length);
    // Legacy docker keys are URLs whose path is an API version, not a repository.
    text = text.replace(/\/(v1|v2)?\/?$/, '');
  }
  text = text.replace(/\/+$/, '');
  const slash = text.indexOf('/');
  const host = (slash < 0 ? text : text.slice(0, slash)).toLowerCase();
  const normalizedHost = DOCKER_HUB_KEYS.includes(host) ? DOCKER_HUB : host;
  return slash < 0 ? normalizedHost : normalizedHost + text.slice(slash);
}

/** The keys that may hold credentials for `registry/repository`, most specific first (containers-auth.json(5)). */
export function authKeysFor(registry: string, repository: string): string[] {
  const keys: string[] = [];
  const components = repository.split('/');
  for (let n = components.length; n > 0; n--) keys.push(`${registry}/${components.slice(0, n).join('/')}`);
  keys.push(registry);
  return keys;
}

interface AuthFileEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
  identitytoken?: unknown;
}

interface AuthFile {
  auths?: Record<string, AuthFileEntry>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

async function readAuthFile(path: string, required: boolean): Promise<AuthFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (!required && (code === 'ENOENT' || code === 'ENOTDIR')) return undefined;
    throw new ErofsOciError('auth', `Cannot read credentials from ${path}: ${code ?? String(error)}`, {
      cause: error,
    });
  }
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    // The parser's message may quote the file's content, which holds secrets: do not pass it on.
    throw new ErofsOciError('auth', `Cannot read credentials from ${path}: it is not valid JSON`);
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new ErofsOciError('auth', `Cannot read credentials from ${path}: it is not a JSON object`);
  }
  const file = document as Record<string, unknown>;
  const result: AuthFile = {};
  if (typeof file.auths === 'object' && file.auths !== null)
    result.auths = file.auths as Record<string, AuthFileEntry>;
  if (typeof file.credHelpers === 'object' && file.credHelpers !== null) {
    result.credHelpers = file.credHelpers as Record<string, string>;
  }
  if (typeof file.credsStore === 'string' && file.credsStore !== '') result.credsStore = file.credsStore;
  return result;
}

function decodeEntry(entry: AuthFileEntry, path: string, key: string): Credential | undefined {
  if (typeof entry.identitytoken === 'string' && entry.identitytoken !== '') {
    return {
      kind: 'identity-token',
      username: typeof entry.username === 'string' ? entry.username : undefined,
      token: entry.identitytoken,
    };
  }
  if (typeof entry.auth === 'string' && entry.auth !== '') {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) {
      throw new ErofsOciError(
        'auth',
        `Cannot read credentials for ${key} from ${path}: "auth" is not base64 of user:password`,
      );
    }
    return { kind: 'basic', username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  if (typeof entry.username === 'string' && typeof entry.password === 'string') {
    return { kind: 'basic', username: entry.username, password: entry.password };
  }
  return undefined; // `{}` is how docker marks a registry whose secret lives in credsStore
}

function findEntry<T>(map: Record<string, T> | undefined, keys: readonly string[]): [string, T] | undefined {
  if (map === undefined) return undefined;
  const normalized = new Map<string, [string, T]>();
  for (const [key, value] of Object.entries(map)) {
    const n = normalizeAuthKey(key);
    if (!normalized.has(n)) normalized.set(n, [key, value]);
  }
  for (const key of keys) {
    const hit = normalized.get(key);
    if (hit) return hit;
  }
  return undefined;
}

export interface HelperOptions {
  env?: Readonly<Record<string, string | undefined>>;
  signal?: AbortSignal;
  timeoutMs?: number;
}

/**
 * Runs `docker-credential-NAME get` for `serverUrl`. Returns undefined when the helper has nothing for it
 * (its "credentials not found" answer).
 */
export async function runCredentialHelper(
  name: string,
  serverUrl: string,
  options: HelperOptions = {},
): Promise<Credential | undefined> {
  throwIfAborted(options.signal);
  const program = `docker-credential-${name}`;
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    throw new ErofsOciError('auth', `Cannot run credential helper ${JSON.stringify(program)}: invalid name`);
  }
  const { code, stdout, stderr, spawnError } = await new Promise<{
    code: number | null;
    stdout: string;
    stderr: string;
    spawnError?: NodeJS.ErrnoException;
  }>((resolve) => {
    const child = spawn(program, ['get'], {
      env: { ...(options.env ?? process.env) } as NodeJS.ProcessEnv,
      stdio: ['pipe', 'pipe', 'pipe'],
      signal: options.signal,
      timeout: options.timeoutMs ?? 30_000,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', (error: NodeJS.ErrnoException) =>
      resolve({ code: null, stdout: '', stderr: '', spawnError: error }),
    );
    child.on('close', (exitCode) =>
      resolve({
        code: exitCode,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      }),
    );
    // A helper that exits without reading stdin makes this write fail with EPIPE; its exit status says more.
    child.stdin.on('error', () => {});
    child.stdin.end(serverUrl);
  });
  throwIfAborted(options.signal);
  if (spawnError) {
    const why = spawnError.code === 'ENOENT' ? 'it is not on PATH' : (spawnError.code ?? spawnError.message);
    throw new ErofsOciError('auth', `Cannot run credential helper ${program}: ${why}`, { cause: spawnError });
  }
  if (code !== 0) {
    const message = (stdout.trim() || stderr.trim()).split('\n')[0] ?? '';
    if (/credentials not found/i.test(message)) return undefined;
    throw new ErofsOciError(
      'auth',
      `Credential helper ${program} failed for ${serverUrl} (exit ${code}): ${message.slice(0, 200)}`,
    );
  }
  let answer: unknown;
  try {
    answer = JSON.parse(stdout);
  } catch {
    throw new ErofsOciError(
      'auth',
      `Credential helper ${program} answered for ${serverUrl} with invalid JSON`,
    );
  }
  const { Username, Secret } = (answer ?? {}) as { Username?: unknown; Secret?: unknown };
  if (typeof Secret !== 'string' || Secret === '') return undefined;
  // docker-credential-helpers: the user name `<token>` marks an identity token.
  if (Username === '<token>') return { kind: 'identity-token', username: undefined, token: Secret };
  return { kind: 'basic', username: typeof Username === 'string' ? Username : '', password: Secret };
}

/** The server URL a helper is asked about: docker's legacy index URL for Docker Hub, else the host. */
export function helperServerUrl(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_SERVER_URL : registry;
}

/**
 * Finds the credentials for `registry` (`docker.io` or `HOST[:PORT]`) and `repository`. Returns an empty
 * lookup for anonymous access.
 */
export async function lookupCredentials(
  registry: string,
  repository: string,
  options: AuthOptions & { signal?: AbortSignal } = {},
): Promise<CredentialLookup> {
  if (options.username !== undefined || options.password !== undefined) {
    if (options.username === undefined || options.username === '' || options.password === undefined) {
      throw new ErofsOciError('usage', 'Cannot log in: --username and --password-stdin go together');
    }
    return {
      credential: { kind: 'basic', username: options.username, password: options.password },
      origin: '--username',
    };
  }
  const env = options.env ?? process.env;
  const files = options.authFile !== undefined ? [options.authFile] : authFileCandidates(env);
  const keys = authKeysFor(registry, repository);
  for (const path of files) {
    throwIfAborted(options.signal);
    const file = await readAuthFile(path, options.authFile !== undefined);
    if (file === undefined) continue;
    const helper = findEntry(file.credHelpers, keys);
    if (helper && typeof helper[1] === 'string' && helper[1] !== '') {
      const credential = await runCredentialHelper(helper[1], helperServerUrl(registry), {
        env,
        signal: options.signal,
      });
      return { credential, origin: `docker-credential-${helper[1]}` };
    }
    const entry = findEntry(file.auths, keys);
    if (entry && typeof entry[1] === 'object' && entry[1] !== null) {
      const credential = decodeEntry(entry[1], path, entry[0]);
      if (credential !== undefined) return { credential, origin: path };
    }
    if (file.credsStore !== undefined) {
      const credential = await runCredentialHelper(file.credsStore, helperServerUrl(registry), {
        env,
        signal: options.signal,
      });
      if (credential !== undefined) return { credential, origin: `docker-credential-${file.credsStore}` };
    }
  }
  return { credential: undefined, origin: undefined };
}
