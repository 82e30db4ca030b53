/**
 * A client for one repository of an OCI distribution registry
 * (https://github.com/opencontainers/distribution-spec/blob/main/spec.md): manifests, verified blob
 * streams that resume after a dropped connection, and ranged reads for lazy mounting.
 */
import { readFile } from 'node:fs/promises';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import { RegistryAuth, withAuth } from './auth.ts';
import { type AuthOptions, type CredentialLookup, lookupCredentials } from './credentials.ts';
import { DigestVerifier, digestOf, isDigest, parseDigest, shortDigest, verifyBytes } from './digest.ts';
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
  withRedirects,
  withScheme,
} from './http.ts';
import type { RangeReadOptions } from './image.ts';
import { type Descriptor, MAX_MANIFEST_BYTES } from './manifest.ts';
import { MANIFEST_ACCEPT } from './media-types.ts';
import { registryApiHost } from './reference.ts';
import { DEFAULT_RETRY_POLICY, isTransientError, RetryBudget, type RetryPolicy, withRetry } from './retry.ts';

export interface RegistryClientOptions {
  auth?: AuthOptions;
  /** Allow plain HTTP (and unverified TLS) to this registry (`--insecure`). */
  insecure?: boolean;
  /** PEM file of extra trusted roots (`--ca-file`). */
  caFile?: string;
  /** Total time one operation may spend retrying before it is 'unavailable' (default 30 s). */
  timeoutMs?: number;
  /** A transfer that delivers nothing for this long is dropped and retried or resumed (default 30 s). */
  stallTimeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  userAgent?: string;
  signal?: AbortSignal;
}

export interface ManifestResponse {
  readonly bytes: Uint8Array;
  /** The verified digest of `bytes`. */
  readonly digest: string;
  /** The `Content-Type` the registry sent, a hint for documents without `mediaType`. */
  readonly contentType: string | undefined;
}

export interface SignalOptions {
  signal?: AbortSignal | undefined;
}

const USER_AGENT = 'erofs-oci/0.1';

/** Results of `readRange` that a registry answered with the whole blob (status 200: `Range` ignored). */
const answeredWhole = new WeakSet<Uint8Array>();

/**
 * Whether the registry ignored `Range` while `readRange` produced `bytes` (it answered 200 with the whole
 * blob, of which the range was cut out). The bytes are right either way; a caller that reads many ranges
 * should then download the blob once instead (see src/io/block-cache.ts). A mark on the result rather than
 * an option or a callback, so that it passes unchanged through every `RangeReader` in between.
 */
export function wasAnsweredWhole(bytes: Uint8Array): boolean {
  return answeredWhole.has(bytes);
}

/** Registry error documents are small; a longer one is cut, it only feeds a message. */
const MAX_ERROR_BODY = 64 * 1024;

export class RegistryClient {
  readonly registry: string;
  readonly repository: string;
  /** `HOST[:PORT]` answering the API. */
  readonly host: string;
  readonly auth: RegistryAuth;
  readonly #dispatchers: Dispatchers;
  readonly #send: Send;
  readonly #policy: RetryPolicy;
  readonly #base: URL;
  readonly #scope: string;

  private constructor(
    registry: string,
    repository: string,
    options: RegistryClientOptions,
    ca: string | undefined,
  ) {
    this.registry = registry;
    this.repository = repository;
    this.host = registryApiHost(registry);
    this.#base = new URL(`https://${this.host}/`);
    this.#scope = `repository:${repository}:pull`;
    const timeoutMs = options.timeoutMs ?? DEFAULT_RETRY_POLICY.timeoutMs;
    this.#policy = { ...DEFAULT_RETRY_POLICY, timeoutMs, ...options.retry };
    this.#dispatchers = createDispatchers({ ca, connectTimeoutMs: Math.min(10_000, timeoutMs) });
    const primitive = undiciSend(this.#dispatchers, {
      stallTimeoutMs: options.stallTimeoutMs ?? 30_000,
      userAgent: options.userAgent ?? USER_AGENT,
    });
    const inner = compose(
      withRedirects(),
      withRetry(this.#policy),
      withScheme({ host: this.host, insecure: options.insecure ?? false }),
    )(primitive);
    const authOptions = options.auth ?? {};
    let lookup: Promise<CredentialLookup> | undefined;
    this.auth = new RegistryAuth({
      host: this.host,
      baseUrl: this.#base,
      send: inner,
      credentials: (signal) => {
        lookup ??= lookupCredentials(registry, repository, { ...authOptions, signal });
        return lookup;
      },
    });
    this.#send = withAuth(this.auth, this.host)(inner);
  }

