// The denoising step as a graph (workers/graph/step.ts) on the wasm EP and the WebGPU EP (Dawn), against
// a float64 reference written out here: guidance, the sampler's linear step, the next UNet input and
// the live preview, which above 512 pixels is averaged over blocks of latent cells on the GPU, so
// that a large picture's preview comes back small. The latent's sides are no multiple of the block,
// as a 1000x1600 picture's are not.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import { sessionOptions, type Backend } from '../../workers/engine/runtime.ts';
import { Rng } from '../../workers/engine/random.ts';
import { buildStepGraph, PREVIEW_RGB, previewFactor, STEP_COEFFICIENTS } from '../../workers/graph/step.ts';
import { maxAbsDiff, runtime } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

test('the preview\'s block: 1 up to 512 pixels a side, then ceil(cells / 64)', () => {
  assert.equal(previewFactor(64, 64), 1);
  assert.equal(previewFactor(64, 65), 2);
  assert.equal(previewFactor(128, 96), 2);
  assert.equal(previewFactor(125, 200), 4);
});

test('one step on the GPU: guidance, the linear step, the next input and a preview averaged over 3x3 blocks, against float64 (wasm and WebGPU)', async () => {
  const [C, H, W, f] = [4, 13, 20, 3];
  const n = C * H * W;
  const rng = new Rng(77);
  const pred = rng.normal(2 * n);
  const x = rng.normal(n);
  const memory = rng.normal(n);
  const z = rng.normal(n);
  // cfg, p, q, a, b, c, d, e, scaleNext (signal and noise: inpainting's, unused here)
  const k = Float32Array.from([6.5, 0.9, -0.3, 0.7, 0.2, 0.25, -0.1, 0.05, 0.8, 0, 0]);
  assert.equal(k.length, STEP_COEFFICIENTS.length);

  // the reference, in float64
  const [cfg, p, q, a, b, c, d, e, scaleNext] = Array.from(k, Number);
  const next = new Float64Array(n);
  const x0 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const eps = pred[i] + cfg * (pred[n + i] - pred[i]);
    x0[i] = p * x[i] + q * eps;
    next[i] = a * x[i] + b * eps + c * x0[i] + d * memory[i] + e * z[i];
  }
  const modelIn = new Float64Array(2 * n);
  for (let i = 0; i < n; i++) modelIn[i] = modelIn[n + i] = scaleNext * next[i];
  const [ph, pw] = [Math.floor(H / f), Math.floor(W / f)];
  const preview = new Float64Array(3 * ph * pw);
  for (let rgb = 0; rgb < 3; rgb++)
    for (let py = 0; py < ph; py++)
      for (let px = 0; px < pw; px++) {
        let sum = 0;
        for (let ch = 0; ch < C; ch++) for (let dy = 0; dy < f; dy++) for (let dx = 0; dx < f; dx++) sum += PREVIEW_RGB[ch][rgb] * next[(ch * H + py * f + dy) * W + px * f + dx];
        preview[(rgb * ph + py) * pw + px] = (sum / (f * f) + 1) * 127.5;
      }

  for (const backend of ['wasm', 'webgpu'] as Backend[]) {
    const rt = await runtime(backend);
    const g = buildStepGraph({ batch: 2, channels: C, height: H, width: W, previewFactor: f });
    const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
    const t = (data: Float32Array, dims: number[]) => new rt.ort.Tensor('float32', data, dims);
    const one = [1, C, H, W];
    const out: Record<string, OrtNs.Tensor> = await session.run({ pred: t(pred, [2, C, H, W]), x: t(x, one), memory: t(memory, one), z: t(z, one), k: t(k, [k.length]) });
    await session.release();
    assert.deepEqual(out.preview.dims, [1, 3, ph, pw], `${backend}: the preview is the latent's size over the block, rounded down`);
    // float32 against float64: latents of size ~10 within 1e-5 relative, preview bytes within 1e-3
    const want: [string, Float64Array, number][] = [['x_next', next, 1e-4], ['x0', x0, 1e-4], ['model_in', modelIn, 1e-4], ['preview', preview, 1e-3]];
    for (const [name, ref, tol] of want) {
      const { diff } = maxAbsDiff(out[name].data as Float32Array, ref);
      assert.ok(diff <= tol, `${backend} ${name}: max |diff| ${diff.toExponential(2)}`);
    }
    for (const v of Object.values(out)) v.dispose();
  }
});
