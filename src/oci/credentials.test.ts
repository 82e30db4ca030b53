import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isErofsOciError } from '../errors.ts';
import {
  authFileCandidates,
  authKeysFor,
  lookupCredentials,
  normalizeAuthKey,
  runCredentialHelper,
} from './credentials.ts';

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'erofs-oci-creds-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const b64 = (text: string) => Buffer.from(text).toString('base64');

async function writeJson(path: string, value: unknown): Promise<string> {
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, JSON.stringify(value));
  return path;
}

/** A credential helper script: answers for one server URL, "credentials not found" for others. */
async function writeHelper(
  dir: string,
  name: string,
  serverUrl: string,
  user: string,
  secret: string,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, `docker-credential-${name}`);
  await writeFile(
    path,
    `#!/bin/sh
[ "$1" = get ] || exit 2
read -r url
if [ "$url" = "${serverUrl}" ]; then
  printf '{"ServerURL":"%s","Username":"${user}","Secret":"${secret}"}' "$url"
else
  echo "credentials not found in native keychain"; exit 1
fi
`,
  );
  await chmod(path, 0o755);
}

describe('normalizeAuthKey / authKeysFor', () => {
  it('normalises docker legacy URLs and Docker Hub aliases', () => {
    assert.equal(normalizeAuthKey('https://index.docker.io/v1/'), 'docker.io');
    assert.equal(normalizeAuthKey('registry-1.docker.io'), 'docker.io');
    assert.equal(normalizeAuthKey('http://Reg.Example:5000/v2/'), 'reg.example:5000');
    assert.equal(normalizeAuthKey('reg.example/ns/repo'), 'reg.example/ns/repo');
  });
  it('lists repository keys most specific first', () => {
    assert.deepEqual(authKeysFor('r.io', 'a/b'), ['r.io/a/b', 'r.io/a', 'r.io']);
  });
  it('orders the lookup chain as SPEC §1 says', () => {
    assert.deepEqual(
      authFileCandidates({
        REGISTRY_AUTH_FILE: '/a',
        XDG_RUNTIME_DIR: '/run/u',
        DOCKER_CONFIG: '/d',
        HOME: '/h',
      }),
      ['/a', '/run/u/containers/auth.json', '/d/config.json', '/h/.docker/config.json'],
    );
  });
});

