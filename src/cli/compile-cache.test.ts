// The entry point's compile cache (bin/erofs-oci.js): code the process runs, as root for mounts, so only a
// directory private to the user may hold it.
import assert from 'node:assert/strict';
import { chmod, chown, mkdir, readdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { runCli, tmpdir } from '../../test-support/kernel.ts';

async function runWithHome(home: string): Promise<void> {
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home };
  delete env.XDG_CACHE_HOME;
  delete env.NODE_COMPILE_CACHE;
  const result = await runCli(['--help'], { env });
  assert.equal(result.status, 0, result.stderr);
}

describe('compile cache', () => {
  it('lives in ~/.cache/erofs-oci/node-compile-cache, created 0700, and is written', async () => {
    const home = await tmpdir();
    try {
      await runWithHome(home.path);
      const dir = join(home.path, '.cache', 'erofs-oci', 'node-compile-cache');
      for (const path of [dirname(dir), dir]) assert.equal((await stat(path)).mode & 0o777, 0o700, path);
      assert.ok((await readdir(dir)).length > 0, 'compiled modules were cached');
    } finally {
      await home.cleanup();
    }
  });

  it('is not used when others could write to it or it belongs to someone else', async () => {
    const home = await tmpdir();
    try {
      const dir = join(home.path, '.cache', 'erofs-oci', 'node-compile-cache');
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o777);
      await runWithHome(home.path);
      assert.deepEqual(await readdir(dir), [], 'a directory others can write to is left alone');

      await chmod(dir, 0o700);
      if (process.getuid?.() === 0) {
        await chown(dirname(dir), 65534, 65534);
        await runWithHome(home.path);
        assert.deepEqual(await readdir(dir), [], "a directory inside another user's is left alone");
      }
    } finally {
      await home.cleanup();
    }
  });
});
