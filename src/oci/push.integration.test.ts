/**
 * PushClient against the real registry through the fault proxy: a refused chunk mid-upload (503 with
 * Retry-After) resumes from the offset the registry reports; HEAD skips; cross-repository mounts.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type TmpDir, tmpdir } from '../../test-support/kernel.ts';
import {
  type RegistryHandle,
  registryUnavailableReason,
  startRegistry,
} from '../../test-support/registry.ts';
import { type FaultProxy, startFaultProxy } from '../../test-support/registry-fault-proxy.ts';
import { PushClient } from './push.ts';

describe('PushClient', { skip: registryUnavailableReason() }, () => {
  let dir: TmpDir;
  let registry: RegistryHandle;
  let proxy: FaultProxy;

  before(async () => {
    dir = await tmpdir();
    registry = await startRegistry({ storageDir: join(dir.path, 'storage') });
    proxy = await startFaultProxy(registry.url);
  });

  after(async () => {
    await proxy?.stop();
    await registry?.stop();
    await dir?.cleanup();
  });

  async function fetchBlob(repository: string, digest: string): Promise<Buffer> {
    const response = await fetch(`${registry.url}/v2/${repository}/blobs/${digest}`);
    assert.equal(response.status, 200);
    return Buffer.from(await response.arrayBuffer());
  }

  it('a chunk refused mid-upload resumes from the registry-reported offset; the blob is whole', async () => {
    const bytes = randomBytes(300_000);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    proxy.clearRules();
    // Two chunks pass, the third is refused once with Retry-After, the rest pass.
    proxy.addRule({ path: /\/blobs\/uploads\//, method: 'PATCH', fault: { kind: 'ignore-range' }, times: 2 });
    proxy.addRule({
      path: /\/blobs\/uploads\//,
      method: 'PATCH',
      fault: { kind: 'status', status: 503, retryAfter: '1' },
      times: 1,
    });
    const client = await PushClient.open(proxy.host, 'push/a', { insecure: true, chunkSize: 64 * 1024 });
    try {
      assert.equal(await client.putBlob(digest, bytes.byteLength, { kind: 'bytes', bytes }), 'uploaded');
      const patches = proxy.requests.filter((r) => r.method === 'PATCH');
      assert.equal(patches.filter((r) => r.status === 503).length, 1);
      assert.ok(
        proxy.requests.some((r) => r.method === 'GET' && /\/blobs\/uploads\//.test(r.path)),
        'asked for the offset',
      );
      const ranges = patches.map((r) => r.headers['content-range']);
      assert.equal(ranges[2], ranges[3], 'the refused chunk is sent again from the reported offset');
      assert.ok((await fetchBlob('push/a', digest)).equals(bytes));
      // HEAD finds it; another repository mounts it
      assert.equal(await client.putBlob(digest, bytes.byteLength, { kind: 'bytes', bytes }), 'exists');
    } finally {
      await client.close();
    }
    const other = await PushClient.open(proxy.host, 'push/b', { insecure: true, mountFrom: 'push/a' });
    try {
      assert.equal(await other.putBlob(digest, bytes.byteLength, { kind: 'bytes', bytes }), 'mounted');
      assert.ok((await fetchBlob('push/b', digest)).equals(bytes));
    } finally {
      await other.close();
    }
  });

  it('a registry gone for good mid-upload is unavailable after the retries', async () => {
    const bytes = randomBytes(200_000);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    proxy.clearRules();
    proxy.addRule({ path: /\/blobs\/uploads\//, method: 'PATCH', fault: { kind: 'ignore-range' }, times: 1 });
    proxy.addRule({ path: /\/blobs\/uploads\//, method: 'PATCH', fault: { kind: 'status', status: 503 } });
    const client = await PushClient.open(proxy.host, 'push/c', {
      insecure: true,
      chunkSize: 64 * 1024,
      retry: { baseDelayMs: 10, maxDelayMs: 20 },
    });
    try {
      await assert.rejects(
        client.putBlob(digest, bytes.byteLength, { kind: 'bytes', bytes }),
        (e: unknown) => {
          return (e as { code?: string }).code === 'unavailable';
        },
      );
    } finally {
      await client.close();
      proxy.clearRules();
    }
  });
});
