/**
 * A read-only NBD server exporting one byte source (SPEC §2 `serve`). Protocol:
 * https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md — fixed newstyle handshake, options
 * GO/INFO/EXPORT_NAME/LIST/ABORT/STRUCTURED_REPLY, commands READ/CACHE/FLUSH/DISC, writes refused with EPERM.
 *
 * Invariants that make it safe as the bottom of a lazily mounted filesystem:
 * - A read reply is sent only once all its bytes are in hand; a failed read is answered with an error and
 *   no data ("Simple reply message": never a success header followed by made-up bytes).
 * - Every reply (header + payload) is queued in one corked write, so concurrent replies never interleave.
 * - Each connection holds at most `maxRequestsPerConnection` requests and `maxBytesInFlight` reply bytes
 *   between reading a request and the kernel taking its reply; past that it stops reading requests, so a
 *   slow or stuck client pushes back through TCP instead of growing our memory.
 */
import { lstat, unlink } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { ErofsOciError } from '../errors.ts';
import { type ByteSource, isLending } from '../io/byte-source.ts';
import * as p from './protocol.ts';
import { SocketReader, writeMessage } from './socket-io.ts';

export type NbdListen = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export interface ServeNbdOptions {
  listen: NbdListen;
  /** The export's name; clients asking for the default export ('') get it too. Default ''. */
  exportName?: string;
  /** Shown by `nbdinfo` and in NBD_OPT_LIST replies. */
  description?: string;
  /** Largest read request accepted (NBD_INFO_BLOCK_SIZE maximum payload). Default 32 MiB. */
  maxRead?: number;
  /** Requests one connection may have in flight. Default 64. */
  maxRequestsPerConnection?: number;
  /** Reply bytes one connection may hold in memory (read and not yet sent). Default max(64 MiB, maxRead). */
  maxBytesInFlight?: number;
  /** How long `close()` waits for in-flight replies before cutting connections. Default 30 s. */
  closeTimeoutMs?: number;
  /** Clients that do not finish the handshake within this time are dropped. Default 30 s. */
  handshakeTimeoutMs?: number;
  /** Aborting it closes the server as `close()` does. */
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export interface NbdServer {
  /** Where the server listens (for TCP with port 0, the port picked by the kernel). */
  readonly address: NbdListen;
  /** The NBD URI of the export (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md). */
  readonly uri: string;
  /** Connections currently open. */
  readonly connections: number;
  /** Stops accepting, lets in-flight requests finish and their replies go out, then closes connections. */
  close(): Promise<void>;
}

const MiB = 1 << 20;
const DEFAULT_MAX_READ = 32 * MiB;
/** "Size constraints": the preferred block size we advertise; the minimum is 1 (any byte is addressable). */
const PREFERRED_BLOCK = 4096;
/** Option data we are willing to hold; known options carry at most a name and a few info requests. */
const MAX_OPTION_DATA = 64 * 1024;
/** CACHE requests are carried out in pieces of this size, so that they do not pin large buffers. */
const CACHE_PIECE = 4 * MiB;
/**
 * A reply that cannot be sent because the client is gone needs no handling of its own: the request loop sees
 * the end of the stream and winds the connection down.
 */
const connectionGone = (): void => {};
const KNOWN_CLIENT_FLAGS = p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES;

export async function serveNbd(source: ByteSource, options: ServeNbdOptions): Promise<NbdServer> {
  const maxRead = options.maxRead ?? DEFAULT_MAX_READ;
  if (!Number.isSafeInteger(maxRead) || maxRead < PREFERRED_BLOCK || maxRead > 0xffffffff - 8) {
    throw new ErofsOciError(
      'usage',
      `Cannot serve NBD: maxRead ${maxRead} must be between 4096 and 2^32 - 9`,
    );
  }
  const config: Config = {
    source,
    exportName: options.exportName ?? '',
    description: options.description ?? '',
    maxRead,
    maxRequests: options.maxRequestsPerConnection ?? 64,
    maxBytes: Math.max(options.maxBytesInFlight ?? 64 * MiB, maxRead),
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
    log: options.log ?? (() => {}),
  };
  if (
    Buffer.byteLength(config.exportName) > p.MAX_STRING ||
    Buffer.byteLength(config.description) > p.MAX_STRING
  ) {
    throw new ErofsOciError(
      'usage',
      'Cannot serve NBD: export name and description are limited to 4096 bytes',
    );
  }
  options.signal?.throwIfAborted();

  const connections = new Set<Connection>();
  let nextId = 1;
  let closing: Promise<void> | null = null;
  const server = createServer({ noDelay: true, pauseOnConnect: false }, (socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    const connection = new Connection(socket, nextId++, config);
    connections.add(connection);
    void connection.run().finally(() => connections.delete(connection));
  });
  server.on('error', (error) => config.log(`nbd: server error: ${error.message}`));

  const address = await listen(server, options.listen);
  const uri = nbdUri(address, config.exportName);
  config.log(`nbd: serving ${source.size} bytes at ${uri}`);

  const close = (): Promise<void> => {
    closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      const timeoutMs = options.closeTimeoutMs ?? 30_000;
      await Promise.all([...connections].map((connection) => connection.shutdown(timeoutMs)));
      await stopped;
      config.log(`nbd: stopped serving ${uri}`);
    })();
    return closing;
  };
  options.signal?.addEventListener('abort', () => void close(), { once: true });

  return {
    address,
    uri,
    get connections() {
      return connections.size;
    },
    close,
  };
}

