/**
 * The registry client against a real registry (CNCF distribution, test-support/registry.ts) in each auth
 * setup: plain HTTP, htpasswd Basic, Bearer tokens from our token server, and TLS with a generated CA.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { gunzipSync } from 'node:zlib';
import {
  generatePki,
  type Pki,
  type RegistryHandle,
  registryUnavailableReason,
  startRegistry,
} from '../../test-support/registry.ts';
import {
  type FaultProxy,
  type RecordingServer,
  startFaultProxy,
  startRecordingServer,
} from '../../test-support/registry-fault-proxy.ts';
import { createFixtures, type Fixtures, MULTI_PLATFORMS } from '../../test-support/registry-fixtures.ts';
import { startTokenServer, type TokenServer } from '../../test-support/registry-token-server.ts';
import { exitStatusFor, isErofsOciError } from '../errors.ts';
import type { ImageSource } from './image.ts';
import { isRangeReader, readBlob, readConfig } from './image.ts';
import { formatPlatform } from './platform.ts';
import { RegistryClient } from './registry-client.ts';
import { type OpenImageSourceOptions, openImageSource } from './source.ts';

const skip = registryUnavailableReason();
const USERS = { alice: 'wonderland' };

let fixtures: Fixtures;
let plain: RegistryHandle;
let basic: RegistryHandle;
let token: RegistryHandle;
let tls: RegistryHandle;
let tokenServer: TokenServer;
let pki: Pki;
const opened: ImageSource[] = [];

async function open(ref: string, options: OpenImageSourceOptions = {}): Promise<ImageSource> {
  const image = await openImageSource(ref, { timeoutMs: 10_000, ...options });
  opened.push(image);
  return image;
}

/** Pulls manifest, config and every layer, and checks each blob against the fixture bytes. */
async function pullAll(image: ImageSource): Promise<{ manifest: string; layers: string[] }> {
  const manifest = await image.manifest();
  const config = await readConfig(image);
  assert.equal(typeof config.architecture, 'string');
  const layers = await image.layers();
  for (const layer of layers) {
    const bytes = await readBlob(image, layer);
    const expected = fixtures.blobs.get(layer.digest);
    assert.ok(expected, `layer ${layer.digest} is a fixture blob`);
    assert.ok(Buffer.from(bytes).equals(expected.bytes), `layer ${layer.digest} has the fixture's bytes`);
  }
  return { manifest: manifest.digest, layers: layers.map((layer) => layer.digest) };
}

function assertError(code: Parameters<typeof isErofsOciError>[1], pattern: RegExp, status: number) {
  return (error: unknown) => {
    assert.ok(
      isErofsOciError(error, code),
      `expected ${code}, got ${String(error)} ${(error as { code?: string }).code}`,
    );
    assert.match(error.message, pattern);
    assert.equal(exitStatusFor(error), status);
    return true;
  };
}

/**
 * A front for a registry that answers 404 to every API request without credentials, the way some
 * registries hide private repositories from anonymous clients; `GET /v2/` still gets the real challenge.
 */
