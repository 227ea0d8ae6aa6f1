// `npm run bench:gpu`: the SD 1.5 architecture with seeded random weights (no download) on this
// machine's WebGPU, before and after issue 19's graph changes, side by side in one process:
// seconds per image (text encoder + steps x UNet at CFG batch 2 + VAE decode), UNet ms per step,
// peak GPU bytes and the largest buffer (measured on the device), the memory plan, weight and layout
// transposes per step (from onnxruntime's profile), readbacks per step, the first run's shader
// compile time, and LoRA switch ms for 1/3/5 rank-32 LoRAs against a same-size buffer copy.
//   npm run bench:gpu                          512x512, 20 steps, fp16 (where the adapter has it) and fp32
//   npm run bench:gpu -- --size 256 --precision fp32 --steps 1 --repeats 1    (what SwiftShader can do)
// Writes bench/gpu-results.json. On SwiftShader absolute times mean little; compare the variants.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type * as OrtNs from 'onnxruntime-web';
import { SD15_CONFIG, TINY_CONFIG, type ModelConfig } from '../workers/checkpoint/config.ts';
import { chooseAttention } from '../workers/engine/attention-check.ts';
import { planMemory } from '../workers/engine/memory-plan.ts';
import { timestepEmbedding } from '../workers/engine/pipeline.ts';
import { Rng } from '../workers/engine/random.ts';
import { createRuntime, flushOrt, ortGpuZeros, sessionOptions, type ConvLayout, type Runtime } from '../workers/engine/runtime.ts';
import { WeightSet } from '../workers/engine/weights.ts';
import { writePadded } from '../workers/gpu/buffers.ts';
import type { DispatchRecord } from '../workers/gpu/device.ts';
import { DEFAULT_BUFFER_LIMIT, type AttentionForm, type ConvForm, type GraphBuilder } from '../workers/graph/builder.ts';
import { buildTextEncoder } from '../workers/graph/clip.ts';
import { graphMemory } from '../workers/graph/memory.ts';
import { elementCount } from '../workers/graph/shapes.ts';
import { buildUNet } from '../workers/graph/unet.ts';
import { buildVaeDecoder } from '../workers/graph/vae.ts';
import { buildStepGraph, previewFactor } from '../workers/graph/step.ts';
import { buildCombineGraph, buildMeasureGraph } from '../workers/graph/mix.ts';
import { cosineSimilarity, latentHighBand, profileCutoff } from '../workers/composition/frequency.ts';
import type { LinearStep } from '../workers/schedulers/common.ts';
import { DpmSolverPP2MScheduler } from '../workers/schedulers/dpmpp-2m.ts';
import { dawnFeatures, installNodeWebGpu } from '../workers/node/webgpu.ts';
import { runChild, stageLine } from '../workers/node/child-run.ts';
import { profiledPrograms, programShapes } from '../workers/node/ort-profile.ts';
import { benchLoraMerge, filled } from './lora-merge.ts';

const { values: o } = parseArgs({
  options: {
    arch: { type: 'string', default: 'sd15' },
    size: { type: 'string', default: '512' },
    steps: { type: 'string', default: '20' },
    precision: { type: 'string', default: 'fp16,fp32' },
    repeats: { type: 'string', default: '3' },
    variants: { type: 'string', default: 'before,after,direct' },
    lora: { type: 'boolean', default: true },
    out: { type: 'string', default: 'bench/gpu-results.json' },
    // the UNet run alone (timed runs, memory, profile): no loops, text encoder or VAE, for shapes a
    // software adapter takes minutes per run on
    'unet-only': { type: 'boolean', default: false },
    one: { type: 'string' },
    // seconds a measuring child may take before it is stopped and run once more (0: no limit); on
    // SwiftShader a child has been seen to stall, rarely, inside the WebGPU stack
    'child-timeout': { type: 'string', default: '0' },
    // how many times a measuring child is run before its stalls are an error
    'child-attempts': { type: 'string', default: '2' },
    // one more UNet run per variant with onnxruntime's profiling on (GPU time by program); by
    // default on a GPU, off on a CPU adapter
    'ort-profile': { type: 'boolean' },
  },
  allowNegative: true,
});
const CONFIG: ModelConfig = o.arch === 'tiny' ? TINY_CONFIG : SD15_CONFIG;
const SIZE = Number(o.size);
const STEPS = Number(o.steps);
const REPEATS = Number(o.repeats);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const MiB = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
/** The measuring child names each stage on stderr as it starts, so a run that stalls says where. */
const stage = (name: string) => o.one && process.stderr.write(stageLine(name));

