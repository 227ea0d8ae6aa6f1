// The memory plan acted on (tiny model, WebGPU): a budget that the batch of two does not fit runs the
// CFG halves one after the other and gives the same image; one that the whole VAE decode does not fit
// decodes in tiles, and the tiled decode of the real decoder graph matches float64 tile by tile.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { GenerateJob } from '../../workers/api/contract.ts';
import { planMemory } from '../../workers/engine/memory-plan.ts';
import { Rng } from '../../workers/engine/random.ts';
import { sessionOptions } from '../../workers/engine/runtime.ts';
import { makeTinyModel } from '../../workers/engine/test-model.ts';
import { decodeTiled } from '../../workers/engine/vae-tiles.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
import { buildVaeDecoder, buildVaeEncoder } from '../../workers/graph/vae.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import * as nn from '../../workers/reference/nn.ts';
import * as ref from '../../workers/reference/sd15.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

/** One engine for the file: its compiled graphs serve every test (the last one bounds them). */
let shared: ReturnType<typeof openTinyEngine> | undefined;
const tinyEngine = async () => (shared ??= tinyModelDir().then(async ({ dir }) => openTinyEngine(dir, await runtime('webgpu'))));

const JOB: GenerateJob = { prompt: 'a fox in a red coat', negative: 'blurry', steps: 1, cfg: 5, seed: 9, width: 128, height: 128, scheduler: 'dpmpp-2m' };

test('a tight budget: the CFG halves give the same image; a tighter one decodes the VAE in tiles', async () => {
  const { engine } = await tinyEngine();
  const whole = await engine.generate({ ...JOB, previewEvery: 0 });
  const plain = whole.report.memoryPlan;
  assert.equal(plain.cfgHalves, false);
  assert.equal(plain.vaeTile, null);
  assert.equal(whole.report.latentsOnGpu, true);
  assert.equal(whole.report.readbacksPerStep, 0, 'the latent stays on the GPU and no preview is asked for');

  // just below the whole plan's peak: the UNet sets it at 128x128, so the halves run
  const halvesJob = { ...JOB, memoryBudget: Math.floor(plain.peakBytes * 0.99) };
  const halves = await engine.generate(halvesJob);
  assert.equal(halves.report.memoryPlan.cfgHalves, true);
  assert.equal(halves.report.memoryPlan.vaeTile, null);
  assert.ok(halves.report.memoryPlan.peakBytes <= halvesJob.memoryBudget, 'the plan fits its budget');
  assert.equal(halves.report.latentsOnGpu, false);
  assert.match(halves.report.latentsOnGpuReason!, /CFG halves/);
  assert.equal(halves.report.readbacksPerStep, 2, 'each half comes back to the CPU');
  let diff = 0;
  for (let i = 0; i < whole.image.data.length; i++) diff = Math.max(diff, Math.abs(whole.image.data[i] - halves.image.data[i]));
  assert.ok(diff <= 1, `the halves change no pixel by more than 1/255 (${diff})`);

  // tighter: then the VAE decode sets the peak and is tiled
  const tiledJob = { ...JOB, memoryBudget: Math.floor(plain.peakBytes * 0.9) };
  const expected = planMemory(engine.modelInfo!.config, { width: 128, height: 128, precision: 'fp32', cfg: true, fusedAttention: false, budgetBytes: tiledJob.memoryBudget, bufferLimit: plain.bufferLimitBytes });
  const tiled = await engine.generate(tiledJob);
  assert.equal(tiled.report.memoryPlan.vaeTile, expected.vaeTile);
  assert.equal(tiled.report.memoryPlan.vaeTile, 8);
  assert.match(tiled.report.memoryPlan.notes.join(' '), /64x64 tiles/);
  // the same latents, decoded in 3 x 3 overlapping tiles: close to the whole decode, not equal
  let sum = 0;
  for (let i = 0; i < whole.image.data.length; i++) sum += Math.abs(whole.image.data[i] - tiled.image.data[i]);
  const mean = sum / whole.image.data.length;
  assert.ok(mean > 0 && mean < 40, `mean difference from the whole decode ${mean.toFixed(2)}/255`);
});