interface Config {
  source: ByteSource;
  exportName: string;
  description: string;
  maxRead: number;
  maxRequests: number;
  maxBytes: number;
  handshakeTimeoutMs: number;
  log: (line: string) => void;
}

/** How the handshake ended: in transmission phase (with what was negotiated), or not. */
type Negotiated = { structured: boolean } | null;

/** The reason a connection is dropped without a reply: the client broke the protocol. */
class ProtocolViolation extends ErofsOciError {
  constructor(message: string) {
    super('corrupt', message);
  }
}

class Connection {
  readonly #socket: Socket;
  readonly #reader: SocketReader;
  readonly #config: Config;
  readonly #name: string;
  /** Aborts the source reads of this connection once nobody can receive their replies. */
  readonly #abort = new AbortController();
  readonly #tasks = new Set<Promise<void>>();
  readonly #budget: Budget;
  #shuttingDown = false;
  #structured = false;
  #requests = 0;
  #ended: Promise<void>;

  constructor(socket: Socket, id: number, config: Config) {
    this.#socket = socket;
    this.#config = config;
    this.#reader = new SocketReader(socket);
    this.#budget = new Budget(config.maxRequests, config.maxBytes);
    const peer = socket.remoteAddress ? ` (${socket.remoteAddress}:${socket.remotePort})` : '';
    this.#name = `client #${id}${peer}`;
    this.#ended = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', (error: NodeJS.ErrnoException) => {
      // A client vanishing (reset, broken pipe) is an ordinary way for a connection to end; other errors are
      // worth a line. Either way 'close' follows and the connection winds down.
      if (error.code !== 'ECONNRESET' && error.code !== 'EPIPE') {
        config.log(`nbd: ${this.#name}: socket error: ${error.message}`);
      }
    });
    socket.on('close', () => this.#abort.abort(new ErofsOciError('aborted', 'the client disconnected')));
  }

  async run(): Promise<void> {
    const log = this.#config.log;
    log(`nbd: ${this.#name} connected`);
    let reason = 'client closed the connection';
    try {
      this.#socket.setTimeout(this.#config.handshakeTimeoutMs, () => {
        log(`nbd: ${this.#name}: handshake not finished after ${this.#config.handshakeTimeoutMs} ms`);
        this.#socket.destroy();
      });
      const negotiated = await this.#handshake();
      this.#socket.setTimeout(0);
      if (negotiated) {
        this.#structured = negotiated.structured;
        reason = await this.#transmission();
      } else if (this.#shuttingDown) {
        reason = 'server shutting down';
      }
    } catch (error) {
      reason = error instanceof Error ? error.message : String(error);
      if (!(error instanceof ErofsOciError)) reason = `unexpected error: ${reason}`;
      log(`nbd: ${this.#name}: ${reason}`);
      this.#socket.destroy();
    } finally {
      this.#abort.abort(new ErofsOciError('aborted', 'the connection is closing'));
      await Promise.allSettled(this.#tasks);
      if (!this.#socket.destroyed) this.#socket.end();
      // A client that does not close its side within a while is cut off.
      const timer = setTimeout(() => this.#socket.destroy(), 5_000);
      await this.#ended;
      clearTimeout(timer);
      log(`nbd: ${this.#name} disconnected (${reason}; ${this.#requests} requests)`);
    }
  }

  /** Server shutdown: stop reading requests, let the in-flight ones finish, within `timeoutMs`. */
  async shutdown(timeoutMs: number): Promise<void> {
    this.#shuttingDown = true;
    this.#reader.cancel();
    const timer = setTimeout(() => {
      this.#config.log(
        `nbd: ${this.#name}: in-flight requests not finished after ${timeoutMs} ms, disconnecting`,
      );
      this.#abort.abort(new ErofsOciError('aborted', 'the server is shutting down'));
      this.#socket.destroy();
    }, timeoutMs);
    await this.#ended;
    clearTimeout(timer);
  }

  // ---- handshake: "Fixed newstyle negotiation" ----

  async #handshake(): Promise<Negotiated> {
    await writeMessage(this.#socket, [
      p.serverGreeting.encode({
        magic: p.NBD_MAGIC,
        optionMagic: p.IHAVEOPT,
        handshakeFlags: p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES,
      }),
    ]);
    const flagBytes = await this.#reader.read(p.clientFlags.size, 'client flags');
    if (!flagBytes) return null;
    const { flags } = p.clientFlags.decode(flagBytes);
    // "Client flags": the server MUST drop the connection on flags it does not know.
    if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      throw new ProtocolViolation(`Cannot negotiate: unknown client flags 0x${flags.toString(16)}`);
    }
    const noZeroes = (flags & p.FLAG_C_NO_ZEROES) !== 0;
    let structured = false;

    for (;;) {
      const headerBytes = await this.#reader.read(p.optionHeader.size, 'option header');
      if (!headerBytes) return null;
      const header = p.optionHeader.decode(headerBytes);
      if (!sameBytes(header.magic, p.IHAVEOPT)) {
        throw new ProtocolViolation(`Cannot negotiate: option header has bad magic ${hex(header.magic)}`);
      }
      const { option, length } = header;
      const name = p.optionNames[option] ?? `${option}`;
      if (!(option in p.optionNames) || option === p.OPT_STARTTLS) {
        if (!(await this.#reader.skip(length, `data of option ${name}`))) return null;
        await this.#optionReply(option, p.REP_ERR_UNSUP, `option ${name} is not supported by this server`);
        continue;
      }
      if (length > MAX_OPTION_DATA) {
        if (option === p.OPT_EXPORT_NAME) {
          throw new ProtocolViolation(`Cannot negotiate: EXPORT_NAME with ${length} bytes of data`);
        }
        if (!(await this.#reader.skip(length, `data of option ${name}`))) return null;
        await this.#optionReply(option, p.REP_ERR_TOO_BIG, `option ${name} has ${length} bytes of data`);
        continue;
      }
      const data = await this.#reader.read(length, `data of option ${name}`);
      if (!data) return null;

      if (this.#shuttingDown && option !== p.OPT_ABORT) {
        if (option === p.OPT_EXPORT_NAME) return null;
        await this.#optionReply(option, p.REP_ERR_SHUTDOWN, 'the server is shutting down');
        continue;
      }
      switch (option) {
        case p.OPT_ABORT:
          // "NBD_OPT_ABORT": the server MUST reply with ACK; the client then drops the connection.
          await this.#optionReply(option, p.REP_ACK).catch(connectionGone);
          return null;
        case p.OPT_LIST:
          if (length !== 0) {
            await this.#optionReply(option, p.REP_ERR_INVALID, 'LIST takes no data');
            break;
          }
          await this.#optionReply(option, p.REP_SERVER, [
            p.repServerHeader.encode({ nameLength: Buffer.byteLength(this.#config.exportName) }),
            Buffer.from(this.#config.exportName),
            Buffer.from(this.#config.description),
          ]);
          await this.#optionReply(option, p.REP_ACK);
          break;
        case p.OPT_STRUCTURED_REPLY:
          if (length !== 0) {
            await this.#optionReply(option, p.REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
            break;
          }
          structured = true;
          await this.#optionReply(option, p.REP_ACK);
          break;
        case p.OPT_EXPORT_NAME: {
          // "NBD_OPT_EXPORT_NAME": an unknown export cannot be refused politely; the server MUST disconnect.
          const wanted = Buffer.from(data).toString('utf8');
          if (!this.#exportMatches(wanted)) {
            throw new ProtocolViolation(`Cannot negotiate: EXPORT_NAME asks for unknown export '${wanted}'`);
          }
          const reply = p.exportNameReply.encode({
            size: this.#config.source.size,
            transmissionFlags: this.#transmissionFlags(structured),
          });
          await writeMessage(
            this.#socket,
            noZeroes ? [reply] : [reply, new Uint8Array(p.EXPORT_NAME_PADDING)],
          );
          return { structured };
        }
        case p.OPT_INFO:
        case p.OPT_GO:
          if (await this.#infoOrGo(option, data, structured)) return { structured };
          break;
      }
    }
  }

  /** "NBD_OPT_INFO and NBD_OPT_GO". True when GO succeeded and transmission starts. */
  async #infoOrGo(option: number, data: Uint8Array, structured: boolean): Promise<boolean> {
    const parsed = parseInfoRequest(data);
    if (typeof parsed === 'string') {
      await this.#optionReply(option, p.REP_ERR_INVALID, parsed);
      return false;
    }
    if (!this.#exportMatches(parsed.name)) {
      await this.#optionReply(option, p.REP_ERR_UNKNOWN, `no export named '${parsed.name}'`);
      return false;
    }
    const infos: Uint8Array[][] = [
      [
        p.infoExport.encode({
          type: p.INFO_EXPORT,
          size: this.#config.source.size,
          transmissionFlags: this.#transmissionFlags(structured),
        }),
      ],
      // Sent whether asked or not: clients ignore what they did not ask for, and those that asked learn
      // the maximum payload they must respect.
      [
        p.infoBlockSize.encode({
          type: p.INFO_BLOCK_SIZE,
          minimum: 1,
          preferred: PREFERRED_BLOCK,
          maximum: this.#config.maxRead,
        }),
      ],
    ];
    if (parsed.requests.includes(p.INFO_NAME)) {
      infos.push([p.infoStringHeader.encode({ type: p.INFO_NAME }), Buffer.from(this.#config.exportName)]);
    }
    if (parsed.requests.includes(p.INFO_DESCRIPTION) && this.#config.description !== '') {
      infos.push([
        p.infoStringHeader.encode({ type: p.INFO_DESCRIPTION }),
        Buffer.from(this.#config.description),
      ]);
    }
    for (const info of infos) await this.#optionReply(option, p.REP_INFO, info);
    await this.#optionReply(option, p.REP_ACK);
    return option === p.OPT_GO;
  }

  #exportMatches(name: string): boolean {
    // "NBD_OPT_EXPORT_NAME": the empty name selects the default export, which is our only one.
    return name === '' || name === this.#config.exportName;
  }

  #transmissionFlags(structured: boolean): number {
    let flags =
      p.FLAG_HAS_FLAGS | p.FLAG_READ_ONLY | p.FLAG_SEND_FLUSH | p.FLAG_CAN_MULTI_CONN | p.FLAG_SEND_CACHE;
    // "NBD_FLAG_SEND_DF": every read is answered with a single data chunk, so "don't fragment" is free; the
    // flag may only be set once structured replies are negotiated.
    if (structured) flags |= p.FLAG_SEND_DF;
    return flags;
  }

  #optionReply(option: number, type: number, payload: string | readonly Uint8Array[] = []): Promise<void> {
    const parts = typeof payload === 'string' ? [Buffer.from(payload)] : payload;
    const length = parts.reduce((n, part) => n + part.byteLength, 0);
    const header = p.optionReplyHeader.encode({ magic: p.OPTION_REPLY_MAGIC, option, type, length });
    return writeMessage(this.#socket, [header, ...parts]);
  }

  // ---- transmission ----

  /** Reads requests until the client disconnects or the server shuts down; returns why it ended. */
  async #transmission(): Promise<string> {
    const { source, maxRead } = this.#config;
    for (;;) {
      const bytes = await this.#reader.read(p.request.size, 'request header');
      if (!bytes) {
        if (this.#shuttingDown) return this.#drain('server shutting down');
        // A client that closes without NBD_CMD_DISC cannot receive the replies still in flight.
        return 'client closed the connection without NBD_CMD_DISC';
      }
      const req = p.request.decode(bytes);
      if (req.magic !== p.REQUEST_MAGIC) {
        throw new ProtocolViolation(`Cannot parse request: bad magic 0x${req.magic.toString(16)}`);
      }
      this.#requests++;
      const cookie = Uint8Array.from(req.cookie);
      const offset = p.requestOffset(req.offset);
      const { type, flags, length } = req;
      const inRange = offset + length <= source.size;
      // FUA is meaningless on a read-only export; clients are known to set it anyway ("Command flags").
      const knownFlags = p.CMD_FLAG_FUA | (type === p.CMD_READ && this.#structured ? p.CMD_FLAG_DF : 0);
      const what = `${p.commandNames[type] ?? `command ${type}`} of ${length} bytes at offset ${offset}`;

      switch (type) {
        case p.CMD_DISC:
          // "NBD_CMD_DISC": handle all outstanding requests, then close; no reply.
          return this.#drain('client sent NBD_CMD_DISC');
        case p.CMD_WRITE:
          // The payload follows the header whatever we answer; it must be consumed to find the next request.
          if (!(await this.#reader.skip(length, 'write payload'))) return this.#drain('server shutting down');
          await this.#replyError(cookie, p.EPERM, 'the export is read-only', what).catch(connectionGone);
          break;
        case p.CMD_TRIM:
        case p.CMD_WRITE_ZEROES:
          await this.#replyError(cookie, p.EPERM, 'the export is read-only', what).catch(connectionGone);
          break;
        case p.CMD_FLUSH:
          if ((flags & ~knownFlags) !== 0)
            await this.#replyError(cookie, p.EINVAL, 'unknown flags', what).catch(connectionGone);
          else await this.#replyDone(cookie).catch(connectionGone);
          break;
        case p.CMD_READ:
        case p.CMD_CACHE:
          if ((flags & ~knownFlags) !== 0) {
            await this.#replyError(
              cookie,
              p.EINVAL,
              `unknown command flags 0x${flags.toString(16)}`,
              what,
            ).catch(connectionGone);
          } else if (type === p.CMD_READ && length > maxRead) {
            // With structured replies "the server is also permitted to reject large read requests up front
            // with NBD_EOVERFLOW"; with simple replies the client broke the advertised maximum payload.
            const error = this.#structured ? p.EOVERFLOW : p.EINVAL;
            await this.#replyError(cookie, error, `reads are limited to ${maxRead} bytes`, what).catch(
              connectionGone,
            );
          } else if (!inRange) {
            await this.#replyError(
              cookie,
              p.EINVAL,
              `range ends beyond the export (${source.size} bytes)`,
              what,
            ).catch(connectionGone);
          } else if (type === p.CMD_READ) {
            await this.#budget.acquire(length);
            this.#spawn(this.#read(cookie, offset, length, what), length);
          } else {
            const piece = Math.min(length, CACHE_PIECE);
            await this.#budget.acquire(piece);
            this.#spawn(this.#cache(cookie, offset, length, what), piece);
          }
          break;
        default:
          // "Error values": unknown commands (including BLOCK_STATUS, since no metadata context was
          // negotiated) get EINVAL.
          await this.#replyError(cookie, p.EINVAL, 'command not supported', what).catch(connectionGone);
      }
    }
  }

  /** Waits for the replies still in flight, then lets the caller close the connection. */
  async #drain(reason: string): Promise<string> {
    await Promise.allSettled(this.#tasks);
    return reason;
  }

  #spawn(task: Promise<void>, bytes: number): void {
    const tracked = task.finally(() => {
      this.#tasks.delete(tracked);
      this.#budget.release(bytes);
    });
    this.#tasks.add(tracked);
  }

  async #read(cookie: Uint8Array, offset: number, length: number, what: string): Promise<void> {
    let data: Uint8Array;
    // A source that lends its bytes (the block cache) gets them back once they are sent, to reuse them.
    let release = () => {};
    try {
      const source = this.#config.source;
      const signal = this.#abort.signal;
      if (length === 0) data = new Uint8Array(0);
      else if (isLending(source)) ({ bytes: data, release } = await source.lend(offset, length, { signal }));
      else data = await source.read(offset, length, { signal });
      if (data.byteLength !== length) {
        throw new ErofsOciError(
          'internal',
          `the source returned ${data.byteLength} bytes instead of ${length}`,
        );
      }
    } catch (error) {
      if (this.#abort.signal.aborted && this.#socket.destroyed) return; // nobody left to tell
      const shutdown = this.#abort.signal.aborted;
      const message = error instanceof Error ? error.message : String(error);
      await this.#replyError(cookie, shutdown ? p.ESHUTDOWN : p.EIO, message, what).catch(connectionGone);
      release();
      return;
    }
    try {
      await this.#send(this.#readReply(cookie, offset, data)).catch(connectionGone);
    } finally {
      release();
    }
  }

  /** "NBD_CMD_CACHE": read the range through the source (warming any cache in it) and drop the bytes. */
  async #cache(cookie: Uint8Array, offset: number, length: number, what: string): Promise<void> {
    try {
      for (let at = offset; at < offset + length; at += CACHE_PIECE) {
        const piece = Math.min(CACHE_PIECE, offset + length - at);
        await this.#config.source.read(at, piece, { signal: this.#abort.signal });
      }
    } catch (error) {
      if (this.#abort.signal.aborted && this.#socket.destroyed) return;
      const message = error instanceof Error ? error.message : String(error);
      await this.#replyError(cookie, p.EIO, message, what).catch(connectionGone);
      return;
    }
    await this.#replyDone(cookie).catch(connectionGone);
  }

  #readReply(cookie: Uint8Array, offset: number, data: Uint8Array): Uint8Array[] {
    if (!this.#structured) {
      return [p.simpleReply.encode({ magic: p.SIMPLE_REPLY_MAGIC, error: 0, cookie }), data];
    }
    if (data.byteLength === 0) {
      // "NBD_REPLY_TYPE_NONE": a structured reply to a read must have at least one chunk.
      return [this.#chunkHeader(cookie, p.REPLY_TYPE_NONE, 0)];
    }
    return [
      this.#chunkHeader(cookie, p.REPLY_TYPE_OFFSET_DATA, p.offsetDataPrefix.size + data.byteLength),
      p.offsetDataPrefix.encode({ offset }),
      data,
    ];
  }

  #chunkHeader(cookie: Uint8Array, type: number, length: number): Uint8Array {
    return p.structuredReplyHeader.encode({
      magic: p.STRUCTURED_REPLY_MAGIC,
      flags: p.REPLY_FLAG_DONE,
      type,
      cookie,
      length,
    });
  }

  /** A success reply without payload. */
  #replyDone(cookie: Uint8Array): Promise<void> {
    return this.#send([p.simpleReply.encode({ magic: p.SIMPLE_REPLY_MAGIC, error: 0, cookie })]);
  }

  /**
   * An error reply, logged. Reads with structured replies MUST get a structured reply; the other commands
   * get one too because it can carry the message to the user ("Structured reply chunk message").
   */
  #replyError(cookie: Uint8Array, error: number, message: string, what: string): Promise<void> {
    this.#config.log(`nbd: ${this.#name}: ${what} failed (${errnoName(error)}): ${message}`);
    if (!this.#structured) {
      return this.#send([p.simpleReply.encode({ magic: p.SIMPLE_REPLY_MAGIC, error, cookie })]);
    }
    const text = truncateUtf8(message, p.MAX_STRING);
    return this.#send([
      this.#chunkHeader(cookie, p.REPLY_TYPE_ERROR, p.errorChunkPrefix.size + text.byteLength),
      p.errorChunkPrefix.encode({ error, messageLength: text.byteLength }),
      text,
    ]);
  }

  #send(parts: Uint8Array[]): Promise<void> {
    return writeMessage(this.#socket, parts);
  }
}

/** Request slots and reply bytes one connection may hold; only the request loop waits on it. */
class Budget {
  readonly #maxCount: number;
  readonly #maxBytes: number;
  #count = 0;
  #bytes = 0;
  #waiter: { bytes: number; resolve: () => void } | null = null;

  constructor(maxCount: number, maxBytes: number) {
    this.#maxCount = maxCount;
    this.#maxBytes = maxBytes;
  }

  acquire(bytes: number): Promise<void> {
    if (this.#fits(bytes)) {
      this.#take(bytes);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.#waiter = { bytes, resolve };
    });
  }

  release(bytes: number): void {
    this.#count--;
    this.#bytes -= bytes;
    const waiter = this.#waiter;
    if (waiter && this.#fits(waiter.bytes)) {
      this.#waiter = null;
      this.#take(waiter.bytes);
      waiter.resolve();
    }
  }

  #fits(bytes: number): boolean {
    // A request larger than the whole byte budget is still admitted when nothing else is in flight.
    return this.#count < this.#maxCount && (this.#bytes === 0 || this.#bytes + bytes <= this.#maxBytes);
  }

  #take(bytes: number): void {
    this.#count++;
    this.#bytes += bytes;
  }
}

