/**
 * Pushing to one repository of a registry (OCI distribution spec, "Pushing blobs" and "Pushing
 * manifests"): a blob already there is skipped (`HEAD`), one in another repository of the registry is
 * mounted (`POST ?mount=&from=`), anything else is uploaded in chunks (`PATCH` with `Content-Range`) that
 * resume, after a broken connection or a refused chunk, from the offset the registry reports for the
 * session (`GET` on the upload URL, `Range: 0-N`), then committed (`PUT ?digest=`). Manifests are `PUT`
 * last by the caller. Tokens are asked for `pull,push` on the repository and `pull` on the mount source.
 */
import type { FileHandle } from 'node:fs/promises';
import { readFile } from 'node:fs/promises';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import { readFully } from '../io/files.ts';
import { RegistryAuth, withAuth } from './auth.ts';
import { type AuthOptions, type CredentialLookup, lookupCredentials } from './credentials.ts';
import {
  compose,
  createDispatchers,
  type Dispatchers,
  type HttpRequest,
  type HttpResponse,
  header,
  networkError,
  type Send,
  undiciSend,
  withScheme,
} from './http.ts';
import { registryApiHost } from './reference.ts';
import { backoffDelay, DEFAULT_RETRY_POLICY, parseRetryAfter, type RetryPolicy, withRetry } from './retry.ts';

export interface PushClientOptions {
  auth?: AuthOptions;
  insecure?: boolean;
  caFile?: string;
  timeoutMs?: number;
  /** Bytes per `PATCH` (default 8 MiB). */
  chunkSize?: number;
  /** Another repository on the same registry to mount blobs from. */
  mountFrom?: string | undefined;
  retry?: Partial<RetryPolicy>;
  signal?: AbortSignal;
}

export type BlobTransfer = 'uploaded' | 'exists' | 'mounted';

/** Where the bytes of a blob come from: an open file or bytes in memory. */
export type BlobBytes = { kind: 'file'; handle: FileHandle } | { kind: 'bytes'; bytes: Uint8Array };

const MAX_ERROR_BODY = 64 * 1024;

export class PushClient {
  readonly registry: string;
  readonly repository: string;
  readonly host: string;
  readonly auth: RegistryAuth;
  readonly #dispatchers: Dispatchers;
  /** Idempotent requests: retried on transient failures and 429/5xx with Retry-After. */
  readonly #send: Send;
  /** Chunk uploads: not retried blindly (a resent PATCH may overlap); resumed from the registry's offset. */
  readonly #sendOnce: Send;
  readonly #base: URL;
  readonly #policy: RetryPolicy;
  readonly #chunkSize: number;
  readonly #mountFrom: string | undefined;
  readonly #scope: string;

