// Text-to-image, as the algorithm box reads: encode the prompts, start from seeded noise, and at
// each step predict the noise with classifier-free guidance and let the scheduler step; decode.
// A composition method (workers/composition/) decides at each step which LoRA sets the UNet runs
// with and how their predictions mix.
import type * as OrtNs from 'onnxruntime-web';
import type { BoxReport, CompositionReport, CompositionStep, GenerateJob, GuidanceReport, GuidanceStep, ImageData8, LayoutReport, ProgressEvent } from '../api/contract.ts';
import { CancelledError } from '../api/errors.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import { ContributionCache } from '../composition/cache.ts';
import { centredCrop, cosineSimilarity, derivedThreshold, greyscale, highBand, latentHighBand, profileCutoff, radialProfile } from '../composition/frequency.ts';
import { categoryOrder, profileOrder } from '../composition/order.ts';
import { METHODS } from '../composition/methods.ts';
import { resolveComposition, type Partition } from '../composition/plan.ts';
import { DEEP_FEATURE, deepFeatureDims, unetMapOutputName } from '../graph/unet.ts';
import type { ProfileStore } from './profile-store.ts';
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
import { PREVIEW_RGB } from '../graph/step.ts';
import { GpuLatents, type GpuLoopParts } from './gpu-loop.ts';

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
  /** The UNet: whole (`full`), whole with its deep features as an output (`record`), or the shallow part on given ones (`reuse`). */
  unet: (feeds: Feeds, variant?: 'full' | 'record' | 'reuse') => Promise<Outputs>;
  /** Multiply-adds of one run of each UNet variant (for the report). */
  unetMultiplyAdds?: Record<'full' | 'record' | 'reuse', number>;
  /** Multiply-adds of one run of the cut UNet's maps and backward graphs (guidance, re-initialisation). */
  guidanceMultiplyAdds?: { maps: number; grad: number };
  vae: (feeds: Feeds) => Promise<Outputs>;
  isCancelled: () => boolean;
  checkDevice: () => void;
  /** Merge exactly these LoRAs (indices into the job's `loras`) into one component; the merge's ms, or undefined when nothing changed. */
  setLoras: (loras: number[], component: 'unet' | 'textEncoder') => Promise<number | undefined>;
  /** |F| of each image of a batch [count, height, width] (powers of two), in FFT order. */
  magnitudes: (images: Float32Array, count: number, height: number, width: number) => Promise<ArrayLike<number>>;
  /** WebGPU: the UNet and step graph with outputs left on the GPU, so the loop's latents stay there. */
  gpuLoop?: GpuLoopParts;
  /** Why there is no `gpuLoop` (for the report). */
  gpuLoopUnavailable?: string;
  /** GPU results the CPU has read so far (a running count; the report gives the loop's share per step). */
  readbacks?: () => number;
  /** Names of the job's LoRAs, for the report. */
  loraNames: string[];
  /** Per job LoRA: its category (given or guessed), which cmlora groups by. */
  loraCategories?: string[];
  /** Per job LoRA: its trigger words, the prompt of its profiling image. */
  loraTriggers?: (string | undefined)[];
  /** Per job LoRA: its ED-LoRA concept tokens (a box's concept words when it has no trigger words). */
  loraConcepts?: string[][];
  /** Layouts: the cross-attention keys and values of one text context [1, textLen, dim], by output name. */
  crossKV?: (context: Float32Array) => Promise<Record<string, Float32Array>>;
  /** Layouts: the UNet's current cross-attention output projections, copied as a box region's inputs. */
  regionOutputs?: (region: number) => Promise<Record<string, OrtNs.Tensor>>;
  /** Guidance and re-initialisation: the cut UNet's maps graph, and its backward graph when guided. */
  guidance?: GuideParts;
  /** cmlora's profiles, one per LoRA, kept between jobs and processes. */
  profileStore?: ProfileStore;
  /** The store's key for LoRA `lora` profiled with these settings (the engine adds the LoRA's fingerprint and the model). */
  profileKey?: (lora: number, settings: { prompt: string; negative: string; steps: number; cutoff: number }) => string;
}

export interface PipelineResult {
  image: ImageData8;
  unetEvaluations: number;
  unetMultiplyAdds: number;
  mergeMs: number[];
  composition: CompositionReport;
  boxes: BoxReport[];
  layout?: LayoutReport;
  guidance?: GuidanceReport;
  timings: { textEncodeMs: number; denoiseMs: number; perStepMs: number; decodeMs: number };
  warnings: string[];
  /** Reads of GPU results during the denoising loop (previews included). */
  loopReadbacks: number;
  latentsOnGpu: boolean;
  latentsOnGpuReason?: string;
}

