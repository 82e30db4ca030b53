/**
 * Registry authentication (SPEC §1; https://distribution.github.io/distribution/spec/auth/token/).
 *
 * The handshake:
 *  1. Ping `GET /v2/` without credentials. 200: the registry is anonymous. 401: its `WWW-Authenticate`
 *     names the scheme (challenge.ts). Anything else means this is not a v2 registry.
 *  2. Basic challenge: every request to the registry host carries `Authorization: Basic` when we have
 *     credentials (credentials.ts); without them requests go out bare and a 401 is an 'auth' error.
 *  3. Bearer challenge: for each scope (`repository:NAME:pull`) ask the challenge's `realm` for a token
 *     with `service` and `scope` as query parameters — `GET` with Basic credentials, or anonymously when
 *     there are none; an identity token is exchanged with an OAuth2 `POST` (grant_type=refresh_token).
 *  4. The answer's `token` (or `access_token`) is cached per scope until `expires_in` (default 60 s)
 *     runs out, minus a margin; later requests for the scope reuse it and an expired one is replaced first.
 *  5. A 401 to a request: drop the token it carried, take the realm and any `scope` the new challenge
 *     names (`error="insufficient_scope"`), fetch a fresh token and send the request once more. A second
 *     401 goes back to the caller, which reports an 'auth' error.
 *  6. The token realm answering 401/403 is an 'auth' error naming the user and where the credentials came
 *     from, never the secret.
 *
 * Credentials go only to the registry host and its token realm; the redirect layer strips
 * `Authorization` when a redirect leaves the origin.
 */
import { ErofsOciError } from '../errors.ts';
import { type Challenge, parseWwwAuthenticate } from './challenge.ts';
import type { Credential, CredentialLookup } from './credentials.ts';
import { displayUrl, type HttpRequest, type Layer, type Send, withHeader } from './http.ts';

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
  /** Base URL for the ping: `https://HOST` (the scheme layer may switch to HTTP). */
  readonly baseUrl: URL;
  /** Transport without auth, for the ping and the token realm. */
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
  #scheme: Promise<Scheme> | undefined;
  #credentials: Promise<CredentialLookup> | undefined;
  readonly #tokens = new Map<string, CachedToken>();
  readonly #pending = new Map<string, Promise<CachedToken>>();
  /** Token requests made, for tests and diagnostics. */
  tokenRequests = 0;

  constructor(options: RegistryAuthOptions) {
    this.#options = options;
  }

  /** Step 1, once: the registry's scheme. A failed ping is forgotten so the next call tries again. */
  ping(signal?: AbortSignal): Promise<Scheme> {
    if (this.#scheme === undefined) {
      const attempt = this.#ping(signal);
      this.#scheme = attempt;
      attempt.catch(() => {
        if (this.#scheme === attempt) this.#scheme = undefined;
      });
    }
    return this.#scheme;
  }

  async #ping(signal: AbortSignal | undefined): Promise<Scheme> {
    const url = new URL('/v2/', this.#options.baseUrl);
    const response = await this.#options.send({ method: 'GET', url, signal });
    await response.body.discard();
    if (response.status === 200) return { kind: 'anonymous' };
    if (response.status === 401)
      return schemeFrom(parseWwwAuthenticate(response.headers['www-authenticate']), url);
    throw new ErofsOciError(
      response.status === 404 ? 'not-found' : 'io',
      `Cannot reach the registry API at ${displayUrl(url)}: HTTP ${response.status}`,
      { hint: response.status === 404 ? 'is this host an OCI registry?' : undefined },
    );
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

  /** Steps 2–4: the `Authorization` value for a request in `scope`, or undefined to go anonymous. */
  async authorization(scope: string | undefined, signal?: AbortSignal): Promise<string | undefined> {
    const scheme = await this.ping(signal);
    return this.#authorizationFor(scheme, scope, signal);
  }

  async #authorizationFor(scheme: Scheme, scope: string | undefined, signal: AbortSignal | undefined) {
    if (scheme.kind === 'anonymous') return undefined;
    const { credential } = await this.#lookup(signal);
    if (scheme.kind === 'basic') return credential?.kind === 'basic' ? basicValue(credential) : undefined;
    const token = await this.#token(scheme, scopesOf(scope), signal);
    return `Bearer ${token.token}`;
  }

  /**
   * Step 5: after a 401 to a request that carried `used`, the `Authorization` to retry with once, or
   * undefined when there is nothing different to try.
   */
  async retryAuthorization(
    scope: string | undefined,
    used: string | undefined,
    challenges: readonly Challenge[],
    url: URL,
    signal?: AbortSignal,
  ): Promise<string | undefined> {
    let scheme = await this.ping(signal);
    const challenged = challenges.length > 0 ? schemeFrom(challenges, url) : scheme;
    if (
      challenged.kind !== scheme.kind ||
      (challenged.kind === 'bearer' &&
        scheme.kind === 'bearer' &&
        challenged.realm.href !== scheme.realm.href)
    ) {
      // The registry asks differently than it did at the ping (per-repository auth): follow it.
      scheme = challenged;
      this.#scheme = Promise.resolve(challenged);
    }
    if (scheme.kind === 'basic') {
      const value = await this.#authorizationFor(scheme, scope, signal);
      return value !== undefined && value !== used ? value : undefined;
    }
    if (scheme.kind !== 'bearer') return undefined;
    const scopes = scopesOf(scope);
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    const asked = bearer?.params.scope;
    if (asked) for (const s of asked.split(' ')) if (s !== '' && !scopes.includes(s)) scopes.push(s);
    const key = scopes.join(' ');
    const cached = this.#tokens.get(key);
    if (cached !== undefined && used === `Bearer ${cached.token}`) this.#tokens.delete(key);
    const token = await this.#token(scheme, scopes, signal, used);
    const value = `Bearer ${token.token}`;
    return value;
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

/** The auth layer: authorises requests to the registry host, and retries once after a 401 (step 5). */
export function withAuth(auth: RegistryAuth, host: string): Layer {
  return (next) => async (request) => {
    if (request.url.host !== host) return next(request);
    const used = await auth.authorization(request.scope, request.signal);
    const response = await next(withHeader(request, 'authorization', used));
    if (response.status !== 401) return response;
    const challenges = parseWwwAuthenticate(response.headers['www-authenticate']);
    const retry = await auth.retryAuthorization(request.scope, used, challenges, request.url, request.signal);
    if (retry === undefined) return response;
    await response.body.discard();
    return next(withHeader(request, 'authorization', retry));
  };
}
