// The memory plan acted on (tiny model, WebGPU): a budget that the batch of two does not fit runs the
// CFG halves one after the other and gives the same image; one that the whole VAE decode does not fit
// decodes in tiles stage by stage, and gives the whole decode's picture (float64 reference).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { GenerateJob } from '../../workers/api/contract.ts';
import { planMemory } from '../../workers/engine/memory-plan.ts';
import { Rng } from '../../workers/engine/random.ts';
import { flushOrt, ortGpuZeros, sessionOptions } from '../../workers/engine/runtime.ts';
import { readBuffer, writePadded } from '../../workers/gpu/buffers.ts';
import { GraphBuilder } from '../../workers/graph/builder.ts';
import { makeTinyModel } from '../../workers/engine/test-model.ts';
import { decodeStaged, encodeStaged, type RunGraph } from '../../workers/engine/vae-tiles.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
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
  // not captured, so that its plan is the one the budgets below are made from
  const whole = await engine.generate({ ...JOB, previewEvery: 0, graphCapture: false });
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

  // tighter than the halves' plan: then the VAE decode sets the peak and is tiled
  const tiledJob = { ...JOB, memoryBudget: halves.report.memoryPlan.peakBytes - 1 };
  // the plan as the engine makes it on WebGPU: NCHW sessions that transpose k x k weights, the low
  // levels unfolded, the VAE's encoder loaded
  const expected = planMemory(engine.modelInfo!.config, { width: 128, height: 128, precision: 'fp32', cfg: true, fusedAttention: false, budgetBytes: tiledJob.memoryBudget, bufferLimit: plain.bufferLimitBytes, transposesConvWeights: true, pointwiseAsIs: true, conv: 'auto', vaeEncoder: engine.modelInfo!.vaeEncoder });
  const tiled = await engine.generate(tiledJob);
  assert.equal(tiled.report.memoryPlan.peakBytes, expected.peakBytes);
  assert.equal(tiled.report.memoryPlan.vaeTile, expected.vaeTile);
  assert.equal(tiled.report.memoryPlan.vaeTile, 8);
  assert.match(tiled.report.memoryPlan.notes.join(' '), /64x64 tiles/);
  // the same latents, decoded in 2 x 2 tiles stage by stage: the whole decode's picture, byte for byte but for rounding
  let most = 0;
  for (let i = 0; i < whole.image.data.length; i++) most = Math.max(most, Math.abs(whole.image.data[i] - tiled.image.data[i]));
  assert.ok(most <= 1, `max difference from the whole decode ${most}/255`);
  // a start picture under a budget just below its untiled plan is encoded stage by stage too: at
  // strength 0 the VAE round trip of the untiled encode and decode
  const start = { ...JOB, cfg: 1, init: { image: whole.image, strength: 0 } };
  const roundTrip = await engine.generate(start);
  assert.equal(roundTrip.report.memoryPlan.vaeTile, null);
  const tiledTrip = await engine.generate({ ...start, memoryBudget: roundTrip.report.memoryPlan.peakBytes - 1 });
  assert.equal(tiledTrip.report.memoryPlan.vaeTile, 8);
  most = 0;
  for (let i = 0; i < roundTrip.image.data.length; i++) most = Math.max(most, Math.abs(roundTrip.image.data[i] - tiledTrip.image.data[i]));
  assert.ok(most <= 1, `max difference from the untiled round trip ${most}/255`);
});

/** Compiled graphs for the staged VAE over the tiny model's weights, as the engine runs them. */
async function stagedRunner(weights: Map<string, Float32Array>) {
  const rt = await runtime('webgpu');
  const ws = new WeightSet(rt, 'float32');
  const sessions = new Map<string, { session: Awaited<ReturnType<typeof rt.ort.InferenceSession.create>>; names: string[] }>();
  const keys: string[] = [];
  const run: RunGraph = async (key, build, feeds) => {
    keys.push(key);
    let s = sessions.get(key);
    if (!s) {
      const g = build();
      for (const spec of g.weights.values()) if (!ws.tensors.has(spec.name)) ws.add(spec, weights.get(spec.name)!);
      s = { session: await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { layout: 'NCHW' })), names: [...g.weights.keys()] };
      sessions.set(key, s);
    }
    const tensors = Object.fromEntries(Object.entries(feeds).map(([name, f]) => [name, new rt.ort.Tensor('float32', f.data, f.dims)]));
    const out = await s.session.run({ ...ws.feeds(s.names), ...tensors });
    return out[s.session.outputNames[0]].data as Float32Array;
  };
  const release = async () => {
    for (const s of sessions.values()) await s.session.release();
    ws.dispose();
  };
  return { run, keys, release };
}

