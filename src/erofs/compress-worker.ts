/** Worker thread of the compression pool: compresses one segment per message (see compress-pool.ts). */
import { parentPort } from 'node:worker_threads';
import { type CompressOptions, compressFile } from './pcluster-compress.ts';

export interface SegmentJob {
  id: number;
  data: Uint8Array;
  options: CompressOptions;
}

const port = parentPort;
if (port) {
  port.on('message', (job: SegmentJob) => {
    try {
      const file = compressFile(job.data, job.options);
      const bytes = new Uint8Array(file.blocks * job.options.blockSize);
      let at = 0;
      for (const p of file.pclusters) {
        bytes.set(p, at);
        at += p.byteLength;
      }
      port.postMessage({ id: job.id, extents: file.extents, bytes, blocks: file.blocks }, [bytes.buffer]);
    } catch (error) {
      port.postMessage({ id: job.id, error: (error as Error).message });
    }
  });
}