test('the tiled decode of the decoder graph matches float64 tiles blended the same way', async () => {
  const rt = await runtime('webgpu');
  const { config, weights } = makeTinyModel(1234);
  const g = buildVaeDecoder(config.vae, { batch: 1, latentH: 8, latentW: 8, dtype: 'float32' });
  const ws = new WeightSet(rt, 'float32');
  for (const spec of g.weights.values()) ws.add(spec, weights.vae.get(spec.name)!);
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { layout: 'NCHW' }));
  const latent = new Rng(21).normal(4 * 12 * 12);
  const dims = { channels: 4, lh: 12, lw: 12 };
  const gpu = await decodeTiled(latent, dims, { tile: 8, overlap: 2 }, async (tile, th, tw) => {
    const out = await session.run({ ...ws.feeds(g.weights.keys()), latent: new rt.ort.Tensor('float32', tile, [1, 4, th, tw]) });
    return out.image.data as Float32Array;
  });
  const W = (name: string) => Float64Array.from(weights.vae.get(name)!);
  const cpu = await decodeTiled(latent, dims, { tile: 8, overlap: 2 }, async (tile, th, tw) => Float32Array.from(ref.vaeDecode(W, config.vae, nn.tensor(tile, [1, 4, th, tw])).data));
  const { diff, scale } = maxAbsDiff(gpu, cpu);
  assert.ok(diff <= 2e-4 * Math.max(1, scale), `max |diff| ${diff.toExponential(2)}`);
  await session.release();
  ws.dispose();
});

test('the tiled encode of the encoder graph matches float64 tiles blended the same way (pixels in, latent cells out)', async () => {
  const rt = await runtime('webgpu');
  const { config, weights } = makeTinyModel(1234);
  const g = buildVaeEncoder(config.vae, { batch: 1, latentH: 8, latentW: 8, dtype: 'float32' });
  const ws = new WeightSet(rt, 'float32');
  for (const spec of g.weights.values()) ws.add(spec, weights.vae.get(spec.name)!);
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { layout: 'NCHW' }));
  const picture = new Rng(22).normal(3 * 96 * 96).map((v) => Math.tanh(v));
  const dims = { channels: 3, lh: 96, lw: 96 };
  // 64-pixel tiles (8 latent cells) overlapping by 16 pixels: 2 x 2 tiles
  const gpu = await decodeTiled(picture, dims, { tile: 64, overlap: 16 }, async (tile, th, tw) => {
    const out = await session.run({ ...ws.feeds(g.weights.keys()), image: new rt.ort.Tensor('float32', tile, [1, 3, th, tw]) });
    return out.latent.data as Float32Array;
  }, 1 / 8, 4);
  assert.equal(gpu.length, 4 * 12 * 12);
  const W = (name: string) => Float64Array.from(weights.vae.get(name)!);
  const cpu = await decodeTiled(picture, dims, { tile: 64, overlap: 16 }, async (tile, th, tw) => Float32Array.from(ref.vaeEncode(W, config.vae, nn.tensor(tile, [1, 3, th, tw])).data), 1 / 8, 4);
  const { diff, scale } = maxAbsDiff(gpu, cpu);
  assert.ok(diff <= 2e-4 * Math.max(1, scale), `max |diff| ${diff.toExponential(2)}`);
  // outside the overlap a tile's latent is used as it is: the top-left 4 x 4 cells are the first tile's alone
  const first = new Float32Array(3 * 64 * 64);
  for (let c = 0; c < 3; c++) for (let y = 0; y < 64; y++) first.set(picture.subarray((c * 96 + y) * 96, (c * 96 + y) * 96 + 64), (c * 64 + y) * 64);
  const alone = ref.vaeEncode(W, config.vae, nn.tensor(first, [1, 3, 64, 64])).data;
  for (let c = 0; c < 4; c++) for (let y = 0; y < 4; y++) for (let x = 0; x < 4; x++) assert.ok(Math.abs(gpu[(c * 12 + y) * 12 + x] - alone[(c * 8 + y) * 8 + x]) <= 2e-4 * Math.max(1, scale));
  await session.release();
  ws.dispose();
});