function weightsFor(rt: Runtime, g: GraphBuilder, precision: 'fp16' | 'fp32'): WeightSet {
  const ws = new WeightSet(rt, precision === 'fp16' ? 'float16' : 'float32');
  for (const spec of g.weights.values()) {
    const n = spec.dims.reduce((a, b) => a * b, 1);
    const v = filled(n);
    // norms near one, so activations keep their scale through 16 blocks
    if (/norm/.test(spec.name) && spec.name.endsWith('.weight')) v.fill(1);
    ws.add(spec, v);
  }
  return ws;
}

/**
 * The programs of one UNet run as the device logged them (each dispatch's program is the label
 * onnxruntime gives its bind group, and its buffers are the group's): the dispatches, the transposes
 * of a weight (a `Transpose` whose input is one of our weight buffers: the EP's copy of a convolution
 * weight into the layout its kernel reads) and the layout transposes (the other `Transpose`
 * programs beyond the graph's own Transpose nodes: those the EP puts around its NHWC kernels).
 */
function runSummary(log: DispatchRecord[], g: GraphBuilder, ws: WeightSet) {
  const weights = new Map<GPUBuffer, number>();
  for (const [name, buffer] of ws.buffers) weights.set(buffer, elementCount(g.weights.get(name)!.dims));
  const transposes = log.filter((d) => d.program === 'Transpose');
  const ofWeights = transposes.filter((d) => weights.has(d.buffers[0]));
  const own = g.records.filter((r) => r.type === 'Transpose');
  const byProgram = new Map<string, number>();
  for (const d of log) byProgram.set(d.program, (byProgram.get(d.program) ?? 0) + 1);
  return {
    dispatches: log.length,
    dispatchesByProgram: Object.fromEntries([...byProgram].sort((a, b) => b[1] - a[1])),
    weightTransposes: ofWeights.length,
    weightTransposeElements: ofWeights.reduce((a, d) => a + weights.get(d.buffers[0])!, 0),
    graphTransposes: own.length,
    graphTransposeElements: own.reduce((a, r) => a + elementCount(g.shapes.get(r.inputs[0])!), 0),
    layoutTransposes: transposes.length - ofWeights.length - own.length,
  };
}

/**
 * onnxruntime's own profile of one UNet run (`--ort-profile`: GPU time by program, from timestamp
 * queries): the measuring child makes that run in a session of its own and the parent reads the
 * programs from the child's output. Off on a CPU adapter, where the times say little and where, on
 * SwiftShader, the profiled run is where measuring children stalled.
 */
function profileSummary(stdout: string, graphTransposeElements: number) {
  const programs = profiledPrograms(stdout);
  if (!programs.length) throw new Error('the profiled run printed no programs');
  const elements = (shapes: string) => elementCount(programShapes(shapes, 'inputs')[0] ?? [0]);
  // Transpose nodes as they ran (those of the graph, some moved by onnxruntime's optimiser under
  // names of its own, and the EP's around NHWC kernels; a convolution's weight transposes are
  // programs of its Conv node)
  const transposes = programs.filter((p) => /&Transpose&Transpose$/.test(p.name));
  const byProgram = new Map<string, number>();
  for (const p of programs) {
    const kind = p.name.split('&').at(-1)!;
    byProgram.set(kind, (byProgram.get(kind) ?? 0) + p.us / 1000);
  }
  return {
    profiledDispatches: programs.length,
    profiledGpuMs: programs.reduce((a, p) => a + p.us / 1000, 0),
    // the profiled run's GPU time by program (the last part of onnxruntime's name), most first
    profiledMsByProgram: Object.fromEntries([...byProgram].sort((a, b) => b[1] - a[1]).slice(0, 8)),
    layoutTransposeElements: transposes.reduce((a, p) => a + elements(p.shapes), 0) - graphTransposeElements,
  };
}

/** One run of a session with the device's work log on: the dispatches it made. */
async function loggedRun(rt: Runtime, session: OrtNs.InferenceSession, feeds: Record<string, OrtNs.Tensor>): Promise<DispatchRecord[]> {
  const work = rt.gpu!.work;
  work.log = [];
  const before = work.dispatches;
  try {
    const out = await session.run(feeds);
    await rt.gpu!.device.queue.onSubmittedWorkDone();
    for (const t of Object.values(out)) t.dispose();
    // every dispatch of the run was logged, each with the program its bind group names
    const counted = work.dispatches - before;
    if (work.log.length !== counted) throw new Error(`the log holds ${work.log.length} dispatches, the device counted ${counted}`);
    const unnamed = work.log.filter((d) => !d.program).length;
    if (unnamed) throw new Error(`${unnamed} of ${counted} logged dispatches have no program name`);
    return work.log;
  } finally {
    work.log = undefined;
  }
}

