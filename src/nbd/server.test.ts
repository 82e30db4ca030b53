/**
 * Protocol-level tests of the NBD server with a raw client (src/nbd/testing.ts) that can send what real
 * clients never send. Real libnbd clients are exercised in server.integration.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import type { ByteSource } from '../io/byte-source.ts';
import { memorySource } from '../io/memory-source.ts';
import * as p from './protocol.ts';
import { type NbdServer, type ServeNbdOptions, serveNbd } from './server.ts';
import { concat, delayedSource, encodeRequest, failingSource, goData, RawClient } from './testing.ts';

const SIZE = 1 << 20;
const bytes = new Uint8Array(randomBytes(SIZE));
const FLAGS =
  p.FLAG_HAS_FLAGS | p.FLAG_READ_ONLY | p.FLAG_SEND_FLUSH | p.FLAG_CAN_MULTI_CONN | p.FLAG_SEND_CACHE;

async function withServer(
  source: ByteSource,
  options: Partial<ServeNbdOptions>,
  run: (server: NbdServer, path: string, log: string[]) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-test-'));
  const path = join(dir, 'nbd.sock');
  const log: string[] = [];
  const server = await serveNbd(source, {
    listen: { kind: 'unix', path },
    log: (line) => log.push(line),
    ...options,
  });
  try {
    await run(server, path, log);
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test('serveNbd greets with fixed newstyle and no-zeroes and accepts both client flags', async () => {
  await withServer(memorySource(bytes), {}, async (_server, path) => {
    const client = await RawClient.connect(path);
    const { handshakeFlags } = await client.greet();
    assert.equal(handshakeFlags, p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES);
    client.destroy();
  });
});

test('serveNbd answers unknown options with ERR_UNSUP and keeps negotiating', async () => {
  await withServer(
    memorySource(bytes),
    { exportName: 'blob', description: 'test export' },
    async (_server, path) => {
      const client = await RawClient.connect(path);
      await client.greet();
      for (const option of [
        42,
        p.OPT_STARTTLS,
        9 /* LIST_META_CONTEXT */,
        10 /* SET_META_CONTEXT */,
        0xffffffff,
      ]) {
        await client.sendOption(option, new Uint8Array(13));
        const reply = await client.optionReply();
        assert.equal(reply.option, option);
        assert.equal(reply.type, p.REP_ERR_UNSUP);
        assert.match(Buffer.from(reply.data).toString(), /is not supported by this server$/);
      }
      // Still negotiating: LIST works.
      await client.sendOption(p.OPT_LIST);
      const server = await client.optionReply();
      assert.equal(server.type, p.REP_SERVER);
      const { nameLength } = p.repServerHeader.decode(server.data);
      assert.equal(Buffer.from(server.data.subarray(4, 4 + nameLength)).toString(), 'blob');
      assert.equal(Buffer.from(server.data.subarray(4 + nameLength)).toString(), 'test export');
      assert.equal((await client.optionReply()).type, p.REP_ACK);
      client.destroy();
    },
  );
});

test('serveNbd refuses option data that is too large or malformed without dropping the client', async () => {
  await withServer(memorySource(bytes), { exportName: 'blob' }, async (_server, path) => {
    const client = await RawClient.connect(path);
    await client.greet();
    await client.sendOption(p.OPT_INFO, new Uint8Array(100_000));
    assert.equal((await client.optionReply()).type, p.REP_ERR_TOO_BIG);
    await client.sendOption(p.OPT_LIST, new Uint8Array(1));
    assert.equal((await client.optionReply()).type, p.REP_ERR_INVALID);
    await client.sendOption(p.OPT_STRUCTURED_REPLY, new Uint8Array(1));
    assert.equal((await client.optionReply()).type, p.REP_ERR_INVALID);
    // Name length pointing past the data.
    await client.sendOption(p.OPT_GO, concat(p.goNameLength.encode({ nameLength: 50 }), new Uint8Array(4)));
    const invalid = await client.optionReply();
    assert.equal(invalid.type, p.REP_ERR_INVALID);
    assert.equal(Buffer.from(invalid.data).toString(), 'name length 50 exceeds the option data');
    await client.sendOption(p.OPT_GO, goData('other', []));
    const unknown = await client.optionReply();
    assert.equal(unknown.type, p.REP_ERR_UNKNOWN);
    assert.equal(Buffer.from(unknown.data).toString(), "no export named 'other'");
    client.destroy();
  });
});

