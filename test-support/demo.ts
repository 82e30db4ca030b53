/**
 * `npm run demo`: the README walkthrough, runnable. Generates two small layer tarballs (a base and an
 * update that deletes a file) into ./.tmp/demo/, builds a merged EROFS image with `erofs-oci build`,
 * describes it with `erofs-oci inspect`, and, as root, mounts it with the kernel, lists it and unmounts.
 * Every command is echoed before it runs so the output reads like a terminal session.
 */
import { spawn } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { cliEntry, isRoot, nodeBinary, repoRoot, testSupportDir, withMount } from './kernel.ts';

const demoDir = join(repoRoot, '.tmp', 'demo');

/** Runs a command with the terminal attached; returns its exit status. */
function sh(display: string, command: string, args: string[]): Promise<number> {
  process.stdout.write(`\n$ ${display}\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'inherit', cwd: repoRoot });
    child.on('error', reject);
    child.on('close', (status, signal) => resolve(status ?? (signal ? 128 : 1)));
  });
}

function erofsOci(args: string[]): Promise<number> {
  // Paths shown relative to the checkout, as a user typing the commands there would write them.
  const shown = args.map((arg) => arg.replaceAll(repoRoot, ''));
  return sh(`npx erofs-oci ${shown.join(' ')}`, nodeBinary, [cliEntry, ...args]);
}

async function main(): Promise<number> {
  await rm(demoDir, { recursive: true, force: true });
  await mkdir(demoDir, { recursive: true });
  const layersDir = join(demoDir, 'layers');
  let failed = 0;
  const step = (status: number) => {
    if (status !== 0 && failed === 0) failed = status;
    return status;
  };

  if (
    step(
      await sh(
        `python3 test-support/fixtures.py layers demo ${relative(repoRoot, layersDir)} --compression gzip`,
        'python3',
        [join(testSupportDir, 'fixtures.py'), 'layers', 'demo', layersDir, '--compression', 'gzip'],
      ),
    ) !== 0
  ) {
    return failed;
  }
  const layers = [join(layersDir, 'layer-0.tar.gz'), join(layersDir, 'layer-1.tar.gz')];
  const image = join(demoDir, 'demo.erofs');
  if (
    step(await erofsOci(['build', '--label', 'demo', ...layers.map((layer) => `tar:${layer}`), image])) !== 0
  ) {
    return failed;
  }
  step(await erofsOci(['inspect', image]));
  step(await erofsOci(['inspect', image, '/etc']));
  step(await erofsOci(['inspect', image, '/usr/bin/hello']));

  if (!isRoot()) {
    process.stdout.write('\n(not root: skipping the kernel mount; run `sudo npm run demo` to see it)\n');
    return failed;
  }
  await withMount(image, async (mountpoint) => {
    process.stdout.write(`\n$ mount -t erofs -o ro ${relative(repoRoot, image)} ${mountpoint}\n`);
    step(
      await sh(`ls -lan --time-style=full-iso ${mountpoint}`, 'ls', [
        '-lan',
        '--time-style=full-iso',
        mountpoint,
      ]),
    );
    step(
      await sh(`ls -lanR ${mountpoint}/etc ${mountpoint}/usr`, 'ls', [
        '-lanR',
        join(mountpoint, 'etc'),
        join(mountpoint, 'usr'),
      ]),
    );
    step(await sh(`cat ${mountpoint}/etc/os-release`, 'cat', [join(mountpoint, 'etc', 'os-release')]));
    step(await sh(`${mountpoint}/bin/hello`, 'sh', [join(mountpoint, 'bin', 'hello')]));
    step(
      await sh(`getfattr -d -m - ${mountpoint}/usr/bin/ping`, 'getfattr', [
        '-d',
        '-m',
        '-',
        '-e',
        'hex',
        join(mountpoint, 'usr', 'bin', 'ping'),
      ]),
    );
    process.stdout.write(`\n$ umount ${mountpoint}\n`);
  });
  return failed;
}

process.exitCode = await main();
