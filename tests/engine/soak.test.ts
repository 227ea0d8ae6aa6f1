// A short soak (the CLI's `soak` runs 200): random scenes and methods, some cancelled part-way, in
// one engine. Every run ends done or cancelled, the GPU bytes after each run come back to the level
// of the last run with the same compiled graphs, and the heap does not grow.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { soak } from '../../workers/node/soak.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

test('soak: random scenes and methods, a share cancelled; no failure, no GPU level change, no heap growth', async () => {
  const { dir } = await tinyModelDir();
  const { engine, loras } = await openTinyEngine(dir, await runtime('webgpu'), ['kohya', 'loha', 'peft']);
  const report = await soak({ engine, loras, runs: 4, seed: 20261125, cancelShare: 0.4, sizes: [64], steps: [1, 1] });
  assert.equal(report.runs, 4);
  assert.deepEqual(report.failures, []);
  assert.equal(report.done + report.cancelled, 4);
  assert.ok(report.cancelled >= 1 && report.done >= 1, `${report.done} done, ${report.cancelled} cancelled`);
  assert.equal(report.gpuLevelChanges, 0);
  assert.ok(report.gpuBytesLast <= report.gpuBytesMax && report.gpuBytesFirst >= report.gpuBytesLoaded);
  assert.ok(report.heapMB.end - report.heapMB.early < 16, `heap ${report.heapMB.early} -> ${report.heapMB.end} MB`);
});
