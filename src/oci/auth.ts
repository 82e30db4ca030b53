/**
 * Registry authentication (SPEC §1; https://distribution.github.io/distribution/spec/auth/token/).
 *
 * The scheme is learned from the registry's answer to the first real request, as containerd's resolver
 * does, instead of from an up-front `GET /v2/` ping: an anonymous registry costs no extra round trip at
 * all, and every `erofs-oci serve` process (one per layer of a lazy mount) starts one round trip sooner.
 *
 *  1. Until the scheme is known, a request goes out without `Authorization`; requests that start
 *     meanwhile wait for its answer, so parallel first reads cost one 401, not one each. A 401 names the
 *     scheme in `WWW-Authenticate` (challenge.ts) and the request is sent once more with the
 *     `Authorization` of step 2 or 3. Any other answer means the repository is open to anonymous clients:
 *     later requests go out bare too, until a 401 says otherwise (step 5).
 *  2. Basic challenge: every request to the registry host carries `Authorization: Basic` when we have
 *     credentials (credentials.ts); without them requests go out bare and a 401 is an 'auth' error.
 *  3. Bearer challenge: for each scope (`repository:NAME:pull`) ask the challenge's `realm` for a token
 *     with `service` and `scope` as query parameters — `GET` with Basic credentials, or anonymously when
 *     there are none; an identity token is exchanged with an OAuth2 `POST` (grant_type=refresh_token).
 *  4. The answer's `token` (or `access_token`) is cached per scope until `expires_in` (default 60 s)
 *     runs out, minus a margin; later requests for the scope carry it up front and an expired one is
 *     replaced first.
 *  5. A 401 to a request once the scheme is known: follow the challenge it brings (a registry may ask
 *     differently per repository), drop the token the request carried, take any `scope` the challenge
 *     names (`error="insufficient_scope"`), fetch a fresh token and send the request once more. A second
 *     401 goes back to the caller, which reports an 'auth' error.
 *  6. The one ping left: a registry may hide private repositories from anonymous clients behind 404 (or
 *     403) instead of a 401 challenge. When the first answer is one of those and credentials are
 *     configured for the host, `GET /v2/` is asked for the scheme after all; a 401 there leads to step 2
 *     or 3 and one more try of the request, anything else leaves the first answer standing.
 *  7. The token realm answering 400/401/403 is an 'auth' error naming the user and where the credentials
 *     came from, never the secret.
 *
 * Registry credentials go only to the registry host (withAuth passes other hosts by) and, as the token
 * spec demands, Basic credentials to its token realm; the redirect layer strips `Authorization` when a
 * redirect leaves the origin. Retrying a request is safe: they are all GETs and HEADs without a body.
 */
import { ErofsOciError, raceAbort } from '../errors.ts';
import { type Challenge, parseWwwAuthenticate } from './challenge.ts';
import type { Credential, CredentialLookup } from './credentials.ts';
import {
  displayUrl,
  type HttpRequest,
  type HttpResponse,
  type Layer,
  type Send,
  withHeader,
} from './http.ts';

type Scheme =
  | { readonly kind: 'anonymous' }
  | { readonly kind: 'basic' }
  | { readonly kind: 'bearer'; readonly realm: URL; readonly service: string | undefined };

interface CachedToken {
  readonly token: string;
  readonly expiresAt: number;
}

export interface RegistryAuthOptions {
  /** `HOST[:PORT]` of the registry API: the only host that gets registry credentials. */
  readonly host: string;
  /** Base URL for the fallback ping of step 6: `https://HOST` (the scheme layer may switch to HTTP). */
  readonly baseUrl: URL;
  /** Transport without auth, for the fallback ping and the token realm. */
  readonly send: Send;
  /** Looks credentials up when they are first needed (they may come from a helper program). */
  readonly credentials: (signal: AbortSignal | undefined) => Promise<CredentialLookup>;
  readonly clientId?: string;
}

/** Most token servers accept at most a few KiB of JSON; bound what we read. */
const MAX_TOKEN_RESPONSE = 1024 * 1024;

function tokenLifetimeMs(expiresIn: number): number {
  // Renew a little early so a token does not expire between our check and the registry's.
  const ms = expiresIn * 1000;
  return Math.max(0, ms - Math.min(10_000, ms / 10));
}