test('the staged decode in tiles gives the whole decode everywhere, seams included (float64 reference)', async () => {
  const { config, weights } = makeTinyModel(1234);
  const latent = new Rng(21).normal(4 * 12 * 10);
  const { run, keys, release } = await stagedRunner(weights.vae);
  // 5-cell tiles on a 12 x 10 latent: 3 x 2 tiles at the latent's size, the last row of them overlapping
  const picture = await decodeStaged(config.vae, { data: latent, c: 4, h: 12, w: 10 }, { dtype: 'float32', tile: 5 }, run);
  assert.deepEqual([picture.c, picture.h, picture.w], [3, 96, 80]);
  const W = (name: string) => Float64Array.from(weights.vae.get(name)!);
  const whole = ref.vaeDecode(W, config.vae, nn.tensor(latent, [1, 4, 12, 10])).data;
  const { diff, scale } = maxAbsDiff(picture.data, whole);
  assert.ok(diff <= 2e-4 * Math.max(1, scale), `max |diff| ${diff.toExponential(2)} against the whole decode`);
  // tiles did run: the last stage (the full-size map) in 3 x 2 tiles of 40 pixels
  const last = keys.filter((k) => k.startsWith('vae-stage:decoder.conv_out:'));
  assert.deepEqual([last.length, last[0]], [6, 'vae-stage:decoder.conv_out:40x40:float32']);
  await release();
});

test('the staged encode in tiles gives the whole encode (float64 reference): pixels in, latent cells out', async () => {
  const { config, weights } = makeTinyModel(1234);
  const picture = new Rng(22).normal(3 * 96 * 80).map((v) => Math.tanh(v));
  const { run, keys, release } = await stagedRunner(weights.vae);
  const latent = await encodeStaged(config.vae, { data: picture, c: 3, h: 96, w: 80 }, { dtype: 'float32', tile: 5 }, run);
  assert.deepEqual([latent.c, latent.h, latent.w], [4, 12, 10]);
  const W = (name: string) => Float64Array.from(weights.vae.get(name)!);
  const whole = ref.vaeEncode(W, config.vae, nn.tensor(picture, [1, 3, 96, 80])).data;
  const { diff, scale } = maxAbsDiff(latent.data, whole);
  assert.ok(diff <= 2e-4 * Math.max(1, scale), `max |diff| ${diff.toExponential(2)} against the whole encode`);
  assert.equal(keys.filter((k) => k.startsWith('vae-stage:encoder.conv_in:')).length, 6);
  await release();
});

