/**
 * The HTTP stack of the registry client, built as layers around one primitive (the shape of
 * go-containerregistry's `remote/transport` and undici's interceptors): a `Send` takes a request and
 * resolves to a response whose body is still streaming; a `Layer` wraps a `Send` into another one.
 *
 *   auth (auth.ts) → redirects → retry (retry.ts) → scheme → undici primitive
 *
 * The primitive is undici's `Dispatcher.request`: it never follows redirects and never decodes
 * `Content-Encoding`, so blob bytes arrive exactly as the registry stored them.
 */
import { rootCertificates } from 'node:tls';
import { Agent, type Dispatcher } from 'undici';
import { ErofsOciError } from '../errors.ts';

export type HttpMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH';

export interface HttpRequest {
  readonly method: HttpMethod;
  readonly url: URL;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string | Uint8Array;
  readonly signal?: AbortSignal | undefined;
  /** Token scope the auth layer authorises this request for, e.g. `repository:library/alpine:pull`. */
  readonly scope?: string | undefined;
  /** Shared retry budget of a longer operation (a resumed download), else the retry layer makes one. */
  readonly retry?: RetryBudgetLike | undefined;
  /** False only for the registry host of an `--insecure` registry. */
  readonly tlsVerify?: boolean | undefined;
}

/** The part of `RetryBudget` (retry.ts) requests carry; declared here so the layers stay acyclic. */
export interface RetryBudgetLike {
  wait(
    reason: string,
    retryAfterMs: number | undefined,
    signal: AbortSignal | undefined,
    cause?: unknown,
  ): Promise<void>;
}

export interface ResponseBody extends AsyncIterable<Uint8Array> {
  /** Reads the whole body; more than `limit` bytes is an error naming `what`. */
  bytes(limit: number, what: string): Promise<Uint8Array>;
  /** Throws the body away so the connection can be reused or closed. */
  discard(): Promise<void>;
}

export interface HttpResponse {
  readonly status: number;
  readonly url: URL;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: ResponseBody;
}

export type Send = (request: HttpRequest) => Promise<HttpResponse>;
export type Layer = (next: Send) => Send;

/** Applies layers outermost first: `compose(a, b)(send)` is `a(b(send))`. */
export function compose(...layers: Layer[]): (send: Send) => Send {
  return (send) => layers.reduceRight((next, layer) => layer(next), send);
}