async function startHidingFront(upstream: string): Promise<{ url: string; stop(): Promise<void> }> {
  const target = new URL(upstream);
  const server = createServer((req, res) => {
    if (req.headers.authorization === undefined && req.url !== '/v2/') {
      req.resume();
      res
        .writeHead(404, { 'content-type': 'application/json' })
        .end(JSON.stringify({ errors: [{ code: 'NAME_UNKNOWN', message: 'repository name not known' }] }));
      return;
    }
    const forward = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.socket?.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** What the registry saw since request `from`: `METHOD PATH STATUS AUTH-SCHEME`, digests shortened. */
function seen(proxy: FaultProxy, from = 0): string[] {
  return proxy.requests.slice(from).map((r) => {
    const path = r.path.replace(/sha256:[0-9a-f]{64}/, 'sha256:…');
    const scheme = String(r.headers.authorization ?? '-').split(' ')[0];
    return `${r.method} ${path} ${r.status} ${scheme}`;
  });
}

describe('registry client (integration)', { skip, timeout: 300_000 }, () => {
  before(async () => {
    fixtures = await createFixtures();
    pki = await generatePki(join(fixtures.workDir, 'pki'));
    tokenServer = await startTokenServer({ dir: join(fixtures.workDir, 'pki'), users: USERS });
    [plain, basic, token, tls] = await Promise.all([
      startRegistry({ storageDir: fixtures.storageDir }),
      startRegistry({ storageDir: fixtures.storageDir, auth: { kind: 'htpasswd', users: USERS } }),
      startRegistry({ storageDir: fixtures.storageDir, auth: { kind: 'token', tokenServer } }),
      startRegistry({ storageDir: fixtures.storageDir, tls: pki }),
    ]);
  });

  after(async () => {
    await Promise.all(opened.map((image) => image.close()));
    await Promise.all([plain, basic, token, tls].map((registry) => registry?.stop()));
    await tokenServer?.stop();
    await fixtures?.cleanup();
  });

  describe('plain HTTP', () => {
    it('pulls an OCI image with gzip and zstd layers, verified', async () => {
      const image = await open(`${plain.host}/test/simple:v1`, { insecure: true });
      const pulled = await pullAll(image);
      assert.equal(pulled.manifest, fixtures.simple.root.digest);
      assert.deepEqual(
        pulled.layers,
        fixtures.simple.images[0]!.layers.map((layer) => layer.digest),
      );
      assert.deepEqual(
        (await image.layers()).map((layer) => layer.format.compression),
        ['gzip', 'zstd'],
      );
    });

    it('pulls a Docker schema 2 image pushed with skopeo --format v2s2', async () => {
      const image = await open(`docker://${plain.host}/test/docker:v1`, { insecure: true });
      const manifest = await image.manifest();
      assert.equal(manifest.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
      const pulled = await pullAll(image);
      assert.deepEqual(
        pulled.layers,
        fixtures.docker.images[0]!.layers.map((layer) => layer.digest),
      );
    });

    for (const repo of ['test/multi', 'test/multi-docker']) {
      it(`selects each platform of ${repo}, arm64 ≡ arm64/v8 and arm ≡ arm/v7`, async () => {
        const cases: [string, number][] = [
          ['linux/amd64', 0],
          ['linux/arm64', 1],
          ['linux/arm64/v8', 1],
          ['linux/arm', 2],
          ['linux/arm/v7', 2],
        ];
        for (const [platform, index] of cases) {
          const image = await open(`${plain.host}/${repo}:v1`, { insecure: true, platform });
          const manifest = await image.manifest();
          assert.ok(manifest.index, 'chosen from an index');
          const [layer] = await image.layers();
          assert.equal(layer?.digest, fixtures.multi.images[index]!.layers[0]!.digest, `${repo} ${platform}`);
          const tar = gunzipSync(await readBlob(image, layer!));
          assert.ok(
            tar.includes(Buffer.from(formatPlatform(MULTI_PLATFORMS[index]!))),
            'the layer is the platform’s',
          );
        }
      });
    }

    it('reports a platform the index lacks, listing those it offers', async () => {
      const image = await open(`${plain.host}/test/multi:v1`, { insecure: true, platform: 'linux/riscv64' });
      await assert.rejects(
        image.layers(),
        assertError(
          'not-found',
          /Cannot find platform linux\/riscv64 in index .*: it offers linux\/amd64, linux\/arm64\/v8, linux\/arm\/v7$/,
          3,
        ),
      );
    });

    it('pins and verifies a digest reference', async () => {
      const digest = fixtures.simple.root.digest;
      const image = await open(`${plain.host}/test/simple@${digest}`, { insecure: true });
      assert.equal((await image.manifest()).digest, digest);
      const other = await open(`${plain.host}/test/simple@sha256:${'0'.repeat(64)}`, { insecure: true });
      await assert.rejects(other.manifest(), assertError('not-found', /no such manifest/, 3));
    });

    it('reports unknown tags and repositories as not found', async () => {
      await assert.rejects(
        (await open(`${plain.host}/test/simple:nope`, { insecure: true })).manifest(),
        assertError('not-found', /test\/simple:nope/, 3),
      );
      await assert.rejects(
        (await open(`${plain.host}/test/nothing:v1`, { insecure: true })).layers(),
        assertError('not-found', /test\/nothing:v1/, 3),
      );
    });

    it('reads a manifest without mediaType by its content', async () => {
      const image = await open(`${plain.host}/test/nomediatype:v1`, { insecure: true });
      const pulled = await pullAll(image);
      assert.equal(pulled.manifest, fixtures.noMediaType.digest);
    });

    it('classifies EROFS layers and refuses unknown layer types naming them', async () => {
      const erofs = await open(`${plain.host}/test/erofs:v1`, { insecure: true });
      const [layer] = await erofs.layers();
      assert.deepEqual(layer?.format, { kind: 'erofs', compression: 'none' });
      assert.equal((await readBlob(erofs, layer!)).byteLength, fixtures.erofsLayer.size);
      const weird = await open(`${plain.host}/test/weird:v1`, { insecure: true });
      await assert.rejects(
        weird.layers(),
        assertError('unsupported', /media type "application\/x-made-up-layer" is not supported/, 6),
      );
    });

    it('refuses plain HTTP without --insecure', async () => {
      const image = await open(`${plain.host}/test/simple:v1`);
      await assert.rejects(image.manifest(), (error) => {
        assertError('unavailable', /TLS handshake failed/, 7)(error);
        assert.match((error as { hint: string }).hint, /--insecure/);
        return true;
      });
    });

    it('reads ranges of a blob', async () => {
      const image = await open(`${plain.host}/test/big:v1`, { insecure: true });
      const [layer] = await image.layers();
      const expected = fixtures.blobs.get(layer!.digest)!.bytes;
      assert.ok(isRangeReader(image));
      const bytes = await image.readRange(layer!.digest, 1000, 70_000);
      assert.ok(Buffer.from(bytes).equals(expected.subarray(1000, 71_000)));
    });
  });

  describe('htpasswd Basic auth', () => {
    it('pulls with --username and --password-stdin', async () => {
      const image = await open(`${basic.host}/test/simple:v1`, {
        insecure: true,
        auth: { username: 'alice', password: 'wonderland' },
      });
      assert.equal((await pullAll(image)).manifest, fixtures.simple.root.digest);
    });

    it('reports a wrong password as an auth error without the password', async () => {
      const image = await open(`${basic.host}/test/simple:v1`, {
        insecure: true,
        auth: { username: 'alice', password: 'hunter2-wrong' },
      });
      await assert.rejects(image.manifest(), (error) => {
        assertError('auth', /refused user "alice" \(from --username\)/, 4)(error);
        assert.doesNotMatch(`${(error as Error).message} ${(error as { hint?: string }).hint}`, /hunter2/);
        return true;
      });
    });

    it('reports missing credentials as an auth error with a hint', async () => {
      const image = await open(`${basic.host}/test/simple:v1`, {
        insecure: true,
        auth: { env: { HOME: '/nonexistent' } },
      });
      await assert.rejects(image.manifest(), assertError('auth', /no credentials are configured/, 4));
    });

    it('takes credentials from --authfile and from a credential helper on PATH', async () => {
      const dir = join(fixtures.workDir, 'creds');
      const bin = join(dir, 'bin');
      await mkdir(bin, { recursive: true });
      const authFile = join(dir, 'auth.json');
      await writeFile(
        authFile,
        JSON.stringify({
          auths: { [basic.host]: { auth: Buffer.from('alice:wonderland').toString('base64') } },
        }),
      );
      const fromFile = await open(`${basic.host}/test/docker:v1`, { insecure: true, auth: { authFile } });
      await pullAll(fromFile);

      const helper = join(bin, 'docker-credential-test');
      await writeFile(
        helper,
        `#!/bin/sh\n[ "$1" = get ] || exit 1\nread -r server\necho "$server" >> "${join(dir, 'asked')}"\nprintf '{"ServerURL":"%s","Username":"alice","Secret":"wonderland"}' "$server"\n`,
      );
      await chmod(helper, 0o755);
      const dockerConfig = join(dir, 'docker');
      await mkdir(dockerConfig, { recursive: true });
      await writeFile(
        join(dockerConfig, 'config.json'),
        JSON.stringify({ credHelpers: { [basic.host]: 'test' } }),
      );
      const env = { PATH: `${bin}:${process.env.PATH}`, DOCKER_CONFIG: dockerConfig, HOME: dir };
      const fromHelper = await open(`${basic.host}/test/docker:v1`, { insecure: true, auth: { env } });
      await pullAll(fromHelper);
      assert.equal(
        (await readFile(join(dir, 'asked'), 'utf8')).trim(),
        basic.host,
        'the helper was asked about the registry host',
      );
    });
  });

  describe('Bearer token auth', () => {
    it('pulls with a token for the repository pull scope', async () => {
      const before = tokenServer.requests.length;
      const image = await open(`${token.host}/test/simple:v1`, {
        insecure: true,
        auth: { username: 'alice', password: 'wonderland' },
      });
      assert.equal((await pullAll(image)).manifest, fixtures.simple.root.digest);
      const asked = tokenServer.requests.slice(before);
      assert.equal(asked.length, 1, 'one token, cached for every request of the scope');
      assert.deepEqual(asked[0], {
        ...asked[0],
        user: 'alice',
        scopes: ['repository:test/simple:pull'],
        granted: true,
      });
    });

    it('reports a wrong password at the token server as an auth error', async () => {
      const image = await open(`${token.host}/test/simple:v1`, {
        insecure: true,
        auth: { username: 'alice', password: 'nope' },
      });
      await assert.rejects(
        image.manifest(),
        assertError('auth', /token server answered HTTP 401.*refused user "alice"/, 4),
      );
    });

    it('pulls anonymously when the token server allows it, and fails with auth when it does not', async () => {
      const anonymous = { insecure: true, auth: { env: { HOME: '/nonexistent' } } };
      await assert.rejects(
        (await open(`${token.host}/test/docker:v1`, anonymous)).manifest(),
        assertError('auth', /no credentials/, 4),
      );
      tokenServer.setAnonymousPull(true);
      try {
        await pullAll(await open(`${token.host}/test/docker:v1`, anonymous));
      } finally {
        tokenServer.setAnonymousPull(false);
      }
    });

    it('exchanges an identity token from the auth file with an OAuth2 POST', async () => {
      const authFile = join(fixtures.workDir, 'identity.json');
      await writeFile(
        authFile,
        JSON.stringify({ auths: { [token.host]: { identitytoken: 'refresh:alice' } } }),
      );
      const before = tokenServer.requests.length;
      await pullAll(await open(`${token.host}/test/docker:v1`, { insecure: true, auth: { authFile } }));
      assert.equal(tokenServer.requests[before]?.method, 'POST');
    });

    it('renews a token before it expires, without a 401', async () => {
      tokenServer.setLifetime(2, 2);
      const proxy = await startFaultProxy(token.url);
      try {
        const image = await open(`${proxy.host}/test/simple:v1`, {
          insecure: true,
          auth: { username: 'alice', password: 'wonderland' },
        });
        const before = tokenServer.requests.length;
        await image.layers();
        await sleep(2100);
        await pullAll(image);
        assert.ok(tokenServer.requests.length - before >= 2, 'a new token after the first expired');
        assert.deepEqual(
          proxy.requests.filter((r) => r.headers.authorization !== undefined && r.status === 401),
          [],
          'the registry never refused a token (the only 401 is the first, anonymous request)',
        );
      } finally {
        tokenServer.setLifetime(300);
        await proxy.stop();
      }
    });

    it('refreshes an expired token on 401 in the middle of a download', async () => {
      // The token is accepted by the registry for 2 s but advertised for 300 s, so the client only learns
      // of the expiry from a 401. The proxy cuts the blob transfer and holds it 2.5 s: the resumed request
      // carries the expired token.
      tokenServer.setLifetime(2, 300);
      const proxy = await startFaultProxy(token.url);
      try {
        const image = await open(`${proxy.host}/test/big:v1`, {
          insecure: true,
          auth: { username: 'alice', password: 'wonderland' },
        });
        const [layer] = await image.layers();
        proxy.addRule({
          path: new RegExp(`/blobs/${layer!.digest}$`),
          fault: { kind: 'cut', afterBytes: 300_000, pauseMs: 2500 },
          times: 1,
        });
        const before = tokenServer.requests.length;
        const bytes = await readBlob(image, layer!);
        assert.ok(Buffer.from(bytes).equals(fixtures.blobs.get(layer!.digest)!.bytes));
        const blobRequests = proxy.requests.filter((r) => r.path.endsWith(layer!.digest));
        assert.deepEqual(blobRequests.map((r) => [r.status, r.headers.range]).slice(-3), [
          [200, undefined],
          [401, 'bytes=300000-'],
          [206, 'bytes=300000-'],
        ]);
        assert.ok(tokenServer.requests.length - before >= 1, 'a new token after the 401');
      } finally {
        tokenServer.setLifetime(300);
        await proxy.stop();
      }
    });
  });

  describe('request counts', () => {
    const alice = { username: 'alice', password: 'wonderland' };
    let proxy: FaultProxy | undefined;
    let client: RegistryClient | undefined;
    after(async () => {
      await client?.close();
      await proxy?.stop();
    });

    /** A client for test/simple behind a fresh counting proxy in front of `upstream`. */
    async function counting(upstream: string, auth: OpenImageSourceOptions['auth']): Promise<RegistryClient> {
      await client?.close();
      await proxy?.stop();
      proxy = await startFaultProxy(upstream);
      client = await RegistryClient.open(proxy.host, 'test/simple', {
        insecure: true,
        timeoutMs: 10_000,
        auth,
      });
      return client;
    }

    /** Requests the registry sees for: the manifest by tag, then by digest, then a range of a layer. */
    async function countSteps(registry: RegistryClient): Promise<string[][]> {
      const image = fixtures.simple.images[0]!;
      const steps: (() => Promise<unknown>)[] = [
        () => registry.getManifest('v1'),
        () => registry.getManifest(image.manifest.digest),
        () => registry.readRange(image.layers[0]!.digest, 10, 20),
      ];
      const counts: string[][] = [];
      for (const step of steps) {
        const from = proxy!.requests.length;
        await step();
        counts.push(seen(proxy!, from));
      }
      return counts;
    }

    it('an anonymous registry answers each request at once, never asked GET /v2/', async () => {
      const registry = await counting(plain.url, { env: { HOME: '/nonexistent' } });
      assert.deepEqual(await countSteps(registry), [
        ['GET /v2/test/simple/manifests/v1 200 -'],
        ['GET /v2/test/simple/manifests/sha256:… 200 -'],
        ['GET /v2/test/simple/blobs/sha256:… 206 -'],
      ]);
      assert.equal(registry.auth.pings, 0);
    });

    it('a Bearer registry: 401, one token and the retry, then one request each', async () => {
      const registry = await counting(token.url, alice);
      const tokens = tokenServer.requests.length;
      assert.deepEqual(await countSteps(registry), [
        ['GET /v2/test/simple/manifests/v1 401 -', 'GET /v2/test/simple/manifests/v1 200 Bearer'],
        ['GET /v2/test/simple/manifests/sha256:… 200 Bearer'],
        ['GET /v2/test/simple/blobs/sha256:… 206 Bearer'],
      ]);
      assert.equal(tokenServer.requests.length - tokens, 1, 'one token for the whole session');
      assert.equal(registry.auth.pings, 0);
    });

    it('a Basic registry: 401 and the retry, then one request each', async () => {
      const registry = await counting(basic.url, alice);
      assert.deepEqual(await countSteps(registry), [
        ['GET /v2/test/simple/manifests/v1 401 -', 'GET /v2/test/simple/manifests/v1 200 Basic'],
        ['GET /v2/test/simple/manifests/sha256:… 200 Basic'],
        ['GET /v2/test/simple/blobs/sha256:… 206 Basic'],
      ]);
      assert.equal(registry.auth.pings, 0);
    });

    it('parallel first requests wait for the one that learns the scheme', async () => {
      const registry = await counting(token.url, alice);
      const tokens = tokenServer.requests.length;
      const layer = fixtures.simple.images[0]!.layers[0]!;
      const expected = fixtures.blobs.get(layer.digest)!.bytes;
      const reads = await Promise.all(
        [0, 10, 20, 30].map((offset) => registry.readRange(layer.digest, offset, 10)),
      );
      reads.forEach((bytes, i) => {
        assert.ok(Buffer.from(bytes).equals(expected.subarray(i * 10, i * 10 + 10)));
      });
      const requests = seen(proxy!);
      assert.deepEqual(requests.slice(0, 2), [
        'GET /v2/test/simple/blobs/sha256:… 401 -',
        'GET /v2/test/simple/blobs/sha256:… 206 Bearer',
      ]);
      assert.deepEqual(requests.slice(2), Array(3).fill('GET /v2/test/simple/blobs/sha256:… 206 Bearer'));
      assert.equal(tokenServer.requests.length - tokens, 1);
    });

    it('pings GET /v2/ only when a registry hides a repository from anonymous clients with 404', async () => {
      const front = await startHidingFront(basic.url);
      try {
        const registry = await counting(front.url, alice);
        assert.deepEqual(await countSteps(registry), [
          [
            'GET /v2/test/simple/manifests/v1 404 -',
            'GET /v2/ 401 -',
            'GET /v2/test/simple/manifests/v1 200 Basic',
          ],
          ['GET /v2/test/simple/manifests/sha256:… 200 Basic'],
          ['GET /v2/test/simple/blobs/sha256:… 206 Basic'],
        ]);
        assert.equal(registry.auth.pings, 1);

        const anonymous = await counting(front.url, { env: { HOME: '/nonexistent' } });
        await assert.rejects(
          anonymous.getManifest('v1'),
          assertError('not-found', /test\/simple:v1: no such repository or tag: NAME_UNKNOWN/, 3),
        );
        assert.deepEqual(
          seen(proxy!),
          ['GET /v2/test/simple/manifests/v1 404 -'],
          'no ping without credentials',
        );
      } finally {
        await front.stop();
      }
    });
  });

  describe('TLS', () => {
    it('pulls from a registry whose CA is given with --ca-file', async () => {
      const image = await open(`${tls.host}/test/simple:v1`, { caFile: pki.caCert });
      assert.equal((await pullAll(image)).manifest, fixtures.simple.root.digest);
    });

    it('refuses an unknown CA, hinting at --ca-file', async () => {
      const image = await open(`${tls.host}/test/simple:v1`);
      await assert.rejects(image.manifest(), (error) => {
        assertError('unavailable', /TLS handshake failed: .*(certificate|CERT)/i, 7)(error);
        assert.match((error as { hint: string }).hint, /--ca-file/);
        return true;
      });
    });

    it('skips verification with --insecure', async () => {
      await pullAll(await open(`${tls.host}/test/docker:v1`, { insecure: true }));
    });
  });

  describe('redirects', () => {
    let proxy: FaultProxy;
    let storage: RecordingServer;
    before(async () => {
      proxy = await startFaultProxy(basic.url);
      storage = await startRecordingServer();
    });
    after(async () => {
      await proxy.stop();
      await storage.stop();
    });

    it('follows a blob redirect to another host without sending it the credentials', async () => {
      const image = await open(`${proxy.host}/test/docker:v1`, {
        insecure: true,
        auth: { username: 'alice', password: 'wonderland' },
      });
      const layers = await image.layers();
      const layer = layers[1]!;
      storage.serve(`/storage/${layer.digest}`, fixtures.blobs.get(layer.digest)!.bytes);
      proxy.addRule({
        path: new RegExp(`/blobs/${layer.digest}$`),
        fault: {
          kind: 'redirect',
          location: () => `${storage.url}/storage/${layer.digest}?X-Signature=secret-ish`,
        },
      });
      const bytes = await readBlob(image, layer);
      assert.ok(Buffer.from(bytes).equals(fixtures.blobs.get(layer.digest)!.bytes));
      const atRegistry = proxy.requests.filter((r) => r.path.endsWith(layer.digest));
      assert.equal(atRegistry.length, 1);
      assert.match(
        String(atRegistry[0]!.headers.authorization),
        /^Basic /,
        'the registry got the credentials',
      );
      assert.equal(storage.requests.length, 1);
      assert.equal(storage.requests[0]!.headers.authorization, undefined, 'the storage host did not');
    });
  });
});