  static async open(
    registry: string,
    repository: string,
    options: RegistryClientOptions = {},
  ): Promise<RegistryClient> {
    throwIfAborted(options.signal);
    let ca: string | undefined;
    if (options.caFile !== undefined) {
      try {
        ca = await readFile(options.caFile, 'utf8');
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        throw new ErofsOciError(
          code === 'ENOENT' ? 'not-found' : 'io',
          `Cannot read --ca-file ${options.caFile}: ${code}`,
          {
            cause: error,
          },
        );
      }
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
        throw new ErofsOciError(
          'usage',
          `Cannot use --ca-file ${options.caFile}: it holds no PEM certificate`,
        );
      }
    }
    return new RegistryClient(registry, repository, options, ca);
  }

  get #name(): string {
    return `${this.registry}/${this.repository}`;
  }

  #url(kind: 'manifests' | 'blobs', reference: string): URL {
    return new URL(`/v2/${this.repository}/${kind}/${reference}`, this.#base);
  }

  /** Sends through the whole stack; network failures become 'unavailable' errors naming `action`. */
  async #request(request: HttpRequest, action: string): Promise<HttpResponse> {
    try {
      return await this.#send({ scope: this.#scope, ...request });
    } catch (error) {
      throw networkError(error, action, request.signal);
    }
  }

  /** An error for a response that is not what `action` needed, with the registry's own error code. */
  async #statusError(
    response: HttpResponse,
    action: string,
    notFound: string,
    signal?: AbortSignal,
  ): Promise<ErofsOciError> {
    let detail = '';
    try {
      const body = await response.body.bytes(MAX_ERROR_BODY, 'error response');
      const document = JSON.parse(Buffer.from(body).toString('utf8')) as {
        errors?: { code?: unknown; message?: unknown }[];
      };
      const first = document.errors?.[0];
      if (first && typeof first.code === 'string') {
        detail = `: ${first.code}${typeof first.message === 'string' ? ` (${first.message})` : ''}`;
      }
    } catch {
      // The body only decorates the message; a missing or non-JSON body leaves the status alone.
      await response.body.discard();
    }
    if (response.status === 401 || response.status === 403)
      return this.auth.refusal(response.status, action, signal);
    if (response.status === 404) return new ErofsOciError('not-found', `${action}: ${notFound}${detail}`);
    return new ErofsOciError('io', `${action}: HTTP ${response.status}${detail}`);
  }

  /** Fetches a manifest by tag or digest; a digest reference, and a `Docker-Content-Digest` header, are verified. */
  async getManifest(
    reference: string,
    options: SignalOptions & { accept?: string } = {},
  ): Promise<ManifestResponse> {
    const action = `Cannot get manifest ${this.#name}${isDigest(reference) ? '@' : ':'}${reference}`;
    const budget = new RetryBudget(this.#policy, action);
    for (;;) {
      const response = await this.#request(
        {
          method: 'GET',
          url: this.#url('manifests', reference),
          headers: { accept: options.accept ?? MANIFEST_ACCEPT },
          signal: options.signal,
          retry: budget,
        },
        action,
      );
      if (response.status !== 200) {
        const notFound = isDigest(reference) ? 'no such manifest' : 'no such repository or tag';
        throw await this.#statusError(response, action, notFound, options.signal);
      }
      let bytes: Uint8Array;
      try {
        bytes = await response.body.bytes(MAX_MANIFEST_BYTES, `manifest of ${this.#name}`);
      } catch (error) {
        if (!isTransientError(error) || options.signal?.aborted)
          throw networkError(error, action, options.signal);
        await budget.wait(
          'the connection dropped while reading the manifest',
          undefined,
          options.signal,
          error,
        );
        continue;
      }
      let digest: string;
      if (isDigest(reference)) {
        verifyBytes(bytes, reference, undefined, `manifest ${this.#name}@${reference}`);
        digest = reference;
      } else {
        const announced = header(response, 'docker-content-digest');
        const algorithm =
          announced !== undefined && isDigest(announced) ? parseDigest(announced).algorithm : 'sha256';
        digest = digestOf(bytes, algorithm);
        if (announced !== undefined && isDigest(announced) && announced !== digest) {
          throw new ErofsOciError(
            'digest-mismatch',
            `${action}: the registry announced ${announced}, the content has digest ${digest}`,
          );
        }
      }
      return { bytes, digest, contentType: header(response, 'content-type') };
    }
  }

  /**
   * Streams a blob, verifying size and digest as it goes: the stream throws 'digest-mismatch' at its end
   * when the content is wrong. A connection that drops or stalls is resumed with `Range` from the last
   * byte delivered; a server that ignores `Range` (200 instead of 206) has the delivered part skipped.
   */
  async *openBlob(
    descriptor: Descriptor,
    options: SignalOptions = {},
  ): AsyncGenerator<Uint8Array, void, undefined> {
    const what = `blob ${shortDigest(descriptor.digest)} of ${this.#name}`;
    const action = `Cannot download ${what}`;
    const verifier = new DigestVerifier(descriptor.digest, descriptor.size, what);
    const budget = new RetryBudget(this.#policy, action);
    const signal = options.signal;
    for (;;) {
      const offset = verifier.received;
      const headers: Record<string, string> = {};
      if (offset > 0) headers.range = `bytes=${offset}-`;
      const response = await this.#request(
        { method: 'GET', url: this.#url('blobs', descriptor.digest), headers, signal, retry: budget },
        action,
      );
      let skip = 0;
      if (response.status === 206 && offset > 0) {
        const start = contentRangeStart(header(response, 'content-range'));
        if (start !== offset) {
          await response.body.discard();
          throw new ErofsOciError(
            'io',
            `${action}: asked for bytes from ${offset}, the registry sent from ${start ?? 'an unknown offset'}`,
          );
        }
      } else if (response.status === 200) {
        skip = offset;
      } else {
        throw await this.#statusError(response, action, 'no such blob', signal);
      }
      try {
        for await (const chunk of response.body) {
          let data = chunk;
          if (skip > 0) {
            if (data.byteLength <= skip) {
              skip -= data.byteLength;
              continue;
            }
            data = data.subarray(skip);
            skip = 0;
          }
          verifier.update(data);
          yield data;
        }
      } catch (error) {
        if (signal?.aborted) throw networkError(error, action, signal);
        if (!isTransientError(error))
          throw error instanceof ErofsOciError ? error : networkError(error, action, signal);
        await budget.wait(`the transfer broke at byte ${verifier.received}`, undefined, signal, error);
        continue;
      }
      if (verifier.received < descriptor.size) {
        await budget.wait(
          `the transfer ended at byte ${verifier.received} of ${descriptor.size}`,
          undefined,
          signal,
        );
        continue;
      }
      verifier.finish();
      return;
    }
  }

  /**
   * Reads `length` bytes at `offset` of a blob with a `Range` request, with the same auth and retries.
   * The bytes cannot be verified against the digest (only whole blobs can); callers that need integrity
   * verify at a higher level (a gzip index, an EROFS checksum).
   */
  async readRange(
    digest: string,
    offset: number,
    length: number,
    options: RangeReadOptions = {},
  ): Promise<Uint8Array> {
    parseDigest(digest, 'blob digest');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ErofsOciError('internal', `Invalid range ${offset}+${length} of blob ${shortDigest(digest)}`);
    }
    const onData = options.onData;
    const out = new Uint8Array(onData ? 0 : length);
    if (length === 0) return out;
    const action = `Cannot read bytes ${offset}-${offset + length - 1} of blob ${shortDigest(digest)} of ${this.#name}`;
    const budget = new RetryBudget(this.#policy, action);
    const signal = options.signal;
    let filled = 0;
    for (;;) {
      const from = offset + filled;
      const response = await this.#request(
        {
          method: 'GET',
          url: this.#url('blobs', digest),
          headers: { range: `bytes=${from}-${offset + length - 1}` },
          signal,
          retry: budget,
        },
        action,
      );
      let skip: number;
      if (response.status === 206) {
        const start = contentRangeStart(header(response, 'content-range'));
        if (start !== from) {
          await response.body.discard();
          throw new ErofsOciError(
            'io',
            `${action}: the registry sent bytes from ${start ?? 'an unknown offset'}`,
          );
        }
        skip = 0;
      } else if (response.status === 200) {
        skip = from; // Range ignored: the whole blob comes, skip to where we are
        answeredWhole.add(out);
      } else if (response.status === 416) {
        await response.body.discard();
        throw new ErofsOciError('io', `${action}: the range is beyond the end of the blob`);
      } else {
        throw await this.#statusError(response, action, 'no such blob', signal);
      }
      const iterator = response.body[Symbol.asyncIterator]();
      let ended = false;
      try {
        for (;;) {
          const { value, done } = await iterator.next();
          if (done) {
            ended = true;
            break;
          }
          if (filled === length) {
            // A 206 body ends right after our range: read to its end so the connection is reused. A whole
            // blob (Range ignored) is cut off instead.
            if (response.status === 206) continue;
            break;
          }
          let data = value;
          if (skip > 0) {
            if (data.byteLength <= skip) {
              skip -= data.byteLength;
              continue;
            }
            data = data.subarray(skip);
            skip = 0;
          }
          const take = Math.min(data.byteLength, length - filled);
          if (onData) onData(take === data.byteLength ? data : data.subarray(0, take));
          else out.set(data.subarray(0, take), filled);
          filled += take;
        }
      } catch (error) {
        ended = true;
        if (signal?.aborted) throw networkError(error, action, signal);
        if (!isTransientError(error)) throw networkError(error, action, signal);
        if (filled === length) return out;
        await budget.wait(`the transfer broke after ${filled} of ${length} bytes`, undefined, signal, error);
        continue;
      } finally {
        if (!ended) await iterator.return?.();
      }
      if (filled === length) return out;
      await budget.wait(`the transfer ended after ${filled} of ${length} bytes`, undefined, signal);
    }
  }

  async close(): Promise<void> {
    await this.#dispatchers.close();
  }
}

function contentRangeStart(value: string | undefined): number | undefined {
  const match = value === undefined ? null : /^bytes\s+(\d+)-\d+\/(?:\d+|\*)$/i.exec(value.trim());
  return match ? Number(match[1]) : undefined;
}
