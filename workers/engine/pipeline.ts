// Text-to-image, as the algorithm box reads: encode the prompts, start from seeded noise, and at
// each step predict the noise with classifier-free guidance and let the scheduler step; decode.
// A composition method (workers/composition/) decides at each step which LoRA sets the UNet runs
// with and how their predictions mix.
import type * as OrtNs from 'onnxruntime-web';
import type { BoxReport, CompositionReport, CompositionStep, GenerateJob, GuidanceReport, GuidanceStep, ImageData8, LayoutReport, ProgressEvent } from '../api/contract.ts';
import { CancelledError } from '../api/errors.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import { ContributionCache } from '../composition/cache.ts';
import { cosineSimilarity, orderAndPartition, profileImages } from '../composition/frequency.ts';
import { METHODS } from '../composition/methods.ts';
import { resolveComposition, type Partition } from '../composition/plan.ts';
import { DdimScheduler } from '../schedulers/ddim.ts';
import { unetMapOutputName } from '../graph/unet.ts';
import { shareInside, tokensMap } from '../layout/regional.ts';
import { reinitLatent } from '../layout/reinit.ts';
import { regionWeights } from '../layout/masks.ts';
import { resolveLayout } from '../layout/options.ts';
import { createScheduler } from '../schedulers/registry.ts';
import type { ClipTextTokenizer } from '../text/tokenizer.ts';
import type { Ort } from './runtime.ts';
import { Rng } from './random.ts';
import { LatentGuide, type GuideParts } from './guide.ts';
import { prepareLayout, type Context, type PreparedLayout } from './layout-prep.ts';
import type { Vocabulary } from '../text/embeddings.ts';
import { crossAttentionLayers } from '../graph/cross-kv.ts';

type Feeds = Record<string, OrtNs.Tensor>;
type Outputs = OrtNs.InferenceSession.OnnxValueMapType;

export interface PipelineParts {
  ort: Ort;
  config: ModelConfig;
  tokenizer: ClipTextTokenizer;
  /** The text encoder on `input_ids` (and, with added tokens, `extra_embeddings`, `extra_ids`, `extra_mask`). */
  textEncoder: (feeds: Feeds) => Promise<Outputs>;
  /** Added tokens (textual inversions, ED-LoRA concepts) the prompts may use. */
  vocabulary?: Vocabulary;
  /** The main UNet's context layers: 1, or the cross-attention layer count when a prompt has a layer-wise token (no layout). */
  contextLayers?: number;
  unet: (feeds: Feeds) => Promise<Outputs>;
  vae: (feeds: Feeds) => Promise<Outputs>;
  isCancelled: () => boolean;
  checkDevice: () => void;
  /** Merge exactly these LoRAs (indices into the job's `loras`) into one component; the merge's ms, or undefined when nothing changed. */
  setLoras: (loras: number[], component: 'unet' | 'textEncoder') => Promise<number | undefined>;
  /** Relative high-frequency amplitude of each image of a batch [count, height, width] (powers of two). */
  amplitudes: (images: Float32Array, count: number, height: number, width: number, cutoff: number) => Promise<number[]>;
  /** Names of the job's LoRAs, for the report. */
  loraNames: string[];
  /** Per job LoRA: its ED-LoRA concept tokens (a box's concept words when it has no trigger words). */
  loraConcepts?: string[][];
  /** Layouts: the cross-attention keys and values of one text context [1, textLen, dim], by output name. */
  crossKV?: (context: Float32Array) => Promise<Record<string, Float32Array>>;
  /** Layouts: the UNet's current cross-attention output projections, copied as a box region's inputs. */
  regionOutputs?: (region: number) => Promise<Record<string, OrtNs.Tensor>>;
  /** Guidance and re-initialisation: the cut UNet's maps graph, and its backward graph when guided. */
  guidance?: GuideParts;
  /** cmlora's offline profiles of this job's LoRA set, kept by the engine between jobs. */
  profiles?: { get(): number[] | undefined; set(amplitudes: number[]): void };
}

export interface PipelineResult {
  image: ImageData8;
  unetEvaluations: number;
  mergeMs: number[];
  composition: CompositionReport;
  boxes: BoxReport[];
  layout?: LayoutReport;
  guidance?: GuidanceReport;
  timings: { textEncodeMs: number; denoiseMs: number; perStepMs: number; decodeMs: number };
  warnings: string[];
}