describe('lookupCredentials', () => {
  it('prefers --username and --password-stdin over every file', async () => {
    const found = await lookupCredentials('r.io', 'a', {
      username: 'u',
      password: 'p',
      env: { HOME: '/nonexistent' },
    });
    assert.deepEqual(found.credential, { kind: 'basic', username: 'u', password: 'p' });
    await assert.rejects(lookupCredentials('r.io', 'a', { username: 'u' }), (e) =>
      isErofsOciError(e, 'usage'),
    );
  });

  it('takes the first file of the chain that knows the registry', async () => {
    const dir = join(root, 'chain');
    const env = {
      REGISTRY_AUTH_FILE: join(dir, 'missing.json'),
      XDG_RUNTIME_DIR: join(dir, 'run'),
      DOCKER_CONFIG: join(dir, 'dockercfg'),
      HOME: join(dir, 'home'),
    };
    await writeJson(join(dir, 'run', 'containers', 'auth.json'), {
      auths: { 'other.io': { auth: b64('x:y') } },
    });
    await writeJson(join(dir, 'dockercfg', 'config.json'), {
      auths: { 'https://r.io/v1/': { auth: b64('docker:pw:with:colons') } },
    });
    await writeJson(join(dir, 'home', '.docker', 'config.json'), {
      auths: { 'r.io': { auth: b64('home:pw') } },
    });
    const found = await lookupCredentials('r.io', 'a/b', { env });
    assert.deepEqual(found, {
      credential: { kind: 'basic', username: 'docker', password: 'pw:with:colons' },
      origin: join(dir, 'dockercfg', 'config.json'),
    });
  });

  it('matches per-repository entries before the registry entry', async () => {
    const file = await writeJson(join(root, 'repo', 'auth.json'), {
      auths: { 'r.io': { auth: b64('reg:1') }, 'r.io/team': { username: 'team', password: '2' } },
    });
    assert.equal((await lookupCredentials('r.io', 'team/app', { authFile: file })).credential?.kind, 'basic');
    assert.deepEqual((await lookupCredentials('r.io', 'team/app', { authFile: file })).credential, {
      kind: 'basic',
      username: 'team',
      password: '2',
    });
    assert.deepEqual((await lookupCredentials('r.io', 'other/app', { authFile: file })).credential, {
      kind: 'basic',
      username: 'reg',
      password: '1',
    });
  });

  it('reads identity tokens and finds Docker Hub under its legacy key', async () => {
    const file = await writeJson(join(root, 'hub', 'config.json'), {
      auths: { 'https://index.docker.io/v1/': { identitytoken: 'refresh-me' } },
    });
    assert.deepEqual(
      (await lookupCredentials('docker.io', 'library/alpine', { authFile: file })).credential,
      {
        kind: 'identity-token',
        username: undefined,
        token: 'refresh-me',
      },
    );
  });

  it('uses credHelpers, then auths, then credsStore, speaking the helper protocol', async () => {
    const bin = join(root, 'helpers', 'bin');
    await writeHelper(bin, 'perhost', 'r.io', 'helped', 's3cret');
    await writeHelper(bin, 'store', 'https://index.docker.io/v1/', 'hubuser', 'hubsecret');
    const env = { PATH: `${bin}:${process.env.PATH}`, HOME: join(root, 'helpers') };
    const file = await writeJson(join(root, 'helpers', 'config.json'), {
      auths: { 'r.io': { auth: b64('file:pw') }, 'plain.io': { auth: b64('plain:pw') }, 'docker.io': {} },
      credHelpers: { 'r.io': 'perhost' },
      credsStore: 'store',
    });
    assert.deepEqual(await lookupCredentials('r.io', 'a', { authFile: file, env }), {
      credential: { kind: 'basic', username: 'helped', password: 's3cret' },
      origin: 'docker-credential-perhost',
    });
    assert.deepEqual((await lookupCredentials('plain.io', 'a', { authFile: file, env })).credential, {
      kind: 'basic',
      username: 'plain',
      password: 'pw',
    });
    assert.deepEqual(
      (await lookupCredentials('docker.io', 'library/x', { authFile: file, env })).credential,
      {
        kind: 'basic',
        username: 'hubuser',
        password: 'hubsecret',
      },
    );
    // The store has nothing for this host: anonymous.
    assert.deepEqual(await lookupCredentials('none.io', 'a', { authFile: file, env }), {
      credential: undefined,
      origin: undefined,
    });
  });

  it('reports a missing helper and a broken file without leaking the file content', async () => {
    const file = await writeJson(join(root, 'bad', 'config.json'), { credHelpers: { 'r.io': 'absent' } });
    await assert.rejects(
      lookupCredentials('r.io', 'a', { authFile: file, env: { PATH: '/nonexistent' } }),
      (e) =>
        isErofsOciError(e, 'auth') &&
        e.message === 'Cannot run credential helper docker-credential-absent: it is not on PATH',
    );
    const broken = join(root, 'bad', 'broken.json');
    await writeFile(broken, '{"auths": {"r.io": {"auth": "c2VjcmV0"}');
    await assert.rejects(
      lookupCredentials('r.io', 'a', { authFile: broken }),
      (e) =>
        isErofsOciError(e, 'auth') &&
        e.message === `Cannot read credentials from ${broken}: it is not valid JSON`,
    );
    await assert.rejects(lookupCredentials('r.io', 'a', { authFile: join(root, 'none.json') }), (e) =>
      isErofsOciError(e, 'auth'),
    );
  });

  it('treats the helper user <token> as an identity token', async () => {
    const bin = join(root, 'tok');
    await writeHelper(bin, 'tok', 'r.io', '<token>', 'idtok');
    assert.deepEqual(await runCredentialHelper('tok', 'r.io', { env: { PATH: bin } }), {
      kind: 'identity-token',
      username: undefined,
      token: 'idtok',
    });
  });
});
