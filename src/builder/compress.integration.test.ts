/**
 * `build --compress` end to end through the CLI: the fixture layers (every entry type, extracted by GNU
 * tar) plus files that compress well and badly at sizes around block, pcluster and segment boundaries,
 * built with each algorithm and checked by the kernel (mount, tree snapshot with content hashes against
 * the source tree), by `fsck.erofs --extract` where its version knows the algorithm (Debian's 1.5: lz4
 * only; EROFS_UTILS_BIN=/opt/erofs-utils-1.9/bin for all) and by our own reader (`inspect --cat`).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import {
  cliEntry,
  erofsUtils,
  findExecutable,
  fsck,
  isRoot,
  nodeBinary,
  run,
  runCli,
  snapshot,
  type TmpDir,
  tmpdir,
  withMount,
} from '../../test-support/kernel.ts';
import { assertSameTree, buildExpected, generateLayers } from '../../test-support/oracle.ts';

const utils = await erofsUtils();
const skip: string | false = !isRoot()
  ? 'needs root: the tests mount images'
  : !findExecutable('tar') || !findExecutable('python3')
    ? 'needs GNU tar and python3'
    : false;

const fsckKnows = (alg: string): boolean =>
  utils.fsck !== null &&
  (alg.startsWith('lz4') || (utils.version !== null && utils.version[0]! * 100 + utils.version[1]! >= 106));

async function scratch(t: TestContext): Promise<TmpDir> {
  const dir = await tmpdir('erofs-oci-compress-');
  t.after(() => dir.cleanup());
  return dir;
}

async function build(args: string[], output: string): Promise<void> {
  const result = await runCli([
    'build',
    '--quiet',
    '--timestamp',
    '1700000000',
    '--uuid',
    'clear',
    ...args,
    output,
  ]);
  assert.equal(
    result.status,
    0,
    `erofs-oci build ${args.join(' ')} failed (${result.status}):\n${result.stderr}`,
  );
}

/** Text-like data (compresses well) and random data (does not), at the sizes where layouts change. */
async function addBoundaryFiles(tree: string): Promise<string[]> {
  const text = (n: number) => {
    const words = ['erofs', 'pcluster', 'lcluster', 'kernel', 'block', '\n', 'zstd', 'deflate', 'lz4'];
    let seed = n;
    const parts: string[] = [];
    let length = 0;
    while (length < n) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const w = `${words[seed % words.length]}${seed % 97} `;
      parts.push(w);
      length += w.length;
    }
    return Buffer.from(parts.join('')).subarray(0, n);
  };
  const names: string[] = [];
  const sizes = [
    1,
    4095,
    4096,
    4097,
    8191,
    8193,
    65535,
    65536,
    65537,
    131073,
    1048577,
    4194305,
    17 * 1048576 + 3,
  ];
  for (const size of sizes) {
    await writeFile(join(tree, `text-${size}`), text(size));
    names.push(`text-${size}`);
  }
  for (const size of [4097, 65537, 300000, 17 * 1048576 + 5]) {
    await writeFile(join(tree, `random-${size}`), randomBytes(size));
    names.push(`random-${size}`);
  }
  // Mixed: compressible, then random, then zeros.
  await writeFile(
    join(tree, 'mixed'),
    Buffer.concat([text(200000), randomBytes(150000), Buffer.alloc(300000), text(5000)]),
  );
  names.push('mixed');
  return names;
}

test('build --compress: every algorithm, read back by the kernel, fsck.erofs and our reader', {
  skip,
}, async (t) => {
  const dir = await scratch(t);
  const layers = await generateLayers('everything', join(dir.path, 'layers'));
  const tree = join(dir.path, 'tree');
  await buildExpected(tree, layers);
  const files = await addBoundaryFiles(tree);
  const expected = await snapshot(tree);
  const cases: { compress: string; pcluster?: number; blockSize?: number }[] = [
    { compress: 'lz4' },
    { compress: 'lz4', pcluster: 65536 },
    { compress: 'lz4hc:9', pcluster: 16384 },
    { compress: 'lz4hc', pcluster: 65536 },
    { compress: 'lz4hc:12' },
    { compress: 'deflate' },
    { compress: 'deflate:6', pcluster: 65536 },
    { compress: 'zstd' },
    { compress: 'zstd:10', pcluster: 131072 },
    { compress: 'lz4', pcluster: 4096, blockSize: 512 },
    { compress: 'zstd', pcluster: 1048576 },
  ];
  for (const c of cases) {
    const name = `${c.compress} pcluster ${c.pcluster ?? 'default'} block ${c.blockSize ?? 4096}`;
    await t.test(name, async (t) => {
      const image = join(dir.path, `${name.replaceAll(/[^a-z0-9]+/g, '-')}.erofs`);
      const args = ['--compress', c.compress];
      if (c.pcluster) args.push('--pcluster-size', String(c.pcluster));
      if (c.blockSize) args.push('--block-size', String(c.blockSize));
      await build([...args, `dir:${tree}`], image);
      const actual = await withMount(image, (mountpoint) => snapshot(mountpoint));
      assertSameTree(expected, actual, {});
      const alg = c.compress.split(':')[0] as string;
      if (fsckKnows(alg) && (c.blockSize === undefined || (utils.version?.[1] ?? 0) >= 6)) await fsck(image);
      else t.diagnostic(`fsck.erofs ${utils.version?.join('.')} skipped: does not know ${alg}`);
      for (const file of files) {
        const cat = `"${nodeBinary}" "${cliEntry}" inspect --cat "${image}" "/${file}" | cmp - "${join(tree, file)}"`;
        const result = await run('sh', ['-c', cat]);
        assert.equal(result.status, 0, `inspect --cat /${file}: ${result.stdout}${result.stderr}`);
      }
      const inspect = await runCli(['inspect', '--json', image, '/text-1048577']);
      assert.match(inspect.stdout, /compressed/, 'a text file of 1 MiB is stored compressed');
      const plain = await runCli(['inspect', '--json', image, '/random-300000']);
      assert.doesNotMatch(plain.stdout, /compressed/, 'random data stays plain');
    });
  }
});

test('build --compress is reproducible and refuses index mode', { skip }, async (t) => {
  const dir = await scratch(t);
  const layers = await generateLayers('sizes', join(dir.path, 'layers'));
  const tree = join(dir.path, 'tree');
  await buildExpected(tree, layers);
  await addBoundaryFiles(tree);
  const sizes: Record<string, number> = {};
  for (const compress of ['lz4', 'lz4hc', 'zstd']) {
    const a = join(dir.path, `a-${compress}.erofs`);
    const b = join(dir.path, `b-${compress}.erofs`);
    await build(['--compress', compress, '--pcluster-size', '65536', `dir:${tree}`], a);
    await build(['--compress', compress, '--pcluster-size', '65536', `dir:${tree}`], b);
    const bytes = await readFile(a);
    assert.ok(bytes.equals(await readFile(b)), `${compress}: two builds give the same bytes`);
    sizes[compress] = bytes.byteLength;
  }
  // The HC encoder (hash chains, lazy matching) packs the same data tighter than the fast one.
  assert.ok((sizes.lz4hc as number) < (sizes.lz4 as number), `lz4hc ${sizes.lz4hc} < lz4 ${sizes.lz4}`);
  const refused = await runCli([
    'build',
    '--mode',
    'index',
    '--compress',
    'lz4',
    `tar:${layers[0]}`,
    join(dir.path, 'i.erofs'),
  ]);
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /index mode cannot compress/);
});