/** The seed of every LoRA's profiling image: a profile belongs to the LoRA, not to a job. */
export const PROFILE_SEED = 0;

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

export function latentPreview(latent: Float32Array, h: number, w: number): ImageData8 {
  const data = new Uint8ClampedArray(h * w * 4);
  const n = h * w;
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = 0; k < 4; k++) v += latent[k * n + p] * PREVIEW_RGB[k][c];
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
  // LoRA Switch encodes the prompt with the first LoRA's text encoder only (ComposLoRA's compose_lora.py)
  const textLoras = options.method === 'switch' ? all.slice(0, 1) : all;
  await merge(textLoras, 'textEncoder');
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

  // 2. the guided noise prediction of the UNet with a set of LoRAs merged in: the whole UNet, the whole
  // UNet keeping its deep features, or the shallow part on kept ones (the deep-feature cache)
  const batch = guided ? 2 : 1;
  const ctxTensor = new ort.Tensor('float32', context, contextLayers > 1 ? [batch, contextLayers, textLen, hidden] : [batch, textLen, hidden]);
  const c0 = config.unet.blockOutChannels[0];
  const macs = parts.unetMultiplyAdds ?? { full: 0, record: 0, reuse: 0 };
  let unetEvaluations = 0;
  let unetMacs = 0;
  let stepMergeMs = 0;
  let lastOutputs: Outputs | undefined;
  const featureDims = deepFeatureDims(config.unet, batch, lh, lw);
  const run = async (loras: number[], x: Float32Array, t: number, variant: 'full' | 'record' | 'reuse' = 'full', feature?: Float32Array, ctx = ctxTensor) => {
    check();
    stepMergeMs += await merge(loras, 'unet');
    const emb = timestepEmbedding(t, c0);
    const out = await parts.unet(
      {
        sample: new ort.Tensor('float32', guided ? concat(x, x) : x, [batch, channels, lh, lw]),
        timestep_embedding: new ort.Tensor('float32', guided ? concat(emb, emb) : emb, [batch, c0]),
        encoder_hidden_states: ctx,
        ...layoutTensors,
        ...(feature ? { [DEEP_FEATURE]: new ort.Tensor('float32', feature, featureDims) } : {}),
      },
      variant,
    );
    unetEvaluations += 1;
    unetMacs += macs[variant];
    lastOutputs = out;
    const pred = out.noise_pred.data as Float32Array;
    const kept = variant === 'record' ? (out[DEEP_FEATURE].data as Float32Array) : undefined;
    if (!guided) return { eps: pred, feature: kept };
    const eps = new Float32Array(latentSize);
    for (let k = 0; k < latentSize; k++) eps[k] = pred[k] + job.cfg * (pred[latentSize + k] - pred[k]);
    return { eps, feature: kept };
  };
  const cutoffLatent = Math.round((options.cutoff * Math.min(lh, lw)) / 512);
  const latentBand = (latents: Float32Array[]) => latents.map((l) => latentHighBand(l, channels, lh, lw, cutoffLatent));
  const scheduler = createScheduler(job.scheduler, job.steps);
  if (options.method === 'cmlora' && Number.isNaN(options.threshold)) {
    options.threshold = derivedThreshold(scheduler.timesteps[Math.min(job.steps - 1, Math.round(options.highPhase * job.steps))], { height: lh, width: lw }, cutoffLatent);
  }

  // 3. cmlora: the order and groups, by category (the code) or by each LoRA's frequency profile
  let { order, partition } = options.method === 'cmlora' ? categoryOrder(all.map((i) => parts.loraCategories?.[i] ?? 'character')) : { order: all.slice(), partition: { high: all.slice(), low: [] } as Partition };
  let profile: CompositionReport['profile'] = null;
  if (options.method === 'cmlora' && count) {
    const t0 = performance.now();
    const evaluationsBefore = unetEvaluations;
    if (options.partition === 'profile' && options.profiling === 'offline') {
      const values: number[] = [];
      const sources: ('run' | 'cache')[] = [];
      for (const i of all) {
        const prompt = parts.loraTriggers?.[i]?.trim() || job.prompt;
        const key = parts.profileKey?.(i, { prompt, negative: job.negative, steps: options.profileSteps, cutoff: options.cutoff });
        let v = key ? await parts.profileStore?.get(key) : undefined;
        sources.push(v === undefined ? 'run' : 'cache');
        if (v === undefined) {
          onProgress?.({ phase: 'profile', step: i, total: count, elapsedMs: elapsed() });
          v = await profileLora(i, prompt);
          if (key) await parts.profileStore?.set(key, v);
        }
        values.push(v);
      }
      ({ order, partition } = profileOrder(values));
      const source = sources.every((x) => x === 'cache') ? 'cache' : 'run';
      profile = { source, amplitudes: values, sources, unetEvaluations: unetEvaluations - evaluationsBefore, ms: performance.now() - t0 };
    } else profile = { source: options.profiling === 'online' && options.partition === 'profile' ? 'online' : 'category', amplitudes: [], sources: [], unetEvaluations: 0, ms: 0 };
  }
  const profileEvaluations = unetEvaluations;
  const profileMacs = unetMacs;
  /**
   * The notebook's profile of one LoRA: the image it makes alone (its trigger words, or the job's prompt,
   * through its own text encoder; a fixed seed, so the profile belongs to the LoRA), greyscale, log
   * amplitude, radial profile over its maximum, mean from radius 72 of 512 (scaled to the image).
   */
  async function profileLora(lora: number, prompt: string): Promise<number> {
    await merge([lora], 'textEncoder');
    const c = (await encode(prompt, 'profiling prompt')).data.slice(0, textLen * hidden);
    const u = guided ? (await encode(job.negative, 'negative prompt')).data.slice(0, textLen * hidden) : undefined;
    const ctx = new ort.Tensor('float32', u ? concat(u, c) : c, [batch, textLen, hidden]);
    const sched = createScheduler(job.scheduler, options.profileSteps);
    const noise = new Rng(PROFILE_SEED);
    let x: Float32Array = noise.normal(latentSize).map((v) => v * sched.initNoiseSigma);
    for (let k = 0; k < sched.timesteps.length; k++) {
      const e = await run([lora], sched.scaleModelInput(x, k), sched.timesteps[k], 'full', undefined, ctx);
      x = sched.step(e.eps, k, x, () => noise.normal(latentSize));
    }
    const pixels = await parts.vae({ latent: new ort.Tensor('float32', x, [1, channels, lh, lw]) });
    const rgba = toImage(pixels.image.data as Float32Array, job.height, job.width);
    const img = centredCrop(greyscale(rgba.data, job.width, job.height), job.height, job.width);
    const mags = await parts.magnitudes(img.data, 1, img.height, img.width);
    return highBand(radialProfile(mags, img.height, img.width, true), profileCutoff(Math.min(img.height, img.width)));
  }

  // 4. seeded initial noise, scaled to the scheduler's first sigma
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
    unetMacs += parts.guidanceMultiplyAdds?.maps ?? 0;
    const scale = lh / rows;
    const placed = boxes.map((_, n) => n).filter((n) => extents[n]);
    const noise = latent.map((v) => v / scheduler.initNoiseSigma);
    const r = reinitLatent(noise, channels, rows, cols, scale, placed.map((n) => ({ box: extents[n]!, map: found[n] })));
    latent = r.latent.map((v) => v * scheduler.initNoiseSigma);
    r.windows.forEach((w, k) => (windows[placed[k]] = { row: w.row * scale, col: w.col * scale }));
  }
  // the code's online measure starts at 1 (the high phase at step 0)
  let latentAmplitude = Infinity;

  // 5. the denoising loop: the method plans each step, the UNet runs what it asks for, and the
  // guided predictions are mixed by the plan's weights
  const loopStart = performance.now();
  const cache = new ContributionCache(count);
  const features = new Map<string, Float32Array>();
  const history = new Map<number, Float32Array[]>();
  const took = all.map(() => ({ fresh: 0, cached: 0 }));
  const steps: CompositionStep[] = [];
  // the LoRA set merged now, as a key that ignores order
  const setKey = (loras: number[]) => [...loras].sort((a, b) => a - b).join(',');
  let current = '';
  const previewEvery = job.previewEvery ?? 1;
  const previewDue = (i: number) => previewEvery > 0 && ((i + 1) % previewEvery === 0 || i === job.steps - 1);
  const readbacksBefore = parts.readbacks?.() ?? 0;
  // 5'. the loop on the GPU, where every step is one whole UNet run with weight 1 and nothing on the
  // CPU reads the latent between steps (no gradient guidance, no per-LoRA frequency measures, no cache)
  const gpuReason = !parts.gpuLoop
    ? (parts.gpuLoopUnavailable ?? 'this engine has no GPU loop')
    : !['none', 'merge', 'switch'].includes(options.method)
      ? `"${options.method}" mixes several predictions and measures each on the CPU`
      : options.deepCacheInterval > 1 || options.research
        ? 'the deep-feature cache is read on the CPU'
        : guide
          ? 'guidance and latent re-initialisation move the latent on the CPU'
          : undefined;
  let loopReadbacks = 0;
  if (!gpuReason) {
    const gpu = new GpuLatents(ort, parts.gpuLoop!, { batch, channels, height: lh, width: lw }, latent, scheduler.inputScale(0));
    try {
      for (let i = 0; i < scheduler.timesteps.length; i++) {
        check();
        stepMergeMs = 0;
        const macsBefore = unetMacs;
        const plan = method.plan({ step: i, steps: job.steps, count, options, order, partition, latentAmplitude: Infinity, cache: cache.view(i), features: all.map(() => false) });
        const [{ loras }] = plan.evaluations;
        stepMergeMs += await merge(loras, 'unet');
        check();
        const emb = timestepEmbedding(scheduler.timesteps[i], c0);
        await gpu.predict({ timestep_embedding: new ort.Tensor('float32', guided ? concat(emb, emb) : emb, [batch, c0]), encoder_hidden_states: ctxTensor, ...layoutTensors });
        unetEvaluations += 1;
        unetMacs += macs.full;
        const k = scheduler.linear(i);
        await gpu.step(k, job.cfg, i + 1 < job.steps ? scheduler.inputScale(i + 1) : 1, k.noise ? rng.normal(latentSize) : undefined);
        const weights = all.map((l) => (loras.includes(l) ? 1 : 0));
        for (const l of loras) took[l].fresh++;
        const record: CompositionStep = {
          step: i,
          active: [...loras].sort((a, b) => a - b),
          shallow: [],
          refreshed: null,
          cached: [],
          dominant: plan.dominant,
          weights,
          amplitudes: all.map(() => null),
          mixAmplitude: null,
          latentAmplitude: null,
          latentSimilarity: null,
          phase: plan.phase,
          partition: null,
          unetEvaluations: 1,
          unetMultiplyAdds: unetMacs - macsBefore,
          mergeMs: stepMergeMs,
        };
        steps.push(record);
        onProgress?.({ phase: 'denoise', step: i + 1, total: job.steps, ...(previewDue(i) ? { preview: await gpu.preview() } : {}), elapsedMs: elapsed(), composition: record });
      }
      loopReadbacks = (parts.readbacks?.() ?? 0) - readbacksBefore;
      if (prepared) lastOutputs = await gpu.lastOutputs(prepared.graph.mapLayers.map(unetMapOutputName));
      latent = await gpu.latent();
    } finally {
      gpu.dispose();
    }
  }
  const cpuSteps = gpuReason ? scheduler.timesteps.length : 0;
  for (let i = 0; i < cpuSteps; i++) {
    check();
    const t = scheduler.timesteps[i];
    stepMergeMs = 0;
    const macsBefore = unetMacs;
    // 5a'. gradient guidance moves the latent before the step's prediction (with every LoRA merged;
    // the runs below then start from that set when the plan has it, not merge it again)
    let guidance: GuidanceStep | undefined;
    if (guide?.active(i)) {
      stepMergeMs += await merge(all, 'unet');
      current = setKey(all);
      ({ latent, record: guidance } = await guide.step(i, latent, (v) => scheduler.scaleModelInput(v, i), new ort.Tensor('float32', timestepEmbedding(t, c0), [1, c0])));
      unetMacs += (parts.guidanceMultiplyAdds?.maps ?? 0) + (guidance.updated ? (parts.guidanceMultiplyAdds?.grad ?? 0) : 0);
      check();
    }
    const x = scheduler.scaleModelInput(latent, i);
    const plan = method.plan({ step: i, steps: job.steps, count, options, order, partition, latentAmplitude, cache: cache.view(i), features: all.map((l) => features.has(setKey([l]))) });
    // DeepCache on its own: the whole UNet every deepCacheInterval steps (and at a set's first run)
    const interval = options.deepCacheInterval;
    const runsPlanned = plan.evaluations.map((e) => {
      if (e.deep || interval <= 1) return options.research && options.method === 'cmlora' && !e.deep ? { ...e, deep: 'record' as const } : e;
      return { ...e, deep: i % interval === 0 || !features.has(setKey(e.loras)) ? ('record' as const) : ('reuse' as const) };
    });
    // 5a. run the UNet for each planned LoRA set, starting with the set already merged
    const runs = [...runsPlanned].sort((a, b) => Number(setKey(b.loras) === current) - Number(setKey(a.loras) === current));
    const before = unetEvaluations;
    const alone = new Map<number, Float32Array>();
    const shallow: number[] = [];
    const eps = new Float32Array(latentSize);
    for (const r of runs) {
      const key = setKey(r.loras);
      const reuse = r.deep === 'reuse' && features.has(key);
      const out = await run(r.loras, x, t, reuse ? 'reuse' : r.deep === 'record' ? 'record' : 'full', reuse ? features.get(key) : undefined);
      if (out.feature) features.set(key, out.feature);
      current = key;
      if (reuse) shallow.push(...r.loras);
      if (r.loras.length === 1) alone.set(r.loras[0], out.eps);
      for (let k = 0; k < latentSize; k++) eps[k] += r.weight * out.eps[k];
      // the research series: this LoRA's deep features now (kept or new), the unconditional half
      if (options.research && r.loras.length === 1 && features.has(key)) {
        const f = features.get(key)!;
        const list = history.get(r.loras[0]) ?? [];
        list.push(f.slice(0, f.length / batch));
        history.set(r.loras[0], list);
      }
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
    const amps = latentBand([...fresh.map((l) => scheduler.predictOriginal(alone.get(l)!, i, latent)), scheduler.predictOriginal(eps, i, latent), next]);
    const weights = all.map(() => 0);
    for (const r of plan.evaluations) for (const l of r.loras) weights[l] += r.weight;
    for (const c of plan.cached) weights[c.lora] += c.weight;
    for (const l of all) {
      if (plan.cached.some((c) => c.lora === l) || shallow.includes(l)) took[l].cached++;
      else if (weights[l] !== 0) took[l].fresh++;
    }
    const record: CompositionStep = {
      step: i,
      active: [...new Set(plan.evaluations.flatMap((r) => r.loras))].sort((a, b) => a - b),
      shallow: [...new Set(shallow)].sort((a, b) => a - b),
      refreshed: plan.refreshed ?? null,
      cached: plan.cached.map((c) => c.lora).sort((a, b) => a - b),
      dominant: plan.dominant,
      weights,
      amplitudes: all.map((l) => (alone.has(l) ? amps[fresh.indexOf(l)] : null)),
      mixAmplitude: amps[fresh.length],
      latentAmplitude: Number.isFinite(latentAmplitude) ? latentAmplitude : latentBand([latent])[0],
      latentSimilarity: cosineSimilarity(next, latent),
      ...(options.research ? { featureReuse: all.map((l) => featureReuse(history.get(l))) } : {}),
      phase: plan.phase,
      partition: options.method === 'cmlora' && count ? { high: partition.high.slice(), low: partition.low.slice() } : null,
      unetEvaluations: unetEvaluations - before,
      unetMultiplyAdds: unetMacs - macsBefore,
      mergeMs: stepMergeMs,
    };
    steps.push(record);
    latent = next;
    latentAmplitude = amps[fresh.length + 1];
    onProgress?.({ phase: 'denoise', step: i + 1, total: job.steps, ...(previewDue(i) ? { preview: latentPreview(latent, lh, lw) } : {}), elapsedMs: elapsed(), composition: record, ...(guidance ? { guidance } : {}) });
  }
  if (gpuReason) loopReadbacks = (parts.readbacks?.() ?? 0) - readbacksBefore;
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
    unetMultiplyAdds: { profile: profileMacs, denoise: unetMacs - profileMacs },
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
    unetMultiplyAdds: unetMacs,
    mergeMs,
    composition,
    boxes: boxReports,
    ...(layoutReport ? { layout: layoutReport } : {}),
    ...(guide && prepared?.options.guidance ? { guidance: guide.report() } : {}),
    timings: { textEncodeMs, denoiseMs, perStepMs: denoiseMs / job.steps, decodeMs },
    warnings,
    loopReadbacks,
    latentsOnGpu: !gpuReason,
    ...(gpuReason ? { latentsOnGpuReason: gpuReason } : {}),
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

/** The paper's research measure (pipeline_research.py `plot_sim`): the share of earlier steps whose features have a cosine of at least 0.9 with the latest. */
export function featureReuse(list: Float32Array[] | undefined): number | null {
  if (!list || list.length < 2) return null;
  const last = list[list.length - 1];
  let alike = 0;
  for (let j = 0; j < list.length - 1; j++) if (cosineSimilarity(last, list[j]) >= 0.9) alike++;
  return alike / (list.length - 1);
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
