/**
 * Throughput of `readTar` (and `decompress` in front of it) over a tar file: reads every entry and every
 * body byte. Usage: node src/tar/reader.bench.ts FILE.tar[.gz|.zst] [chunkKiB]
 * Compare with `time cat FILE > /dev/null` for the cost of reading the file itself.
 */
import { createReadStream, statSync } from 'node:fs';
import { decompress } from '../io/decompress.ts';
import { readTar } from './reader.ts';

const file = process.argv[2];
if (file === undefined) throw new Error('usage: reader.bench.ts FILE [chunkKiB]');
const chunkKiB = Number(process.argv[3] ?? 256);

const started = process.hrtime.bigint();
const cpuStarted = process.cpuUsage();
let entries = 0;
let bodyBytes = 0;
let pieces = 0;
let cursorBytes = 0;
const input = (async function* () {
  for await (const chunk of decompress(createReadStream(file, { highWaterMark: chunkKiB * 1024 }))) {
    cursorBytes += chunk.byteLength;
    yield chunk;
  }
})();
for await (const entry of readTar(input)) {
  entries++;
  for await (const piece of entry.body()) {
    bodyBytes += piece.byteLength;
    pieces++;
  }
}
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
const cpu = process.cpuUsage(cpuStarted);
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
const size = statSync(file).size;
console.log(
  `${file}: ${(size / 1e6).toFixed(1)} MB (${(cursorBytes / 1e6).toFixed(1)} MB of tar) in ${seconds.toFixed(3)} s ` +
    `(${cpuSeconds.toFixed(3)} s CPU) = ${(cursorBytes / 1e6 / seconds).toFixed(0)} MB/s of tar; ` +
    `${entries} entries, ${(bodyBytes / 1e6).toFixed(1)} MB of bodies in ${pieces} pieces`,
);
