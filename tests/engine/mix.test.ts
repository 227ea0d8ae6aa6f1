// The graphs that keep several predictions a step on the GPU (workers/graph/mix.ts), on the wasm EP and
// on the WebGPU EP (Dawn): the weighted sum against its closed form, the step's measures against the
// CPU loop's float64 ones (workers/composition/frequency.ts).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import { cosineSimilarity, latentHighBand } from '../../workers/composition/frequency.ts';
import { Rng } from '../../workers/engine/random.ts';
import { sessionOptions, type Backend } from '../../workers/engine/runtime.ts';
import type { GraphBuilder } from '../../workers/graph/builder.ts';
import { buildCombineGraph, buildMeasureGraph } from '../../workers/graph/mix.ts';
import { runtime } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const BACKENDS: Backend[] = ['wasm', 'webgpu'];

async function run(backend: Backend, g: GraphBuilder, inputs: Record<string, { data: Float32Array; dims: number[] }>): Promise<Record<string, Float32Array>> {
  const rt = await runtime(backend);
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
  const feeds: Record<string, OrtNs.Tensor> = {};
  for (const [k, v] of Object.entries(inputs)) feeds[k] = new rt.ort.Tensor('float32', v.data, v.dims);
  const out = await session.run(feeds);
  await session.release();
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
}

test('the weighted sum of whole tensors is its closed form', async () => {
  const dims = [2, 4, 6, 5];
  const n = dims.reduce((a, b) => a * b);
  const rng = new Rng(3);
  for (const count of [1, 3, 7]) {
    const ins = Array.from({ length: count }, () => rng.normal(n));
    const w = Float32Array.from({ length: count }, (_, j) => (j % 2 ? -1 : 1) * (0.25 + j / 3));
    const feeds = Object.fromEntries([['w', { data: w, dims: [count] }], ...ins.map((d, j) => [`in${j}`, { data: d, dims }] as const)]);
    for (const backend of BACKENDS) {
      const { out } = await run(backend, buildCombineGraph(count, dims), feeds);
      for (let i = 0; i < n; i++) {
        let want = 0;
        for (let j = 0; j < count; j++) want += w[j] * ins[j][i];
        assert.ok(Math.abs(out[i] - want) <= 1e-5 * Math.max(1, Math.abs(want)), `${count} inputs on ${backend}, element ${i}: ${out[i]} vs ${want}`);
      }
    }
  }
});

test("a step's measures on the GPU are the CPU loop's: each clean estimate's high band, the mix's, both latents', their cosine", async () => {
  const rng = new Rng(11);
  // a power-of-two latent, one cropped to its centred window, and a cutoff past every radius
  const cases = [
    { batch: 2 as const, channels: 4, height: 8, width: 8, predictions: 2, cutoff: 2 },
    { batch: 1 as const, channels: 4, height: 12, width: 10, predictions: 1, cutoff: 3 },
    { batch: 2 as const, channels: 4, height: 8, width: 16, predictions: 0, cutoff: 1 },
    { batch: 2 as const, channels: 4, height: 8, width: 8, predictions: 5, cutoff: 99 },
    // an all-zero latent: no largest bin, no cosine (0 on the CPU)
    { batch: 1 as const, channels: 4, height: 8, width: 8, predictions: 1, cutoff: 2, zero: true },
  ];
  for (const o of cases) {
    const cells = o.channels * o.height * o.width;
    const one = [1, o.channels, o.height, o.width];
    const batched = [o.batch, o.channels, o.height, o.width];
    // latents with a falling spectrum (a smoothed field) plus noise, like a denoising step's
    const field = () => {
      const z = rng.normal(cells);
      return z.map((v, i) => v + 0.5 * z[(i + 1) % cells] + 0.25 * z[(i + o.width) % cells]);
    };
    const x = 'zero' in o ? new Float32Array(cells) : field();
    const next = field().map((v, i) => 0.7 * x[i] + 0.3 * v);
    const preds = Array.from({ length: o.predictions }, () => rng.normal(cells * o.batch));
    const mix = rng.normal(cells * o.batch);
    const [cfg, p, q] = [6.5, 1.3, -0.8];
    const clean = (pred: Float32Array) => {
      const out = new Float32Array(cells);
      for (let i = 0; i < cells; i++) {
        const eps = o.batch === 2 ? pred[i] + cfg * (pred[cells + i] - pred[i]) : pred[i];
        out[i] = p * x[i] + q * eps;
      }
      return out;
    };
    const band = (l: Float32Array) => latentHighBand(l, o.channels, o.height, o.width, o.cutoff);
    const want = [...preds.map((d) => band(clean(d))), band(clean(mix)), band(next), band(x), cosineSimilarity(next, x)];
    const feeds = {
      x: { data: x, dims: one },
      next: { data: next, dims: one },
      mix: { data: mix, dims: batched },
      k: { data: Float32Array.from([cfg, p, q]), dims: [3] },
      ...Object.fromEntries(preds.map((d, j) => [`pred${j}`, { data: d, dims: batched }])),
    };
    for (const backend of BACKENDS) {
      const { measures } = await run(backend, buildMeasureGraph(o), feeds);
      assert.equal(measures.length, want.length);
      want.forEach((v, i) => assert.ok(Math.abs(measures[i] - v) <= 1e-5 + 1e-4 * Math.abs(v), `${JSON.stringify(o)} on ${backend}, measure ${i}: ${measures[i]} vs ${v}`));
      if (o.cutoff < 9 && !('zero' in o)) assert.ok(want.slice(0, -1).every((v) => v > 0), 'the bands are not empty');
      // kept on the GPU: the measures written as one row of a record, the other rows as they were
      // (a NaN or an infinity in another row stays in its row)
      const rows = 3;
      const history = rng.normal(rows * want.length);
      history[1] = NaN;
      history[history.length - 1] = Infinity;
      for (const row of [0, rows - 1]) {
        const { history_out } = await run(backend, buildMeasureGraph({ ...o, rows }), { ...feeds, history: { data: history, dims: [rows, want.length] }, row: { data: Float32Array.of(row), dims: [1] } });
        history_out.forEach((v, i) => {
          const r = Math.floor(i / want.length);
          const expected = r === row ? measures[i % want.length] : history[i];
          assert.ok(Object.is(v, expected) || Math.abs(v - expected) <= 1e-6 * (1 + Math.abs(expected)), `${JSON.stringify(o)} on ${backend}, row ${row}, kept ${i}: ${v} vs ${expected}`);
        });
      }
    }
  }
});
