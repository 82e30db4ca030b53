/**
 * Test helpers: a raw NBD client speaking the wire protocol byte by byte (to send what libnbd never sends:
 * unknown options, bad magic, pipelined requests without reading replies), and byte sources that fail or
 * stall on purpose. Not part of the library.
 */
import { connect, type Socket } from 'node:net';
import { ErofsOciError } from '../errors.ts';
import type { ByteSource } from '../io/byte-source.ts';
import * as p from './protocol.ts';
import { SocketReader, writeMessage } from './socket-io.ts';

export class RawClient {
  readonly socket: Socket;
  readonly reader: SocketReader;
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.reader = new SocketReader(socket);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {
      // Tests observe the connection through `closed` and failed reads.
    });
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once('connect', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  send(...parts: Uint8Array[]): Promise<void> {
    return writeMessage(this.socket, parts);
  }

  async recv(length: number): Promise<Uint8Array> {
    const bytes = await this.reader.read(length, 'server reply');
    if (!bytes) throw new Error(`connection closed while expecting ${length} bytes`);
    return Uint8Array.from(bytes);
  }

  /** Resolves true when the server closes the connection (reading nothing more). */
  async isClosedByServer(): Promise<boolean> {
    return (await this.reader.read(1, 'anything')) === null;
  }

  /** Reads the greeting and sends the client flags. */
  async greet(flags = p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES): Promise<{ handshakeFlags: number }> {
    const greeting = p.serverGreeting.decode(await this.recv(p.serverGreeting.size));
    await this.send(p.clientFlags.encode({ flags }));
    return { handshakeFlags: greeting.handshakeFlags };
  }

  sendOption(option: number, data: Uint8Array = new Uint8Array(0)): Promise<void> {
    return this.send(p.optionHeader.encode({ magic: p.IHAVEOPT, option, length: data.byteLength }), data);
  }

  async optionReply(): Promise<{ option: number; type: number; data: Uint8Array }> {
    const header = p.optionReplyHeader.decode(await this.recv(p.optionReplyHeader.size));
    if (header.magic !== p.OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic ${header.magic}`);
    return { option: header.option, type: header.type, data: await this.recv(header.length) };
  }

  /** Negotiates with NBD_OPT_GO (after NBD_OPT_STRUCTURED_REPLY when asked); returns size and flags. */
  async go(options: { structured?: boolean; name?: string } = {}): Promise<{ size: number; flags: number }> {
    await this.greet();
    if (options.structured) {
      await this.sendOption(p.OPT_STRUCTURED_REPLY);
      const reply = await this.optionReply();
      if (reply.type !== p.REP_ACK) throw new Error(`STRUCTURED_REPLY refused: ${reply.type}`);
    }
    await this.sendOption(p.OPT_GO, goData(options.name ?? '', []));
    let export_: { size: number; flags: number } | null = null;
    for (;;) {
      const reply = await this.optionReply();
      if (reply.type === p.REP_ACK) break;
      if (reply.type !== p.REP_INFO) throw new Error(`GO failed with reply type ${reply.type}`);
      const type = p.infoStringHeader.decode(reply.data).type;
      if (type === p.INFO_EXPORT) {
        const info = p.infoExport.decode(reply.data);
        export_ = { size: info.size, flags: info.transmissionFlags };
      }
    }
    if (!export_) throw new Error('GO succeeded without NBD_INFO_EXPORT');
    return export_;
  }

  sendRequest(type: number, cookie: number, offset: number, length: number, flags = 0): Promise<void> {
    return this.send(encodeRequest(type, cookie, offset, length, flags));
  }

  /** A simple reply; `dataLength` bytes of payload are read when the error is 0. */
  async simpleReply(
    dataLength: (cookie: number) => number,
  ): Promise<{ cookie: number; error: number; data: Uint8Array }> {
    const reply = p.simpleReply.decode(await this.recv(p.simpleReply.size));
    if (reply.magic !== p.SIMPLE_REPLY_MAGIC)
      throw new Error(`bad simple reply magic 0x${reply.magic.toString(16)}`);
    const cookie = cookieNumber(reply.cookie);
    const data = reply.error === 0 ? await this.recv(dataLength(cookie)) : new Uint8Array(0);
    return { cookie, error: reply.error, data };
  }

  /** One reply of either kind (structured chunks parsed: OFFSET_DATA, NONE, ERROR). */
  async anyReply(): Promise<Reply> {
    const magic = await this.recv(4);
    const value = new DataView(magic.buffer).getUint32(0, false);
    if (value === p.SIMPLE_REPLY_MAGIC) {
      const rest = await this.recv(p.simpleReply.size - 4);
      const reply = p.simpleReply.decode(concat(magic, rest));
      return { kind: 'simple', cookie: cookieNumber(reply.cookie), error: reply.error };
    }
    if (value !== p.STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic 0x${value.toString(16)}`);
    const header = p.structuredReplyHeader.decode(
      concat(magic, await this.recv(p.structuredReplyHeader.size - 4)),
    );
    const payload = await this.recv(header.length);
    const cookie = cookieNumber(header.cookie);
    const done = (header.flags & p.REPLY_FLAG_DONE) !== 0;
    if (header.type === p.REPLY_TYPE_OFFSET_DATA) {
      const { offset } = p.offsetDataPrefix.decode(payload);
      return { kind: 'data', cookie, done, offset, data: payload.subarray(p.offsetDataPrefix.size) };
    }
    if (header.type === p.REPLY_TYPE_ERROR) {
      const { error, messageLength } = p.errorChunkPrefix.decode(payload);
      const at = p.errorChunkPrefix.size;
      const message = Buffer.from(payload.subarray(at, at + messageLength)).toString('utf8');
      return { kind: 'error', cookie, done, error, message };
    }
    return { kind: 'chunk', cookie, done, type: header.type };
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export type Reply =
  | { kind: 'simple'; cookie: number; error: number }
  | { kind: 'data'; cookie: number; done: boolean; offset: number; data: Uint8Array }
  | { kind: 'error'; cookie: number; done: boolean; error: number; message: string }
  | { kind: 'chunk'; cookie: number; done: boolean; type: number };

export function goData(name: string, infos: number[]): Uint8Array {
  const nameBytes = Buffer.from(name);
  return concat(
    p.goNameLength.encode({ nameLength: nameBytes.byteLength }),
    nameBytes,
    p.goInfoCount.encode({ count: infos.length }),
    ...infos.map((type) => p.goInfoRequest.encode({ type })),
  );
}

export function encodeRequest(
  type: number,
  cookie: number,
  offset: number | Uint8Array,
  length: number,
  flags = 0,
): Uint8Array {
  const cookieBytes = new Uint8Array(8);
  new DataView(cookieBytes.buffer).setBigUint64(0, BigInt(cookie), false);
  let offsetBytes = offset as Uint8Array;
  if (typeof offset === 'number') {
    offsetBytes = new Uint8Array(8);
    new DataView(offsetBytes.buffer).setBigUint64(0, BigInt(offset), false);
  }
  return p.request.encode({
    magic: p.REQUEST_MAGIC,
    flags,
    type,
    cookie: cookieBytes,
    offset: offsetBytes,
    length,
  });
}

function cookieNumber(bytes: Uint8Array): number {
  return Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, false));
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/** Wraps a source so that reads overlapping `[badStart, badEnd)` fail with an `unavailable` error. */
export function failingSource(inner: ByteSource, badStart: number, badEnd: number): ByteSource {
  return {
    size: inner.size,
    async read(offset, length, options) {
      if (offset < badEnd && offset + length > badStart) {
        throw new ErofsOciError(
          'unavailable',
          `registry unavailable for bytes ${offset}..${offset + length}`,
        );
      }
      return inner.read(offset, length, options);
    },
  };
}

/** Wraps a source so that each read waits for `delayFor(offset)` ms first; records signals of reads. */
export function delayedSource(
  inner: ByteSource,
  delayFor: (offset: number) => number,
): ByteSource & { started: number; active: number; maxActive: number; aborted: number } {
  const state = {
    size: inner.size,
    started: 0,
    active: 0,
    maxActive: 0,
    aborted: 0,
    async read(offset: number, length: number, options?: { signal?: AbortSignal }) {
      state.started++;
      state.active++;
      state.maxActive = Math.max(state.maxActive, state.active);
      try {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(resolve, delayFor(offset));
          options?.signal?.addEventListener(
            'abort',
            () => {
              clearTimeout(timer);
              state.aborted++;
              reject(new ErofsOciError('aborted', 'read aborted'));
            },
            { once: true },
          );
        });
        return await inner.read(offset, length, options);
      } finally {
        state.active--;
      }
    },
  };
  return state;
}