/** Sinusoidal timestep embedding (cos first: flip_sin_to_cos, no frequency shift), float64. */
export function timestepEmbedding(t: number, dim: number): Float32Array {
  const half = dim / 2;
  const out = new Float32Array(dim);
  for (let i = 0; i < half; i++) {
    const arg = t * Math.exp((-Math.log(10000) * i) / half);
    out[i] = Math.cos(arg);
    out[half + i] = Math.sin(arg);
  }
  return out;
}

/** A rough latent -> RGB projection for live previews (SD 1.5 latent space). */
const PREVIEW = [
  [0.298, 0.207, 0.208],
  [0.187, 0.286, 0.173],
  [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473],
];

export function latentPreview(latent: Float32Array, h: number, w: number): ImageData8 {
  const data = new Uint8ClampedArray(h * w * 4);
  const n = h * w;
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = 0; k < 4; k++) v += latent[k * n + p] * PREVIEW[k][c];
      data[p * 4 + c] = Math.round((v + 1) * 127.5);
    }
    data[p * 4 + 3] = 255;
  }
  return { width: w, height: h, data };
}

/** VAE output in [-1, 1], NCHW -> RGBA bytes. */
export function toImage(pixels: Float32Array, h: number, w: number): ImageData8 {
  const data = new Uint8ClampedArray(h * w * 4);
  const n = h * w;
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) data[p * 4 + c] = Math.round(Math.min(Math.max((pixels[c * n + p] + 1) / 2, 0), 1) * 255);
    data[p * 4 + 3] = 255;
  }
  return { width: w, height: h, data };
}

