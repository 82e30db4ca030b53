import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { isProcessAlive } from './process.ts';

test('isProcessAlive: this process yes, invalid pids no', () => {
  assert.equal(isProcessAlive(process.pid), true);
  assert.equal(isProcessAlive(0), false);
  assert.equal(isProcessAlive(-1), false);
  assert.equal(isProcessAlive(2 ** 22 + 12_345), false);
});

test('isProcessAlive: a child that exited but is not reaped yet (a zombie) is gone', async () => {
  // A shell whose child exits while the shell sleeps without waiting for it: the child stays a zombie.
  const shell = spawn('sh', ['-c', 'sh -c "exit 0" & echo $!; exec sleep 5'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  try {
    const pid = await new Promise<number>((resolve) =>
      shell.stdout.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim()))),
    );
    for (let i = 0; i < 100; i++) {
      let zombie = false;
      try {
        process.kill(pid, 0);
        zombie = true;
      } catch {
        // Reaped already: nothing to test on this run.
      }
      if (!zombie) break;
      if (!isProcessAlive(pid)) return;
      await sleep(20);
    }
    assert.fail('the exited child was never reported gone');
  } finally {
    shell.kill('SIGKILL');
  }
});
