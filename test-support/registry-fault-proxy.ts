/**
 * An HTTP proxy in front of a real registry that injects faults into matching requests: cut the connection
 * after some bytes of the body, answer 429/503 with `Retry-After`, ignore `Range`, flip one byte, stall,
 * or redirect elsewhere. It records every request (with headers) so tests can assert what the client sent.
 * `startRecordingServer` is the "other host" a redirect points at: it serves given bytes and records headers.
 */
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Fault =
  /** Forward the response but destroy the socket after `afterBytes` bytes of body, optionally after a pause. */
  | { readonly kind: 'cut'; readonly afterBytes: number; readonly pauseMs?: number }
  /** Answer with this status and an optional `Retry-After` without asking the registry. */
  | { readonly kind: 'status'; readonly status: number; readonly retryAfter?: string }
  /** Drop the request's `Range` header, so the registry answers 200 with the whole blob. */
  | { readonly kind: 'ignore-range' }
  /** Forward the response with the body byte at `offset` (of this response's body) inverted. */
  | { readonly kind: 'flip-byte'; readonly offset: number }
  /** Forward `afterBytes` bytes of the request body, then break both connections (an upload cut mid-way). */
  | { readonly kind: 'cut-request'; readonly afterBytes: number }
  /** Send headers and `afterBytes` bytes, then nothing (the connection stays open). */
  | { readonly kind: 'stall'; readonly afterBytes: number }
  /** Answer with a redirect to `location(path)`. */
  | { readonly kind: 'redirect'; readonly status?: number; readonly location: (path: string) => string };

export interface FaultRule {
  /** Matched against the request path. */
  readonly path: RegExp;
  readonly method?: string;
  readonly fault: Fault;
  /** How many matching requests get the fault (default: all). */
  times?: number;
}

export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly fault: Fault['kind'] | undefined;
  readonly at: number;
  /** The status answered, once known. */
  status?: number;
}

export interface FaultProxy {
  readonly url: string;
  /** `127.0.0.1:PORT`. */
  readonly host: string;
  readonly requests: RecordedRequest[];
  addRule(rule: FaultRule): void;
  clearRules(): void;
  stop(): Promise<void>;
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

function trackSockets(server: Server): Set<Socket> {
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  return sockets;
}

async function stopServer(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => server.close(resolve));
}

/** Starts a proxy forwarding to `upstream` (`http://127.0.0.1:PORT`). */
export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  let rules: FaultRule[] = [];
  const requests: RecordedRequest[] = [];

  const server = createServer((req, res) => {
    const path = req.url ?? '/';
    const rule = rules.find(
      (r) =>
        r.path.test(path) &&
        (r.method === undefined || r.method === req.method) &&
        (r.times ?? 1) > 0 &&
        // a request cut needs a body longer than the cut
        (r.fault.kind !== 'cut-request' ||
          Number(req.headers['content-length'] ?? Number.POSITIVE_INFINITY) > r.fault.afterBytes),
    );
    if (rule && rule.times !== undefined) rule.times--;
    const fault = rule?.fault;
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path,
      headers: { ...req.headers },
      fault: fault?.kind,
      at: Date.now(),
    };
    requests.push(record);

    if (fault?.kind === 'status') {
      record.status = fault.status;
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (fault.retryAfter !== undefined) headers['retry-after'] = fault.retryAfter;
      req.resume();
      res
        .writeHead(fault.status, headers)
        .end(JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: 'injected fault' }] }));
      return;
    }
    if (fault?.kind === 'redirect') {
      record.status = fault.status ?? 307;
      req.resume();
      res.writeHead(fault.status ?? 307, { location: fault.location(path) }).end();
      return;
    }

    const headers = { ...req.headers };
    if (fault?.kind === 'ignore-range') delete headers.range;
    const upstreamRequest = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path, headers },
      (upstreamResponse) => {
        const responseHeaders = { ...upstreamResponse.headers };
        // Registries send Location headers relative to the host they were asked for: keep pointing at us.
        record.status = upstreamResponse.statusCode ?? 502;
        res.writeHead(record.status, responseHeaders);
        let sent = 0;
        let stopped = false;
        upstreamResponse.on('data', (chunk: Buffer) => {
          if (stopped) return;
          let data = chunk;
          if (fault?.kind === 'flip-byte' && fault.offset >= sent && fault.offset < sent + data.byteLength) {
            data = Buffer.from(data);
            data[fault.offset - sent]! ^= 0xff;
          }
          if (
            (fault?.kind === 'cut' || fault?.kind === 'stall') &&
            sent + data.byteLength >= fault.afterBytes
          ) {
            const keep = data.subarray(0, fault.afterBytes - sent);
            stopped = true;
            upstreamResponse.destroy();
            res.write(keep, () => {
              if (fault.kind === 'stall') return; // the socket stays open with nothing more to come
              const cut = () => res.socket?.destroy();
              if (fault.pauseMs) setTimeout(cut, fault.pauseMs);
              else cut();
            });
            return;
          }
          sent += data.byteLength;
          res.write(data);
        });
        upstreamResponse.on('end', () => {
          if (!stopped) res.end();
        });
      },
    );
    upstreamRequest.on('error', () => res.socket?.destroy());
    if (fault?.kind === 'cut-request') {
      let forwarded = 0;
      req.on('data', (chunk: Buffer) => {
        if (forwarded >= fault.afterBytes) return;
        const keep = chunk.subarray(0, fault.afterBytes - forwarded);
        forwarded += keep.byteLength;
        upstreamRequest.write(keep);
        if (forwarded >= fault.afterBytes) {
          record.status = 0;
          // Give the registry a moment to take the bytes, then break both sides.
          setTimeout(() => {
            upstreamRequest.destroy();
            req.socket.destroy();
          }, 50);
        }
      });
      return;
    }
    req.pipe(upstreamRequest);
  });
  const sockets = trackSockets(server);
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    requests,
    addRule(rule) {
      rules.push(rule);
    },
    clearRules() {
      rules = [];
    },
    stop: () => stopServer(server, sockets),
  };
}

export interface RecordingServer {
  readonly url: string;
  readonly requests: RecordedRequest[];
  /** Serves `bytes` at `path`. */
  serve(path: string, bytes: Uint8Array): void;
  stop(): Promise<void>;
}

/** A second loopback server (another origin) that serves registered bytes and records request headers. */
export async function startRecordingServer(): Promise<RecordingServer> {
  const content = new Map<string, Uint8Array>();
  const requests: RecordedRequest[] = [];
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    requests.push({
      method: req.method ?? 'GET',
      path,
      headers: { ...req.headers },
      fault: undefined,
      at: Date.now(),
    });
    req.resume();
    const bytes = content.get(path);
    if (bytes === undefined) {
      res.writeHead(404).end();
      return;
    }
    res
      .writeHead(200, {
        'content-length': String(bytes.byteLength),
        'content-type': 'application/octet-stream',
      })
      .end(bytes);
  });
  const sockets = trackSockets(server);
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    serve(path, bytes) {
      content.set(path, bytes);
    },
    stop: () => stopServer(server, sockets),
  };
}
