/**
 * A token server for the registry's `auth.token` mode (https://distribution.github.io/distribution/spec/auth/token/):
 * a node:http server that checks Basic credentials and issues JWTs signed with an EC key generated at test
 * time; the registry trusts the key through `rootcertbundle`, a self-signed certificate of it made with
 * openssl. The token lifetime is short and adjustable so tests can exercise refresh, and the advertised
 * `expires_in` can differ from the real lifetime so tests can force a 401 on an expired token.
 */
import { execFile } from 'node:child_process';
import { createPrivateKey, type KeyObject, randomUUID, sign, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** distribution accepts tokens up to this long after `exp` (registry/auth/token: Leeway = 60 s). */
export const REGISTRY_LEEWAY_SECONDS = 60;

export interface TokenRequestRecord {
  readonly method: string;
  readonly user: string | undefined;
  readonly scopes: string[];
  readonly granted: boolean;
  readonly at: number;
}

export interface TokenServerOptions {
  /** Directory for the key and certificate. */
  readonly dir: string;
  /** user → password. */
  readonly users: Record<string, string>;
  /** Anonymous clients get pull access (default false: they are refused with 401). */
  readonly allowAnonymousPull?: boolean;
  /** Seconds a token is accepted by the registry (default 300). */
  readonly lifetimeSeconds?: number;
  /** `expires_in` told to the client (default: the lifetime). */
  readonly advertisedExpiresIn?: number;
  /** Reply with `access_token` instead of `token` (both are valid). */
  readonly useAccessTokenField?: boolean;
}

export interface TokenServer {
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  readonly certFile: string;
  readonly requests: TokenRequestRecord[];
  /** Changes lifetimes for tokens issued from now on. */
  setLifetime(lifetimeSeconds: number, advertisedExpiresIn?: number): void;
  setAnonymousPull(allowed: boolean): void;
  stop(): Promise<void>;
}

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

function parseBasic(header: string | undefined): { user: string; password: string } | undefined {
  if (!header?.startsWith('Basic ')) return undefined;
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon < 0 ? undefined : { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

export async function startTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  const keyFile = join(options.dir, 'token.key');
  const certFile = join(options.dir, 'token.crt');
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    certFile,
    '-days',
    '2',
    '-subj',
    '/CN=erofs-oci test token issuer',
  ]);
  const key: KeyObject = createPrivateKey(await readFile(keyFile));
  const certificate = new X509Certificate(await readFile(certFile));
  const x5c = certificate.raw.toString('base64');

  const service = 'erofs-oci-test-registry';
  const issuer = 'erofs-oci-test-issuer';
  let lifetime = options.lifetimeSeconds ?? 300;
  let advertised = options.advertisedExpiresIn;
  const requests: TokenRequestRecord[] = [];
  let anonymousPull = options.allowAnonymousPull ?? false;

  function issue(user: string | undefined, scopes: string[], anonymous: boolean): string {
    const now = Math.floor(Date.now() / 1000);
    const access = scopes.flatMap((scope) => {
      const [type, ...rest] = scope.split(':');
      const actions = rest.pop()?.split(',') ?? [];
      const name = rest.join(':');
      if (type !== 'repository' || name === '') return [];
      const allowed = anonymous ? actions.filter((a) => a === 'pull') : actions;
      return [{ type, name, actions: allowed }];
    });
    // The registry accepts a token until exp + leeway: set exp so that it stops exactly `lifetime` from now.
    const exp = now + lifetime - REGISTRY_LEEWAY_SECONDS;
    const claims = {
      iss: issuer,
      sub: user ?? '',
      aud: service,
      exp,
      nbf: now - REGISTRY_LEEWAY_SECONDS,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const header = { typ: 'JWT', alg: 'ES256', x5c: [x5c] };
    const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
    const signature = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    return `${input}.${base64url(signature)}`;
  }

  function handle(req: IncomingMessage, res: ServerResponse, body: string): void {
    const url = new URL(req.url ?? '/', 'http://token');
    let params = url.searchParams;
    if (req.method === 'POST') params = new URLSearchParams(body);
    if (url.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    const scopes = params
      .getAll('scope')
      .flatMap((s) => s.split(' '))
      .filter((s) => s !== '');
    let user: string | undefined;
    let ok = false;
    if (req.method === 'POST') {
      // OAuth2 refresh-token grant: the refresh token is "refresh:<user>" for a known user.
      const refresh = params.get('refresh_token') ?? '';
      const who = refresh.startsWith('refresh:') ? refresh.slice('refresh:'.length) : undefined;
      ok = params.get('grant_type') === 'refresh_token' && who !== undefined && who in options.users;
      user = who;
    } else {
      const basic = parseBasic(req.headers.authorization);
      if (basic) {
        user = basic.user;
        ok = options.users[basic.user] === basic.password;
      } else {
        ok = anonymousPull;
      }
    }
    requests.push({ method: req.method ?? 'GET', user, scopes, granted: ok, at: Date.now() });
    if (!ok) {
      res
        .writeHead(401, { 'content-type': 'application/json' })
        .end(JSON.stringify({ details: 'access denied' }));
      return;
    }
    const token = issue(user, scopes, user === undefined);
    const expiresIn = advertised ?? lifetime;
    const field = options.useAccessTokenField || req.method === 'POST' ? 'access_token' : 'token';
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ [field]: token, expires_in: expiresIn, issued_at: new Date().toISOString() }));
  }

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => handle(req, res, Buffer.concat(chunks).toString('utf8')));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certFile,
    requests,
    setAnonymousPull(allowed) {
      anonymousPull = allowed;
    },
    setLifetime(seconds, advertisedExpiresIn) {
      lifetime = seconds;
      advertised = advertisedExpiresIn;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