/** One UNet run in a session with onnxruntime's profiling on (it prints the profile on stdout). */
async function profileRun(rt: Runtime, g: GraphBuilder, layout: ConvLayout, feeds: Record<string, OrtNs.Tensor>): Promise<void> {
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { layout, profile: true }));
  await session.run(feeds);
  session.endProfiling();
  await session.release();
}

function unetFixture(rt: Runtime, precision: 'fp16' | 'fp32', attention: AttentionForm, conv: ConvForm) {
  const lh = SIZE / 8;
  const dtype = precision === 'fp16' ? 'float16' : 'float32';
  const g = buildUNet(CONFIG.unet, { batch: 2, latentH: lh, latentW: lh, textLen: 77, dtype, attention, bufferLimit: DEFAULT_BUFFER_LIMIT, norm: rt.norm, conv });
  const ws = weightsFor(rt, g, precision);
  const rng = new Rng(1);
  const c0 = CONFIG.unet.blockOutChannels[0];
  const emb = timestepEmbedding(500, c0);
  const feeds: Record<string, OrtNs.Tensor> = {
    ...ws.feeds(g.weights.keys()),
    sample: new rt.ort.Tensor('float32', rng.normal(2 * 4 * lh * lh), [2, 4, lh, lh]),
    timestep_embedding: new rt.ort.Tensor('float32', Float32Array.from([...emb, ...emb]), [2, c0]),
    encoder_hidden_states: new rt.ort.Tensor('float32', rng.normal(2 * 77 * CONFIG.unet.crossAttentionDim), [2, 77, CONFIG.unet.crossAttentionDim]),
  };
  return { g, ws, feeds };
}

/** The loops' CFG scale. */
const CFG = 7.5;

/** A batch of two's prediction [uncond, cond], guided on the CPU. */
function guide(pred: Float32Array): Float32Array {
  const n = pred.length / 2;
  return Float32Array.from({ length: n }, (_, j) => pred[j] + CFG * (pred[n + j] - pred[j]));
}

/** The step graph's coefficients for a step of this linear form (no blend, the next input unscaled). */
function stepCoefficients(rt: Runtime, k: LinearStep): OrtNs.Tensor {
  return new rt.ort.Tensor('float32', Float32Array.from([CFG, k.p, k.q, k.a, k.b, k.c, k.d, k.e, 1, 0, 0]), [11]);
}

/** The CPU loop's next latent and UNet input (the latent twice, for CFG's batch of two). */
function cpuInputs(rt: Runtime, latent: Float32Array, lh: number): { x: OrtNs.Tensor; sample: OrtNs.Tensor } {
  const both = new Float32Array(2 * latent.length);
  both.set(latent);
  both.set(latent, latent.length);
  return { x: new rt.ort.Tensor('float32', latent, [1, 4, lh, lh]), sample: new rt.ort.Tensor('float32', both, [2, 4, lh, lh]) };
}

/**
 * ms per step of the denoising loop around the UNet, over `REPEATS` steps, and the GPU-to-CPU reads it
 * made per step (the device's own count of buffers mapped for reading): `cpu` reads the prediction
 * back, applies CFG and a DPM++ first-order step in JavaScript and uploads the next input (the loop
 * before issue 19); `gpu` feeds the prediction to the step graph.
 */
async function loopMs(rt: Runtime, session: OrtNs.InferenceSession, feeds: Record<string, OrtNs.Tensor>, where: 'cpu' | 'gpu'): Promise<{ ms: number; readbacksPerStep: number }> {
  stage(`loop (${where})`);
  const lh = SIZE / 8;
  const n = 4 * lh * lh;
  const sched = new DpmSolverPP2MScheduler(Math.max(REPEATS, 2));
  const stepSession = where === 'gpu' ? await rt.ort.InferenceSession.create(buildStepGraph({ batch: 2, channels: 4, height: lh, width: lh, previewFactor: previewFactor(lh, lh) }).encode(), sessionOptions(rt, { outputsOnGpu: true })) : undefined;
  let x: OrtNs.Tensor = new rt.ort.Tensor('float32', new Rng(3).normal(n), [1, 4, lh, lh]);
  let sample = feeds.sample;
  const memory = new rt.ort.Tensor('float32', new Float32Array(n), [1, 4, lh, lh]);
  const start = performance.now();
  const readbacks = rt.gpu!.work.readbacks;
  for (let i = 0; i < REPEATS; i++) {
    const out = await session.run({ ...feeds, sample });
    if (stepSession) {
      const k = sched.linear(0);
      const next = await stepSession.run({ pred: out.noise_pred, x, memory, z: memory, k: stepCoefficients(rt, k) });
      out.noise_pred.dispose();
      next.x0.dispose();
      next.preview.dispose();
      x = next.x_next;
      sample = next.model_in;
    } else {
      const pred = (await out.noise_pred.getData(true)) as Float32Array;
      ({ x, sample } = cpuInputs(rt, sched.step(guide(pred), 0, x.data as Float32Array), lh));
    }
  }
  const readbacksPerStep = (rt.gpu!.work.readbacks - readbacks) / REPEATS;
  // the final latent, once after the loop (the image's)
  if (stepSession) await x.getData(true);
  const ms = (performance.now() - start) / REPEATS;
  await stepSession?.release();
  return { ms, readbacksPerStep };
}