export async function denoise(parts: PipelineParts, job: GenerateJob, onProgress?: (e: ProgressEvent) => void): Promise<PipelineResult> {
  const { ort, config } = parts;
  const start = performance.now();
  const elapsed = () => performance.now() - start;
  const check = () => {
    parts.checkDevice();
    if (parts.isCancelled()) throw new CancelledError();
  };
  const warnings: string[] = [];
  const lh = job.height / 8;
  const lw = job.width / 8;
  const channels = config.unet.inChannels;
  const latentSize = channels * lh * lw;
  const guided = job.cfg > 1;
  const loraCount = job.loras?.length ?? 0;
  const layout = job.layout?.boxes.length ? job.layout : undefined;
  const boxes = layout?.boxes ?? [];
  // the engine lists box LoRAs after the job's own, box by box
  let next = loraCount;
  const boxLoras = boxes.map((b) => b.loras.map(() => next++));
  const layoutOptions = layout ? resolveLayout(layout) : undefined;
  const injected = layoutOptions?.injection ?? false;
  // without injection, box LoRAs join the frame's LoRAs and box prompts the global prompt
  const globalCount = layout && !injected ? next : loraCount;
  const prompt = layout && !injected ? [job.prompt, ...boxes.map((b) => b.prompt)].filter((t) => t.trim()).join(', ') : job.prompt;
  // a layout whose LoRAs are all in boxes still merges them (into their regions) by default
  const options = resolveComposition(job.composition ?? (boxLoras.flat().length ? { method: 'merge' } : undefined), job.steps, globalCount);
  const method = METHODS[options.method];
  const all = Array.from({ length: options.method === 'none' ? 0 : globalCount }, (_, i) => i);
  const count = all.length;
  if (options.method === 'none' && globalCount) warnings.push(`Prompt only: the job's ${globalCount} LoRA(s) are not used.`);
  const mergeMs: number[] = [];
  const merge = async (loras: number[], component: 'unet' | 'textEncoder') => {
    const ms = await parts.setLoras(loras, component);
    if (ms !== undefined) mergeMs.push(ms);
    return ms ?? 0;
  };

  // 1. text conditioning, [uncond, cond] when guided, with every LoRA's text-encoder part merged
  onProgress?.({ phase: 'text', step: 0, total: job.steps, elapsedMs: elapsed() });
  await merge(all, 'textEncoder');
  const vocab = parts.vocabulary;
  const textLen = config.textEncoder.maxPositions;
  const hidden = config.unet.crossAttentionDim;
  // a prompt with an ED-LoRA token is encoded once per cross-attention layer, with that layer's vectors
  const encode = async (text: string, label: string) => {
    const e = parts.tokenizer.encode(text, vocab?.added);
    if (e.truncated) warnings.push(`The ${label} is ${e.tokenCount} tokens long; only the first ${parts.tokenizer.maxLength} are used.`);
    const V = config.textEncoder.vocabSize;
    const ids = new ort.Tensor('int64', BigInt64Array.from(e.ids, (id) => BigInt(id < V ? id : 0)), [1, e.ids.length]);
    if (!vocab) return { data: (await parts.textEncoder({ input_ids: ids })).last_hidden_state.data as Float32Array, layers: 1, ids: e.ids, tokenCount: e.tokenCount };
    const extraIds = new ort.Tensor('int64', BigInt64Array.from(e.ids, (id) => BigInt(id < V ? 0 : id - V)), [1, e.ids.length]);
    const mask = new ort.Tensor('float32', Float32Array.from(e.ids, (id) => (id < V ? 0 : 1)), [1, e.ids.length, 1]);
    const layers = e.ids.some((id) => vocab.layerwise.has(id)) ? vocab.layers : 1;
    const data = new Float32Array(layers * textLen * hidden);
    for (let l = 0; l < layers; l++) {
      const table = new ort.Tensor('float32', vocab.table(l), [vocab.rows, config.textEncoder.hidden]);
      const out = await parts.textEncoder({ input_ids: ids, extra_ids: extraIds, extra_mask: mask, extra_embeddings: table });
      data.set(out.last_hidden_state.data as Float32Array, l * textLen * hidden);
    }
    return { data, layers, ids: e.ids, tokenCount: e.tokenCount };
  };
  const condText = await encode(prompt, 'prompt');
  const uncondText = guided ? await encode(job.negative, 'negative prompt') : undefined;
  const contextLayers = parts.contextLayers ?? 1;
  const asLayers = (c: Context) => (c.layers === contextLayers ? c.data : c.layers === 1 ? repeat(c.data, contextLayers) : c.data.slice(0, textLen * hidden));
  const cond = asLayers(condText);
  const context = uncondText ? concat(asLayers(uncondText), cond) : cond;

  // 1b. a layout: each region's prompts, keys and values (once per image), masks and concept tokens
  let prepared: PreparedLayout | undefined;
  let guide: LatentGuide | undefined;
  if (layout && layoutOptions) {
    if (!parts.crossKV) throw new Error('this engine cannot run layouts');
    prepared = await prepareLayout(
      { ort, config, tokenizer: parts.tokenizer, vocabulary: vocab, encode, merge, crossKV: layeredKV(parts.crossKV, config.unet), regionOutputs: parts.regionOutputs },
      job,
      boxes,
      layoutOptions,
      { frame: all, boxes: boxLoras, none: options.method === 'none', concepts: boxLoras.map((ls) => ls.flatMap((i) => parts.loraConcepts?.[i] ?? [])) },
      { cond: condText, uncond: uncondText },
    );
    warnings.push(...prepared.warnings);
    if ((layoutOptions.guidance || layoutOptions.reinit) && parts.guidance) {
      const { rows, cols } = parts.guidance.layers;
      const gridMasks = prepared.masks.get(`${rows}x${cols}`)!;
      gridMasks.extents.forEach((e, n) => {
        if (!e) warnings.push(`Box "${boxes[n].name}" covers no whole cell of the ${rows}x${cols} grid that guidance and re-initialisation read, so they skip it; make it larger, or use the centre mask rule.`);
      });
      guide = new LatentGuide(parts.guidance, {
        ort,
        options: layoutOptions.guidance,
        masks: gridMasks,
        regions: boxes.length + 1,
        textLen,
        concepts: prepared.concepts.map((c) => ({ region: c.region, tokens: c.tokens.positions })),
        steps: job.steps,
        latent: { channels, height: lh, width: lw },
        fixed: prepared.condFeeds,
      });
    }
  }
  const layoutTensors = prepared?.feeds ?? {};
  const textEncodeMs = elapsed();
  check();

  // 2. the guided noise prediction of the UNet with a set of LoRAs merged in
  const batch = guided ? 2 : 1;
  const ctxTensor = new ort.Tensor('float32', context, contextLayers > 1 ? [batch, contextLayers, textLen, hidden] : [batch, textLen, hidden]);
  const c0 = config.unet.blockOutChannels[0];
  let unetEvaluations = 0;
  let stepMergeMs = 0;
  let lastOutputs: Outputs | undefined;
  const predict = async (loras: number[], x: Float32Array, t: number): Promise<Float32Array> => {
    check();
    stepMergeMs += await merge(loras, 'unet');
    const emb = timestepEmbedding(t, c0);
    const out = await parts.unet({
      sample: new ort.Tensor('float32', guided ? concat(x, x) : x, [batch, channels, lh, lw]),
      timestep_embedding: new ort.Tensor('float32', guided ? concat(emb, emb) : emb, [batch, c0]),
      encoder_hidden_states: ctxTensor,
      ...layoutTensors,
    });
    unetEvaluations += 1;
    lastOutputs = out;
    const pred = out.noise_pred.data as Float32Array;
    if (!guided) return pred;
    const eps = new Float32Array(latentSize);
    for (let k = 0; k < latentSize; k++) eps[k] = pred[k] + job.cfg * (pred[latentSize + k] - pred[k]);
    return eps;
  };
  const amplitudes = async (latents: Float32Array[]) => {
    const img = profileImages(latents, channels, lh, lw);
    return parts.amplitudes(img.data, latents.length, img.height, img.width, options.cutoff);
  };

  // 3. cmlora: the frequency profile that orders and partitions the LoRAs
  let order = all.slice();
  let partition: Partition = { high: all.slice(), low: [] };
  let profile: CompositionReport['profile'] = null;
  if (options.method === 'cmlora' && count) {
    const t0 = performance.now();
    const before = unetEvaluations;
    if (options.profiling === 'offline') {
      let values = parts.profiles?.get();
      const source = values ? 'cache' : 'run';
      if (!values) {
        const clean: Float32Array[] = [];
        for (const i of all) {
          onProgress?.({ phase: 'profile', step: i, total: count, elapsedMs: elapsed() });
          clean.push(await profileRun(i));
        }
        values = await amplitudes(clean);
        parts.profiles?.set(values);
      }
      ({ order, partition } = orderAndPartition(values));
      profile = { source, amplitudes: values, unetEvaluations: unetEvaluations - before, ms: performance.now() - t0 };
    } else {
      profile = { source: 'online', amplitudes: [], unetEvaluations: 0, ms: 0 };
    }
  }
  const profileEvaluations = unetEvaluations;
  /** One LoRA alone for a few deterministic DDIM steps from the job's noise: the clean latent it heads to. */
  async function profileRun(lora: number): Promise<Float32Array> {
    const ddim = new DdimScheduler(options.profileSteps);
    let x = new Rng(job.seed).normal(latentSize);
    let x0 = x;
    for (let k = 0; k < ddim.timesteps.length; k++) {
      const eps = await predict([lora], x, ddim.timesteps[k]);
      x0 = ddim.predictOriginal(eps, k, x);
      x = ddim.step(eps, k, x);
    }
    return x0;
  }

  // 4. seeded initial noise, scaled to the scheduler's first sigma
  const scheduler = createScheduler(job.scheduler, job.steps);
  const rng = new Rng(job.seed);
  let latent: Float32Array = rng.normal(latentSize).map((v) => v * scheduler.initNoiseSigma);
  // 4b. latent re-initialisation (the code's replace_latents): a probe of the cut UNet on the first
  // noise locates each concept on the guidance grid; its window of the noise moves into its box
  const windows: ({ row: number; col: number } | null)[] = boxes.map(() => null);
  if (prepared?.options.reinit && guide) {
    await merge(all, 'unet');
    const { rows, cols } = parts.guidance!.layers;
    const extents = prepared.masks.get(`${rows}x${cols}`)!.extents;
    const found = await guide.probe(scheduler.scaleModelInput(latent, 0), new ort.Tensor('float32', timestepEmbedding(scheduler.timesteps[0], c0), [1, c0]));
    unetEvaluations += 1;
    const scale = lh / rows;
    const placed = boxes.map((_, n) => n).filter((n) => extents[n]);
    const noise = latent.map((v) => v / scheduler.initNoiseSigma);
    const r = reinitLatent(noise, channels, rows, cols, scale, placed.map((n) => ({ box: extents[n]!, map: found[n] })));
    latent = r.latent.map((v) => v * scheduler.initNoiseSigma);
    r.windows.forEach((w, k) => (windows[placed[k]] = { row: w.row * scale, col: w.col * scale }));
  }
  let latentAmplitude = (await amplitudes([latent]))[0];

  // 5. the denoising loop: the method plans each step, the UNet runs what it asks for, and the
  // guided predictions are mixed by the plan's weights
  const loopStart = performance.now();
  const cache = new ContributionCache(count);
  const lastAmplitude: (number | null)[] = all.map(() => null);
  const took = all.map(() => ({ fresh: 0, cached: 0 }));
  const steps: CompositionStep[] = [];
  // the LoRA set merged now, as a key that ignores order
  const setKey = (loras: number[]) => [...loras].sort((a, b) => a - b).join(',');
  let current = '';
  for (let i = 0; i < scheduler.timesteps.length; i++) {
    check();
    const t = scheduler.timesteps[i];
    stepMergeMs = 0;
    // 5a'. gradient guidance moves the latent before the step's prediction (with every LoRA merged;
    // the runs below then start from that set when the plan has it, not merge it again)
    let guidance: GuidanceStep | undefined;
    if (guide?.active(i)) {
      stepMergeMs += await merge(all, 'unet');
      current = setKey(all);
      ({ latent, record: guidance } = await guide.step(i, latent, (v) => scheduler.scaleModelInput(v, i), new ort.Tensor('float32', timestepEmbedding(t, c0), [1, c0])));
      check();
    }
    const x = scheduler.scaleModelInput(latent, i);
    const plan = method.plan({ step: i, steps: job.steps, count, options, order, partition, latentAmplitude, cache: cache.view(i) });
    // 5a. run the UNet for each planned LoRA set, starting with the set already merged
    const runs = [...plan.evaluations].sort((a, b) => Number(setKey(b.loras) === current) - Number(setKey(a.loras) === current));
    const before = unetEvaluations;
    const alone = new Map<number, Float32Array>();
    const eps = new Float32Array(latentSize);
    for (const run of runs) {
      const e = await predict(run.loras, x, t);
      current = setKey(run.loras);
      if (run.loras.length === 1) alone.set(run.loras[0], e);
      for (let k = 0; k < latentSize; k++) eps[k] += run.weight * e[k];
    }
    // 5b. cached LoRAs: their stored offset, added to the prediction it was taken against
    for (const c of plan.cached) {
      const e = cache.contribution(c.lora, alone);
      for (let k = 0; k < latentSize; k++) eps[k] += c.weight * e[k];
    }
    if (plan.dominant !== null && alone.has(plan.dominant)) cache.update(alone, plan.dominant, i);
    // 5c. the scheduler step, and what the step looked like in the frequency domain
    const next = scheduler.step(eps, i, latent, () => rng.normal(latentSize));
    const fresh = [...alone.keys()].sort((a, b) => a - b);
    const amps = await amplitudes([...fresh.map((l) => scheduler.predictOriginal(alone.get(l)!, i, latent)), scheduler.predictOriginal(eps, i, latent), next]);
    const weights = all.map(() => 0);
    for (const r of plan.evaluations) for (const l of r.loras) weights[l] += r.weight;
    for (const c of plan.cached) weights[c.lora] += c.weight;
    fresh.forEach((l, k) => (lastAmplitude[l] = amps[k]));
    for (const l of all) {
      if (plan.cached.some((c) => c.lora === l)) took[l].cached++;
      else if (weights[l] !== 0) took[l].fresh++;
    }
    const record: CompositionStep = {
      step: i,
      active: [...new Set(plan.evaluations.flatMap((r) => r.loras))].sort((a, b) => a - b),
      cached: plan.cached.map((c) => c.lora).sort((a, b) => a - b),
      dominant: plan.dominant,
      weights,
      amplitudes: all.map((l) => (alone.has(l) ? amps[fresh.indexOf(l)] : null)),
      mixAmplitude: amps[fresh.length],
      latentAmplitude,
      latentSimilarity: cosineSimilarity(next, latent),
      phase: plan.phase,
      partition: options.method === 'cmlora' && count ? { high: partition.high.slice(), low: partition.low.slice() } : null,
      unetEvaluations: unetEvaluations - before,
      mergeMs: stepMergeMs,
    };
    steps.push(record);
    latent = next;
    latentAmplitude = amps[fresh.length + 1];
    // online profiling: re-partition from the amplitudes seen so far
    if (options.method === 'cmlora' && options.profiling === 'online' && lastAmplitude.every((a) => a !== null)) {
      ({ order, partition } = orderAndPartition(lastAmplitude as number[]));
    }
    onProgress?.({ phase: 'denoise', step: i + 1, total: job.steps, preview: latentPreview(latent, lh, lw), elapsedMs: elapsed(), composition: record, ...(guidance ? { guidance } : {}) });
  }
  const denoiseMs = performance.now() - loopStart;
  check();

  // 6. decode
  onProgress?.({ phase: 'decode', step: job.steps, total: job.steps, elapsedMs: elapsed() });
  const decStart = performance.now();
  const img = await parts.vae({ latent: new ort.Tensor('float32', latent, [1, channels, lh, lw]) });
  check();
  const image = toImage(img.image.data as Float32Array, job.height, job.width);
  const decodeMs = performance.now() - decStart;
  onProgress?.({ phase: 'done', step: job.steps, total: job.steps, elapsedMs: elapsed() });
  const composition: CompositionReport = {
    method: options.method,
    options,
    loras: parts.loraNames.slice(0, count),
    order,
    partition: options.method === 'cmlora' && count ? partition : null,
    profile,
    steps,
    cacheHitRate: took.map((c) => (c.fresh + c.cached ? c.cached / (c.fresh + c.cached) : null)),
    unetEvaluations: { profile: profileEvaluations, denoise: unetEvaluations - profileEvaluations },
  };
  // where each box's concept tokens drew attention at the last step: with nothing confining them
  // (their region's own maps), and as the image used them (under the region weights with injection,
  // inside the joined global prompt without)
  const boxReports: BoxReport[] = [];
  let layoutReport: LayoutReport | undefined;
  if (prepared && lastOutputs) {
    const maps = prepared.graph.mapLayers.map((l) => lastOutputs![unetMapOutputName(l)].data as Float32Array);
    const m = prepared.masks.get(`${lh}x${lw}`)!;
    const weights = injected ? regionWeights(m) : undefined;
    const cells = lh * lw;
    for (const [n, b] of boxes.entries()) {
      const c = prepared.concepts[n];
      const unmasked = tokensMap(maps, c.region, boxes.length + 1, cells, textLen, c.tokens.positions);
      const used = weights ? tokensMap(maps, c.region, boxes.length + 1, cells, textLen, c.tokens.positions, weights.subarray(c.region * cells, (c.region + 1) * cells)) : unmasked;
      boxReports.push({
        name: b.name,
        attentionInBox: shareInside(used, m.boxes[n]),
        attentionInBoxUnmasked: shareInside(unmasked, m.boxes[n]),
        window: windows[n],
        conceptTokens: c.tokens.positions,
        conceptSource: c.tokens.source,
      });
    }
    const grid = parts.guidance?.layers ?? { rows: lh, cols: lw };
    layoutReport = { options: prepared.options, grid: { rows: grid.rows, cols: grid.cols } };
  }
  return {
    image,
    unetEvaluations,
    mergeMs,
    composition,
    boxes: boxReports,
    ...(layoutReport ? { layout: layoutReport } : {}),
    ...(guide && prepared?.options.guidance ? { guidance: guide.report() } : {}),
    timings: { textEncodeMs, denoiseMs, perStepMs: denoiseMs / job.steps, decodeMs },
    warnings,
  };
}

/** A context's cross-attention keys and values; a layer-wise context gives layer l the keys of its own encoding l. */
function layeredKV(crossKV: (context: Float32Array) => Promise<Record<string, Float32Array>>, cfg: ModelConfig['unet']) {
  const layers = crossAttentionLayers(cfg).map((l) => l.name);
  return async (c: Context): Promise<Record<string, Float32Array>> => {
    if (c.layers === 1) return crossKV(c.data);
    const size = c.data.length / c.layers;
    const out: Record<string, Float32Array> = {};
    for (const [l, name] of layers.entries()) {
      const kv = await crossKV(c.data.subarray(l * size, (l + 1) * size));
      for (const [k, v] of Object.entries(kv)) if (k.endsWith(`.${name}`)) out[k] = v;
    }
    return out;
  };
}

function repeat(a: Float32Array, times: number): Float32Array {
  const out = new Float32Array(a.length * times);
  for (let i = 0; i < times; i++) out.set(a, i * a.length);
  return out;
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
