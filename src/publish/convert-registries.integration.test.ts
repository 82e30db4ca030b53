/**
 * `convert` pushing to the real registry in its setups: basic auth and token auth (credentials from
 * --authfile; a wrong password is exit 4 and no tag), TLS with a private CA (--ca-file), and faults through
 * the fault proxy: an upload connection cut mid-way resumes, a registry that keeps failing is exit 7 after
 * the retries, and neither leaves a tag naming missing blobs. skopeo reads back what was pushed.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runCli, type TmpDir, tmpdir } from '../../test-support/kernel.ts';
import {
  generatePki,
  type Pki,
  type RegistryHandle,
  registryUnavailableReason,
  skopeo,
  startRegistry,
} from '../../test-support/registry.ts';
import { startFaultProxy } from '../../test-support/registry-fault-proxy.ts';
import { makeImage, writeLayout } from '../../test-support/registry-fixtures.ts';
import { startTokenServer, type TokenServer } from '../../test-support/registry-token-server.ts';

const USERS = { alice: 'wonderland' };

describe('convert into registries in their setups', { skip: registryUnavailableReason() }, () => {
  let dir: TmpDir;
  let source: string;
  let plain: RegistryHandle;
  let basic: RegistryHandle;
  let token: RegistryHandle;
  let tls: RegistryHandle;
  let tokenServer: TokenServer;
  let pki: Pki;

  before(async () => {
    dir = await tmpdir();
    const image = await makeImage({ os: 'linux', architecture: 'amd64' }, [
      { files: { 'etc/hello': 'hello\n' }, compression: 'gzip' },
      // big enough that its EROFS blob goes up in a PATCH the proxy can cut half-way
      { files: { 'data/random.bin': randomBytes(3 << 20) }, compression: 'gzip' },
    ]);
    source = join(dir.path, 'source');
    await writeLayout(source, 'v1', [image], false);
    pki = await generatePki(join(dir.path, 'pki'));
    await mkdir(join(dir.path, 'token'));
    tokenServer = await startTokenServer({ dir: join(dir.path, 'token'), users: USERS });
    [plain, basic, token, tls] = await Promise.all([
      startRegistry({ storageDir: join(dir.path, 'plain') }),
      startRegistry({ storageDir: join(dir.path, 'basic'), auth: { kind: 'htpasswd', users: USERS } }),
      startRegistry({ storageDir: join(dir.path, 'token-storage'), auth: { kind: 'token', tokenServer } }),
      startRegistry({ storageDir: join(dir.path, 'tls'), tls: pki }),
    ]);
  });

  after(async () => {
    await Promise.all([plain, basic, token, tls].map((r) => r?.stop()));
    await tokenServer?.stop();
    await dir?.cleanup();
  });

  async function authFile(host: string, password: string): Promise<string> {
    const path = join(dir.path, `auth-${Math.random()}.json`);
    const auth = Buffer.from(`alice:${password}`).toString('base64');
    await writeFile(path, JSON.stringify({ auths: { [host]: { auth } } }), { mode: 0o600 });
    return path;
  }

  async function convert(dest: string, ...options: string[]) {
    return runCli(['convert', '--quiet', '--json', ...options, `oci:${source}:v1`, dest]);
  }

  async function rawManifest(dest: string, ...options: string[]): Promise<Buffer> {
    return Buffer.from(await skopeo(['inspect', '--raw', ...options, `docker://${dest}`]));
  }

  const digestOf = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

  async function tagStatus(registry: RegistryHandle, repository: string, tag: string): Promise<number> {
    return (await fetch(`${registry.url}/v2/${repository}/manifests/${tag}`, { method: 'HEAD' })).status;
  }

  for (const kind of ['basic', 'token'] as const) {
    it(`${kind} auth: credentials from --authfile push; a wrong password is exit 4 and no tag`, async () => {
      const registry = kind === 'basic' ? basic : token;
      const dest = `${registry.host}/conv/${kind}:erofs`;
      const good = await convert(
        dest,
        '--insecure',
        '--authfile',
        await authFile(registry.host, 'wonderland'),
      );
      assert.equal(good.status, 0, good.stderr);
      const summary = JSON.parse(good.stdout) as { manifest: string };
      const raw = await rawManifest(dest, '--tls-verify=false', '--creds', 'alice:wonderland');
      assert.equal(digestOf(raw), summary.manifest);
      if (kind === 'token') {
        const scopes = tokenServer.requests.flatMap((r) => r.scopes);
        assert.ok(scopes.includes(`repository:conv/${kind}:pull,push`), JSON.stringify(scopes));
      }
      const wrongDest = `${registry.host}/conv/${kind}-denied:erofs`;
      const bad = await convert(wrongDest, '--insecure', '--authfile', await authFile(registry.host, 'nope'));
      assert.equal(bad.status, 4, bad.stderr);
      const check = await skopeo([
        'inspect',
        '--raw',
        '--tls-verify=false',
        '--creds',
        'alice:wonderland',
        `docker://${wrongDest}`,
      ]).then(
        () => 'found',
        () => 'missing',
      );
      assert.equal(check, 'missing', 'no tag after a refused push');
    });
  }

  it('TLS with a private CA: --ca-file pushes; without it the certificate is refused', async () => {
    const dest = `${tls.host}/conv/tls:erofs`;
    const refused = await convert(dest);
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /certificate/i);
    const good = await convert(dest, '--ca-file', pki.caCert);
    assert.equal(good.status, 0, good.stderr);
    const summary = JSON.parse(good.stdout) as { manifest: string };
    const certDir = join(dir.path, 'skopeo-certs');
    await mkdir(certDir, { recursive: true });
    await copyFile(pki.caCert, join(certDir, 'ca.crt'));
    const raw = await rawManifest(dest, '--cert-dir', certDir);
    assert.equal(digestOf(raw), summary.manifest);
  });

  it('an upload connection cut half-way resumes; skopeo copies the result', async () => {
    const proxy = await startFaultProxy(plain.url);
    try {
      proxy.addRule({
        path: /\/blobs\/uploads\//,
        method: 'PATCH',
        fault: { kind: 'cut-request', afterBytes: 1 << 20 },
        times: 1,
      });
      const dest = `${proxy.host}/conv/cut:erofs`;
      const result = await convert(dest, '--insecure');
      assert.equal(result.status, 0, result.stderr);
      assert.ok(
        proxy.requests.some((r) => r.fault === 'cut-request'),
        'the cut happened',
      );
      assert.ok(
        proxy.requests.some((r) => r.method === 'GET' && /\/blobs\/uploads\//.test(r.path)),
        `the client asked the registry for the offset: ${JSON.stringify(proxy.requests.map((r) => [r.method, r.path.slice(0, 60), r.status, r.fault, r.headers['content-range']]))}`,
      );
      const copy = join(dir.path, 'cut-copy');
      await skopeo([
        'copy',
        '--src-tls-verify=false',
        `docker://${plain.host}/conv/cut:erofs`,
        `oci:${copy}:x`,
      ]);
    } finally {
      await proxy.stop();
    }
  });

  it('a source layer failing its digest is exit 5 and the registry has no tag', async () => {
    const broken = join(dir.path, 'broken');
    await cp(source, broken, { recursive: true });
    const index = JSON.parse(await readFile(join(broken, 'index.json'), 'utf8'));
    const manifest = JSON.parse(
      await readFile(join(broken, 'blobs', 'sha256', index.manifests[0].digest.slice(7)), 'utf8'),
    );
    const blob = join(broken, 'blobs', 'sha256', manifest.layers[1].digest.slice(7));
    const bytes = await readFile(blob);
    bytes[bytes.length - 30] = (bytes[bytes.length - 30] ?? 0) ^ 1;
    await writeFile(blob, bytes);
    const result = await runCli([
      'convert',
      '--quiet',
      '--insecure',
      `oci:${broken}:v1`,
      `${plain.host}/conv/broken:erofs`,
    ]);
    assert.equal(result.status, 5, result.stderr);
    assert.equal(await tagStatus(plain, 'conv/broken', 'erofs'), 404);
  });

  it('a registry failing every upload is exit 7 after the retries, and no tag', async () => {
    const proxy = await startFaultProxy(plain.url);
    try {
      proxy.addRule({ path: /\/blobs\/uploads\//, method: 'PATCH', fault: { kind: 'status', status: 503 } });
      const result = await convert(`${proxy.host}/conv/gone:erofs`, '--insecure');
      assert.equal(result.status, 7, result.stderr);
      assert.equal(await tagStatus(plain, 'conv/gone', 'erofs'), 404);
    } finally {
      await proxy.stop();
    }
  });
});