/**
 * ms per step of a loop mixing three predictions a step (LoRA Composite's shape, without the LoRA
 * switches): `cpu` reads each prediction back and mixes, guides, steps and measures in JavaScript (the
 * CPU loop); `gpu` keeps each in its own GPU output, mixes them with the weighted-sum graph, steps
 * with the step graph and keeps each step's measures as a row of a record on the GPU, read once at the
 * end (as the engine does where no preview is asked).
 */
async function mixedLoopMs(rt: Runtime, session: OrtNs.InferenceSession, feeds: Record<string, OrtNs.Tensor>, where: 'cpu' | 'gpu', predictions = 3): Promise<number> {
  stage(`mixed loop (${where})`);
  const lh = SIZE / 8;
  const n = 4 * lh * lh;
  const dims = [2, 4, lh, lh];
  const sched = new DpmSolverPP2MScheduler(Math.max(REPEATS, 2));
  const gpuOut = sessionOptions(rt, { outputsOnGpu: true });
  // one after the other: onnxruntime's WebGPU EP creates one session at a time
  const create = (g: GraphBuilder, o: OrtNs.InferenceSession.SessionOptions) => rt.ort.InferenceSession.create(g.encode(), o);
  const stepSession = where === 'gpu' ? await create(buildStepGraph({ batch: 2, channels: 4, height: lh, width: lh, previewFactor: previewFactor(lh, lh) }), gpuOut) : undefined;
  const combineSession = where === 'gpu' ? await create(buildCombineGraph(predictions, dims), gpuOut) : undefined;
  const measureSession = where === 'gpu' ? await create(buildMeasureGraph({ batch: 2, channels: 4, height: lh, width: lh, predictions, cutoff: profileCutoff(lh), rows: REPEATS }), gpuOut) : undefined;
  let history: OrtNs.Tensor = new rt.ort.Tensor('float32', new Float32Array(REPEATS * (predictions + 4)), [REPEATS, predictions + 4]);
  let x: OrtNs.Tensor = new rt.ort.Tensor('float32', new Rng(3).normal(n), [1, 4, lh, lh]);
  let sample = feeds.sample;
  const memory = new rt.ort.Tensor('float32', new Float32Array(n), [1, 4, lh, lh]);
  const w = new rt.ort.Tensor('float32', new Float32Array(predictions).fill(1 / predictions), [predictions]);
  const start = performance.now();
  for (let i = 0; i < REPEATS; i++) {
    const k = sched.linear(0);
    if (stepSession) {
      const preds: OrtNs.Tensor[] = [];
      for (let j = 0; j < predictions; j++) preds.push((await session.run({ ...feeds, sample })).noise_pred);
      const { out: mix } = await combineSession!.run({ w, ...Object.fromEntries(preds.map((t, j) => [`in${j}`, t])) });
      const next = await stepSession.run({ pred: mix, x, memory, z: memory, k: stepCoefficients(rt, k) });
      const row = new rt.ort.Tensor('float32', Float32Array.of(i), [1]);
      const { history_out } = await measureSession!.run({ x, next: next.x_next, mix, history, row, k: new rt.ort.Tensor('float32', Float32Array.from([CFG, k.p, k.q]), [3]), ...Object.fromEntries(preds.map((t, j) => [`pred${j}`, t])) });
      if (i > 0) history.dispose();
      history = history_out;
      for (const t of [...preds, mix, next.x0, next.preview]) t.dispose();
      if (i > 0) x.dispose(), sample.dispose();
      x = next.x_next;
      sample = next.model_in;
    } else {
      const eps = new Float32Array(n);
      const alone: Float32Array[] = [];
      for (let j = 0; j < predictions; j++) {
        const pred = (await (await session.run({ ...feeds, sample })).noise_pred.getData(true)) as Float32Array;
        const guided = guide(pred);
        for (let e = 0; e < n; e++) eps[e] += guided[e] / predictions;
        alone.push(guided);
      }
      const latent = x.data as Float32Array;
      const next = sched.step(eps, 0, latent);
      const clean = (e: Float32Array) => e.map((v, c) => k.p * latent[c] + k.q * v);
      for (const l of [...alone.map(clean), clean(eps), next, latent]) latentHighBand(l, 4, lh, lh, profileCutoff(lh));
      cosineSimilarity(next, latent);
      ({ x, sample } = cpuInputs(rt, next, lh));
    }
  }
  if (stepSession) await history.getData(true), await x.getData(true);
  const ms = (performance.now() - start) / REPEATS;
  for (const s of [stepSession, combineSession, measureSession]) await s?.release();
  return ms;
}

