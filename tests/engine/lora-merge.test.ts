// The WGSL merge kernel on Dawn (SwiftShader here) against the float64 reference, and the planner.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { planMerge, segmentTiles, type MergeSegmentSpec } from '../../workers/lora/merge-plan.ts';
import { mergeSelfTest } from '../../workers/lora/self-test.ts';
import { runtime } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

test('merge kernel matches the float64 reference (f32 and packed f16, batched and direct)', async () => {
  const rt = await runtime('webgpu');
  const results = await mergeSelfTest(rt.gpu!.device);
  assert.equal(results.length, 4);
  for (const r of results) {
    assert.ok(r.restoredExactly, `${r.storage}/${r.mode}: a weight with no LoRA term was not restored bit for bit`);
    assert.ok(r.maxError <= r.tolerance, `${r.storage}/${r.mode}: error ${r.maxError} > ${r.tolerance}`);
    assert.ok(r.maxError > 0 || r.storage === 'f32', 'f16 results are rounded, so some error is expected');
  }
  const batched = results.find((r) => r.mode === 'batched' && r.storage === 'f32')!;
  const direct = results.find((r) => r.mode === 'direct' && r.storage === 'f32')!;
  assert.ok(batched.dispatches < direct.dispatches, `batched ${batched.dispatches} vs direct ${direct.dispatches} dispatches`);
});

test('planner: tiles cover every segment once, scratch packing respects its size', () => {
  const specs: MergeSegmentSpec[] = [
    { target: 'a', rows: 17, cols: 33, chunk: 0, baseOffset: 0, terms: [{ up: 0, down: 0, rank: 2, scale: 1 }] },
    { target: 'b', rows: 320, cols: 2880, chunk: 0, baseOffset: 568, terms: [{ up: 0, down: 0, rank: 8, scale: 1 }] },
    { target: 'c', rows: 5, cols: 8, chunk: 1, baseOffset: 0, terms: [] },
    { target: 'd', rows: 64, cols: 64, chunk: 1, baseOffset: 40, terms: [{ up: 0, down: 0, rank: 4, scale: 0.5 }] },
  ];
  const plan = planMerge(specs, { mode: 'batched', elementBytes: 4, scratchElements: 320 * 2880 });
  assert.deepEqual(plan.restores.map((r) => [r.target, r.copy.bytes]), [['c', 160]]);
  // a and b share chunk 0 but do not fit the scratch together; d is in another chunk.
  assert.deepEqual(plan.passes.map((p) => p.copies.map((c) => c.target)), [['a'], ['b'], ['d']]);
  const total = plan.passes.reduce((a, p) => a + p.tiles, 0);
  const want = ['a', 'b', 'd'].map((t) => specs.find((s) => s.target === t)!).reduce((a, s) => a + segmentTiles(s.rows, s.cols).tiles, 0);
  assert.equal(total, want);
  assert.equal(segmentTiles(17, 33).tiles, 2 * 2);
  assert.equal(plan.scratchBytes, 320 * 2880 * 4);
  const bigScratch = planMerge(specs, { mode: 'batched', elementBytes: 4, scratchElements: 1 << 24 });
  assert.equal(bigScratch.passes.length, 2);
  assert.equal(bigScratch.passes[0].copies[1].srcByte, 568 * 4, 'segments are packed at aligned offsets');
  assert.throws(() => planMerge([{ ...specs[0] }], { mode: 'direct', elementBytes: 2, scratchElements: 0 }), /even row lengths/);
});