export function header(response: HttpResponse, name: string): string | undefined {
  const value = response.headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

/** A URL fit for messages: signed storage URLs carry credentials in their query, which is dropped. */
export function displayUrl(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}

export function withHeader(request: HttpRequest, name: string, value: string | undefined): HttpRequest {
  const headers: Record<string, string> = {};
  for (const [key, item] of Object.entries(request.headers ?? {})) {
    if (key.toLowerCase() !== name.toLowerCase()) headers[key] = item;
  }
  if (value !== undefined) headers[name] = value;
  return { ...request, headers };
}

export interface DispatcherOptions {
  /** PEM roots added to Node's defaults (`--ca-file`). */
  ca?: string | undefined;
  connectTimeoutMs: number;
}

export interface Dispatchers {
  readonly verified: Dispatcher;
  /** Used only where `tlsVerify` is false (the host of an `--insecure` registry). */
  readonly unverified: Dispatcher;
  close(): Promise<void>;
}

export function createDispatchers(options: DispatcherOptions): Dispatchers {
  const ca = options.ca === undefined ? undefined : [...tlsRootCertificates(), options.ca];
  const verified = new Agent({ connectTimeout: options.connectTimeoutMs, connect: { ca } });
  const unverified = new Agent({
    connectTimeout: options.connectTimeoutMs,
    connect: { rejectUnauthorized: false },
  });
  return {
    verified,
    unverified,
    async close() {
      await Promise.all([verified.close(), unverified.close()]);
    },
  };
}

function tlsRootCertificates(): string[] {
  // `ca` replaces Node's bundled roots; keep them so --ca-file adds a root instead of replacing all.
  return [...rootCertificates];
}

export interface PrimitiveOptions {
  /** Longest wait for response headers, and between body chunks: a stalled transfer fails after this. */
  stallTimeoutMs: number;
  userAgent: string;
}

function wrapBody(body: Dispatcher.ResponseData['body']): ResponseBody {
  return {
    [Symbol.asyncIterator]() {
      return body[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
    },
    async bytes(limit, what) {
      const chunks: Uint8Array[] = [];
      let total = 0;
      for await (const chunk of body as AsyncIterable<Uint8Array>) {
        total += chunk.byteLength;
        if (total > limit) {
          body.destroy();
          throw new ErofsOciError('corrupt', `Cannot read ${what}: larger than ${limit} bytes`);
        }
        chunks.push(chunk);
      }
      return Buffer.concat(chunks, total);
    },
    async discard() {
      // Small bodies are drained so the connection is reused; large ones end the connection.
      await body.dump({ limit: 128 * 1024 }).catch(() => {
        // The body is unwanted: failing to drain it only costs the connection.
      });
    },
  };
}

/** The one primitive: a single HTTP exchange through undici, no redirects, no retries. */
export function undiciSend(dispatchers: Dispatchers, options: PrimitiveOptions): Send {
  return async (request) => {
    const dispatcher = request.tlsVerify === false ? dispatchers.unverified : dispatchers.verified;
    const headers: Record<string, string> = { 'user-agent': options.userAgent, ...request.headers };
    const response = await dispatcher.request({
      origin: request.url.origin,
      path: `${request.url.pathname}${request.url.search}`,
      method: request.method,
      headers,
      body: request.body ?? null,
      signal: request.signal ?? null,
      headersTimeout: options.stallTimeoutMs,
      bodyTimeout: options.stallTimeoutMs,
    });
    return {
      status: response.statusCode,
      url: request.url,
      headers: response.headers as Record<string, string | string[] | undefined>,
      body: wrapBody(response.body),
    };
  };
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * Follows redirects (blob GETs are commonly redirected to object storage). `Authorization` is dropped as
 * soon as the origin changes, so credentials never reach a host they were not meant for.
 */
export function withRedirects(maxRedirects = 10): Layer {
  return (next) => async (request) => {
    let current = request;
    for (let count = 0; ; count++) {
      const response = await next(current);
      const location = header(response, 'location');
      if (!REDIRECTS.has(response.status) || location === undefined) return response;
      await response.body.discard();
      if (count >= maxRedirects) {
        throw new ErofsOciError(
          'io',
          `Cannot ${request.method} ${displayUrl(request.url)}: more than ${maxRedirects} redirects`,
        );
      }
      let target: URL;
      try {
        target = new URL(location, current.url);
      } catch (error) {
        throw new ErofsOciError(
          'io',
          `Cannot ${request.method} ${displayUrl(current.url)}: invalid redirect location`,
          { cause: error },
        );
      }
      if (target.protocol !== 'https:' && target.protocol !== 'http:') {
        throw new ErofsOciError(
          'io',
          `Cannot ${request.method} ${displayUrl(current.url)}: redirect to ${target.protocol} URL`,
        );
      }
      let following = current;
      if (target.origin !== current.url.origin) {
        following = withHeader(current, 'authorization', undefined);
        following = {
          ...following,
          tlsVerify: target.origin === request.url.origin ? request.tlsVerify : true,
        };
      }
      if (response.status === 303) following = { ...following, method: 'GET', body: undefined };
      current = { ...following, url: target };
    }
  };
}

/**
 * Scheme for `--insecure` registries (SPEC §1): HTTPS without verification first, plain HTTP when the
 * HTTPS attempt fails at the connection level; the answer is remembered. Other hosts pass unchanged.
 */
export function withScheme(options: { host: string; insecure: boolean }): Layer {
  let plainHttp = false;
  return (next) => async (request) => {
    if (!options.insecure || request.url.host !== options.host) return next(request);
    const asHttp = (): HttpRequest => {
      const url = new URL(request.url);
      url.protocol = 'http:';
      return { ...request, url };
    };
    if (plainHttp || request.url.protocol === 'http:') return next(asHttp());
    try {
      return await next({ ...request, tlsVerify: false });
    } catch (httpsError) {
      if (request.signal?.aborted) throw httpsError;
      let response: HttpResponse;
      try {
        response = await next(asHttp());
      } catch {
        // Neither scheme answered: the HTTPS error is the one to report.
        throw httpsError;
      }
      plainHttp = true;
      return response;
    }
  };
}

const TLS_CODES =
  /^(ERR_TLS_|ERR_SSL_|CERT_|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_|EPROTO$|HOSTNAME_MISMATCH)/;

/** Wrapper codes say less than the system or TLS code of their cause. */
const GENERIC_CODES = new Set(['UND_ERR_SOCKET', 'UND_ERR_CONNECT', 'UND_ERR_REQ_RETRY']);

/** The most specific `code` along an error's cause chain. */
export function errorCode(error: unknown): string | undefined {
  let first: string | undefined;
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== 'string') continue;
    if (!GENERIC_CODES.has(code)) return code;
    first ??= code;
  }
  return first;
}

export function errorText(error: unknown): string {
  const code = errorCode(error);
  const message = error instanceof Error ? error.message : String(error);
  return code !== undefined && !message.includes(code) ? `${message} (${code})` : message;
}

/**
 * Turns whatever a send threw into an `ErofsOciError` naming the action: network and TLS failures are
 * 'unavailable' (SPEC §4 exit 7), an abort is 'aborted'.
 */
export function networkError(error: unknown, action: string, signal?: AbortSignal): ErofsOciError {
  // An abort noticed deeper down (raceAbort) does not know the action; name it here.
  if (signal?.aborted && (!(error instanceof ErofsOciError) || error.code === 'aborted'))
    return new ErofsOciError('aborted', `${action}: aborted`, { cause: signal.reason });
  if (error instanceof ErofsOciError) return error;
  const code = errorCode(error) ?? '';
  if (TLS_CODES.test(code)) {
    // OpenSSL's own messages are long internal strings; Node's certificate messages read well.
    const message =
      error instanceof Error && !error.message.includes('routines:') ? `${error.message} (${code})` : code;
    const plain = code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG';
    return new ErofsOciError('unavailable', `${action}: TLS handshake failed: ${message}`, {
      cause: error,
      hint: plain
        ? 'the server seems to speak plain HTTP; allow that with --insecure'
        : 'trust a private CA with --ca-file FILE (--insecure skips verification)',
    });
  }
  if (code === 'ENOTFOUND') {
    return new ErofsOciError('unavailable', `${action}: host not found (${code})`, { cause: error });
  }
  return new ErofsOciError('unavailable', `${action}: ${errorText(error)}`, { cause: error });
}