export class RegistryAuth {
  readonly #options: RegistryAuthOptions;
  /** How requests to the registry are authorised; undefined until an answer has taught it (step 1). */
  #scheme: Scheme | undefined;
  /** While a request is learning the scheme: settles when it has its answer. */
  #learning: Promise<void> | undefined;
  #credentials: Promise<CredentialLookup> | undefined;
  readonly #tokens = new Map<string, CachedToken>();
  readonly #pending = new Map<string, Promise<CachedToken>>();
  /** Token requests made, for tests and diagnostics. */
  tokenRequests = 0;
  /** `GET /v2/` requests made (step 6 only), for tests and diagnostics. */
  pings = 0;

  constructor(options: RegistryAuthOptions) {
    this.#options = options;
  }

  /** Sends `request` to the registry host through `next`, authorised, retrying once after a 401. */
  async send(next: Send, request: HttpRequest): Promise<HttpResponse> {
    const signal = request.signal;
    let finishLearning: (() => void) | undefined;
    while (this.#scheme === undefined && finishLearning === undefined) {
      if (this.#learning === undefined) {
        // Step 1: this request goes out bare and learns the scheme; later ones wait for it.
        const { promise, resolve } = Promise.withResolvers<void>();
        this.#learning = promise;
        finishLearning = () => {
          this.#learning = undefined;
          resolve();
        };
      } else {
        await raceAbort(this.#learning, signal);
      }
    }
    try {
      const scheme = this.#scheme;
      const used =
        scheme === undefined ? undefined : await this.#authorization(scheme, request.scope, signal);
      const response = await next(withHeader(request, 'authorization', used));
      let retry: string | undefined;
      try {
        retry = await this.#retryAuthorization(request, used, response, finishLearning !== undefined);
      } catch (error) {
        await response.body.discard();
        throw error;
      }
      if (retry === undefined) return response;
      await response.body.discard();
      return await next(withHeader(request, 'authorization', retry));
    } finally {
      // A request that failed without an answer taught nothing: the next one learns instead.
      finishLearning?.();
    }
  }

  /** Steps 2–4: the `Authorization` value for a request in `scope`, or undefined to go anonymous. */
  async #authorization(scheme: Scheme, scope: string | undefined, signal: AbortSignal | undefined) {
    if (scheme.kind === 'anonymous') return undefined;
    const { credential } = await this.#lookup(signal);
    if (scheme.kind === 'basic') return credential?.kind === 'basic' ? basicValue(credential) : undefined;
    const token = await this.#token(scheme, scopesOf(scope), signal);
    return `Bearer ${token.token}`;
  }

