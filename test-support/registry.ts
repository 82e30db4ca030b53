/**
 * A real registry for integration tests: Debian's CNCF distribution server (`/usr/bin/docker-registry`,
 * `apt-get install docker-registry`) on a random loopback port with filesystem storage, configured as
 * plain HTTP, htpasswd Basic auth, Bearer tokens from our token server (registry-token-server.ts), and/or
 * TLS with a CA generated here with openssl. Fixture images are pushed once into a storage directory (see
 * registry-fixtures.ts) that several registries then serve at the same time.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { TokenServer } from './registry-token-server.ts';

const run = promisify(execFile);
export const REGISTRY_BINARY = '/usr/bin/docker-registry';

/** Why the registry tests cannot run here, or undefined when they can. */
export function registryUnavailableReason(): string | undefined {
  for (const binary of [REGISTRY_BINARY, '/usr/bin/skopeo', '/usr/bin/openssl', '/usr/bin/htpasswd']) {
    if (!existsSync(binary))
      return `${binary} is missing (apt-get install -y docker-registry skopeo openssl apache2-utils)`;
  }
  return undefined;
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `erofs-oci-${prefix}-`));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

export interface Pki {
  readonly caCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
}

/** A CA and a server certificate for 127.0.0.1 and localhost, signed by it. */
export async function generatePki(dir: string): Promise<Pki> {
  await mkdir(dir, { recursive: true });
  const caKey = join(dir, 'ca.key');
  const caCert = join(dir, 'ca.crt');
  const serverKey = join(dir, 'server.key');
  const serverCsr = join(dir, 'server.csr');
  const serverCert = join(dir, 'server.crt');
  const ext = join(dir, 'server.ext');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await run('openssl', [
    'req',
    '-x509',
    ...ec,
    '-keyout',
    caKey,
    '-out',
    caCert,
    '-days',
    '2',
    '-subj',
    '/CN=erofs-oci test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await run('openssl', ['req', ...ec, '-keyout', serverKey, '-out', serverCsr, '-subj', '/CN=127.0.0.1']);
  await writeFile(
    ext,
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n',
  );
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    serverCsr,
    '-CA',
    caCert,
    '-CAkey',
    caKey,
    '-CAcreateserial',
    '-out',
    serverCert,
    '-days',
    '2',
    '-extfile',
    ext,
  ]);
  return { caCert, serverCert, serverKey };
}

/** An htpasswd file with bcrypt entries, as distribution's htpasswd auth requires. */
export async function writeHtpasswd(path: string, users: Record<string, string>): Promise<void> {
  const lines: string[] = [];
  for (const [user, password] of Object.entries(users)) {
    const { stdout } = await run('htpasswd', ['-Bbn', '-C', '4', user, password]);
    lines.push(stdout.trim());
  }
  await writeFile(path, `${lines.join('\n')}\n`);
}

export type RegistryAuthSetup =
  | { readonly kind: 'none' }
  | { readonly kind: 'htpasswd'; readonly users: Record<string, string> }
  | { readonly kind: 'token'; readonly tokenServer: TokenServer };

export interface StartRegistryOptions {
  /** Filesystem storage root; shared between registries serving the same fixtures. */
  readonly storageDir: string;
  readonly auth?: RegistryAuthSetup;
  readonly tls?: Pki;
  /** Directory for the config and logs (default: a new temp dir, removed on stop). */
  readonly workDir?: string;
}

export interface RegistryHandle {
  /** `127.0.0.1:PORT`: what goes into references. */
  readonly host: string;
  readonly port: number;
  /** `http://127.0.0.1:PORT` or `https://…`. */
  readonly url: string;
  readonly process: ChildProcess;
  logs(): string;
  stop(): Promise<void>;
}

function yamlString(value: string): string {
  return JSON.stringify(value);
}

export async function startRegistry(options: StartRegistryOptions): Promise<RegistryHandle> {
  const ownWorkDir = options.workDir === undefined;
  const workDir = options.workDir ?? (await tempDir('registry'));
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${yamlString(options.storageDir)}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '  secret: erofs-oci-test-secret',
  ];
  if (options.tls) {
    lines.push(
      '  tls:',
      `    certificate: ${yamlString(options.tls.serverCert)}`,
      `    key: ${yamlString(options.tls.serverKey)}`,
    );
  }
  const auth = options.auth ?? { kind: 'none' };
  if (auth.kind === 'htpasswd') {
    const htpasswd = join(workDir, 'htpasswd');
    await writeHtpasswd(htpasswd, auth.users);
    lines.push('auth:', '  htpasswd:', '    realm: erofs-oci-test', `    path: ${yamlString(htpasswd)}`);
  } else if (auth.kind === 'token') {
    const t = auth.tokenServer;
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${yamlString(t.realm)}`,
      `    service: ${yamlString(t.service)}`,
      `    issuer: ${yamlString(t.issuer)}`,
      `    rootcertbundle: ${yamlString(t.certFile)}`,
    );
  }
  const configFile = join(workDir, 'config.yml');
  await writeFile(configFile, `${lines.join('\n')}\n`);

  const child = spawn(REGISTRY_BINARY, ['serve', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (chunk: Buffer) => {
    log += chunk.toString('utf8');
    if (log.length > 256 * 1024) log = log.slice(-128 * 1024);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });

  const scheme = options.tls ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  const ca = options.tls ? await readFile(options.tls.caCert) : undefined;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(`docker-registry exited during start:\n${log}`);
    if (await answers(`${url}/v2/`, ca)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not answer on ${url} within 20 s:\n${log}`);
    }
    await sleep(50);
  }

  return {
    host: `127.0.0.1:${port}`,
    port,
    url,
    process: child,
    logs: () => log,
    async stop() {
      if (!exited) {
        const done = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await done;
        clearTimeout(timer);
      }
      if (ownWorkDir) await rm(workDir, { recursive: true, force: true });
    },
  };
}

function answers(url: string, ca: Buffer | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const request = (url.startsWith('https:') ? httpsRequest : httpRequest)(
      url,
      { method: 'GET', ca, timeout: 1000 },
      (res) => {
        res.resume();
        resolve(true);
      },
    );
    request.on('error', () => resolve(false));
    request.on('timeout', () => request.destroy());
    request.end();
  });
}

/** Runs skopeo; its stderr is included in the error when it fails. */
export async function skopeo(args: string[], options: { timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await run('skopeo', args, {
      timeout: options.timeoutMs ?? 120_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    throw new Error(`skopeo ${args.join(' ')} failed: ${e.stderr ?? e.message}`);
  }
}
