import assert from 'node:assert/strict';
import { test } from 'node:test';
import { layerMemoryBudget } from './serve.ts';

const MiB = 2 ** 20;

test('layerMemoryBudget: 32 MiB per layer up to four layers, then a share of 128 MiB, never below 16 MiB', () => {
  assert.deepEqual(
    [1, 4, 5, 6, 8, 10, 40].map((n) => Math.round((layerMemoryBudget(n) / MiB) * 10) / 10),
    [32, 32, 25.6, 21.3, 16, 16, 16],
  );
  for (let n = 1; n <= 100; n++) {
    const each = layerMemoryBudget(n);
    assert.ok(each >= 16 * MiB && each <= 32 * MiB);
    assert.ok(n * each <= Math.max(128 * MiB, n * 16 * MiB), `${n} layers`);
  }
});
