/**
 * A small NBD client: fixed newstyle handshake, NBD_OPT_GO (NBD_OPT_EXPORT_NAME with servers that lack it),
 * simple replies only (structured replies are never requested), many READs in flight, DISC on close. It is
 * the FUSE device holder's way to the serving process; it also talks to nbdkit, qemu-nbd and nbd-server.
 *
 * Protocol: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md; the message layouts are
 * the ones our server declares in src/nbd/protocol.ts (one declaration per layout in the project).
 */
import { connect, type Socket } from 'node:net';
import { ErofsOciError, throwIfAborted } from '../errors.ts';
import type { ByteSource, Closable, ReadOptions } from '../io/byte-source.ts';
import {
  CMD_DISC,
  CMD_READ,
  clientFlags,
  ESHUTDOWN,
  EXPORT_NAME_PADDING,
  exportNameReply,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  goInfoCount,
  goInfoRequest,
  goNameLength,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  infoBlockSize,
  infoExport,
  infoStringHeader,
  NBD_MAGIC,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPTION_REPLY_MAGIC,
  optionHeader,
  optionReplyHeader,
  REP_ACK,
  REP_ERR_UNSUP,
  REP_INFO,
  REQUEST_MAGIC,
  request,
  SIMPLE_REPLY_MAGIC,
  serverGreeting,
  simpleReply,
} from '../nbd/protocol.ts';

/** Where a server listens: `unix:PATH` or `tcp:HOST:PORT`, as `erofs-oci serve --listen` takes it. */
export type NbdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function parseNbdAddress(text: string): NbdAddress {
  if (text.startsWith('unix:') && text.length > 5) return { kind: 'unix', path: text.slice(5) };
  const tcp = /^tcp:(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  if (tcp) {
    const port = Number(tcp[2]);
    if (port > 0 && port < 65536)
      return { kind: 'tcp', host: (tcp[1] as string).replace(/^\[|\]$/g, ''), port };
  }
  throw new ErofsOciError(
    'usage',
    `Cannot parse NBD address ${JSON.stringify(text)}: expected unix:PATH or tcp:HOST:PORT`,
  );
}

export function formatNbdAddress(address: NbdAddress): string {
  return address.kind === 'unix' ? `unix:${address.path}` : `tcp:${address.host}:${address.port}`;
}

export interface ConnectNbdOptions {
  /** The export to open; default "" (the server's default export). */
  exportName?: string;
  signal?: AbortSignal;
}

export interface NbdBlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface NbdConnection extends ByteSource, Closable {
  readonly address: NbdAddress;
  readonly exportName: string;
  readonly size: number;
  readonly transmissionFlags: number;
  /** Block size constraints ("NBD_INFO_BLOCK_SIZE"); the protocol's defaults when the server names none. */
  readonly blockSizes: NbdBlockSizes;
  /**
   * Resolves when the connection is gone, with the error that ended it (undefined after `close`). Reads in
   * flight then, and all later reads, fail with code `unavailable`.
   */
  readonly closed: Promise<ErofsOciError | undefined>;
  /** Sends DISC and closes the socket; reads still in flight fail with code `aborted`. */
  close(): Promise<void>;
}

/** "If the server does not advertise a maximum, the client SHOULD NOT send requests over 32 MiB." */
const DEFAULT_MAX_REQUEST = 32 * 1024 * 1024;

export async function connectNbd(
  address: NbdAddress | string,
  options: ConnectNbdOptions = {},
): Promise<NbdConnection> {
  const where = typeof address === 'string' ? parseNbdAddress(address) : address;
  const exportName = options.exportName ?? '';
  const { signal } = options;
  throwIfAborted(signal);
  const label = `NBD server ${formatNbdAddress(where)}`;
  const socket = await openSocket(where, label, signal);
  const client = new Connection(socket, where, exportName, label);
  const onAbort = () => client.destroy(new ErofsOciError('aborted', `Connecting to ${label} was aborted`));
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await client.handshake();
    return client;
  } catch (error) {
    client.destroy(error instanceof ErofsOciError ? error : undefined);
    throw error;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

function openSocket(address: NbdAddress, label: string, signal: AbortSignal | undefined): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      address.kind === 'unix'
        ? connect({ path: address.path })
        : connect({ host: address.host, port: address.port });
    const onAbort = () => {
      socket.destroy();
      reject(new ErofsOciError('aborted', `Connecting to ${label} was aborted`));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      signal?.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      if (address.kind === 'tcp') socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (error) => {
      signal?.removeEventListener('abort', onAbort);
      reject(
        new ErofsOciError('unavailable', `Cannot connect to ${label}: ${error.message}`, { cause: error }),
      );
    });
  });
}