test('serveNbd answers NBD_OPT_INFO with size, flags, block sizes, name and description', async () => {
  await withServer(
    memorySource(bytes),
    { exportName: 'blob', description: 'a layer', maxRead: 1 << 20 },
    async (_s, path) => {
      const client = await RawClient.connect(path);
      await client.greet();
      await client.sendOption(
        p.OPT_INFO,
        goData('blob', [p.INFO_NAME, p.INFO_DESCRIPTION, p.INFO_BLOCK_SIZE]),
      );
      const infos = new Map<number, Uint8Array>();
      for (;;) {
        const reply = await client.optionReply();
        assert.equal(reply.option, p.OPT_INFO);
        if (reply.type === p.REP_ACK) break;
        assert.equal(reply.type, p.REP_INFO);
        infos.set(p.infoStringHeader.decode(reply.data).type, reply.data);
      }
      assert.deepEqual(p.infoExport.decode(infos.get(p.INFO_EXPORT) as Uint8Array), {
        type: p.INFO_EXPORT,
        size: SIZE,
        transmissionFlags: FLAGS,
      });
      assert.deepEqual(p.infoBlockSize.decode(infos.get(p.INFO_BLOCK_SIZE) as Uint8Array), {
        type: p.INFO_BLOCK_SIZE,
        minimum: 1,
        preferred: 4096,
        maximum: 1 << 20,
      });
      assert.equal(Buffer.from((infos.get(p.INFO_NAME) as Uint8Array).subarray(2)).toString(), 'blob');
      assert.equal(
        Buffer.from((infos.get(p.INFO_DESCRIPTION) as Uint8Array).subarray(2)).toString(),
        'a layer',
      );
      // INFO does not end negotiation; the default export name selects the export too.
      const { size, flags } = await goAfterGreeting(client, '');
      assert.equal(size, SIZE);
      assert.equal(flags, FLAGS);
      client.destroy();
    },
  );
});

async function goAfterGreeting(client: RawClient, name: string): Promise<{ size: number; flags: number }> {
  await client.sendOption(p.OPT_GO, goData(name, []));
  let result = { size: -1, flags: -1 };
  for (;;) {
    const reply = await client.optionReply();
    if (reply.type === p.REP_ACK) return result;
    const info = p.infoStringHeader.decode(reply.data);
    if (info.type === p.INFO_EXPORT) {
      const decoded = p.infoExport.decode(reply.data);
      result = { size: decoded.size, flags: decoded.transmissionFlags };
    }
  }
}

test('serveNbd NBD_OPT_EXPORT_NAME sends size, flags and the 124 zero bytes unless NO_ZEROES', async () => {
  await withServer(memorySource(bytes), { exportName: 'blob' }, async (_server, path) => {
    for (const noZeroes of [false, true]) {
      const client = await RawClient.connect(path);
      await client.greet(p.FLAG_C_FIXED_NEWSTYLE | (noZeroes ? p.FLAG_C_NO_ZEROES : 0));
      await client.sendOption(p.OPT_EXPORT_NAME, Buffer.from('blob'));
      const reply = p.exportNameReply.decode(await client.recv(p.exportNameReply.size));
      assert.deepEqual(reply, { size: SIZE, transmissionFlags: FLAGS });
      if (!noZeroes) assert.deepEqual(await client.recv(124), new Uint8Array(124));
      // Transmission works right after.
      await client.sendRequest(p.CMD_READ, 1, 10, 5);
      const read = await client.simpleReply(() => 5);
      assert.deepEqual(read, { cookie: 1, error: 0, data: bytes.slice(10, 15) });
      client.destroy();
    }
  });
});