/**
 * ms per step of the GPU loop with the UNet compiled for graph capture (as the engine runs plain,
 * merged and switched jobs): the first run records, every later run replays on the same buffers; the
 * step graph writes the next input into the UNet's own, and the CPU writes the timestep embedding.
 */
async function capturedLoopMs(rt: Runtime, g: GraphBuilder, layout: ConvLayout, weights: Record<string, OrtNs.Tensor>, feeds: Record<string, OrtNs.Tensor>): Promise<number> {
  stage('captured loop');
  const lh = SIZE / 8;
  const device = rt.gpu!.device;
  const made: GPUBuffer[] = [];
  const gpu = (dims: number[], data?: Float32Array) => {
    const buffer = device.createBuffer({ size: dims.reduce((a, b) => a * b, 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    made.push(buffer);
    if (data) device.queue.writeBuffer(buffer, 0, new Float32Array(data));
    return rt.ort.Tensor.fromGpuBuffer(buffer, { dataType: 'float32', dims });
  };
  // the captured session's inputs and output in buffers onnxruntime allocated (see ortGpuZeros), filled
  // once it has submitted the zeros
  const io: Record<string, OrtNs.Tensor> = {};
  for (const name of ['sample', 'timestep_embedding', 'encoder_hidden_states']) io[name] = await ortGpuZeros(rt, [...feeds[name].dims]);
  const pred = await ortGpuZeros(rt, [2, 4, lh, lh]);
  await flushOrt(rt);
  for (const [name, t] of Object.entries(io)) writePadded(device, t.gpuBuffer as GPUBuffer, feeds[name].data as Float32Array);
  const f = previewFactor(lh, lh);
  const xs = [gpu([1, 4, lh, lh], new Rng(3).normal(4 * lh * lh)), gpu([1, 4, lh, lh])];
  const [memory, x0, preview] = [gpu([1, 4, lh, lh]), gpu([1, 4, lh, lh]), gpu([1, 3, Math.floor(lh / f), Math.floor(lh / f)])];
  const session = await rt.ort.InferenceSession.create(g.encode(), { ...sessionOptions(rt, { layout, outputsOnGpu: true }), enableGraphCapture: true });
  const stepSession = await rt.ort.InferenceSession.create(buildStepGraph({ batch: 2, channels: 4, height: lh, width: lh, previewFactor: f }).encode(), sessionOptions(rt, { outputsOnGpu: true }));
  const sched = new DpmSolverPP2MScheduler(Math.max(REPEATS, 2));
  const k = sched.linear(0);
  const coefficients = stepCoefficients(rt, k);
  const embedding = new Float32Array(feeds.timestep_embedding.data as Float32Array);
  // the recording run, then a read that makes onnxruntime submit it
  await session.run({ ...weights, ...io }, { noise_pred: pred });
  await (await stepSession.run({ pred, x: xs[0], memory, z: memory, k: coefficients }, { x_next: null, x0, model_in: io.sample, preview })).x_next.getData(true);
  const start = performance.now();
  let last: OrtNs.Tensor | undefined;
  for (let i = 0; i < REPEATS; i++) {
    device.queue.writeBuffer(io.timestep_embedding.gpuBuffer as GPUBuffer, 0, embedding);
    await session.run({ ...weights, ...io }, { noise_pred: pred });
    const final = i === REPEATS - 1;
    const out = await stepSession.run({ pred, x: xs[i % 2], memory, z: memory, k: coefficients }, { x_next: final ? null : xs[(i + 1) % 2], x0, model_in: io.sample, preview });
    last = final ? out.x_next : undefined;
  }
  await last!.getData(true);
  const ms = (performance.now() - start) / REPEATS;
  await stepSession.release();
  await session.release();
  for (const b of made) b.destroy();
  for (const t of [...Object.values(io), pred]) t.dispose();
  return ms;
}

interface Variant {
  name: string;
  attention: AttentionForm;
  layout: ConvLayout;
  /** How k x k convolutions are built (unfolded only in NCHW: see the blocks test). */
  conv: ConvForm;
}

async function measure(rt: Runtime, precision: 'fp16' | 'fp32', v: Variant) {
  const lh = SIZE / 8;
  const dtype = precision === 'fp16' ? 'float16' : 'float32';
  const forms = { attention: v.attention, bufferLimit: DEFAULT_BUFFER_LIMIT, conv: v.conv };
  const memory = rt.gpu!.memory;
  await rt.gpu!.device.queue.onSubmittedWorkDone();
  const base = memory.live;
  memory.resetPeak();
  const { g, ws, feeds } = unetFixture(rt, precision, v.attention, v.conv);
  const rng = new Rng(2);
  const t0 = performance.now();
  // outputs stay on the GPU: a run is timed without its readback, which the loops below add or avoid
  stage('create the UNet session');
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { layout: v.layout, outputsOnGpu: true }));
  const createMs = performance.now() - t0;
  stage('first run');
  const f0 = performance.now();
  const first = await session.run(feeds);
  await rt.gpu!.device.queue.onSubmittedWorkDone();
  // timed as the warm runs below are, to the end of its GPU work (its readback after)
  const firstRunMs = performance.now() - f0;
  const finite = ((await first.noise_pred.getData(true)) as Float32Array).every(Number.isFinite);
  stage('timed runs');
  const times: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const s = performance.now();
    const out = await session.run(feeds);
    await rt.gpu!.device.queue.onSubmittedWorkDone();
    times.push(performance.now() - s);
    out.noise_pred.dispose();
  }
  const unetMs = median(times);
  const loops = o['unet-only']
    ? {}
    : v.name === 'before'
      ? { cpu: await loopMs(rt, session, feeds, 'cpu') }
      : {
          cpu: await loopMs(rt, session, feeds, 'cpu'),
          gpu: await loopMs(rt, session, feeds, 'gpu'),
          captured: await capturedLoopMs(rt, g, v.layout, ws.feeds(g.weights.keys()), feeds),
          mixedCpu: await mixedLoopMs(rt, session, feeds, 'cpu'),
          mixedGpu: await mixedLoopMs(rt, session, feeds, 'gpu'),
        };
  const peakBytes = memory.peak - base;
  const largestBufferBytes = memory.largest;
  stage('logged run');
  const run = runSummary(await loggedRun(rt, session, feeds), g, ws);
  await session.release();
  if (o['ort-profile']) {
    stage('profiled run');
    await profileRun(rt, g, v.layout, feeds);
  }
  ws.dispose();

  // the text encoder once and the VAE decoder once, for seconds per image (not with --unet-only),
  // each on random inputs of the shapes its graph declares (the text encoder's: the token rows the
  // engine looks up on the CPU), so the feeds follow the graphs
  const once = async (gb: GraphBuilder) => {
    const inputs: Record<string, OrtNs.Tensor> = {};
    for (const i of gb.inputs) {
      if (i.type !== 'float32') throw new Error(`bench: the input ${i.name} is ${i.type}, not float32`);
      inputs[i.name] = new rt.ort.Tensor('float32', rng.normal(i.dims.reduce((a, b) => a * b, 1)), i.dims);
    }
    const w = weightsFor(rt, gb, precision);
    stage(`text encoder or VAE (${gb.inputs[0]?.name})`);
    const s = await rt.ort.InferenceSession.create(gb.encode(), sessionOptions(rt, { layout: v.layout }));
    await s.run({ ...w.feeds(gb.weights.keys()), ...inputs });
    const a = performance.now();
    await s.run({ ...w.feeds(gb.weights.keys()), ...inputs });
    const ms = performance.now() - a;
    await s.release();
    w.dispose();
    return ms;
  };
  let textMs: number | null = null;
  let vaeMs: number | null = null;
  if (!o['unet-only']) {
    textMs = await once(buildTextEncoder(CONFIG.textEncoder, { batch: 1, seqLen: 77, dtype, clipSkip: 1, ...forms }));
    vaeMs = await once(buildVaeDecoder(CONFIG.vae, { batch: 1, latentH: lh, latentW: lh, dtype, ...forms }));
  }
  const [cpuMs, gpuMs, capturedMs] = [loops.cpu?.ms, loops.gpu?.ms, loops.captured];
  const [stepLoop, stepMs] = v.name === 'before' ? ['cpu', cpuMs] : capturedMs !== undefined ? ['captured', capturedMs] : ['gpu', gpuMs];
  const unetPlan = graphMemory(g, { transposesConvWeights: true, pointwiseAsIs: v.layout === 'NCHW' });
  const plan = planMemory(CONFIG, { width: SIZE, height: SIZE, precision, cfg: true, fusedAttention: v.attention === 'fused', transposesConvWeights: true, pointwiseAsIs: v.layout === 'NCHW', conv: v.conv });
  const row = {
    variant: v.name,
    precision,
    attention: v.attention,
    layout: v.layout,
    conv: v.conv,
    finite,
    // the text encoder, the steps of the loop the variant stands for (the UNet with its step: the CPU
    // loop before; after, the GPU loop replaying a captured UNet, as the engine runs a plain job) and
    // the VAE decode
    secondsPerImage: textMs === null || vaeMs === null || stepMs === undefined ? null : (textMs + STEPS * stepMs + vaeMs) / 1000,
    secondsPerImageLoop: stepMs === undefined ? null : stepLoop,
    unetMsPerStep: unetMs,
    unetRuns: times,
    textEncoderMs: textMs,
    vaeDecodeMs: vaeMs,
    sessionCreateMs: createMs,
    firstRunMs,
    // what the first run took beyond a warm one: compiling its shaders and pipelines (and first allocations)
    shaderCompileMs: Math.max(0, firstRunMs - unetMs),
    peakGpuBytes: peakBytes,
    largestBufferBytes,
    plannedUnetActivationBytes: unetPlan.activationPeakBytes,
    // the UNet's own largest buffer (an activation, a transposed copy or a weight), which is what this
    // measures; plannedLargestBufferBytes is the whole job's (the text encoder and the VAE too)
    plannedUnetLargestBufferBytes: Math.max(unetPlan.largestBufferBytes, unetPlan.largestWeightBytes),
    plannedLargestBufferBytes: plan.largestBufferBytes,
    plannedPeakBytes: plan.peakBytes,
    // one UNet run's programs as the device logged them
    ...run,
    weightTransposeBytesPerStep: 2 * run.weightTransposeElements * (precision === 'fp16' ? 2 : 4),
    // measured by the device in the loop this variant stands for: the CPU loop before issue 19, the
    // engine's GPU loop after
    readbacksPerStep: (v.name === 'before' ? loops.cpu : loops.gpu)?.readbacksPerStep ?? null,
    loopMsPerStepCpu: loops.cpu?.ms ?? null,
    loopMsPerStepGpu: loops.gpu?.ms ?? null,
    loopMsPerStepCaptured: loops.captured ?? null,
    mixedLoopMsPerStepCpu: loops.mixedCpu ?? null,
    mixedLoopMsPerStepGpu: loops.mixedGpu ?? null,
  };
  return row;
}

