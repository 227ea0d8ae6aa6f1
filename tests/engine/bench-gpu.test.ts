// `npm run bench:gpu`, the one command for a real GPU, run on the tiny architecture so that it cannot
// rot unseen: its report's measured numbers against independent ones. The readbacks per step are the
// device's own count of buffers mapped for reading; the weight transposes per step are the EP's
// Transpose programs the device logged on our weight buffers, and must equal what the memory model
// counts from the graph (how many, and the bytes they move).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { TINY_CONFIG } from '../../workers/checkpoint/config.ts';
import { DEFAULT_BUFFER_LIMIT } from '../../workers/graph/builder.ts';
import { graphMemory } from '../../workers/graph/memory.ts';
import { buildUNet } from '../../workers/graph/unet.ts';

test('bench:gpu on the tiny model: readbacks per step measured 1 before and 0 after, weight transposes as the device logged them and the graph counts them, layout transposes only in NHWC, the largest buffer as planned', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-gpu-'));
  try {
    const out = join(dir, 'gpu.json');
    const r = spawnSync(
      process.execPath,
      ['--liftoff-only', '--import', 'tsx', '--import', './scripts/wgsl.mjs', 'bench/gpu.ts', '--arch', 'tiny', '--size', '64', '--steps', '2', '--precision', 'fp32,fp16', '--repeats', '1', '--variants', 'before,after', '--no-lora', '--child-timeout', '90', '--child-attempts', '4', '--out', out],
      { encoding: 'utf8', timeout: 900_000 },
    );
    assert.equal(r.status, 0, `${r.error ?? ''}\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`);
    const report = JSON.parse(readFileSync(out, 'utf8'));
    // SwiftShader has no shader-f16: the fp16 rows are said to be left out, not dropped in silence
    assert.deepEqual(report.skipped, report.adapter.shaderF16 ? [] : ['fp16: the adapter has no shader-f16']);
    const rows = Object.fromEntries(report.rows.filter((row: { precision: string }) => row.precision === 'fp32').map((row: { variant: string }) => [row.variant, row]));
    const { before, after } = rows;
    for (const row of [before, after]) {
      assert.equal(row.finite, true, `${row.variant}: ${row.error ?? ""}`);
      assert.ok(row.unetMsPerStep > 0 && row.secondsPerImage > 0 && row.dispatches > 0, JSON.stringify(row));
      // onnxruntime's own profile is for GPUs: on a CPU adapter it is not run, and what needs it is null
      assert.equal(row.profiledDispatches, report.adapter.cpu ? undefined : row.dispatches, row.variant);
      if (report.adapter.cpu) assert.equal(row.layoutTransposeBytesPerStep, null);
    }
    // seconds per image from the loop each stands for: the CPU loop, and the GPU loop replaying a captured UNet
    assert.equal(before.secondsPerImageLoop, 'cpu');
    assert.equal(after.secondsPerImageLoop, 'captured');
    // the CPU loop reads every prediction back; the GPU loop reads nothing until the image
    assert.equal(before.readbacksPerStep, 1);
    assert.equal(after.readbacksPerStep, 0);
    // the device's log against the memory model, for the same graphs (NHWC transposes every
    // convolution weight; NCHW only the k x k ones the graph did not unfold)
    const unet = (attention: 'explicit' | 'chunked', conv: 'direct' | 'auto') =>
      buildUNet(TINY_CONFIG.unet, { batch: 2, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32', attention, bufferLimit: DEFAULT_BUFFER_LIMIT, norm: 'reductions', conv });
    const model = {
      before: graphMemory(unet('explicit', 'direct'), { transposesConvWeights: true }),
      after: graphMemory(unet('chunked', 'auto'), { transposesConvWeights: true, pointwiseAsIs: true }),
    };
    for (const [name, row] of [['before', before], ['after', after]] as const) {
      assert.equal(row.weightTransposes, model[name].weightTransposes, name);
      assert.equal(row.weightTransposeBytesPerStep, model[name].weightTransposeBytes, name);
    }
    assert.ok(after.weightTransposes < before.weightTransposes && after.dispatches < before.dispatches, `${after.weightTransposes} ${after.dispatches}`);
    // the EP's own transposes around its kernels: NHWC puts them around the convolutions, NCHW none
    assert.ok(before.layoutTransposes > 0, JSON.stringify(before.dispatchesByProgram));
    assert.equal(after.layoutTransposes, 0, JSON.stringify(after.dispatchesByProgram));
    // the largest buffer the device saw is the one the plan names
    assert.equal(after.largestBufferBytes, after.plannedLargestBufferBytes);
    // the plan at 512x512 for SD 1.5 rides along, as the README quotes it
    assert.ok(report.plan512.length >= 2 && report.plan512.every((p: { peakBytes: number; fits: boolean }) => p.peakBytes > 1e9 && p.fits), JSON.stringify(report.plan512).slice(0, 500));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