test('serveNbd drops clients that break the handshake: unknown flags, bad magic, unknown EXPORT_NAME', async () => {
  await withServer(memorySource(bytes), { exportName: 'blob' }, async (_server, path, log) => {
    const flags = await RawClient.connect(path);
    await flags.greet(0x80);
    assert.ok(await flags.isClosedByServer());

    const magic = await RawClient.connect(path);
    await magic.greet();
    await magic.send(new Uint8Array(16).fill(7));
    assert.ok(await magic.isClosedByServer());

    const name = await RawClient.connect(path);
    await name.greet();
    await name.sendOption(p.OPT_EXPORT_NAME, Buffer.from('nope'));
    assert.ok(await name.isClosedByServer());

    const abort = await RawClient.connect(path);
    await abort.greet();
    await abort.sendOption(p.OPT_ABORT);
    assert.equal((await abort.optionReply()).type, p.REP_ACK);
    assert.ok(await abort.isClosedByServer());

    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(
      log.some((line) => /client #1.*unknown client flags 0x80/.test(line)),
      log.join('\n'),
    );
    assert.ok(log.some((line) => /client #2.*bad magic 0x0707070707070707/.test(line)));
    assert.ok(log.some((line) => /client #3.*unknown export 'nope'/.test(line)));
  });
});

test('serveNbd drops a client that sends a request with bad magic', async () => {
  await withServer(memorySource(bytes), {}, async (_server, path, log) => {
    const client = await RawClient.connect(path);
    await client.go();
    const request = encodeRequest(p.CMD_READ, 1, 0, 10);
    request[0] = 0x12;
    await client.send(request);
    assert.ok(await client.isClosedByServer());
    await client.closed;
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(
      log.some((line) => line.includes('Cannot parse request: bad magic 0x12609513')),
      log.join('\n'),
    );
  });
});

test('serveNbd answers every command of a read-only export (simple replies)', async () => {
  const source = memorySource(bytes);
  await withServer(source, {}, async (_server, path) => {
    const client = await RawClient.connect(path);
    const { flags } = await client.go();
    assert.equal(flags & p.FLAG_SEND_DF, 0, 'DF only with structured replies');
    const expectError = async (request: Uint8Array, payload: Uint8Array = new Uint8Array(0)) => {
      await client.send(request, payload);
      return (await client.simpleReply(() => 0)).error;
    };
    // The write payload is consumed: the next request is parsed correctly.
    assert.equal(
      await expectError(encodeRequest(p.CMD_WRITE, 1, 0, 70_000), new Uint8Array(70_000).fill(0x25)),
      p.EPERM,
    );
    assert.equal(await expectError(encodeRequest(p.CMD_TRIM, 2, 0, 4096)), p.EPERM);
    assert.equal(await expectError(encodeRequest(p.CMD_WRITE_ZEROES, 3, 0, 4096)), p.EPERM);
    assert.equal(await expectError(encodeRequest(p.CMD_FLUSH, 4, 0, 0)), 0);
    assert.equal(await expectError(encodeRequest(p.CMD_FLUSH, 4, 0, 0, p.CMD_FLAG_FUA)), 0);
    assert.equal(await expectError(encodeRequest(p.CMD_CACHE, 5, 0, SIZE)), 0);
    assert.equal(await expectError(encodeRequest(p.CMD_BLOCK_STATUS, 6, 0, 4096)), p.EINVAL);
    assert.equal(await expectError(encodeRequest(99, 7, 0, 4096)), p.EINVAL);
    assert.equal(await expectError(encodeRequest(p.CMD_READ, 8, SIZE - 10, 11)), p.EINVAL);
    assert.equal(await expectError(encodeRequest(p.CMD_CACHE, 8, SIZE, 1)), p.EINVAL);
    assert.equal(await expectError(encodeRequest(p.CMD_READ, 9, new Uint8Array(8).fill(0xff), 1)), p.EINVAL);
    assert.equal(await expectError(encodeRequest(p.CMD_READ, 10, 0, 64 << 20)), p.EINVAL);
    assert.equal(await expectError(encodeRequest(p.CMD_READ, 11, 0, 10, p.CMD_FLAG_DF)), p.EINVAL);
    await client.sendRequest(p.CMD_READ, 12, SIZE - 100, 100);
    assert.deepEqual(await client.simpleReply(() => 100), {
      cookie: 12,
      error: 0,
      data: bytes.slice(SIZE - 100),
    });
    await client.sendRequest(p.CMD_READ, 13, 5, 0);
    assert.deepEqual(await client.simpleReply(() => 0), { cookie: 13, error: 0, data: new Uint8Array(0) });
    await client.sendRequest(p.CMD_DISC, 14, 0, 0);
    assert.ok(await client.isClosedByServer());
  });
});

test('serveNbd answers reads with structured replies once negotiated, errors with a message', async () => {
  const source = failingSource(memorySource(bytes), 500_000, 600_000);
  await withServer(source, {}, async (_server, path) => {
    const client = await RawClient.connect(path);
    const { flags } = await client.go({ structured: true });
    assert.equal(flags, FLAGS | p.FLAG_SEND_DF);
    await client.sendRequest(p.CMD_READ, 1, 1000, 3000, p.CMD_FLAG_DF);
    assert.deepEqual(await client.anyReply(), {
      kind: 'data',
      cookie: 1,
      done: true,
      offset: 1000,
      data: bytes.slice(1000, 4000),
    });
    await client.sendRequest(p.CMD_READ, 2, 590_000, 20_000);
    assert.deepEqual(await client.anyReply(), {
      kind: 'error',
      cookie: 2,
      done: true,
      error: p.EIO,
      message: 'registry unavailable for bytes 590000..610000',
    });
    await client.sendRequest(p.CMD_READ, 3, 0, 64 << 20);
    assert.deepEqual(await client.anyReply(), {
      kind: 'error',
      cookie: 3,
      done: true,
      error: p.EOVERFLOW,
      message: 'reads are limited to 33554432 bytes',
    });
    await client.sendRequest(p.CMD_READ, 4, 0, 0);
    assert.deepEqual(await client.anyReply(), {
      kind: 'chunk',
      cookie: 4,
      done: true,
      type: p.REPLY_TYPE_NONE,
    });
    await client.sendRequest(p.CMD_FLUSH, 5, 0, 0);
    assert.deepEqual(await client.anyReply(), { kind: 'simple', cookie: 5, error: 0 });
    client.destroy();
  });
});

test('serveNbd answers a failed read with EIO and no data (simple replies)', async () => {
  const source = failingSource(memorySource(bytes), 0, 4096);
  await withServer(source, {}, async (_server, path, log) => {
    const client = await RawClient.connect(path);
    await client.go();
    await client.sendRequest(p.CMD_READ, 1, 0, 100);
    await client.sendRequest(p.CMD_READ, 2, 8192, 100);
    // If the failed read had carried data, the second reply's header would be parsed out of it.
    const replies = [await client.anyReply(), await client.anyReply()];
    assert.deepEqual(replies[0], { kind: 'simple', cookie: 1, error: p.EIO });
    assert.deepEqual(replies[1], { kind: 'simple', cookie: 2, error: 0 });
    assert.deepEqual(await client.recv(100), bytes.slice(8192, 8292));
    assert.ok(
      log.some((line) =>
        line.endsWith('READ of 100 bytes at offset 0 failed (EIO): registry unavailable for bytes 0..100'),
      ),
    );
    client.destroy();
  });
});

test('serveNbd replies out of order as reads complete, each reply whole', async () => {
  // Reads at low offsets are slow, so later requests overtake them.
  const source = delayedSource(memorySource(bytes), (offset) => (offset < 100_000 ? 60 : 0));
  await withServer(source, {}, async (_server, path) => {
    const client = await RawClient.connect(path);
    await client.go();
    await client.sendRequest(p.CMD_READ, 1, 0, 50_000);
    await client.sendRequest(p.CMD_READ, 2, 200_000, 50_000);
    const first = await client.simpleReply(() => 50_000);
    const second = await client.simpleReply(() => 50_000);
    assert.equal(first.cookie, 2);
    assert.deepEqual(first.data, bytes.slice(200_000, 250_000));
    assert.equal(second.cookie, 1);
    assert.deepEqual(second.data, bytes.slice(0, 50_000));
    client.destroy();
  });
});

test('serveNbd serves random pipelined reads with the right bytes for the right cookie', async () => {
  const source = delayedSource(memorySource(bytes), () => Math.floor(Math.random() * 4));
  await withServer(source, {}, async (_server, path) => {
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.array(fc.tuple(fc.nat(SIZE - 1), fc.nat(200_000)), { minLength: 1, maxLength: 40 }),
        async (structured, ranges) => {
          const client = await RawClient.connect(path);
          await client.go({ structured });
          const wanted = ranges.map(([offset, length]) => [offset, Math.min(length, SIZE - offset)] as const);
          await client.send(
            ...wanted.map(([offset, length], i) => encodeRequest(p.CMD_READ, i + 100, offset, length)),
          );
          const seen = new Set<number>();
          for (let i = 0; i < wanted.length; i++) {
            const reply = structured
              ? await client.anyReply()
              : await client.simpleReply((cookie) => (wanted[cookie - 100] as readonly [number, number])[1]);
            const [offset, length] = wanted[reply.cookie - 100] as readonly [number, number];
            const data = 'data' in reply ? reply.data : new Uint8Array(0);
            if ('kind' in reply && reply.kind === 'chunk') assert.equal(length, 0);
            else assert.deepEqual(data, bytes.slice(offset, offset + length));
            seen.add(reply.cookie);
          }
          assert.equal(seen.size, wanted.length);
          client.destroy();
        },
      ),
      { numRuns: 40 },
    );
  });
});

test('serveNbd stops reading requests while replies wait for a slow client, then delivers them all', async () => {
  const counted = delayedSource(memorySource(bytes), () => 0);
  await withServer(
    counted,
    { maxBytesInFlight: 4 << 20, maxRequestsPerConnection: 64 },
    async (_server, path) => {
      const client = await RawClient.connect(path);
      await client.go();
      // 300 reads of 1 MiB, sent without reading any reply.
      const requests = Array.from({ length: 300 }, (_, i) => encodeRequest(p.CMD_READ, i, 0, SIZE));
      void client.send(...requests).catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 300));
      // The server holds at most 4 MiB of replies, plus what the kernel socket buffers took.
      const started = counted.started;
      assert.ok(started < 40, `reads started while the client was not reading: ${started}`);
      for (let i = 0; i < 300; i++) {
        const reply = await client.simpleReply(() => SIZE);
        assert.equal(reply.error, 0);
        if (i % 50 === 0) assert.deepEqual(reply.data, bytes);
      }
      assert.equal(counted.started, 300);
      client.destroy();
    },
  );
});

test('serveNbd aborts the source reads of a client that disconnects and keeps serving others', async () => {
  const slow = delayedSource(memorySource(bytes), () => 5_000);
  await withServer(slow, {}, async (server, path, log) => {
    const client = await RawClient.connect(path);
    await client.go();
    await client.sendRequest(p.CMD_READ, 1, 0, 4096);
    await new Promise((resolve) => setTimeout(resolve, 30));
    client.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(slow.aborted, 1);
    assert.equal(server.connections, 0);
    assert.ok(
      log.some((line) =>
        /client #1 disconnected \(client closed the connection without NBD_CMD_DISC; 1 requests\)/.test(line),
      ),
    );
  });
});

test('serveNbd close() lets in-flight reads reply, then disconnects and refuses new clients', async () => {
  const slow = delayedSource(memorySource(bytes), () => 200);
  const dir = await mkdtemp(join(tmpdir(), 'nbd-test-'));
  const path = join(dir, 'nbd.sock');
  try {
    const server = await serveNbd(slow, { listen: { kind: 'unix', path } });
    const client = await RawClient.connect(path);
    await client.go();
    await client.sendRequest(p.CMD_READ, 1, 100, 1000);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const closing = server.close();
    const reply = await client.simpleReply(() => 1000);
    assert.deepEqual(reply, { cookie: 1, error: 0, data: bytes.slice(100, 1100) });
    assert.ok(await client.isClosedByServer());
    await closing;
    await assert.rejects(RawClient.connect(path));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('serveNbd close() cuts off replies that do not finish within the timeout', async () => {
  const stuck = delayedSource(memorySource(bytes), () => 60_000);
  const dir = await mkdtemp(join(tmpdir(), 'nbd-test-'));
  try {
    const server = await serveNbd(stuck, {
      listen: { kind: 'unix', path: join(dir, 's') },
      closeTimeoutMs: 100,
    });
    const client = await RawClient.connect(join(dir, 's'));
    await client.go();
    await client.sendRequest(p.CMD_READ, 1, 0, 10);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const started = Date.now();
    await server.close();
    assert.ok(Date.now() - started < 2000);
    assert.equal(stuck.aborted, 1);
    await client.closed;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('serveNbd drops a client that does not finish the handshake in time', async () => {
  await withServer(memorySource(bytes), { handshakeTimeoutMs: 100 }, async (_server, path, log) => {
    const client = await RawClient.connect(path);
    await client.greet();
    await client.closed;
    assert.ok(log.some((line) => line.includes('handshake not finished after 100 ms')));
  });
});

test('serveNbd replaces a stale socket file but not a live server or another file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-test-'));
  try {
    const path = join(dir, 'nbd.sock');
    // A socket file whose server is gone: bound by a process that exited without removing it.
    execFileSync('python3', [
      '-c',
      'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
      path,
    ]);
    assert.ok((await stat(path)).isSocket());
    const server = await serveNbd(memorySource(bytes), { listen: { kind: 'unix', path } });
    await assert.rejects(serveNbd(memorySource(bytes), { listen: { kind: 'unix', path } }), {
      code: 'usage',
      message: `Cannot listen on ${path}: another server is listening there`,
    });
    await server.close();
    const file = join(dir, 'plain');
    await writeFile(file, 'x');
    await assert.rejects(serveNbd(memorySource(bytes), { listen: { kind: 'unix', path: file } }), {
      code: 'usage',
      message: `Cannot listen on ${file}: the file exists and is not a socket`,
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('serveNbd listens on TCP with a kernel-chosen port and builds NBD URIs', async () => {
  const server = await serveNbd(memorySource(bytes), {
    listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
    exportName: 'a b',
  });
  try {
    assert.equal(server.address.kind, 'tcp');
    const port = server.address.kind === 'tcp' ? server.address.port : 0;
    assert.ok(port > 0);
    assert.equal(server.uri, `nbd://127.0.0.1:${port}/a%20b`);
  } finally {
    await server.close();
  }
  const unix = await serveNbd(memorySource(bytes), {
    listen: { kind: 'unix', path: join(tmpdir(), `nbd-${process.pid}.sock`) },
  });
  assert.equal(unix.uri, `nbd+unix:///?socket=${join(tmpdir(), `nbd-${process.pid}.sock`)}`);
  await unix.close();
});

test('serveNbd rejects a maxRead outside the protocol limits', async () => {
  await assert.rejects(
    serveNbd(memorySource(bytes), { listen: { kind: 'unix', path: '/nonexistent/x' }, maxRead: 100 }),
    {
      code: 'usage',
    },
  );
});