async function main() {
  await installNodeWebGpu();
  const rt = await createRuntime('webgpu');
  if (o.one) {
    // a child measuring one variant: a fresh process, so onnxruntime's buffer cache holds nothing from another
    const [name, attention, layout, conv] = o.one.split(':') as [string, AttentionForm, ConvLayout, ConvForm];
    const row = await measure(rt, o.precision as 'fp16' | 'fp32', { name, attention, layout, conv });
    stage('done');
    console.log(`ROW ${JSON.stringify(row)}`);
    process.exit(0);
  }
  const a = rt.gpu!.adapter;
  const choice = await chooseAttention(rt);
  console.log(`bench:gpu on ${a.vendor}/${a.architecture} ${a.description} (shader-f16 ${a.shaderF16}); ${o.arch} at ${SIZE}x${SIZE}, ${STEPS} steps; attention check: ${choice.reason}`);
  const asked = o.precision!.split(',');
  const precisions = asked.filter((p): p is 'fp16' | 'fp32' => p === 'fp32' || (p === 'fp16' && a.shaderF16));
  // fp16 needs the adapter's shader-f16: said, not dropped in silence
  const skipped = asked.filter((p) => !(precisions as string[]).includes(p)).map((p) => `${p}: ${p === 'fp16' ? 'the adapter has no shader-f16' : 'not a precision (fp16 or fp32)'}`);
  for (const line of skipped) console.log(`  not measured: ${line}`);
  // onnxruntime's timestamp profile: asked for, or by default on a GPU (not on a CPU adapter)
  const ortProfile = o['ort-profile'] ?? !a.cpu;
  const variants: Variant[] = [
    { name: 'before', attention: 'explicit', layout: 'NHWC', conv: 'direct' },
    { name: 'after', attention: choice.form, layout: 'NCHW', conv: 'auto' },
    // the same without unfolded convolutions (each 3x3 weight transposed every run)
    { name: 'direct', attention: choice.form, layout: 'NCHW', conv: 'direct' },
    { name: 'nhwc', attention: choice.form, layout: 'NHWC', conv: 'direct' },
  ].filter((v) => o.variants!.split(',').includes(v.name)) as Variant[];
  const rows: Record<string, unknown>[] = [];
  const plans = (['fp16', 'fp32'] as const).map((precision) => planMemory(SD15_CONFIG, { width: 512, height: 512, precision, cfg: true, fusedAttention: choice.form === 'fused' }));
  const write = (lora?: unknown) => writeFileSync(o.out!, JSON.stringify({ date: new Date().toISOString(), adapter: { ...a, dawnFeatures: dawnFeatures() }, arch: o.arch, size: SIZE, steps: STEPS, repeats: REPEATS, unetOnly: o['unet-only'], attentionCheck: choice, skipped, rows, lora, plan512: plans }, null, 2));
  const ms = (x: number | null) => (x === null ? '-' : x.toFixed(0));
  for (const precision of precisions) {
    for (const v of variants) {
      console.log(`  ${new Date().toISOString().slice(11, 19)} measuring ${precision} ${v.name}…`);
      try {
        const args = [...process.execArgv, process.argv[1], '--arch', o.arch!, '--size', String(SIZE), '--steps', String(STEPS), '--repeats', String(REPEATS), '--precision', precision, '--one', `${v.name}:${v.attention}:${v.layout}:${v.conv}`];
        if (o['unet-only']) args.push('--unet-only');
        if (ortProfile) args.push('--ort-profile');
        const child = runChild(args, Number(o['child-timeout']) * 1000, Number(o['child-attempts']));
        for (const stall of child.stalls) console.log(`  the measuring child stalled (${stall}); running it again`);
        const line = child.stdout.split('\n').find((l) => l.startsWith('ROW '));
        if (!line) throw new Error(`the measuring run failed: ${(child.stderr || child.stdout).slice(-800)}`);
        const measured = JSON.parse(line.slice(4));
        const profile = ortProfile ? profileSummary(child.stdout, measured.graphTransposeElements) : undefined;
        const bytes = precision === 'fp16' ? 2 : 4;
        const row = {
          ...measured,
          ...profile,
          // the layout transposes' bytes need their shapes, which only onnxruntime's profile prints
          layoutTransposeBytesPerStep: profile ? 2 * profile.layoutTransposeElements * bytes : null,
          stalls: child.stalls,
        };
        const perImage = row.secondsPerImage === null ? '' : `, ${row.secondsPerImage.toFixed(1)} s/image (${STEPS} steps)`;
        const loops = row.loopMsPerStepCpu === null ? '' : `, loop ${ms(row.loopMsPerStepCpu)} ms/step with readbacks`;
        const gpuLoops = row.loopMsPerStepGpu === null ? '' : `, ${ms(row.loopMsPerStepGpu)} ms/step on the GPU, ${ms(row.loopMsPerStepCaptured)} replayed; three predictions mixed: ${ms(row.mixedLoopMsPerStepCpu)} ms/step read back, ${ms(row.mixedLoopMsPerStepGpu)} on the GPU`;
        console.log(
          `  ${precision} ${v.name.padEnd(7)} ${v.attention.padEnd(8)} ${v.layout} ${v.conv.padEnd(6)}: UNet ${ms(row.unetMsPerStep)} ms/step${perImage}, first run ${(row.firstRunMs / 1000).toFixed(1)} s (compile ${(row.shaderCompileMs / 1000).toFixed(1)} s)${loops}${gpuLoops}, ` +
            `peak ${MiB(row.peakGpuBytes)}, largest ${MiB(row.largestBufferBytes)}, ${row.dispatches} dispatches, ${row.weightTransposes} weight + ${row.layoutTransposes} layout transposes/step, ${row.readbacksPerStep ?? 'n/a'} readbacks/step${row.finite ? '' : ' NOT FINITE'}`,
        );
        rows.push(row);
      } catch (e) {
        console.log(`  ${precision} ${v.name}: ${(e as Error).message.slice(0, 300)}`);
        rows.push({ variant: v.name, precision, attention: v.attention, layout: v.layout, conv: v.conv, error: (e as Error).message });
      }
      // what has been measured survives a run cut short
      write();
    }
  }
  let lora: unknown;
  if (o.lora) {
    process.env.BENCH_LORA_RANKS ??= '32';
    process.env.BENCH_LORA_COUNTS ??= '1,3,5';
    process.env.BENCH_LORA_FULL ??= '1';
    lora = await benchLoraMerge(rt);
  }
  write(lora);
  console.log(`written to ${o.out}`);
  process.exit(0);
}

main().catch((e) => {
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
});