interface PendingRead {
  readonly offset: number;
  readonly target: Uint8Array;
  resolve(data: Uint8Array): void;
  reject(error: ErofsOciError): void;
  /** Its caller gave up (signal); the reply is still consumed from the stream, then dropped. */
  abandoned: boolean;
}

const replyHeaderSize = simpleReply.size;

class Connection implements NbdConnection {
  readonly address: NbdAddress;
  readonly exportName: string;
  size = 0;
  transmissionFlags = 0;
  blockSizes: NbdBlockSizes = { minimum: 1, preferred: 4096, maximum: DEFAULT_MAX_REQUEST };
  readonly closed: Promise<ErofsOciError | undefined>;
  readonly #socket: Socket;
  readonly #label: string;
  readonly #pending = new Map<number, PendingRead>();
  #chunks: Buffer[] = [];
  #buffered = 0;
  #wake: (() => void) | null = null;
  #transmitting = false;
  /** The read whose data is being received, and how much of it has arrived. */
  #receiving: { cookie: number; read: PendingRead; done: number } | null = null;
  #nextCookie = 1;
  #failure: ErofsOciError | undefined;
  #isClosed = false;
  #closing = false;
  #resolveClosed!: (reason: ErofsOciError | undefined) => void;

  constructor(socket: Socket, address: NbdAddress, exportName: string, label: string) {
    this.#socket = socket;
    this.address = address;
    this.exportName = exportName;
    this.#label = label;
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.byteLength;
      if (this.#transmitting) this.#pump();
      else this.#notify();
    });
    socket.on('error', (error) => {
      this.#fail(
        new ErofsOciError('unavailable', `Connection to ${label} failed: ${error.message}`, { cause: error }),
      );
    });
    socket.on('close', () => {
      this.#fail(new ErofsOciError('unavailable', `Connection to ${label} was closed by the server`));
    });
  }

  // ---- handshake ("Fixed newstyle negotiation") ----

  async handshake(): Promise<void> {
    const greeting = serverGreeting.decode(await this.#readExact(serverGreeting.size, 'greeting'));
    if (!bytesEqual(greeting.magic, NBD_MAGIC) || !bytesEqual(greeting.optionMagic, IHAVEOPT)) {
      throw new ErofsOciError(
        'corrupt',
        `Cannot use ${this.#label}: it does not greet as a newstyle NBD server`,
      );
    }
    if ((greeting.handshakeFlags & FLAG_FIXED_NEWSTYLE) === 0) {
      throw new ErofsOciError(
        'unsupported',
        `Cannot use ${this.#label}: it does not support fixed newstyle negotiation`,
      );
    }
    const noZeroes = (greeting.handshakeFlags & FLAG_NO_ZEROES) !== 0;
    this.#write([clientFlags.encode({ flags: FLAG_C_FIXED_NEWSTYLE | (noZeroes ? FLAG_C_NO_ZEROES : 0) })]);
    if (!(await this.#go())) await this.#exportName(noZeroes);
    if (this.size % this.blockSizes.minimum !== 0) {
      // Reads are aligned to the minimum block size; a ragged end could not be read without overrunning it.
      throw new ErofsOciError(
        'unsupported',
        `Cannot use export ${JSON.stringify(this.exportName)} of ${this.#label}: its size ${this.size} is not a multiple of its minimum block size ${this.blockSizes.minimum}`,
      );
    }
    this.#transmitting = true;
    this.#pump();
  }

  /** NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE. False when the server does not know the option. */
  async #go(): Promise<boolean> {
    const name = new TextEncoder().encode(this.exportName);
    const data = concat([
      goNameLength.encode({ nameLength: name.byteLength }),
      name,
      goInfoCount.encode({ count: 1 }),
      goInfoRequest.encode({ type: INFO_BLOCK_SIZE }),
    ]);
    this.#sendOption(OPT_GO, data);
    let sawExport = false;
    for (;;) {
      const { type, payload } = await this.#readOptionReply(OPT_GO);
      if (type === REP_ACK) {
        if (!sawExport) throw this.#protocolError('NBD_OPT_GO was acknowledged without NBD_INFO_EXPORT');
        return true;
      }
      if (type === REP_INFO) {
        const info = infoStringHeader.decode(payload).type;
        if (info === INFO_EXPORT) {
          const fields = infoExport.decode(payload);
          this.size = fields.size;
          this.transmissionFlags = fields.transmissionFlags;
          sawExport = true;
        } else if (info === INFO_BLOCK_SIZE) {
          const { minimum, preferred, maximum } = infoBlockSize.decode(payload);
          if (minimum < 1 || maximum < minimum) {
            throw this.#protocolError(
              `NBD_INFO_BLOCK_SIZE is inconsistent (${minimum}/${preferred}/${maximum})`,
            );
          }
          this.blockSizes = { minimum, preferred, maximum };
        }
        // Other information (name, description) is not needed.
        continue;
      }
      if (type === REP_ERR_UNSUP) return false;
      if (type >= 2 ** 31) throw this.#optionError('NBD_OPT_GO', type, payload);
      throw this.#protocolError(`unexpected reply type ${type} to NBD_OPT_GO`);
    }
  }

  /** The old way in: NBD_OPT_EXPORT_NAME, whose reply has no header and whose failure closes the connection. */
  async #exportName(noZeroes: boolean): Promise<void> {
    this.#sendOption(OPT_EXPORT_NAME, new TextEncoder().encode(this.exportName));
    const reply = exportNameReply.decode(
      await this.#readExact(exportNameReply.size, 'NBD_OPT_EXPORT_NAME reply'),
    );
    if (!noZeroes) await this.#readExact(EXPORT_NAME_PADDING, 'NBD_OPT_EXPORT_NAME padding');
    this.size = reply.size;
    this.transmissionFlags = reply.transmissionFlags;
  }

  #sendOption(option: number, data: Uint8Array): void {
    this.#write([optionHeader.encode({ magic: IHAVEOPT, option, length: data.byteLength }), data]);
  }

  async #readOptionReply(option: number): Promise<{ type: number; payload: Uint8Array }> {
    const header = optionReplyHeader.decode(await this.#readExact(optionReplyHeader.size, 'option reply'));
    if (header.magic !== OPTION_REPLY_MAGIC || header.option !== option) {
      throw this.#protocolError(
        `bad option reply (magic ${header.magic.toString(16)}, option ${header.option})`,
      );
    }
    if (header.length > 1 << 20) throw this.#protocolError(`option reply of ${header.length} bytes`);
    const payload = await this.#readExact(header.length, 'option reply data');
    return { type: header.type, payload };
  }

  #optionError(option: string, type: number, payload: Uint8Array): ErofsOciError {
    const message = new TextDecoder().decode(payload);
    const what = `${option} for export ${JSON.stringify(this.exportName)} refused by ${this.#label}`;
    const detail = message ? `: ${message}` : '';
    switch (type - 2 ** 31) {
      case 6: // NBD_REP_ERR_UNKNOWN
        return new ErofsOciError('not-found', `${what}: no such export${detail}`);
      case 2: // NBD_REP_ERR_POLICY
        return new ErofsOciError('auth', `${what}: not allowed${detail}`);
      case 5: // NBD_REP_ERR_TLS_REQD
        return new ErofsOciError('unsupported', `${what}: the server requires TLS${detail}`);
      case 7: // NBD_REP_ERR_SHUTDOWN
        return new ErofsOciError('unavailable', `${what}: the server is shutting down${detail}`);
      default:
        return new ErofsOciError('io', `${what}: error ${type - 2 ** 31}${detail}`);
    }
  }

  async #readExact(length: number, what: string): Promise<Uint8Array> {
    while (this.#buffered < length) {
      if (this.#failure) {
        throw new ErofsOciError(
          'unavailable',
          `Cannot read ${what} from ${this.#label}: ${this.#failure.message}`,
          { cause: this.#failure },
        );
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
    const out = new Uint8Array(length);
    this.#copyOut(out, 0, length);
    return out;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  // ---- transmission ----

  async read(offset: number, length: number, options: ReadOptions = {}): Promise<Uint8Array> {
    const { signal } = options;
    throwIfAborted(signal);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ErofsOciError(
        'internal',
        `Cannot read from ${this.#label}: invalid range offset ${offset} length ${length}`,
      );
    }
    if (offset + length > this.size) {
      throw new ErofsOciError(
        'internal',
        `Cannot read ${length} bytes at offset ${offset} from ${this.#label}: the export has ${this.size} bytes`,
      );
    }
    if (this.#failure) throw this.#failure;
    if (length === 0) return new Uint8Array(0);
    // Align to the minimum block size and split at the maximum request size.
    const { minimum } = this.blockSizes;
    const start = offset - (offset % minimum);
    const end = Math.min(this.size, Math.ceil((offset + length) / minimum) * minimum);
    const step = Math.max(minimum, this.blockSizes.maximum - (this.blockSizes.maximum % minimum));
    const whole = new Uint8Array(end - start);
    const parts: Promise<Uint8Array>[] = [];
    for (let at = start; at < end; at += step) {
      parts.push(this.#request(at, whole.subarray(at - start, Math.min(end, at + step) - start), signal));
    }
    await Promise.all(parts);
    return start === offset && end === offset + length
      ? whole
      : whole.subarray(offset - start, offset - start + length);
  }

  #request(offset: number, target: Uint8Array, signal: AbortSignal | undefined): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      const cookie = this.#nextCookie++;
      const read: PendingRead = { offset, target, resolve, reject, abandoned: false };
      const onAbort = () => {
        read.abandoned = true;
        reject(
          new ErofsOciError(
            'aborted',
            `Read of ${target.byteLength} bytes at offset ${offset} from ${this.#label} was aborted`,
          ),
        );
      };
      if (signal) {
        signal.addEventListener('abort', onAbort, { once: true });
        const settle = () => signal.removeEventListener('abort', onAbort);
        read.resolve = (data) => {
          settle();
          resolve(data);
        };
        read.reject = (error) => {
          settle();
          reject(error);
        };
      }
      this.#pending.set(cookie, read);
      this.#write([
        request.encode({
          magic: REQUEST_MAGIC,
          type: CMD_READ,
          cookie: u64Bytes(cookie),
          offset: u64Bytes(offset),
          length: target.byteLength,
        }),
      ]);
    });
  }

  /** Consumes replies from the buffered bytes: a header, then for a successful read its data. */
  #pump(): void {
    while (!this.#failure) {
      const receiving = this.#receiving;
      if (receiving) {
        const { read } = receiving;
        const take = Math.min(this.#buffered, read.target.byteLength - receiving.done);
        if (take === 0) return;
        this.#copyOut(read.target, receiving.done, take);
        receiving.done += take;
        if (receiving.done < read.target.byteLength) return;
        this.#receiving = null;
        this.#pending.delete(receiving.cookie);
        if (!read.abandoned) read.resolve(read.target);
        continue;
      }
      if (this.#buffered < replyHeaderSize) return;
      const headerBytes = new Uint8Array(replyHeaderSize);
      this.#copyOut(headerBytes, 0, replyHeaderSize);
      const header = simpleReply.decode(headerBytes);
      if (header.magic !== SIMPLE_REPLY_MAGIC) {
        this.destroy(
          this.#protocolError(`reply with magic 0x${header.magic.toString(16)} (expected a simple reply)`),
        );
        return;
      }
      const cookie = Number(bytesToU64(header.cookie));
      const read = this.#pending.get(cookie);
      if (!read) {
        this.destroy(this.#protocolError(`reply to unknown request ${cookie}`));
        return;
      }
      if (header.error !== 0) {
        this.#pending.delete(cookie);
        if (header.error === ESHUTDOWN) {
          // "The server is shutting down": not a verdict on the data; the connection is going away.
          this.destroy(new ErofsOciError('unavailable', `${this.#label} is shutting down`));
          return;
        }
        if (!read.abandoned) {
          read.reject(
            new ErofsOciError(
              'io',
              `${this.#label} failed to read ${read.target.byteLength} bytes at offset ${read.offset}: error ${header.error} (${errnoName(header.error)})`,
            ),
          );
        }
        continue;
      }
      this.#receiving = { cookie, read, done: 0 };
    }
  }

  #copyOut(target: Uint8Array, at: number, length: number): void {
    let done = 0;
    while (done < length) {
      const chunk = this.#chunks[0] as Buffer;
      const take = Math.min(length - done, chunk.byteLength);
      target.set(chunk.subarray(0, take), at + done);
      done += take;
      if (take === chunk.byteLength) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(take);
    }
    this.#buffered -= length;
  }

  #write(parts: Uint8Array[]): void {
    if (this.#socket.destroyed) return; // the close handler fails everything pending
    if (parts.length > 1) this.#socket.cork();
    for (const part of parts) this.#socket.write(part);
    if (parts.length > 1) this.#socket.uncork();
  }

  #protocolError(what: string): ErofsOciError {
    return new ErofsOciError('corrupt', `Cannot use ${this.#label}: protocol violation: ${what}`);
  }

  // ---- ending ----

  async close(): Promise<void> {
    if (this.#isClosed) return;
    this.#closing = true;
    if (this.#transmitting && !this.#socket.destroyed) {
      // "NBD_CMD_DISC": no reply; the server closes after finishing what is in flight.
      this.#write([
        request.encode({ magic: REQUEST_MAGIC, type: CMD_DISC, cookie: u64Bytes(0), offset: u64Bytes(0) }),
      ]);
    }
    this.#socket.end();
    const timer = setTimeout(() => this.#socket.destroy(), 1000);
    this.#fail(new ErofsOciError('aborted', `The connection to ${this.#label} was closed`));
    await new Promise<void>((resolve) => {
      if (this.#socket.closed) resolve();
      else this.#socket.once('close', () => resolve());
    });
    clearTimeout(timer);
  }

  /** Tears the connection down now, failing everything in flight with `reason`. */
  destroy(reason?: ErofsOciError): void {
    this.#fail(reason ?? new ErofsOciError('unavailable', `The connection to ${this.#label} was torn down`));
    this.#socket.destroy();
  }

  #fail(reason: ErofsOciError): void {
    if (this.#failure) return;
    this.#failure = reason;
    this.#isClosed = true;
    this.#transmitting = false;
    this.#receiving = null;
    for (const read of this.#pending.values()) {
      if (!read.abandoned) read.reject(reason);
    }
    this.#pending.clear();
    this.#chunks = [];
    this.#buffered = 0;
    this.#notify();
    this.#resolveClosed(this.#closing ? undefined : reason);
  }
}

function u64Bytes(value: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value), false);
  return out;
}

function bytesToU64(bytes: Uint8Array): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, false);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((value, i) => value === b[i]);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/** "Error values" of the NBD protocol, named for messages. */
function errnoName(value: number): string {
  const names: Record<number, string> = {
    1: 'EPERM',
    5: 'EIO',
    12: 'ENOMEM',
    22: 'EINVAL',
    28: 'ENOSPC',
    75: 'EOVERFLOW',
    95: 'ENOTSUP',
    108: 'ESHUTDOWN',
  };
  return names[value] ?? 'unknown error';
}