  /**
   * What the answer to a request that carried `used` teaches (steps 1, 5 and 6): the `Authorization` to
   * send it with once more, or undefined when the answer stands.
   */
  async #retryAuthorization(
    request: HttpRequest,
    used: string | undefined,
    response: HttpResponse,
    learning: boolean,
  ): Promise<string | undefined> {
    if (response.url.host !== this.#options.host) {
      // A redirect took the request to another host (object storage): its answer says nothing about the
      // registry's scheme, except that the registry let an anonymous request through.
      if (learning) this.#scheme = { kind: 'anonymous' };
      return undefined;
    }
    if (response.status === 401) return this.#challenged(request.scope, used, response, request.signal);
    if (!learning) return undefined;
    if (response.status === 403 || response.status === 404) return this.#pingAfterDenial(request);
    this.#scheme = { kind: 'anonymous' };
    return undefined;
  }

  /** Steps 1 and 5: a 401 from the registry. */
  async #challenged(
    scope: string | undefined,
    used: string | undefined,
    response: HttpResponse,
    signal: AbortSignal | undefined,
  ): Promise<string | undefined> {
    const challenges = parseWwwAuthenticate(response.headers['www-authenticate']);
    let scheme = this.#scheme;
    if (challenges.length > 0 || scheme === undefined) {
      // The latest challenge wins: a registry may protect repositories differently.
      scheme = schemeFrom(challenges, response.url);
      this.#scheme = scheme;
    }
    if (scheme.kind === 'anonymous') return undefined;
    if (scheme.kind === 'basic') {
      const value = await this.#authorization(scheme, scope, signal);
      return value !== undefined && value !== used ? value : undefined;
    }
    const requested = scopesOf(scope);
    const scopes = [...requested];
    const asked = challenges.find((c) => c.scheme === 'bearer')?.params.scope;
    if (asked) for (const s of asked.split(' ')) if (s !== '' && !scopes.includes(s)) scopes.push(s);
    const key = scopes.join(' ');
    const cached = this.#tokens.get(key);
    if (cached !== undefined && used === `Bearer ${cached.token}`) this.#tokens.delete(key);
    const token = await this.#token(scheme, scopes, signal, used);
    // A token for more scopes also serves the request's own, so later requests carry it up front.
    if (scopes.length > requested.length) this.#tokens.set(requested.join(' '), token);
    return `Bearer ${token.token}`;
  }

  /** Step 6: the first answer was 403/404; ask `GET /v2/` for a challenge if we have credentials. */
  async #pingAfterDenial(request: HttpRequest): Promise<string | undefined> {
    const signal = request.signal;
    this.#scheme = { kind: 'anonymous' };
    let credential: Credential | undefined;
    try {
      ({ credential } = await this.#lookup(signal));
    } catch {
      // The registry has answered; credentials we cannot read could not change that answer, and a broken
      // credential helper must not hide a plain "not found" from anonymous users.
      return undefined;
    }
    if (credential === undefined) return undefined;
    const url = new URL('/v2/', this.#options.baseUrl);
    this.pings++;
    const ping = await this.#options.send({ method: 'GET', url, signal });
    await ping.body.discard();
    if (ping.status !== 401) return undefined;
    const scheme = schemeFrom(parseWwwAuthenticate(ping.headers['www-authenticate']), ping.url);
    this.#scheme = scheme;
    return this.#authorization(scheme, request.scope, signal);
  }

  #lookup(signal: AbortSignal | undefined): Promise<CredentialLookup> {
    if (this.#credentials === undefined) {
      const attempt = this.#options.credentials(signal);
      this.#credentials = attempt;
      attempt.catch(() => {
        if (this.#credentials === attempt) this.#credentials = undefined;
      });
    }
    return this.#credentials;
  }

  async #token(
    scheme: Extract<Scheme, { kind: 'bearer' }>,
    scopes: string[],
    signal: AbortSignal | undefined,
    rejected?: string,
  ): Promise<CachedToken> {
    const key = scopes.join(' ');
    const cached = this.#tokens.get(key);
    if (cached !== undefined && cached.expiresAt > Date.now() && `Bearer ${cached.token}` !== rejected)
      return cached;
    let pending = this.#pending.get(key);
    if (pending === undefined) {
      pending = this.#fetchToken(scheme, scopes, signal).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    const token = await pending;
    this.#tokens.set(key, token);
    return token;
  }

  async #fetchToken(
    scheme: Extract<Scheme, { kind: 'bearer' }>,
    scopes: readonly string[],
    signal: AbortSignal | undefined,
  ): Promise<CachedToken> {
    const { credential, origin } = await this.#lookup(signal);
    const url = new URL(scheme.realm);
    const params = new URLSearchParams();
    if (scheme.service !== undefined) params.set('service', scheme.service);
    for (const scope of scopes) params.append('scope', scope);
    let request: HttpRequest;
    if (credential?.kind === 'identity-token') {
      params.set('grant_type', 'refresh_token');
      params.set('refresh_token', credential.token);
      params.set('client_id', this.#options.clientId ?? 'erofs-oci');
      request = {
        method: 'POST',
        url,
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: params.toString(),
        signal,
      };
    } else {
      if (credential?.kind === 'basic') params.set('account', credential.username);
      for (const [name, value] of params) url.searchParams.append(name, value);
      request = { method: 'GET', url, signal };
      if (credential?.kind === 'basic')
        request = withHeader(request, 'authorization', basicValue(credential));
    }
    this.tokenRequests++;
    const response = await this.#options.send(request);
    const action = `Cannot get a token for ${this.#options.host} from ${displayUrl(url)}`;
    if (response.status !== 200) {
      await response.body.discard();
      if (response.status === 400 || response.status === 401 || response.status === 403) {
        throw credentialError(
          this.#options.host,
          credential,
          origin,
          `the token server answered HTTP ${response.status}`,
        );
      }
      throw new ErofsOciError('io', `${action}: HTTP ${response.status}`);
    }
    const bytes = await response.body.bytes(MAX_TOKEN_RESPONSE, 'token response');
    let answer: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      answer = JSON.parse(Buffer.from(bytes).toString('utf8'));
    } catch {
      throw new ErofsOciError('io', `${action}: the answer is not JSON`);
    }
    const token =
      typeof answer.token === 'string' && answer.token !== '' ? answer.token : answer.access_token;
    if (typeof token !== 'string' || token === '')
      throw new ErofsOciError('io', `${action}: the answer has no token`);
    const expiresIn = typeof answer.expires_in === 'number' && answer.expires_in > 0 ? answer.expires_in : 60;
    return { token, expiresAt: Date.now() + tokenLifetimeMs(expiresIn) };
  }

  /** An 'auth' error for a final 401/403 from the registry. */
  async refusal(status: number, action: string, signal?: AbortSignal): Promise<ErofsOciError> {
    const { credential, origin } = await this.#lookup(signal).catch(() => ({
      credential: undefined,
      origin: undefined,
    }));
    if (status === 403) {
      return new ErofsOciError('auth', `${action}: access denied (HTTP 403)`, {
        hint: credential
          ? `the credentials from ${origin} lack permission`
          : 'log in with --username/--password-stdin or --authfile',
      });
    }
    return credentialError(
      this.#options.host,
      credential,
      origin,
      'authentication failed (HTTP 401)',
      action,
    );
  }
}