test('the loop on the GPU gives the CPU loop\'s image for every sampler; previews are read only when due', async () => {
  const { engine } = await tinyEngine();
  for (const scheduler of ['euler-a', 'dpmpp-2m'] as const) {
    const job: GenerateJob = { ...JOB, width: 64, height: 64, steps: 3, scheduler, previewEvery: 2 };
    const previews: { gpu: number[]; cpu: number[] } = { gpu: [], cpu: [] };
    let lastGpu: Uint8ClampedArray | undefined;
    let lastCpu: Uint8ClampedArray | undefined;
    const gpu = await engine.generate(job, (p) => p.preview && (previews.gpu.push(p.step), (lastGpu = p.preview.data)));
    const cpu = await engine.generate({ ...job, latentsOnGpu: false }, (p) => p.preview && (previews.cpu.push(p.step), (lastCpu = p.preview.data)));
    assert.equal(gpu.report.latentsOnGpu, true, scheduler);
    assert.equal(cpu.report.latentsOnGpu, false);
    assert.deepEqual(previews.gpu, [2, 3], 'a preview every second step and at the last');
    assert.deepEqual(previews.cpu, [2, 3]);
    assert.equal(gpu.report.readbacksPerStep, 2 / 3, 'two previews in three steps, nothing else');
    assert.equal(cpu.report.readbacksPerStep, 1, 'each UNet run comes back');
    const { diff } = maxAbsDiff(gpu.image.data, cpu.image.data);
    assert.ok(diff <= 1, `${scheduler}: GPU and CPU loops within 1/255 (${diff})`);
    const p = maxAbsDiff(lastGpu!, lastCpu!);
    assert.ok(p.diff <= 1, `${scheduler}: the GPU preview is the CPU's within 1/255 (${p.diff})`);
    assert.deepEqual(gpu.report.composition.steps.map((s) => s.unetEvaluations), [1, 1, 1]);
  }
  // a layout (regions injected, isolation): the last step's attention maps come back once, after the loop
  const layout: GenerateJob = {
    ...JOB, width: 64, height: 64, steps: 2, previewEvery: 0,
    layout: { injection: true, isolation: true, reinit: false, boxes: [{ name: 'fox', x: 0, y: 0, width: 32, height: 64, prompt: 'a red fox', loras: [] }, { name: 'owl', x: 32, y: 16, width: 32, height: 48, prompt: 'a grey owl', loras: [] }] },
  };
  const gpu = await engine.generate(layout);
  const cpu = await engine.generate({ ...layout, latentsOnGpu: false });
  assert.equal(gpu.report.latentsOnGpu, true);
  assert.equal(gpu.report.readbacksPerStep, 0);
  assert.ok(maxAbsDiff(gpu.image.data, cpu.image.data).diff <= 1);
  for (const [n, b] of gpu.report.boxes.entries()) {
    assert.ok(Math.abs(b.attentionInBox - cpu.report.boxes[n].attentionInBox) < 1e-4, `${b.name}: ${b.attentionInBox} vs ${cpu.report.boxes[n].attentionInBox}`);
    assert.ok(b.attentionInBox > 0);
  }
});

test('compiled graphs past the engine\'s bound are released, least recently used first, never the running job\'s', async () => {
  const { engine } = await tinyEngine();
  engine.sessionsKept = 4;
  // sizes no earlier test compiled: every job here compiles its graphs, and the earlier ones go
  const small: GenerateJob = { ...JOB, width: 192, height: 64, previewEvery: 0 };
  const first = await engine.generate(small);
  assert.equal(engine.compiledGraphs, 4, 'text encoder, UNet, step graph, VAE');
  // a second size needs three new graphs; the text encoder is shared, the 192x64 ones go
  await engine.generate({ ...small, width: 128 });
  assert.equal(engine.compiledGraphs, 4);
  // back at 192x64, on the CPU loop: its UNet (CPU outputs) and the released VAE compile again
  const again = await engine.generate({ ...small, latentsOnGpu: false });
  assert.equal(engine.compiledGraphs, 4);
  const { diff } = maxAbsDiff(again.image.data, first.image.data);
  assert.ok(diff <= 1, `a released graph compiles again to the same picture (${diff})`);
});
