/**
 * The registry client against a real registry behind the fault proxy (test-support/registry-fault-proxy.ts):
 * cut connections, 429/503 with Retry-After, Range ignored, a flipped byte, stalls, and a registry that is
 * not there at all.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import {
  freePort,
  type RegistryHandle,
  registryUnavailableReason,
  startRegistry,
} from '../../test-support/registry.ts';
import { type FaultProxy, startFaultProxy } from '../../test-support/registry-fault-proxy.ts';
import { createFixtures, type Fixtures } from '../../test-support/registry-fixtures.ts';
import { exitStatusFor, isErofsOciError } from '../errors.ts';
import { blobByteSource, type ImageSource, isRangeReader, type LayerDescriptor, readBlob } from './image.ts';
import { type OpenImageSourceOptions, openImageSource } from './source.ts';

const skip = registryUnavailableReason();

let fixtures: Fixtures;
let registry: RegistryHandle;
let proxy: FaultProxy;
const opened: ImageSource[] = [];

async function open(repo: string, options: OpenImageSourceOptions = {}): Promise<ImageSource> {
  const image = await openImageSource(`${proxy.host}/${repo}`, {
    insecure: true,
    timeoutMs: 10_000,
    ...options,
  });
  opened.push(image);
  return image;
}

async function bigLayer(
  options: OpenImageSourceOptions = {},
): Promise<{ image: ImageSource; layer: LayerDescriptor; expected: Buffer; path: RegExp }> {
  const image = await open('test/big:v1', options);
  const [layer] = await image.layers();
  assert.ok(layer);
  return {
    image,
    layer,
    expected: fixtures.blobs.get(layer.digest)!.bytes,
    path: new RegExp(`/blobs/${layer.digest}$`),
  };
}

function blobRequests(digest: string) {
  return proxy.requests.filter((r) => r.path.endsWith(`/blobs/${digest}`));
}

describe('registry client under faults (integration)', { skip, timeout: 300_000 }, () => {
  before(async () => {
    fixtures = await createFixtures();
    registry = await startRegistry({ storageDir: fixtures.storageDir });
    proxy = await startFaultProxy(registry.url);
  });
  beforeEach(() => {
    proxy.requests.length = 0;
  });
  afterEach(() => {
    proxy.clearRules();
  });
  after(async () => {
    await Promise.all(opened.map((image) => image.close()));
    await proxy?.stop();
    await registry?.stop();
    await fixtures?.cleanup();
  });

  it('resumes a cut download with Range from the last byte received', async () => {
    const { image, layer, expected, path } = await bigLayer();
    proxy.addRule({ path, fault: { kind: 'cut', afterBytes: 1_000_000 }, times: 1 });
    proxy.addRule({ path, fault: { kind: 'cut', afterBytes: 500_000 }, times: 1 });
    const bytes = await readBlob(image, layer);
    assert.ok(Buffer.from(bytes).equals(expected));
    assert.deepEqual(
      blobRequests(layer.digest).map((r) => [r.status, r.headers.range]),
      [
        [200, undefined],
        [206, 'bytes=1000000-'],
        [206, 'bytes=1500000-'],
      ],
    );
  });

  it('copes with a server that ignores Range after a cut', async () => {
    const { image, layer, expected, path } = await bigLayer();
    proxy.addRule({ path, fault: { kind: 'cut', afterBytes: 777_777 }, times: 1 });
    proxy.addRule({ path, fault: { kind: 'ignore-range' }, times: 1 });
    const bytes = await readBlob(image, layer);
    assert.ok(Buffer.from(bytes).equals(expected));
    assert.deepEqual(
      blobRequests(layer.digest).map((r) => [r.status, r.fault]),
      [
        [200, 'cut'],
        [200, 'ignore-range'],
      ],
    );
  });

  it('retries 503 and 429 honouring Retry-After', async () => {
    const { image, layer, expected, path } = await bigLayer();
    proxy.addRule({ path, fault: { kind: 'status', status: 503, retryAfter: '1' }, times: 1 });
    proxy.addRule({ path, fault: { kind: 'status', status: 429, retryAfter: '1' }, times: 1 });
    const started = Date.now();
    const bytes = await readBlob(image, layer);
    const elapsed = Date.now() - started;
    assert.ok(Buffer.from(bytes).equals(expected));
    assert.ok(elapsed >= 1950, `waited ${elapsed} ms for two Retry-After: 1`);
    assert.deepEqual(
      blobRequests(layer.digest).map((r) => r.status),
      [503, 429, 200],
    );
  });

  it('retries a failing manifest request and gives up with unavailable when it keeps failing', async () => {
    proxy.addRule({ path: /\/manifests\/v1$/, fault: { kind: 'status', status: 502 }, times: 2 });
    const image = await open('test/docker:v1');
    await image.layers();
    proxy.addRule({ path: /\/manifests\/v1$/, fault: { kind: 'status', status: 500 } });
    const failing = await open('test/simple:v1', { timeoutMs: 20_000 });
    await assert.rejects(failing.manifest(), (error) => {
      assert.ok(isErofsOciError(error, 'unavailable'), String(error));
      assert.match(
        error.message,
        /^Cannot get manifest .*test\/simple:v1: HTTP 500 \(gave up after 6 attempts in \d+\.\d s\)$/,
      );
      assert.equal(exitStatusFor(error), 7);
      return true;
    });
  });

  it('fails with digest-mismatch when one byte of a blob is flipped', async () => {
    const { image, layer, path } = await bigLayer();
    proxy.addRule({ path, fault: { kind: 'flip-byte', offset: 123_456 } });
    await assert.rejects(readBlob(image, layer), (error) => {
      assert.ok(isErofsOciError(error, 'digest-mismatch'), String(error));
      assert.match(
        error.message,
        new RegExp(
          `^Cannot verify blob ${layer.digest.slice(0, 19)} of .*test/big: its content has digest sha256:`,
        ),
      );
      assert.equal(exitStatusFor(error), 5);
      return true;
    });
  });

  it('fails with digest-mismatch when a manifest fetched by digest is altered', async () => {
    const digest = fixtures.simple.root.digest;
    proxy.addRule({ path: new RegExp(`/manifests/${digest}$`), fault: { kind: 'flip-byte', offset: 10 } });
    const image = await open(`test/simple@${digest}`);
    await assert.rejects(image.manifest(), (error) => isErofsOciError(error, 'digest-mismatch'));
  });

  it('drops a stalled transfer and resumes it', async () => {
    const { image, layer, expected, path } = await bigLayer({ stallTimeoutMs: 1000 });
    proxy.addRule({ path, fault: { kind: 'stall', afterBytes: 400_000 }, times: 1 });
    const started = Date.now();
    const bytes = await readBlob(image, layer);
    assert.ok(Buffer.from(bytes).equals(expected));
    assert.ok(Date.now() - started >= 900);
    assert.deepEqual(
      blobRequests(layer.digest).map((r) => r.headers.range),
      [undefined, 'bytes=400000-'],
    );
  });

  it('reads ranges through cuts and a server that ignores Range', async () => {
    const { image, layer, expected, path } = await bigLayer();
    assert.ok(isRangeReader(image));
    const source = blobByteSource(image, layer);
    proxy.addRule({ path, fault: { kind: 'ignore-range' }, times: 1 });
    assert.ok(
      Buffer.from(await source.read(2_000_000, 100_000)).equals(expected.subarray(2_000_000, 2_100_000)),
    );
    proxy.addRule({ path, fault: { kind: 'cut', afterBytes: 50_000 }, times: 1 });
    assert.ok(Buffer.from(await source.read(10, 200_000)).equals(expected.subarray(10, 200_010)));
    assert.deepEqual(
      blobRequests(layer.digest).map((r) => [r.status, r.headers.range]),
      [
        [200, 'bytes=2000000-2099999'],
        [206, 'bytes=10-200009'],
        [206, 'bytes=50010-200009'],
      ],
    );
    await assert.rejects(source.read(expected.byteLength - 1, 2), (error) =>
      isErofsOciError(error, 'internal'),
    );
  });

  it('streams a range through a cut and a server that ignores Range, handing over every byte once', async () => {
    const { image, layer, expected, path } = await bigLayer();
    assert.ok(isRangeReader(image));
    for (const fault of [{ kind: 'cut', afterBytes: 70_000 } as const, { kind: 'ignore-range' } as const]) {
      proxy.addRule({ path, fault, times: 1 });
      const chunks: Buffer[] = [];
      const result = await image.readRange(layer.digest, 1_000_000, 300_000, {
        onData: (chunk) => chunks.push(Buffer.from(chunk)),
      });
      assert.equal(result.byteLength, 0, 'streamed bytes are not returned as well');
      assert.ok(Buffer.concat(chunks).equals(expected.subarray(1_000_000, 1_300_000)), fault.kind);
    }
    assert.deepEqual(
      blobRequests(layer.digest)
        .slice(-3)
        .map((r) => [r.status, r.headers.range]),
      [
        [206, 'bytes=1000000-1299999'],
        [206, 'bytes=1070000-1299999'],
        [200, 'bytes=1000000-1299999'],
      ],
    );
  });

  it('gives up on an unreachable registry with unavailable within the time budget', async () => {
    const port = await freePort();
    for (const timeoutMs of [3000, undefined]) {
      const image = await openImageSource(`127.0.0.1:${port}/test/simple:v1`, { insecure: true, timeoutMs });
      opened.push(image);
      const started = Date.now();
      await assert.rejects(image.manifest(), (error) => {
        assert.ok(isErofsOciError(error, 'unavailable'), String(error));
        assert.match(error.message, /ECONNREFUSED.*gave up after \d+ attempts/);
        assert.equal(exitStatusFor(error), 7);
        return true;
      });
      const elapsed = Date.now() - started;
      assert.ok(elapsed < (timeoutMs ?? 60_000), `gave up after ${elapsed} ms`);
      assert.ok(elapsed > 200, 'it retried before giving up');
    }
  });
});