/** Parses NBD_OPT_INFO / NBD_OPT_GO data; a string is the reason it is invalid. */
function parseInfoRequest(data: Uint8Array): { name: string; requests: number[] } | string {
  if (data.byteLength < p.goNameLength.size + p.goInfoCount.size)
    return `${data.byteLength} bytes of data is too short`;
  const { nameLength } = p.goNameLength.decode(data);
  const countAt = p.goNameLength.size + nameLength;
  if (countAt + p.goInfoCount.size > data.byteLength)
    return `name length ${nameLength} exceeds the option data`;
  const name = Buffer.from(data.subarray(p.goNameLength.size, countAt)).toString('utf8');
  const { count } = p.goInfoCount.decode(data, countAt);
  const listAt = countAt + p.goInfoCount.size;
  if (listAt + count * p.goInfoRequest.size !== data.byteLength) {
    return `${count} information requests do not match the option length ${data.byteLength}`;
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++)
    requests.push(p.goInfoRequest.decode(data, listAt + i * p.goInfoRequest.size).type);
  return { name, requests };
}

async function listen(server: Server, address: NbdListen): Promise<NbdListen> {
  const attempt = () =>
    new Promise<void>((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      server.once('error', onError);
      const done = () => {
        server.off('error', onError);
        resolve();
      };
      if (address.kind === 'unix') server.listen(address.path, done);
      else server.listen(address.port, address.host, done);
    });
  const where = address.kind === 'unix' ? address.path : `${address.host}:${address.port}`;
  try {
    await attempt();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (address.kind !== 'unix' || code !== 'EADDRINUSE') throw listenError(where, error);
    // A socket file left behind by a server that died: replace it, unless a live server answers on it.
    if (await isListening(address.path)) {
      throw new ErofsOciError('usage', `Cannot listen on ${where}: another server is listening there`);
    }
    const stat = await lstat(address.path);
    if (!stat.isSocket())
      throw new ErofsOciError('usage', `Cannot listen on ${where}: the file exists and is not a socket`);
    await unlink(address.path);
    try {
      await attempt();
    } catch (again) {
      throw listenError(where, again);
    }
  }
  if (address.kind === 'unix') return { kind: 'unix', path: address.path };
  const bound = server.address();
  const port = typeof bound === 'object' && bound ? bound.port : address.port;
  return { kind: 'tcp', host: address.host, port };
}