function credentialError(
  host: string,
  credential: Credential | undefined,
  origin: string | undefined,
  why: string,
  action = `Cannot log in to ${host}`,
): ErofsOciError {
  if (credential === undefined) {
    return new ErofsOciError('auth', `${action}: ${why}; no credentials are configured for ${host}`, {
      hint: 'log in with --username and --password-stdin, or --authfile FILE; the repository may also not exist',
    });
  }
  const who =
    credential.kind === 'basic' ? `user ${JSON.stringify(credential.username)}` : 'the identity token';
  return new ErofsOciError('auth', `${action}: ${why}; ${host} refused ${who} (from ${origin})`);
}

function basicValue(credential: Extract<Credential, { kind: 'basic' }>): string {
  return `Basic ${Buffer.from(`${credential.username}:${credential.password}`, 'utf8').toString('base64')}`;
}

function scopesOf(scope: string | undefined): string[] {
  return scope === undefined ? [] : scope.split(' ').filter((s) => s !== '');
}

function schemeFrom(challenges: readonly Challenge[], url: URL): Scheme {
  const bearer = challenges.find((c) => c.scheme === 'bearer');
  if (bearer !== undefined) {
    const realm = bearer.params.realm;
    if (!realm)
      throw new ErofsOciError('io', `Cannot authenticate to ${url.host}: its Bearer challenge has no realm`);
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm, url);
    } catch (error) {
      throw new ErofsOciError('io', `Cannot authenticate to ${url.host}: invalid token realm`, {
        cause: error,
      });
    }
    if (realmUrl.protocol !== 'https:' && realmUrl.protocol !== 'http:') {
      throw new ErofsOciError(
        'io',
        `Cannot authenticate to ${url.host}: token realm is a ${realmUrl.protocol} URL`,
      );
    }
    return { kind: 'bearer', realm: realmUrl, service: bearer.params.service };
  }
  if (challenges.some((c) => c.scheme === 'basic')) return { kind: 'basic' };
  const names = challenges.map((c) => c.scheme).join(', ') || 'none';
  throw new ErofsOciError(
    'unsupported',
    `Cannot authenticate to ${url.host}: unsupported challenge (${names})`,
  );
}

/** The auth layer: requests to the registry host go through `auth`, all others pass unchanged. */
export function withAuth(auth: RegistryAuth, host: string): Layer {
  return (next) => (request) => (request.url.host === host ? auth.send(next, request) : next(request));
}