test('the loop on the GPU gives the CPU loop\'s image for every sampler; previews are read only when due', async () => {
  const { engine } = await tinyEngine();
  // a first job at this size: the reads made once (the attention check, the first compiles) are its
  await engine.generate({ ...JOB, width: 64, height: 64, steps: 1, previewEvery: 0 });
  for (const scheduler of ['euler-a', 'dpmpp-2m'] as const) {
    const job: GenerateJob = { ...JOB, width: 64, height: 64, steps: 3, scheduler, previewEvery: 2 };
    const previews: { gpu: number[]; cpu: number[] } = { gpu: [], cpu: [] };
    let lastGpu: Uint8ClampedArray | undefined;
    let lastCpu: Uint8ClampedArray | undefined;
    // the device's own count of buffers mapped for reading, around each job
    const work = (await runtime('webgpu')).gpu!.work;
    const counted = async <T>(run: () => Promise<T>): Promise<[T, number]> => {
      const before = work.readbacks;
      const r = await run();
      return [r, work.readbacks - before];
    };
    const [quiet, quietReads] = await counted(() => engine.generate({ ...job, previewEvery: 0 }));
    const [gpu, gpuReads] = await counted(() => engine.generate(job, (p) => p.preview && (previews.gpu.push(p.step), (lastGpu = p.preview.data))));
    const [cpu, cpuReads] = await counted(() => engine.generate({ ...job, latentsOnGpu: false }, (p) => p.preview && (previews.cpu.push(p.step), (lastCpu = p.preview.data))));
    // the report's per-step count against the device's: previews are the GPU loop's only reads in
    // the loop; the CPU loop reads every prediction and, unlike the GPU loop, needs no read after it
    // (the GPU loop's two: the final latent and the record of the steps' measures)
    assert.equal(quiet.report.readbacksPerStep, 0);
    assert.equal(gpuReads - quietReads, 2 /* previews after steps 2 and 3 */, `${scheduler}: the device counted ${gpuReads} and ${quietReads}`);
    assert.equal(cpuReads - quietReads, job.steps * 1 - 2, `${scheduler}: the device counted ${cpuReads} and ${quietReads}`);
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

test('graph capture: the loop\'s UNet replays its recorded run, giving the plain loop\'s image exactly, job after job, with LoRAs switched between replays, and after a cancel', async () => {
  const { dir } = await tinyModelDir();
  const { engine, loras } = await openTinyEngine(dir, await runtime('webgpu'), ['kohya', 'loha']);
  const base: GenerateJob = { ...JOB, width: 64, height: 64, steps: 3, scheduler: 'euler-a', previewEvery: 2 };
  const jobs: GenerateJob[] = [
    base,
    // the same buffers with other contents: another seed, prompt and sampler
    { ...base, seed: 10, prompt: 'a grey owl', scheduler: 'dpmpp-2m' },
    // LoRA Switch rewrites the weights in place between two replays
    { ...base, steps: 4, loras: loras.map((l) => ({ lora: l.id, scale: 0.8 })), composition: { method: 'switch', switchStep: 1 } },
    // without CFG: a batch-1 UNet, a session of its own
    { ...base, cfg: 1, seed: 11 },
  ];
  let first: Uint8ClampedArray | undefined;
  for (const job of jobs) {
    const captured = await engine.generate(job);
    const plain = await engine.generate({ ...job, graphCapture: false });
    assert.equal(captured.report.graphCaptured, true, job.prompt);
    assert.equal(plain.report.graphCaptured, false);
    assert.equal(captured.report.latentsOnGpu, true);
    assert.equal(captured.report.readbacksPerStep, plain.report.readbacksPerStep, 'the previews alone come back');
    // the device's count of dispatches: a replay dispatches what the plain loop does; the job that
    // records a session's capture pays one UNet run more (onnxruntime runs a graph once as it is,
    // then again to record it)
    const total = (r: typeof plain) => Math.round(r.report.dispatchesPerStep! * job.steps);
    const extra = total(captured) - total(plain);
    // (measured: 977 more for the first job, whose plain loop dispatches 3021, and 984 for the batch of
    // one; the LoRA Switch job is left out, as its merges depend on what the job before left merged)
    const records = job === jobs[0] || job.cfg === 1;
    if (records) assert.ok(extra > 0 && extra < plain.report.dispatchesPerStep!, `recording: ${extra} more than the plain loop's ${total(plain)}`);
    else if (!job.loras) assert.equal(extra, 0, 'a replay dispatches the same programs');
    assert.deepEqual(captured.image.data, plain.image.data, `${job.scheduler}, ${job.composition?.method ?? 'plain'}: the replayed loop's image is the plain loop's`);
    // its plan counts the UNet's activations as kept beside the decode's
    const a = captured.report.memoryPlan.parts.activationBytes;
    assert.equal(captured.report.memoryPlan.peakBytes - plain.report.memoryPlan.peakBytes, a.unet + Math.max(a.textEncoder, a.vae) - Math.max(a.unet, a.textEncoder, a.vae));
    first ??= captured.image.data;
  }
  // a cancel in the loop can leave step-graph work queued that writes the captured UNet's input
  let seen = 0;
  await assert.rejects(
    engine.generate(base, (e) => {
      if (e.phase === 'denoise' && ++seen === 2) engine.cancel();
    }),
    (e: Error & { code?: string }) => e.code === 'cancelled',
  );
  assert.deepEqual((await engine.generate(base)).image.data, first, 'the job after a cancel');
  // several predictions mixed per step are not replayed
  const composite = await engine.generate({ ...base, steps: 1, loras: loras.map((l) => ({ lora: l.id, scale: 0.8 })), composition: { method: 'composite' } });
  assert.equal(composite.report.graphCaptured, false);
  // a job with a memory budget is captured where the plan with the UNet's activations kept still fits
  // it whole (the same graphs and picture as without one), and otherwise runs uncaptured on the plain plan
  const one = { ...base, steps: 1 };
  const free = await engine.generate(one);
  const roomy = await engine.generate({ ...one, memoryBudget: free.report.memoryPlan.peakBytes });
  assert.equal(free.report.graphCaptured, true);
  assert.equal(roomy.report.graphCaptured, true);
  assert.deepEqual(roomy.image.data, free.image.data);
  const plainPeak = (await engine.planJob(one)).peakBytes;
  assert.ok(plainPeak < free.report.memoryPlan.peakBytes, `the captured plan keeps more: ${plainPeak} and ${free.report.memoryPlan.peakBytes}`);
  const between = Math.floor((plainPeak + free.report.memoryPlan.peakBytes) / 2);
  const tight = await engine.generate({ ...one, memoryBudget: between });
  assert.equal(tight.report.graphCaptured, false, 'kept, the UNet would need its CFG halves at this size');
  assert.equal(tight.report.latentsOnGpu, true);
  assert.equal(tight.report.memoryPlan.peakBytes, plainPeak);
  assert.ok(maxAbsDiff(tight.image.data, free.image.data).diff <= 1);
  engine.unload();
});

test('a captured session bound to buffers onnxruntime allocated replays run after run, with buffers of ours going through another session between', async () => {
  // onnxruntime 1.30 drops a buffer of ours at the end of each run, while a captured session keeps
  // its first run's bindings: bound to buffers made with createBuffer, this failed on its second run
  const rt = await runtime('webgpu');
  const device = rt.gpu!.device;
  const g = new GraphBuilder('float32');
  const x = g.input('x', 'float32', [2, 8]);
  g.output(g.op('Add', [x, x]), 'y', 'float32', [2, 8]);
  const captured = await rt.ort.InferenceSession.create(g.encode(), { ...sessionOptions(rt, { outputsOnGpu: true }), enableGraphCapture: true });
  const plain = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { outputsOnGpu: true }));
  const input = await ortGpuZeros(rt, [2, 8]);
  const output = await ortGpuZeros(rt, [2, 8]);
  assert.deepEqual([input.dims, output.dims, input.location], [[2, 8], [2, 8], 'gpu-buffer']);
  // onnxruntime submits its queued work (the zeros) before it reads a result back
  await flushOrt(rt);
  const read = async (t: typeof input) => new Float32Array(await readBuffer(device, t.gpuBuffer as GPUBuffer, 0, 64));
  assert.deepEqual(await read(output), new Float32Array(16), 'zero-filled');
  for (let run = 0; run < 4; run++) {
    const data = Float32Array.from({ length: 16 }, (_, i) => run * 100 + i - 7.25);
    writePadded(device, input.gpuBuffer as GPUBuffer, data);
    await captured.run({ x: input }, { y: output });
    await flushOrt(rt);
    assert.deepEqual(await read(output), data.map((v) => 2 * v), `run ${run}`);
    // a buffer of ours through the plain session: registered and dropped within its run
    const own = device.createBuffer({ size: 64, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    writePadded(device, own, data.map((v) => -v));
    const out = await plain.run({ x: rt.ort.Tensor.fromGpuBuffer(own, { dataType: 'float32', dims: [2, 8] }) });
    assert.deepEqual(await out.y.getData(true), data.map((v) => -2 * v), `plain run ${run}`);
    own.destroy();
  }
  await captured.release();
  await plain.release();
  input.dispose();
  output.dispose();
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

  // the order is of use, not of making: sizes A and B fill a bound of 7 (the text encoder shared),
  // A runs again, then a third size C takes three places. Least recently used, B's three go and A's
  // stay; oldest made first would have released A's.
  engine.sessionsKept = 7;
  const plain = { ...small, graphCapture: false };
  const sizeA = { ...plain, width: 64, height: 128 };
  const sizeB = { ...plain, width: 64, height: 192 };
  const sizeC = { ...plain, width: 128, height: 192 };
  const kept = (lh: number, lw: number) => engine.compiledGraphKeys.filter((k) => k.includes(`${lh}x${lw}`) || k.includes(`"height":${lh},"width":${lw}`)).length;
  await engine.generate(sizeA);
  await engine.generate(sizeB);
  assert.deepEqual([kept(16, 8), kept(24, 8)], [3, 3], engine.compiledGraphKeys.join(' | '));
  await engine.generate(sizeA);
  await engine.generate(sizeC);
  assert.equal(engine.compiledGraphs, 7);
  assert.deepEqual([kept(16, 8), kept(24, 8), kept(24, 16)], [3, 0, 3], `UNet, step and VAE graphs of A, B and C: ${engine.compiledGraphKeys.join(' | ')}`);

  // a captured UNet holds its activations and buffers between jobs, and the plan counts the running
  // job's alone: another size's captured UNet goes when this one is made, whatever the bound
  engine.sessionsKept = 16;
  const a = await engine.generate({ ...small, width: 64 });
  assert.equal(a.report.graphCaptured, true);
  assert.equal(engine.capturedGraphs, 1);
  const b = await engine.generate({ ...small, width: 128 });
  assert.equal(b.report.graphCaptured, true);
  assert.equal(engine.capturedGraphs, 1, 'the 64x64 captured UNet was released');
  assert.ok(engine.compiledGraphs > 4, `the bound alone would keep more (${engine.compiledGraphs})`);
  // the hires fix loops twice in one job, at two sizes: its first pass's captured UNet goes when the
  // second pass makes its own
  const hires = await engine.generate({ ...small, width: 64, hires: { scale: 2, strength: 0.5 } });
  assert.equal(hires.image.width, 128);
  assert.equal(engine.capturedGraphs, 1, 'the hires job keeps its second pass\'s captured UNet alone');
  await engine.generate({ ...small, width: 64 });
  assert.equal(engine.capturedGraphs, 1, 'the 64x64 one made again, the 128x128 one released');
});
