/**
 * The auth handshake (auth.ts) through the whole client stack against a small HTTP server on loopback that
 * plays the registry parts the real one (registry.integration.test.ts) cannot: answers held back, dropped
 * connections, a challenge that changes between requests, `insufficient_scope`, odd schemes.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, it } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import type { AuthOptions } from './credentials.ts';
import { RegistryClient } from './registry-client.ts';

const BLOB = `sha256:${'0'.repeat(64)}`;
const alice = { username: 'alice', password: 'wonderland' };

interface Seen {
  readonly path: string;
  /** The `Authorization` scheme and value, or `-`. */
  readonly authorization: string;
}

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => void;

interface ToyRegistry {
  readonly host: string;
  readonly seen: Seen[];
  stop(): Promise<void>;
}

let servers: ToyRegistry[] = [];
let clients: RegistryClient[] = [];

afterEach(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await Promise.all(servers.map((server) => server.stop()));
  clients = [];
  servers = [];
});

async function startToy(handle: Handler): Promise<ToyRegistry> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://toy');
    seen.push({ path: url.pathname, authorization: req.headers.authorization ?? '-' });
    req.resume();
    handle(req, res, url);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const toy = {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  servers.push(toy);
  return toy;
}

async function client(toy: ToyRegistry, auth: AuthOptions = alice): Promise<RegistryClient> {
  const opened = await RegistryClient.open(toy.host, 'r', {
    insecure: true,
    timeoutMs: 5_000,
    retry: { maxAttempts: 1 },
    auth,
  });
  clients.push(opened);
  return opened;
}

function manifest(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }).end('{}');
}

function range(res: ServerResponse): void {
  res.writeHead(206, { 'content-range': 'bytes 0-3/4' }).end('abcd');
}

function token(res: ServerResponse, value: string): void {
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: value }));
}

function challenge(res: ServerResponse, value: string): void {
  res.writeHead(401, { 'www-authenticate': value, 'content-type': 'application/json' }).end('{}');
}

describe('RegistryAuth', () => {
  it('RegistryAuth lets a request waiting for the scheme abort without waiting for the learner', async () => {
    const toy = await startToy((_req, res) => {
      setTimeout(() => manifest(res), 800);
    });
    const registry = await client(toy);
    const first = registry.getManifest('v1');
    const started = Date.now();
    await assert.rejects(registry.getManifest('v2', { signal: AbortSignal.timeout(100) }), (error) => {
      assert.ok(isErofsOciError(error, 'aborted'), String(error));
      assert.equal(error.message, `Cannot get manifest ${toy.host}/r:v2: aborted`);
      return true;
    });
    assert.ok(Date.now() - started < 600, 'aborted before the first request was answered');
    await first;
    assert.deepEqual(
      toy.seen,
      [{ path: '/v2/r/manifests/v1', authorization: '-' }],
      'the waiter sent nothing',
    );
  });

  it('RegistryAuth lets the next request learn the scheme when the learning one fails', async () => {
    let drop = true;
    const toy = await startToy((req, res) => {
      if (drop) {
        req.socket.destroy();
        return;
      }
      manifest(res);
    });
    const registry = await client(toy);
    await assert.rejects(registry.getManifest('v1'), (error) => isErofsOciError(error, 'unavailable'));
    drop = false;
    await registry.getManifest('v1');
    assert.deepEqual(toy.seen.at(-1), { path: '/v2/r/manifests/v1', authorization: '-' });
  });

  it('RegistryAuth follows a Bearer challenge that comes after anonymous answers', async () => {
    const toy = await startToy((req, res, url) => {
      if (url.pathname === '/token') return token(res, 'tok1');
      if (url.pathname.includes('/manifests/')) return manifest(res);
      if (req.headers.authorization !== 'Bearer tok1')
        return challenge(
          res,
          `Bearer realm="http://${toy.host}/token",service="toy",scope="repository:r:pull"`,
        );
      range(res);
    });
    const registry = await client(toy);
    await registry.getManifest('v1');
    assert.equal(Buffer.from(await registry.readRange(BLOB, 0, 4)).toString(), 'abcd');
    await registry.readRange(BLOB, 0, 4);
    assert.deepEqual(
      toy.seen.map((s) => `${s.path} ${s.authorization.split(' ')[0]}`),
      [
        '/v2/r/manifests/v1 -',
        `/v2/r/blobs/${BLOB} -`,
        '/token Basic',
        `/v2/r/blobs/${BLOB} Bearer`,
        `/v2/r/blobs/${BLOB} Bearer`,
      ],
    );
  });

  it('RegistryAuth asks for the scopes of insufficient_scope and keeps using that token', async () => {
    const scopes: string[][] = [];
    const toy = await startToy((req, res, url) => {
      if (url.pathname === '/token') {
        scopes.push(url.searchParams.getAll('scope'));
        return token(res, `tok:${url.searchParams.getAll('scope').join('+')}`);
      }
      if (req.headers.authorization?.includes('repository:other:pull')) return range(res);
      challenge(
        res,
        `Bearer realm="http://${toy.host}/token",service="toy",scope="repository:r:pull repository:other:pull",error="insufficient_scope"`,
      );
    });
    const registry = await client(toy);
    await registry.readRange(BLOB, 0, 4);
    await registry.readRange(BLOB, 0, 4);
    assert.deepEqual(scopes, [['repository:r:pull', 'repository:other:pull']], 'one token, both scopes');
    assert.equal(toy.seen.length, 4, '401, token, retry, then one request');
  });

  it('RegistryAuth reports a challenge it cannot answer', async () => {
    const toy = await startToy((_req, res) => challenge(res, 'Negotiate'));
    const registry = await client(toy);
    await assert.rejects(registry.getManifest('v1'), (error) => {
      assert.ok(isErofsOciError(error, 'unsupported'), String(error));
      assert.equal(error.message, `Cannot authenticate to ${toy.host}: unsupported challenge (negotiate)`);
      return true;
    });
  });

  it('RegistryAuth reports a Basic registry without configured credentials as an auth error', async () => {
    const toy = await startToy((_req, res) => challenge(res, 'Basic realm="toy"'));
    const registry = await client(toy, { env: { HOME: '/nonexistent' } });
    await assert.rejects(registry.getManifest('v1'), (error) => {
      assert.ok(isErofsOciError(error, 'auth'), String(error));
      assert.match(error.message, /authentication failed \(HTTP 401\); no credentials are configured for/);
      return true;
    });
    assert.equal(toy.seen.length, 1, 'nothing to retry with');
  });
});
