// Gradient guidance on the tiny model: the whole backward path (latent -> down, mid and up blocks ->
// the maps the losses read) run by onnxruntime on wasm and WebGPU, against central finite differences
// of the same forward graph interpreted in float64, with and without a layout's regions, isolation and
// per-region output projections; then guided generations: the in-box share of every concept rises, L
// falls, L_region stays above 0 with isolation on, each term, and the code's early stop.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import { sessionOptions, type Backend } from '../../workers/engine/runtime.ts';
import { timestepEmbedding } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { makeTinyModel } from '../../workers/engine/test-model.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
import { buildGuidanceGraph, guidanceLayers, guidanceSeedName, GUIDANCE_GRAD_OUTPUT } from '../../workers/graph/guidance-graph.ts';
import { elementCount as size } from '../../workers/graph/shapes.ts';
import { regionKeyInputName, regionOutInputName, regionValueInputName, regionWeightInputName, selfIsolationInputName, unetAttentionLayers, type UNetGraphOptions } from '../../workers/graph/unet.ts';
import { attentionGrids, gridMasks, isolationFactors, regionWeights } from '../../workers/layout/masks.ts';
import { ISOLATION_FACTORS } from '../../workers/graph/layers.ts';
import { evalGraph } from '../../workers/reference/graph-eval.ts';
import type { T } from '../../workers/reference/nn.ts';
import type { GuidanceOptions } from '../../workers/api/contract.ts';
import { openTinyEngine, owlAndFoxJob } from '../../workers/node/tiny.ts';
import { runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const model = makeTinyModel();
const cfg = model.config.unet;
const LH = 8;
const LW = 8;
const textLen = model.config.textEncoder.maxPositions;

/** The graph inputs other than the weights: latent, time, text, and a layout's region inputs. */
function inputs(opt: UNetGraphOptions): Map<string, T> {
  const rng = new Rng(21);
  const c0 = cfg.blockOutChannels[0];
  const m = new Map<string, T>([
    ['sample', { data: Float64Array.from(rng.normal(cfg.inChannels * LH * LW)), shape: [1, cfg.inChannels, LH, LW] }],
    ['timestep_embedding', { data: Float64Array.from(timestepEmbedding(601, c0)), shape: [1, c0] }],
    ['encoder_hidden_states', { data: Float64Array.from(rng.normal(textLen * cfg.crossAttentionDim), (v) => 0.5 * v), shape: [1, textLen, cfg.crossAttentionDim] }],
  ]);
  if (!opt.regions) return m;
  const boxes = [{ x: 0, y: 0, width: 32, height: 40 }, { x: 24, y: 16, width: 40, height: 48 }];
  for (const l of unetAttentionLayers(cfg, LH, LW).filter((l) => l.kind === 'cross')) {
    const c = cfg.blockOutChannels[Math.round(Math.log2(LH / l.h))];
    for (const name of [regionKeyInputName(l.name), regionValueInputName(l.name)]) {
      const dims = [1, opt.regions, textLen, c];
      m.set(name, { data: Float64Array.from(rng.normal(size(dims))), shape: dims });
    }
  }
  for (const grid of attentionGrids(unetAttentionLayers(cfg, LH, LW))) {
    const masks = gridMasks(boxes, LW * 8, LH * 8, grid.rows, grid.cols);
    const n = grid.rows * grid.cols;
    m.set(regionWeightInputName(grid.rows, grid.cols), { data: Float64Array.from(regionWeights(masks)), shape: [opt.regions, n] });
    if (opt.isolation) m.set(selfIsolationInputName(grid.rows, grid.cols), { data: Float64Array.from(isolationFactors(masks)), shape: [2, n, ISOLATION_FACTORS] });
  }
  if (opt.regionOutputs) {
    for (const l of unetAttentionLayers(cfg, LH, LW).filter((l) => l.kind === 'cross')) {
      const c = cfg.blockOutChannels[Math.round(Math.log2(LH / l.h))];
      for (let r = 1; r < opt.regions; r++) {
        m.set(regionOutInputName(r, l.name, 'weight'), { data: Float64Array.from(rng.normal(c * c), (v) => v / Math.sqrt(c)), shape: [c, c] });
        m.set(regionOutInputName(r, l.name, 'bias'), { data: Float64Array.from(rng.normal(c), (v) => 0.05 * v), shape: [c] });
      }
    }
  }
  return m;
}

async function checkPath(backend: Backend, layout: boolean, recomputeAbove?: number) {
  const rt = await runtime(backend);
  const opt: UNetGraphOptions = { batch: 1, latentH: LH, latentW: LW, textLen, dtype: 'float32', ...(layout ? { regions: 3, isolation: true, regionOutputs: true } : {}) };
  const layers = guidanceLayers(cfg, LH, LW);
  assert.ok(layers.cross.some((l) => l.startsWith('down_blocks.')) && layers.cross.some((l) => l.startsWith('up_blocks.')), 'maps from the down and the up blocks');
  const maps = buildGuidanceGraph(cfg, opt, layers, false);
  const grad = buildGuidanceGraph(cfg, opt, layers, true, recomputeAbove);
  assert.ok(!grad.records.some((r) => r.outputs.some((o) => o === 'noise_pred')), 'no noise prediction in the guidance graph');
  assert.ok([...grad.weights.keys()].some((w) => w.startsWith('mid_block.')), 'the backward pass runs through the mid block');
  assert.ok(![...grad.weights.keys()].some((w) => w.startsWith('conv_out') || w.startsWith('conv_norm_out')), 'and stops at the last map layer');
  const given = inputs(opt);
  const rng = new Rng(8);
  const seeds = new Map(maps.outputs.map((o) => [o.name, Float64Array.from(rng.normal(size(o.dims)))]));
  // onnxruntime: the backward graph
  const ws = new WeightSet(rt, 'float32');
  for (const spec of grad.weights.values()) ws.add(spec, model.weights.unet.get(spec.name)!);
  const session = await rt.ort.InferenceSession.create(grad.encode(), sessionOptions(rt));
  const feeds: Record<string, OrtNs.Tensor> = ws.feeds(grad.weights.keys());
  for (const i of grad.inputs) {
    const seed = [...seeds].find(([name]) => guidanceSeedName(name) === i.name);
    const v = seed ? { data: seed[1], shape: i.dims } : given.get(i.name)!;
    feeds[i.name] = new rt.ort.Tensor('float32', Float32Array.from(v.data), v.shape);
  }
  const got = (await session.run(feeds))[GUIDANCE_GRAD_OUTPUT].data as Float32Array;
  await session.release();
  ws.dispose();
  // float64: sum(seed * maps) at perturbed latents
  const weights = new Map([...maps.weights.keys()].map((w) => [w, { data: Float64Array.from(model.weights.unet.get(w)!), shape: maps.weights.get(w)!.dims }]));
  const F = (sample: Float64Array) => {
    const values = evalGraph(maps, new Map([...given, ...weights, ['sample', { data: sample, shape: [1, cfg.inChannels, LH, LW] }]]));
    let s = 0;
    for (const [name, seed] of seeds) {
      const v = values.get(name)!.data;
      for (let i = 0; i < seed.length; i++) s += seed[i] * v[i];
    }
    return s;
  };
  const x = given.get('sample')!.data;
  const h = 1e-4;
  const fd: [number, number][] = [];
  for (let i = 3; i < x.length; i += 23) {
    const plus = Float64Array.from(x);
    const minus = Float64Array.from(x);
    plus[i] += h;
    minus[i] -= h;
    fd.push([i, (F(plus) - F(minus)) / (2 * h)]);
  }
  const scale = Math.max(...fd.map(([, v]) => Math.abs(v)));
  assert.ok(scale > 1e-4, `the maps depend on the latent (largest derivative ${scale})`);
  for (const [i, v] of fd) assert.ok(Math.abs(got[i] - v) <= (backend === 'wasm' ? 2e-3 : 1e-2) * scale, `${layout ? 'layout' : 'plain'} dL/dsample[${i}] on ${backend}: graph ${got[i]}, finite differences ${v}`);
}

for (const backend of ['wasm', 'webgpu'] as Backend[]) {
  test(`the tiny UNet's guidance gradient matches finite differences, plain and with regions and isolation (${backend})`, async () => {
    await checkPath(backend, false);
    await checkPath(backend, true);
  });
}

test('with every forward value recomputed for the backward pass (none kept), the gradient is the same', async () => {
  await checkPath('wasm', true, 0);
});

// ---------------------------------------------------------------- guided generations

async function guidedRun(guidance?: GuidanceOptions, patch: Partial<ReturnType<typeof owlAndFoxJob>['layout']> = {}, steps = 6, backend: Backend = 'webgpu') {
  const { dir } = await tinyModelDir();
  const key = backend;
  engines[key] ??= openTinyEngine(dir, await runtime(backend), ['kohya', 'loha']);
  const { engine, loras } = await engines[key]!;
  const job = owlAndFoxJob(loras, guidance, steps);
  Object.assign(job.layout!, patch);
  return (await engine.generate(job)).report;
}
const engines: Partial<Record<Backend, ReturnType<typeof openTinyEngine>>> = {};

test('guidance raises every concept\'s in-box attention share and lowers L; phi = 0 changes nothing', async () => {
  const off = await guidedRun(undefined, {}, 6, 'wasm');
  const still = await guidedRun({ ce: true, fill: true, region: true, scale: 0, earlyStop: false }, {}, 6, 'wasm');
  const on = await guidedRun({ ce: true, fill: true, region: true, scale: 80, earlyStop: false }, {}, 6, 'wasm');
  assert.equal(off.guidance, undefined);
  assert.deepEqual(still.boxes, off.boxes, 'phi = 0 is the unguided run');
  for (const [n, b] of on.boxes.entries()) {
    assert.ok(b.attentionInBoxUnmasked > off.boxes[n].attentionInBoxUnmasked + 0.005, `${b.name}: in-box share ${off.boxes[n].attentionInBoxUnmasked.toFixed(3)} -> ${b.attentionInBoxUnmasked.toFixed(3)}`);
  }
  const g = on.guidance!;
  assert.equal(g.steps.length, 6);
  assert.deepEqual(g.grid, { rows: 8, cols: 8 });
  assert.equal(g.evaluations, 12, 'one maps run and one backward run per guided step');
  assert.ok(g.steps.every((s, i) => s.step === i && s.updated && Math.abs(s.stepSize - 80 * Math.sqrt(1 - (0.5 * i) / 5)) < 1e-12));
  const last = (r: typeof on) => r.guidance!.steps[5];
  assert.ok(last(on).loss < last(still).loss - 0.1, `L at the last step: ${last(still).loss.toFixed(3)} unguided, ${last(on).loss.toFixed(3)} guided`);
  for (const s of g.steps) assert.ok(Math.abs(s.loss - (s.ce + s.fill + s.region)) < 1e-9);
});

for (const backend of ['wasm', 'webgpu'] as Backend[]) {
  test(`with isolation on (the code's mask) L_region is above 0 at every step (${backend})`, async () => {
    const r = await guidedRun({ ce: true, fill: true, region: true, scale: 20 }, { isolation: true }, backend === 'wasm' ? 3 : 2, backend);
    assert.equal(r.layout!.options.isolationScope, 'concepts');
    for (const s of r.guidance!.steps) assert.ok(s.region > 1e-3, `step ${s.step}: L_region ${s.region}`);
    // ours before (the background walled off too) leaves a box's queries nothing outside to attend to
    if (backend === 'wasm') {
      const walled = await guidedRun({ ce: false, fill: false, region: true, scale: 20 }, { isolation: true, isolationScope: 'regions' }, 1, backend);
      assert.ok(walled.guidance!.steps[0].region < 1e-6, `walled: L_region ${walled.guidance!.steps[0].region}`);
    }
  });
}

test("each term can be switched alone; the code's early stop ends the guidance at the first rise from step 5, or at the last step; a bad scale is refused", async () => {
  const region = await guidedRun({ ce: false, fill: false, region: true, scale: 1000 }, {}, 3, 'wasm');
  assert.ok(region.guidance!.steps.every((s) => s.ce === 0 && s.fill === 0 && s.region > 0 && Math.abs(s.loss - s.region) < 1e-12));
  // the code's defaults over 9 steps: L falls, then rises once; that step is still updated and the last
  const g = (await guidedRun({ ce: true, fill: true, region: true }, {}, 9, 'wasm')).guidance!;
  assert.notEqual(g.stoppedAt, null, `L per step: ${g.steps.map((s) => s.loss.toFixed(3)).join(' ')}`);
  const stop = g.steps.findIndex((s) => s.step === g.stoppedAt);
  assert.ok(g.stoppedAt! >= 5, `not before step 5 (stopped at ${g.stoppedAt})`);
  assert.ok(g.steps[stop].loss > g.steps[stop - 1].loss, 'it fired because L rose');
  assert.ok(g.steps[stop].updated && g.steps[stop].stepSize > 0, 'the step where L rose is still updated');
  for (let i = 5; i < stop; i++) assert.ok(g.steps[i].loss <= g.steps[i - 1].loss, `no rise before the stop (step ${i})`);
  assert.equal(g.steps.length, stop + 1, 'no guidance after the stop');
  // the cap: step 2 is the last guided one
  const capped = (await guidedRun({ ce: true, fill: false, region: false, lastStep: 2 }, {}, 5, 'wasm')).guidance!;
  assert.deepEqual(capped.steps.map((s) => s.step), [0, 1, 2]);
  assert.equal(capped.stoppedAt, 2);
  await assert.rejects(guidedRun({ ce: true, fill: false, region: false, scale: -1 }), /guidance scale must be from 0 to 1000 \(got -1\)/);
});
