/**
 * Worker thread that takes requests off /dev/fuse for `fuse-file.ts`.
 *
 * Why a thread of its own: a read of /dev/fuse blocks until the kernel has a request. Node has no way to
 * poll a character device (net.Socket refuses it, and there is no ioctl), so the alternative is `fs.read` on
 * libuv's threadpool, where each outstanding read pins one of the pool's (by default 4) threads for as long
 * as the filesystem is idle. Those same threads serve every other `fs` call of the process, so a pool-based
 * FUSE server can deadlock itself (the reply or the data the kernel waits for queued behind reads that wait
 * for the kernel). Here one dedicated thread blocks in `read(2)` in a loop and forwards each request; that is
 * enough for full concurrency, because the kernel queues requests and each read returns one of them at once.
 *
 * Messages to the parent: `{ kind: 'request', bytes }` per request (the bytes are transferred), then one
 * `{ kind: 'end' }` when the kernel ended the session (ENODEV: unmounted or aborted), or
 * `{ kind: 'error', code, message }` on any other failure.
 */
import { readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

export interface FuseReaderData {
  fd: number;
  bufferSize: number;
}

export type FuseReaderMessage =
  | { kind: 'request'; bytes: Uint8Array }
  | { kind: 'end' }
  | { kind: 'error'; code: string; message: string };

const { fd, bufferSize } = workerData as FuseReaderData;
const port = parentPort;
if (!port) throw new Error('fuse-reader.ts runs as a worker thread only');
const buffer = new Uint8Array(bufferSize);

for (;;) {
  let length: number;
  try {
    // Each read(2) of /dev/fuse returns exactly one whole request.
    length = readSync(fd, buffer, 0, buffer.byteLength, null);
  } catch (error) {
    const code = String((error as NodeJS.ErrnoException).code);
    // EINTR: a signal arrived; ENOENT: the request we were about to get was interrupted and dropped;
    // EAGAIN: only with O_NONBLOCK, which we do not set, but harmless to retry.
    if (code === 'EINTR' || code === 'ENOENT' || code === 'EAGAIN') continue;
    if (code === 'ENODEV') port.postMessage({ kind: 'end' } satisfies FuseReaderMessage);
    else
      port.postMessage({
        kind: 'error',
        code,
        message: (error as Error).message,
      } satisfies FuseReaderMessage);
    break;
  }
  const bytes = buffer.slice(0, length);
  port.postMessage({ kind: 'request', bytes } satisfies FuseReaderMessage, [bytes.buffer]);
}