  private constructor(
    registry: string,
    repository: string,
    options: PushClientOptions,
    ca: string | undefined,
  ) {
    this.registry = registry;
    this.repository = repository;
    this.host = registryApiHost(registry);
    this.#base = new URL(`https://${this.host}/`);
    this.#policy = {
      ...DEFAULT_RETRY_POLICY,
      timeoutMs: options.timeoutMs ?? DEFAULT_RETRY_POLICY.timeoutMs,
      ...options.retry,
    };
    this.#chunkSize = options.chunkSize ?? 8 << 20;
    this.#mountFrom = options.mountFrom === repository ? undefined : options.mountFrom;
    this.#scope = `repository:${repository}:pull,push${this.#mountFrom ? ` repository:${this.#mountFrom}:pull` : ''}`;
    this.#dispatchers = createDispatchers({ ca, connectTimeoutMs: Math.min(10_000, this.#policy.timeoutMs) });
    const primitive = undiciSend(this.#dispatchers, { stallTimeoutMs: 30_000, userAgent: 'erofs-oci/0.1' });
    const scheme = withScheme({ host: this.host, insecure: options.insecure ?? false });
    const retried = compose(withRetry(this.#policy), scheme)(primitive);
    const once = scheme(primitive);
    let lookup: Promise<CredentialLookup> | undefined;
    const authOptions = options.auth ?? {};
    this.auth = new RegistryAuth({
      host: this.host,
      baseUrl: this.#base,
      send: retried,
      credentials: (signal) => {
        lookup ??= lookupCredentials(registry, repository, { ...authOptions, signal });
        return lookup;
      },
    });
    this.#send = withAuth(this.auth, this.host)(retried);
    this.#sendOnce = withAuth(this.auth, this.host)(once);
  }

  static async open(
    registry: string,
    repository: string,
    options: PushClientOptions = {},
  ): Promise<PushClient> {
    let ca: string | undefined;
    if (options.caFile !== undefined) {
      ca = await readFile(options.caFile, 'utf8').catch((error: NodeJS.ErrnoException) => {
        throw new ErofsOciError(
          error.code === 'ENOENT' ? 'not-found' : 'io',
          `Cannot read --ca-file ${options.caFile}`,
          {
            cause: error,
          },
        );
      });
    }
    return new PushClient(registry, repository, options, ca);
  }

  get #name(): string {
    return `${this.registry}/${this.repository}`;
  }

  async #request(send: Send, request: HttpRequest, action: string): Promise<HttpResponse> {
    try {
      return await send({ scope: this.#scope, ...request });
    } catch (error) {
      throw networkError(error, action, request.signal);
    }
  }

  async #statusError(response: HttpResponse, action: string, signal?: AbortSignal): Promise<ErofsOciError> {
    let detail = '';
    try {
      const body = await response.body.bytes(MAX_ERROR_BODY, 'error response');
      const first = (
        JSON.parse(Buffer.from(body).toString('utf8')) as { errors?: { code?: unknown; message?: unknown }[] }
      ).errors?.[0];
      if (first && typeof first.code === 'string') {
        detail = `: ${first.code}${typeof first.message === 'string' ? ` (${first.message})` : ''}`;
      }
    } catch {
      await response.body.discard();
    }
    if (response.status === 401 || response.status === 403)
      return this.auth.refusal(response.status, action, signal);
    if (response.status === 404) return new ErofsOciError('not-found', `${action}: not found${detail}`);
    if (response.status >= 500 || response.status === 429) {
      return new ErofsOciError('unavailable', `${action}: HTTP ${response.status}${detail}`);
    }
    return new ErofsOciError('io', `${action}: HTTP ${response.status}${detail}`);
  }

  #url(path: string): URL {
    return new URL(`/v2/${this.repository}/${path}`, this.#base);
  }

  async hasBlob(digest: string, size: number, signal?: AbortSignal): Promise<boolean> {
    const action = `Cannot check blob ${digest} in ${this.#name}`;
    const response = await this.#request(
      this.#send,
      { method: 'HEAD', url: this.#url(`blobs/${digest}`), signal },
      action,
    );
    await response.body.discard();
    if (response.status === 200) {
      const length = header(response, 'content-length');
      return length === undefined || Number(length) === size;
    }
    if (response.status === 404) return false;
    throw await this.#statusError(response, action, signal);
  }

  /** Makes the blob present in the repository, the cheapest way available. */
  /** `onBytes`: the bytes of an upload the registry has acknowledged so far. */
  async putBlob(
    digest: string,
    size: number,
    bytes: BlobBytes,
    signal?: AbortSignal,
    onBytes?: (bytes: number) => void,
  ): Promise<BlobTransfer> {
    if (await this.hasBlob(digest, size, signal)) return 'exists';
    const action = `Cannot upload blob ${digest} to ${this.#name}`;
    const query = this.#mountFrom
      ? `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(this.#mountFrom)}`
      : '';
    const started = await this.#request(
      this.#send,
      {
        method: 'POST',
        url: this.#url(`blobs/uploads/${query}`),
        headers: { 'content-length': '0' },
        signal,
      },
      action,
    );
    if (started.status === 201 && this.#mountFrom) {
      await started.body.discard();
      return 'mounted';
    }
    if (started.status !== 202) throw await this.#statusError(started, action, signal);
    await started.body.discard();
    let location = this.#location(started, action);
    onBytes?.(0);
    let offset = 0;
    let failures = 0;
    let lastFailure: unknown;
    // One buffer for every chunk read from a file: each PATCH completes before the next read.
    const buffer = bytes.kind === 'file' ? Buffer.allocUnsafe(Math.min(this.#chunkSize, size)) : undefined;
    while (offset < size) {
      throwIfAborted(signal);
      const length = Math.min(this.#chunkSize, size - offset);
      const chunk = await readBytes(bytes, offset, length, buffer);
      let response: HttpResponse | undefined;
      try {
        response = await this.#request(
          this.#sendOnce,
          {
            method: 'PATCH',
            url: location,
            headers: {
              'content-type': 'application/octet-stream',
              'content-range': `${offset}-${offset + length - 1}`,
              'content-length': String(length),
            },
            body: chunk,
            signal,
          },
          action,
        );
      } catch (error) {
        if (!(error instanceof ErofsOciError) || error.code !== 'unavailable') throw error;
        lastFailure = error;
      }
      if (response && response.status === 202) {
        await response.body.discard();
        location = this.#location(response, action);
        offset = rangeEnd(header(response, 'range')) ?? offset + length;
        failures = 0;
        onBytes?.(offset);
        continue;
      }
      let retryAfter: number | undefined;
      if (response) {
        if (response.status === 401 || response.status === 403)
          throw await this.#statusError(response, action, signal);
        retryAfter = parseRetryAfter(header(response, 'retry-after'));
        lastFailure = await this.#statusError(response, action, signal);
        if (response.status < 500 && response.status !== 416 && response.status !== 429) throw lastFailure;
      }
      if (++failures > this.#policy.maxAttempts) {
        throw new ErofsOciError(
          'unavailable',
          `${action}: the upload failed ${failures} times at offset ${offset}`,
          {
            cause: lastFailure,
          },
        );
      }
      await sleep(retryAfter ?? backoffDelay(this.#policy, failures), signal);
      // Resume from what the registry holds of the session.
      const status = await this.#request(this.#send, { method: 'GET', url: location, signal }, action);
      if (status.status === 404 || status.status === 400) {
        // The registry gave the session up after the broken request (distribution does when a PATCH
        // dies mid-body: BLOB_UPLOAD_INVALID): start a new one from the first byte.
        await status.body.discard();
        const fresh = await this.#request(
          this.#send,
          { method: 'POST', url: this.#url('blobs/uploads/'), headers: { 'content-length': '0' }, signal },
          action,
        );
        if (fresh.status !== 202) throw await this.#statusError(fresh, action, signal);
        await fresh.body.discard();
        location = this.#location(fresh, action);
        offset = 0;
        continue;
      }
      if (status.status !== 204) throw await this.#statusError(status, action, signal);
      await status.body.discard();
      location = this.#location(status, action, location);
      offset = rangeEnd(header(status, 'range')) ?? 0;
    }
    const commit = new URL(location);
    commit.searchParams.set('digest', digest);
    const done = await this.#request(
      this.#send,
      { method: 'PUT', url: commit, headers: { 'content-length': '0' }, signal },
      action,
    );
    if (done.status !== 201) throw await this.#statusError(done, action, signal);
    await done.body.discard();
    return 'uploaded';
  }

  async putManifest(
    reference: string,
    mediaType: string,
    bytes: Uint8Array,
    signal?: AbortSignal,
  ): Promise<void> {
    const action = `Cannot put manifest ${reference} to ${this.#name}`;
    const response = await this.#request(
      this.#send,
      {
        method: 'PUT',
        url: this.#url(`manifests/${reference}`),
        headers: { 'content-type': mediaType },
        body: bytes,
        signal,
      },
      action,
    );
    if (response.status !== 201 && response.status !== 200)
      throw await this.#statusError(response, action, signal);
    await response.body.discard();
  }

  #location(response: HttpResponse, action: string, fallback?: URL): URL {
    const value = header(response, 'location');
    if (value === undefined) {
      if (fallback) return fallback;
      throw new ErofsOciError('io', `${action}: the registry gave no upload location`);
    }
    const url = new URL(value, this.#base);
    // withScheme picks http or https for the registry host; keep the base's scheme for relative answers.
    if (url.host !== this.host)
      throw new ErofsOciError('unsupported', `${action}: upload location on another host ${url.host}`);
    return url;
  }

  async close(): Promise<void> {
    await this.#dispatchers.close();
  }
}

/** The offset after `Range: 0-N` (N + 1), or undefined. */
function rangeEnd(value: string | undefined): number | undefined {
  const m = value === undefined ? null : /^(?:bytes=)?0-(\d+)$/.exec(value.trim());
  return m ? Number(m[1]) + 1 : undefined;
}

async function readBytes(
  bytes: BlobBytes,
  offset: number,
  length: number,
  into: Buffer | undefined,
): Promise<Uint8Array> {
  if (bytes.kind === 'bytes') return bytes.bytes.subarray(offset, offset + length);
  const buffer = (into ?? Buffer.allocUnsafe(length)).subarray(0, length);
  const read = await readFully(bytes.handle, buffer, offset);
  if (read !== length)
    throw new ErofsOciError('io', `blob file ended at ${offset + read}, expected ${offset + length}`);
  return buffer;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}
