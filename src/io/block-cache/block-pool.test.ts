import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { BlockPool } from './block-pool.ts';

test('BlockPool never hands out a buffer someone still holds, reuses only what all let go, and keeps its bound', () => {
  const step = fc.oneof(
    fc.record({ kind: fc.constant('take' as const), length: fc.integer({ min: 1, max: 4096 }) }),
    fc.record({
      kind: fc.constantFrom('retain' as const, 'release' as const, 'escape' as const),
      pick: fc.nat(),
    }),
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 3 }), fc.array(step, { maxLength: 200 }), (maxFree, steps) => {
      const pool = new BlockPool(4096, maxFree);
      // The model: references per buffer handed out; buffers escaped; every buffer ever seen.
      const held = new Map<ArrayBufferLike, { bytes: Uint8Array; count: number }>();
      const escaped = new Set<ArrayBufferLike>();
      const seen = new Set<ArrayBufferLike>();
      for (const s of steps) {
        if (s.kind === 'take') {
          const bytes = pool.take(s.length);
          assert.equal(bytes.byteLength, s.length);
          assert.equal(bytes.buffer.byteLength, 4096);
          assert.ok(!held.has(bytes.buffer), 'a buffer still held was handed out again');
          assert.ok(!escaped.has(bytes.buffer), 'an escaped buffer was handed out again');
          const reused = seen.has(bytes.buffer);
          seen.add(bytes.buffer);
          held.set(bytes.buffer, { bytes, count: 1 });
          if (reused) assert.ok(pool.reused > 0);
          continue;
        }
        const entries = [...held.values()];
        if (entries.length === 0) continue;
        const entry = entries[s.pick % entries.length] as { bytes: Uint8Array; count: number };
        if (s.kind === 'retain') {
          pool.retain(entry.bytes);
          entry.count++;
        } else if (s.kind === 'release') {
          pool.release(entry.bytes);
          if (--entry.count === 0) held.delete(entry.bytes.buffer);
        } else {
          pool.escape(entry.bytes);
          held.delete(entry.bytes.buffer);
          escaped.add(entry.bytes.buffer);
          // Whatever holders remain release in vain: the buffer is not the pool's any more.
          pool.release(entry.bytes);
        }
        for (const { bytes, count } of held.values()) assert.equal(pool.references(bytes), count);
        assert.ok(pool.free <= maxFree);
      }
    }),
  );
});

test('BlockPool ignores bytes it did not hand out', () => {
  const pool = new BlockPool(4096, 2);
  const own = new Uint8Array(4096);
  pool.retain(own);
  pool.release(own);
  pool.release(own);
  assert.equal(pool.free, 0);
  assert.equal(pool.references(own), 0);
  const taken = pool.take(100);
  pool.release(taken);
  assert.equal(pool.free, 1);
  assert.equal(pool.take(4096).buffer, taken.buffer);
});
