import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { ConvertProgress, formatLayerLine } from './convert-progress.ts';

const MiB = 1 << 20;

test('a layer line shows conversion and upload apart, each with its rate', () => {
  const base = { name: 'sha256:0123456789ab', sourceSize: 40 * MiB, sourceBytes: 0, uploadedBytes: 0 };
  assert.equal(formatLayerLine(base, 0), 'sha256:0123456789ab: waiting');
  assert.equal(
    formatLayerLine({ ...base, convertStarted: 1000, sourceBytes: 10 * MiB }, 2000),
    'sha256:0123456789ab: converting 10.0 MiB / 40.0 MiB, 10.0 MiB/s',
  );
  const converted = {
    ...base,
    convertStarted: 1000,
    converted: 3000,
    sourceBytes: 40 * MiB,
    blobSize: 50 * MiB,
  };
  // The conversion's rate stays the one it finished with; the upload waits for its slot.
  assert.equal(
    formatLayerLine(converted, 9000),
    'sha256:0123456789ab: converted 40.0 MiB / 40.0 MiB, 20.0 MiB/s; to upload 0 B / 50.0 MiB',
  );
  assert.equal(
    formatLayerLine({ ...converted, uploadStarted: 4000, uploadedBytes: 25 * MiB }, 4500),
    'sha256:0123456789ab: converted 40.0 MiB / 40.0 MiB, 20.0 MiB/s; uploading 25.0 MiB / 50.0 MiB, 50.0 MiB/s',
  );
  assert.equal(
    formatLayerLine(
      {
        ...converted,
        uploadStarted: 4000,
        uploadedBytes: 50 * MiB,
        done: { at: 5000, transfer: 'uploaded' },
      },
      60_000,
    ),
    'sha256:0123456789ab: converted 40.0 MiB / 40.0 MiB, 20.0 MiB/s; uploaded 50.0 MiB / 50.0 MiB, 50.0 MiB/s',
  );
  assert.equal(
    formatLayerLine({ ...converted, done: { at: 5000, transfer: 'exists' } }, 6000),
    'sha256:0123456789ab: converted 40.0 MiB / 40.0 MiB, 20.0 MiB/s; already at destination',
  );
  assert.equal(
    formatLayerLine({ ...converted, done: { at: 5000, transfer: 'mounted' } }, 6000),
    'sha256:0123456789ab: converted 40.0 MiB / 40.0 MiB, 20.0 MiB/s; mounted from the source repository',
  );
});

test('the progress block is redrawn in place, one line per layer', () => {
  let clock = 0;
  let written = '';
  const out = new Writable({
    write(chunk, _encoding, callback) {
      written += String(chunk);
      callback();
    },
  });
  const progress = new ConvertProgress(
    out,
    [
      { name: 'a', size: 4 * MiB },
      { name: 'b', size: 2 * MiB },
    ],
    () => clock,
  );
  clock = 1000;
  progress.converting(0, MiB);
  clock = 1100;
  progress.converting(0, 2 * MiB); // within 200 ms of the last draw: not drawn
  clock = 2000;
  progress.converted(0, 5 * MiB);
  clock = 3000;
  progress.done(0, {
    sourceDigest: 'sha256:a',
    digest: 'sha256:e',
    size: 5 * MiB,
    mediaType: 'application/vnd.erofs.layer.v1',
    diffId: 'sha256:e',
    transfer: 'uploaded',
  });
  progress.finish();
  const draws = written.split(/\x1b\[2A/);
  assert.equal(draws.length, 4, 'first draw, then three redraws moving up over both lines');
  assert.equal(draws[0], '\x1b[2Ka: converting 1.0 MiB / 4.0 MiB\n\x1b[2Kb: waiting\n');
  assert.match(
    draws[1] as string,
    /^\x1b\[2Ka: converted 4\.0 MiB \/ 4\.0 MiB, 4\.0 MiB\/s; to upload 0 B \/ 5\.0 MiB\n/,
  );
  assert.match(draws[3] as string, /a: converted .*; uploaded 5\.0 MiB \/ 5\.0 MiB\n\x1b\[2Kb: waiting\n$/);
});