function listenError(where: string, error: unknown): ErofsOciError {
  const code = (error as NodeJS.ErrnoException).code;
  const message = (error as Error).message;
  if (code === 'EACCES' || code === 'EPERM') {
    return new ErofsOciError('auth', `Cannot listen on ${where}: permission denied`, { cause: error });
  }
  if (code === 'EADDRINUSE')
    return new ErofsOciError('usage', `Cannot listen on ${where}: address in use`, { cause: error });
  return new ErofsOciError('io', `Cannot listen on ${where}: ${message}`, { cause: error });
}

function isListening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** NBD URI of an export: `nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME` (doc/uri.md). */
export function nbdUri(address: NbdListen, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (address.kind === 'unix') {
    // Slashes may stay literal in a query; keeping them makes the URI readable.
    return `nbd+unix:///${name}?socket=${encodeURIComponent(address.path).replaceAll('%2F', '/')}`;
  }
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/${name}`;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((byte, i) => byte === b[i]);
}

function hex(bytes: Uint8Array): string {
  return `0x${Buffer.from(bytes).toString('hex')}`;
}

function truncateUtf8(text: string, maxBytes: number): Uint8Array {
  const bytes = Buffer.from(text);
  if (bytes.byteLength <= maxBytes) return bytes;
  // Cut at a character boundary: drop continuation bytes (10xxxxxx) at the cut.
  let end = maxBytes;
  while (end > 0 && ((bytes[end] as number) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

function errnoName(error: number): string {
  const names: Record<number, string> = {
    [p.EPERM]: 'EPERM',
    [p.EIO]: 'EIO',
    [p.EINVAL]: 'EINVAL',
    [p.EOVERFLOW]: 'EOVERFLOW',
    [p.ESHUTDOWN]: 'ESHUTDOWN',
  };
  return names[error] ?? `error ${error}`;
}
