// Text-to-image, as the algorithm box reads: encode the prompts, start from seeded noise, and at
// each step predict the noise with classifier-free guidance and let the scheduler step; decode.
// A composition method (workers/composition/) decides at each step which LoRA sets the UNet runs
// with and how their predictions mix.
import type * as OrtNs from 'onnxruntime-web';
import type { BoxReport, CompositionReport, CompositionStep, GenerateJob, GuidanceReport, GuidanceStep, ImageData8, LayoutBox, LayoutReport, ProgressEvent, ResolvedComposition, ResolvedLayoutOptions } from '../api/contract.ts';
import { CancelledError } from '../api/errors.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import { ContributionCache } from '../composition/cache.ts';
import { centredCrop, cosineSimilarity, derivedThreshold, greyscale, highBand, latentHighBand, profileCutoff, radialProfile } from '../composition/frequency.ts';
import { categoryOrder, profileOrder } from '../composition/order.ts';
import { METHODS } from '../composition/methods.ts';
import { resolveComposition, type Evaluation, type Partition, type StepPlan } from '../composition/plan.ts';
import { DEEP_FEATURE, deepFeatureDims, unetMapOutputName } from '../graph/unet.ts';
import type { ProfileStore } from './profile-store.ts';
import { shareInside, tokensMap } from '../layout/regional.ts';
import { reinitLatent } from '../layout/reinit.ts';
import { regionWeights } from '../layout/masks.ts';
import { resolveLayout } from '../layout/options.ts';
import { createScheduler } from '../schedulers/registry.ts';
import type { Scheduler } from '../schedulers/common.ts';
import type { ClipTextTokenizer } from '../text/tokenizer.ts';
import type { Ort } from './runtime.ts';
import { Rng } from './random.ts';
import { LatentGuide, type GuideParts } from './guide.ts';
import { prepareLayout, type Context, type Encoded, type PreparedLayout } from './layout-prep.ts';
import type { Vocabulary } from '../text/embeddings.ts';
import type { TokenTable } from '../text/token-table.ts';
import { crossAttentionLayers } from '../graph/cross-kv.ts';
import { applyEmphasis, hasEmphasis, parseEmphasis } from '../text/emphasis.ts';
import { GpuLatents, type GpuLoopParts } from './gpu-loop.ts';
import { latentPreview } from '../graph/step.ts';

type Feeds = Record<string, OrtNs.Tensor>;
type Outputs = OrtNs.InferenceSession.OnnxValueMapType;

export interface PipelineParts {
  ort: Ort;
  config: ModelConfig;
  tokenizer: ClipTextTokenizer;
  /** The text encoder on `inputs_embeds` [1, 77, hidden]: the token rows `tokens` looks up. */
  textEncoder: (feeds: Feeds) => Promise<Outputs>;
  /** The token embedding table (CPU memory). */
  tokens: TokenTable;
  /** Added tokens (textual inversions, ED-LoRA concepts) the prompts may use. */
  vocabulary?: Vocabulary;
  /** The main UNet's context layers: 1, or the cross-attention layer count when a prompt has a layer-wise token (no layout). */
  contextLayers?: number;
  /** 77-token chunks in the UNet's context (A1111's long prompts and BREAK; no layout): 1 by default. */
  contextChunks?: number;
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
  /** Compute dispatches on the GPU device so far (a running count, WebGPU; the loop's per step go in the report). */
  dispatches?: () => number;
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
  /** Image to image and inpainting (the engine prepares the picture): where the run starts from. */
  init?: PipelineInit;
  /** A 9-channel inpainting UNet's extra input: the mask on the latent grid [lh*lw] (1 repaints) and the masked picture's latent [C, lh, lw]. */
  inpaintInput?: { mask: Float32Array; masked: Float32Array };
  /** The phase the loop's progress events carry (`hires` for the hires fix's second pass). */
  loopPhase?: 'denoise' | 'hires';
}

export interface PipelineInit {
  /** The clean latent [C, lh, lw]: the picture encoded, or the first pass's latent upscaled. */
  latent: Float32Array;
  /** diffusers' strength: the run starts at step steps - floor(steps x strength); 1 starts from pure noise. */
  strength: number;
  /** 4-channel inpainting: the mask on the latent grid [lh*lw] (1 repaints); every step puts the picture's latent, noised to the next step, back where it is 0. */
  blend?: Float32Array;
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
  /** The final latent, before the decode (the hires fix starts from it). */
  latent: Float32Array;
  /** The schedule's step the loop started at and the steps it ran (all of them without an init picture). */
  startStep: number;
  stepsRun: number;
  warnings: string[];
  /** Reads of GPU results during the denoising loop (previews included). */
  loopReadbacks: number;
  /** Compute dispatches during the denoising loop (WebGPU: onnxruntime's and ours, as the device counted them). */
  loopDispatches?: number;
  latentsOnGpu: boolean;
  latentsOnGpuReason?: string;
  /** The loop's UNet runs replayed a captured graph. */
  graphCaptured: boolean;
}

/** Why a composition's loop must come back to the CPU each step (the research series reads every LoRA's deep features), or undefined. */
export function compositionNeedsCpu(options: Pick<ResolvedComposition, 'research'>): string | undefined {
  if (options.research) return "the research series compares each LoRA's deep features on the CPU";
  return undefined;
}

/** Whether a step may run more than one UNet pass (Composite, CMLoRA) or a part of one (the deep-feature cache): the GPU loop then mixes and measures its predictions. */
export function compositionMixes(options: Pick<ResolvedComposition, 'method' | 'deepCacheInterval' | 'research'>): boolean {
  return !['none', 'merge', 'switch'].includes(options.method) || options.deepCacheInterval > 1 || options.research;
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

/**
 * Text to image as named stages, the way diffusers separates pipeline, scheduler and callbacks: each
 * stage is a method of one run (`Denoising`) with what it needs and gives spelled out.
 */
export async function denoise(parts: PipelineParts, job: GenerateJob, onProgress?: (e: ProgressEvent) => void): Promise<PipelineResult> {
  const run = new Denoising(parts, job, onProgress);
  const text = await run.encodeText();
  const layout = await run.prepareLayout(text);
  const textEncodeMs = run.elapsed();
  run.check();
  const composition = await run.compositionOrder();
  const start = await run.initialLatent(layout);
  const loopStart = performance.now();
  const dispatchesBefore = parts.dispatches?.();
  const loop = run.gpuLoopRefusal(layout) ? await run.loopOnCpu(start.latent, composition, layout) : run.mixes ? await run.loopOnGpuMixed(start.latent, composition, layout) : await run.loopOnGpu(start.latent, composition, layout);
  const denoiseMs = performance.now() - loopStart;
  const loopDispatches = dispatchesBefore === undefined ? undefined : parts.dispatches!() - dispatchesBefore;
  run.check();
  const decoded = await run.decode(loop.latent);
  return {
    image: decoded.image,
    unetEvaluations: run.unetEvaluations,
    unetMultiplyAdds: run.unetMacs,
    mergeMs: run.mergeMs,
    composition: run.compositionReport(composition, loop),
    boxes: layout ? run.boxReports(layout, loop.lastOutputs, start.windows) : [],
    ...(layout ? { layout: run.layoutReport(layout) } : {}),
    ...(layout?.guide && layout.prepared.options.guidance ? { guidance: layout.guide.report() } : {}),
    timings: { textEncodeMs, denoiseMs, perStepMs: denoiseMs / Math.max(1, run.stepsRun), decodeMs: decoded.ms },
    latent: loop.latent,
    startStep: run.start,
    stepsRun: run.stepsRun,
    warnings: run.warnings,
    loopReadbacks: loop.readbacks,
    ...(loopDispatches === undefined ? {} : { loopDispatches }),
    latentsOnGpu: loop.onGpu,
    graphCaptured: loop.captured ?? false,
    ...(loop.onGpuRefused ? { latentsOnGpuReason: loop.onGpuRefused } : {}),
  };
}

/** Stage 1's result: the prompts' contexts, and the UNet's context tensor. */
interface TextStage {
  cond: Encoded;
  uncond?: Encoded;
  context: OrtNs.Tensor;
}

/** Stage 2's result (layouts): the prepared regions, and gradient guidance when the job asks for it. */
interface LayoutStage {
  prepared: PreparedLayout;
  guide?: LatentGuide;
}

/** Stage 3's result: the sequence the method uses the LoRAs in, its partition, and cmlora's profile. */
interface CompositionStage {
  order: number[];
  partition: Partition;
  profile: CompositionReport['profile'];
  profileEvaluations: number;
  profileMacs: number;
}

/** Stage 5's result. */
interface LoopStage {
  latent: Float32Array;
  steps: CompositionStep[];
  took: { fresh: number; cached: number }[];
  /** The last UNet run's outputs (a layout's attention maps), on the CPU. */
  lastOutputs?: Outputs;
  readbacks: number;
  onGpu: boolean;
  onGpuRefused?: string;
  captured?: boolean;
}

/** The noise prediction of one UNet run (guided), and its deep features when it recorded them. */
interface Prediction {
  eps: Float32Array;
  feature?: Float32Array;
}

class Denoising {
  readonly warnings: string[] = [];
  readonly mergeMs: number[] = [];
  unetEvaluations = 0;
  unetMacs = 0;
  private stepMergeMs = 0;
  private lastOutputs?: Outputs;
  private readonly started = performance.now();
  private readonly ort: Ort;
  private readonly config: ModelConfig;
  private readonly lh: number;
  private readonly lw: number;
  private readonly channels: number;
  private readonly latentSize: number;
  private readonly guided: boolean;
  private readonly batch: 1 | 2;
  private readonly c0: number;
  private readonly textLen: number;
  private readonly hidden: number;
  private readonly boxes: LayoutBox[];
  /** The engine lists box LoRAs after the job's own, box by box. */
  private readonly boxLoras: number[][];
  private readonly layoutOptions?: ResolvedLayoutOptions;
  private readonly injected: boolean;
  /** The prompt the frame uses: without injection, box prompts join the global prompt. */
  private readonly prompt: string;
  private readonly options: ResolvedComposition;
  private readonly method: (typeof METHODS)[keyof typeof METHODS];
  /** The LoRAs the composition method composes (none for prompt only). */
  private readonly all: number[];
  private readonly scheduler: Scheduler;
  private readonly rng: Rng;
  private readonly cutoffLatent: number;
  /** The schedule's step the loop starts at (image to image starts part-way), the end of the schedule, and the steps between. */
  readonly start: number;
  private readonly end: number;
  readonly stepsRun: number;
  /** The noise the start latent was made with (inpainting noises the picture's latent with it again at every step). */
  private startNoise?: Float32Array;
  /** Channels of the UNet's input: the latent's, or 9 for an inpainting UNet. */
  private readonly unetChannels: number;
  private context?: OrtNs.Tensor;
  private layoutTensors: Record<string, OrtNs.Tensor> = {};

  constructor(
    private readonly parts: PipelineParts,
    private readonly job: GenerateJob,
    private readonly onProgress?: (e: ProgressEvent) => void,
  ) {
    const { config } = parts;
    this.ort = parts.ort;
    this.config = config;
    this.lh = job.height / 8;
    this.lw = job.width / 8;
    this.channels = config.unet.outChannels;
    this.unetChannels = config.unet.inChannels;
    this.latentSize = this.channels * this.lh * this.lw;
    this.guided = job.cfg > 1;
    this.batch = this.guided ? 2 : 1;
    this.c0 = config.unet.blockOutChannels[0];
    this.textLen = config.textEncoder.maxPositions;
    this.hidden = config.unet.crossAttentionDim;
    const loraCount = job.loras?.length ?? 0;
    const layout = job.layout?.boxes.length ? job.layout : undefined;
    this.boxes = layout?.boxes ?? [];
    let next = loraCount;
    this.boxLoras = this.boxes.map((b) => b.loras.map(() => next++));
    this.layoutOptions = layout ? resolveLayout(layout) : undefined;
    this.injected = this.layoutOptions?.injection ?? false;
    // without injection, box LoRAs join the frame's LoRAs and box prompts the global prompt
    const globalCount = layout && !this.injected ? next : loraCount;
    this.prompt = layout && !this.injected ? [job.prompt, ...this.boxes.map((b) => b.prompt)].filter((t) => t.trim()).join(', ') : job.prompt;
    // a layout whose LoRAs are all in boxes still merges them (into their regions) by default
    this.options = resolveComposition(job.composition ?? (this.boxLoras.flat().length ? { method: 'merge' } : undefined), job.steps, globalCount);
    this.method = METHODS[this.options.method];
    this.all = Array.from({ length: this.options.method === 'none' ? 0 : globalCount }, (_, i) => i);
    if (this.options.method === 'none' && globalCount) this.warnings.push(`Prompt only: the job's ${globalCount} LoRA(s) are not used.`);
    this.scheduler = createScheduler(job.scheduler, job.steps);
    this.end = this.scheduler.timesteps.length;
    // diffusers' get_timesteps: strength s runs the last floor(steps x s) steps of the schedule, from
    // evaluation tStart x order (Heun evaluates twice per step)
    const init = parts.init;
    this.start = init ? (this.scheduler.order ?? 1) * (job.steps - Math.min(job.steps, Math.floor(job.steps * init.strength))) : 0;
    this.stepsRun = this.end - this.start;
    this.scheduler.begin = this.start;
    this.rng = new Rng(job.seed);
    this.cutoffLatent = Math.round((this.options.cutoff * Math.min(this.lh, this.lw)) / 512);
    if (this.options.method === 'cmlora' && Number.isNaN(this.options.threshold)) {
      this.options.threshold = derivedThreshold(this.scheduler.timesteps[Math.min(this.end - 1, Math.round(this.options.highPhase * this.end))], { height: this.lh, width: this.lw }, this.cutoffLatent);
    }
  }

  elapsed(): number {
    return performance.now() - this.started;
  }

  check(): void {
    this.parts.checkDevice();
    if (this.parts.isCancelled()) throw new CancelledError();
  }

  private async merge(loras: number[], component: 'unet' | 'textEncoder'): Promise<number> {
    const ms = await this.parts.setLoras(loras, component);
    if (ms !== undefined) this.mergeMs.push(ms);
    return ms ?? 0;
  }

  /** One chunk of 77 ids through the text encoder: one context, or one per cross-attention layer (an ED-LoRA token), each weighed by `weights`. */
  private async encodeIds(idList: number[], weights?: number[]): Promise<{ data: Float32Array; layers: number }> {
    const { ort, parts, textLen, hidden } = this;
    const vocab = parts.vocabulary;
    const weigh = (context: Float32Array) => {
      if (weights) applyEmphasis(context, weights, hidden);
      return context;
    };
    const run = async (added?: Float32Array) => {
      const rows = new ort.Tensor('float32', parts.tokens.embed(idList, added), [1, idList.length, parts.tokens.hidden]);
      return (await parts.textEncoder({ inputs_embeds: rows })).last_hidden_state.data as Float32Array;
    };
    if (!vocab) return { data: weigh(await run()), layers: 1 };
    const layers = idList.some((id) => vocab.layerwise.has(id)) ? vocab.layers : 1;
    const data = new Float32Array(layers * textLen * hidden);
    for (let l = 0; l < layers; l++) data.set(weigh((await run(vocab.table(l))).slice()), l * textLen * hidden);
    return { data, layers };
  }

  /**
   * A prompt through the text encoder, with A1111's emphasis ((word:1.3), (word), [word]; a plain
   * prompt is encoded as it is). Where the job's context holds several chunks (`contextChunks`), the
   * prompt is read in 75-token chunks as A1111 does (BREAK starts one), each encoded on its own and
   * put one after another; a prompt with fewer chunks is filled with the empty prompt's encoding.
   */
  private readonly encode = async (text: string, label: string): Promise<Encoded> => {
    const { parts, textLen, hidden } = this;
    const vocab = parts.vocabulary;
    const chunks = parts.contextChunks ?? 1;
    const emphasis = hasEmphasis(text) || chunks > 1 ? parseEmphasis(text) : undefined;
    if (chunks > 1) {
      const read = parts.tokenizer.encodeChunks(emphasis!.runs, vocab?.added);
      if (read.chunks.length > chunks) this.warnings.push(`The ${label} takes ${read.chunks.length} chunks of 75 tokens; only the first ${chunks} are used.`);
      const data = new Float32Array(chunks * textLen * hidden);
      const empty = read.chunks.length < chunks ? (await this.encodeIds(parts.tokenizer.encode('').ids)).data : undefined;
      for (let k = 0; k < chunks; k++) {
        const c = read.chunks[k];
        data.set(c ? (await this.encodeIds(c.ids, c.weights)).data.subarray(0, textLen * hidden) : empty!, k * textLen * hidden);
      }
      return { data, layers: 1, ids: read.chunks.slice(0, chunks).flatMap((c) => c.ids), tokenCount: read.tokenCount };
    }
    if (emphasis?.breaks) this.warnings.push(`The ${label} has BREAK, which needs a second chunk of 75 tokens; a layout reads one, so BREAK is read as a space.`);
    const e = emphasis ? parts.tokenizer.encodeWeighted(emphasis.runs, vocab?.added) : { ...parts.tokenizer.encode(text, vocab?.added), weights: undefined };
    if (e.truncated) this.warnings.push(`The ${label} is ${e.tokenCount} tokens long; only the first ${parts.tokenizer.maxLength} are used.`);
    return { ...(await this.encodeIds(e.ids, e.weights)), ids: e.ids, tokenCount: e.tokenCount };
  };

  /** Stage 1: text conditioning, [uncond, cond] when guided, with every LoRA's text-encoder part merged. */
  async encodeText(): Promise<TextStage> {
    const { job, textLen, hidden } = this;
    this.onProgress?.({ phase: 'text', step: 0, total: job.steps, elapsedMs: this.elapsed() });
    // LoRA Switch encodes the prompt with the first LoRA's text encoder only (ComposLoRA's compose_lora.py)
    await this.merge(this.options.method === 'switch' ? this.all.slice(0, 1) : this.all, 'textEncoder');
    const cond = await this.encode(this.prompt, 'prompt');
    const uncond = this.guided ? await this.encode(job.negative, 'negative prompt') : undefined;
    const layers = this.parts.contextLayers ?? 1;
    const asLayers = (c: Context) => (c.layers === layers ? c.data : c.layers === 1 ? repeat(c.data, layers) : c.data.slice(0, textLen * hidden));
    const data = uncond ? concat(asLayers(uncond), asLayers(cond)) : asLayers(cond);
    const length = textLen * (this.parts.contextChunks ?? 1);
    this.context = new this.ort.Tensor('float32', data, layers > 1 ? [this.batch, layers, textLen, hidden] : [this.batch, length, hidden]);
    return { cond, uncond, context: this.context };
  }

  /** Stage 2 (layouts): each region's prompts, keys and values (once per image), masks and concept tokens; guidance and re-initialisation set up. */
  async prepareLayout(text: TextStage): Promise<LayoutStage | undefined> {
    const { parts, job, boxes, layoutOptions } = this;
    if (!job.layout?.boxes.length || !layoutOptions) return undefined;
    if (!parts.crossKV) throw new Error('this engine cannot run layouts');
    const prepared = await prepareLayout(
      { ort: this.ort, config: this.config, tokenizer: parts.tokenizer, vocabulary: parts.vocabulary, encode: this.encode, merge: (l, c) => this.merge(l, c), crossKV: layeredKV(parts.crossKV, this.config.unet), regionOutputs: parts.regionOutputs },
      job,
      boxes,
      layoutOptions,
      { frame: this.all, boxes: this.boxLoras, none: this.options.method === 'none', concepts: this.boxLoras.map((ls) => ls.flatMap((i) => parts.loraConcepts?.[i] ?? [])) },
      { cond: text.cond, uncond: text.uncond },
    );
    this.warnings.push(...prepared.warnings);
    this.layoutTensors = prepared.feeds;
    if (!((layoutOptions.guidance || layoutOptions.reinit) && parts.guidance)) return { prepared };
    const { rows, cols } = parts.guidance.layers;
    const gridMasks = prepared.masks.get(`${rows}x${cols}`)!;
    gridMasks.extents.forEach((e, n) => {
      if (!e) this.warnings.push(`Box "${boxes[n].name}" covers no whole cell of the ${rows}x${cols} grid that guidance and re-initialisation read, so they skip it; make it larger, or use the centre mask rule.`);
    });
    const guide = new LatentGuide(parts.guidance, {
      ort: this.ort,
      options: layoutOptions.guidance,
      masks: gridMasks,
      regions: boxes.length + 1,
      textLen: this.textLen,
      concepts: prepared.concepts.map((c) => ({ region: c.region, tokens: c.tokens.positions })),
      steps: this.end,
      latent: { channels: this.channels, height: this.lh, width: this.lw },
      fixed: prepared.condFeeds,
    });
    return { prepared, guide };
  }

  /**
   * The guided noise prediction of the UNet with a set of LoRAs merged in: the whole UNet, the whole
   * UNet keeping its deep features, or the shallow part on kept ones (the deep-feature cache).
   */
  private async predict(loras: number[], x: Float32Array, t: number, variant: 'full' | 'record' | 'reuse' = 'full', feature?: Float32Array, ctx = this.context!): Promise<Prediction> {
    this.check();
    const { ort, guided, batch, lh, lw, c0, latentSize, parts } = this;
    this.stepMergeMs += await this.merge(loras, 'unet');
    const emb = timestepEmbedding(t, c0);
    const out = await parts.unet(
      {
        sample: new ort.Tensor('float32', guided ? concat(this.unetSample(x), this.unetSample(x)) : this.unetSample(x), [batch, this.unetChannels, lh, lw]),
        timestep_embedding: new ort.Tensor('float32', guided ? concat(emb, emb) : emb, [batch, c0]),
        encoder_hidden_states: ctx,
        ...this.layoutTensors,
        ...(feature ? { [DEEP_FEATURE]: new ort.Tensor('float32', feature, deepFeatureDims(this.config.unet, batch, lh, lw)) } : {}),
      },
      variant,
    );
    this.unetEvaluations += 1;
    this.unetMacs += parts.unetMultiplyAdds?.[variant] ?? 0;
    this.lastOutputs = out;
    const pred = out.noise_pred.data as Float32Array;
    const kept = variant === 'record' ? (out[DEEP_FEATURE].data as Float32Array) : undefined;
    if (!guided) return { eps: pred, feature: kept };
    const eps = new Float32Array(latentSize);
    for (let k = 0; k < latentSize; k++) eps[k] = pred[k] + this.job.cfg * (pred[latentSize + k] - pred[k]);
    return { eps, feature: kept };
  }

  /** Stage 3: cmlora's order and groups, by category (the code) or by each LoRA's frequency profile. */
  async compositionOrder(): Promise<CompositionStage> {
    const { options, all, parts, job } = this;
    let { order, partition } = options.method === 'cmlora' ? categoryOrder(all.map((i) => parts.loraCategories?.[i] ?? 'character')) : { order: all.slice(), partition: { high: all.slice(), low: [] } as Partition };
    let profile: CompositionReport['profile'] = null;
    if (options.method === 'cmlora' && all.length) {
      const t0 = performance.now();
      const evaluationsBefore = this.unetEvaluations;
      if (options.partition === 'profile' && options.profiling === 'offline') {
        const values: number[] = [];
        const sources: ('run' | 'cache')[] = [];
        for (const i of all) {
          const prompt = parts.loraTriggers?.[i]?.trim() || job.prompt;
          const key = parts.profileKey?.(i, { prompt, negative: job.negative, steps: options.profileSteps, cutoff: options.cutoff });
          let v = key ? await parts.profileStore?.get(key) : undefined;
          sources.push(v === undefined ? 'run' : 'cache');
          if (v === undefined) {
            this.onProgress?.({ phase: 'profile', step: i, total: all.length, elapsedMs: this.elapsed() });
            v = await this.profileLora(i, prompt);
            if (key) await parts.profileStore?.set(key, v);
          }
          values.push(v);
        }
        ({ order, partition } = profileOrder(values));
        const source = sources.every((x) => x === 'cache') ? 'cache' : 'run';
        profile = { source, amplitudes: values, sources, unetEvaluations: this.unetEvaluations - evaluationsBefore, ms: performance.now() - t0 };
      } else profile = { source: options.profiling === 'online' && options.partition === 'profile' ? 'online' : 'category', amplitudes: [], sources: [], unetEvaluations: 0, ms: 0 };
    }
    return { order, partition, profile, profileEvaluations: this.unetEvaluations, profileMacs: this.unetMacs };
  }

  /**
   * The notebook's profile of one LoRA: the image it makes alone (its trigger words, or the job's prompt,
   * through its own text encoder; a fixed seed, so the profile belongs to the LoRA), greyscale, log
   * amplitude, radial profile over its maximum, mean from radius 72 of 512 (scaled to the image).
   */
  private async profileLora(lora: number, prompt: string): Promise<number> {
    const { job, textLen, hidden, latentSize, channels, lh, lw, parts } = this;
    await this.merge([lora], 'textEncoder');
    // one context whatever the prompt's layers; as many chunks as the job's context
    const length = textLen * (parts.contextChunks ?? 1);
    const c = (await this.encode(prompt, 'profiling prompt')).data.slice(0, length * hidden);
    const u = this.guided ? (await this.encode(job.negative, 'negative prompt')).data.slice(0, length * hidden) : undefined;
    const ctx = new this.ort.Tensor('float32', u ? concat(u, c) : c, [this.batch, length, hidden]);
    const sched = createScheduler(job.scheduler, this.options.profileSteps);
    const noise = new Rng(PROFILE_SEED);
    let x: Float32Array = noise.normal(latentSize).map((v) => v * sched.initNoiseSigma);
    for (let k = 0; k < sched.timesteps.length; k++) {
      const e = await this.predict([lora], sched.scaleModelInput(x, k), sched.timesteps[k], 'full', undefined, ctx);
      x = sched.step(e.eps, k, x, () => noise.normal(latentSize));
    }
    const pixels = await parts.vae({ latent: new this.ort.Tensor('float32', x, [1, channels, lh, lw]) });
    const rgba = toImage(pixels.image.data as Float32Array, job.height, job.width);
    const img = centredCrop(greyscale(rgba.data, job.width, job.height), job.height, job.width);
    const mags = await parts.magnitudes(img.data, 1, img.height, img.width);
    return highBand(radialProfile(mags, img.height, img.width, true), profileCutoff(Math.min(img.height, img.width)));
  }

  /**
   * Stage 4: seeded initial noise, scaled to the scheduler's first sigma; with re-initialisation (the
   * code's replace_latents), a probe of the cut UNet on the first noise locates each concept on the
   * guidance grid and its window of the noise moves into its box.
   */
  async initialLatent(layout?: LayoutStage): Promise<{ latent: Float32Array; windows: ({ row: number; col: number } | null)[] }> {
    const { scheduler, boxes, parts } = this;
    // the same draw as text to image, so strength 1 is text to image with the same seed
    const drawn = this.rng.normal(this.latentSize);
    this.startNoise = drawn;
    const windows: ({ row: number; col: number } | null)[] = boxes.map(() => null);
    const init = parts.init;
    if (init && this.stepsRun === 0) return { latent: init.latent.slice(), windows };
    if (init && init.strength < 1) {
      if (layout?.prepared.options.reinit) this.warnings.push('Latent re-initialisation moves the starting noise; a start picture (strength below 1) keeps its layout, so it was skipped.');
      return { latent: scheduler.addNoise(init.latent, drawn, this.start), windows };
    }
    const latent = drawn.map((v) => v * scheduler.initNoiseSigma);
    if (!(layout?.prepared.options.reinit && layout.guide)) return { latent, windows };
    await this.merge(this.all, 'unet');
    const { rows, cols } = this.parts.guidance!.layers;
    const extents = layout.prepared.masks.get(`${rows}x${cols}`)!.extents;
    const found = await layout.guide.probe(scheduler.scaleModelInput(latent, 0), new this.ort.Tensor('float32', timestepEmbedding(scheduler.timesteps[0], this.c0), [1, this.c0]));
    this.unetEvaluations += 1;
    this.unetMacs += this.parts.guidanceMultiplyAdds?.maps ?? 0;
    const scale = this.lh / rows;
    const placed = boxes.map((_, n) => n).filter((n) => extents[n]);
    const noise = latent.map((v) => v / scheduler.initNoiseSigma);
    const r = reinitLatent(noise, this.channels, rows, cols, scale, placed.map((n) => ({ box: extents[n]!, map: found[n] })));
    r.windows.forEach((w, k) => (windows[placed[k]] = { row: w.row * scale, col: w.col * scale }));
    return { latent: r.latent.map((v) => v * scheduler.initNoiseSigma), windows };
  }

  /**
   * Why the loop cannot stay on the GPU, or undefined where it can: every step one whole UNet run with
   * weight 1 and nothing on the CPU reading the latent between steps.
   */
  gpuLoopRefusal(layout?: LayoutStage): string | undefined {
    const { parts, options } = this;
    // Heun's corrector restarts from its predictor's sample as it was before the blend, which the GPU form does not keep
    if (parts.init?.blend && (this.scheduler.order ?? 1) > 1) return "inpainting with Heun: the corrector reads its predictor's sample from before the blend";
    if (!parts.gpuLoop) return parts.gpuLoopUnavailable ?? 'this engine has no GPU loop';
    const composition = compositionNeedsCpu(options);
    if (composition) return composition;
    if (layout?.guide) return 'guidance and latent re-initialisation move the latent on the CPU';
    return undefined;
  }

  private previewDue(i: number): boolean {
    const every = this.job.previewEvery ?? 1;
    return every > 0 && ((i - this.start + 1) % every === 0 || i === this.end - 1);
  }

  /** A loop step's progress event: steps count from 1 over the steps the run takes. */
  private progress(i: number, more: Partial<ProgressEvent>): void {
    this.onProgress?.({ phase: this.parts.loopPhase ?? 'denoise', step: i - this.start + 1, total: this.stepsRun, elapsedMs: this.elapsed(), ...more });
  }

  /**
   * 4-channel inpainting (diffusers' StableDiffusionInpaintPipeline): after step i, where the mask
   * keeps, the picture's latent noised to the next step's level (clean after the last step).
   */
  private blend(next: Float32Array, i: number): Float32Array {
    const init = this.parts.init;
    if (!init?.blend) return next;
    const proper = i < this.end - 1 ? this.scheduler.addNoise(init.latent, this.startNoise!, i + 1) : init.latent;
    const cells = this.lh * this.lw;
    return next.map((v, k) => {
      const m = init.blend![k % cells];
      return m * v + (1 - m) * proper[k];
    });
  }

  /** The UNet's input: the scaled latent, with an inpainting UNet's mask and masked-picture channels after it. */
  private unetSample(x: Float32Array): Float32Array {
    const extra = this.parts.inpaintInput;
    if (!extra) return x;
    const cells = this.lh * this.lw;
    const out = new Float32Array(this.unetChannels * cells);
    out.set(x);
    out.set(extra.mask, this.channels * cells);
    out.set(extra.masked, (this.channels + 1) * cells);
    return out;
  }

  /** The loop's latents on the GPU from `latent`, with inpainting's fixed inputs. */
  private gpuLatents(latent: Float32Array): GpuLatents {
    const init = this.parts.init;
    const extra = this.parts.inpaintInput;
    const inpainting = {
      ...(init?.blend ? { blend: { init: init.latent, noise: this.startNoise!, mask: init.blend } } : {}),
      ...(extra ? { cond: { data: concat(extra.mask, extra.masked), channels: this.unetChannels - this.channels } } : {}),
    };
    return new GpuLatents(this.ort, this.parts.gpuLoop!, { batch: this.batch, channels: this.channels, height: this.lh, width: this.lw }, latent, this.scheduler.inputScale(this.start), inpainting);
  }

  /**
   * A mixing step's record (and each LoRA's fresh or cached count in `took`): what the plan ran, kept
   * and weighed, with the step's measures.
   */
  private mixedRecord(i: number, plan: StepPlan, shallow: number[], partition: Partition, took: { fresh: number; cached: number }[], counts: { evaluations: number; macs: number }, measures: Pick<CompositionStep, 'amplitudes' | 'mixAmplitude' | 'latentAmplitude' | 'latentSimilarity' | 'featureReuse'>): CompositionStep {
    const { all, options } = this;
    const weights = all.map(() => 0);
    for (const r of plan.evaluations) for (const l of r.loras) weights[l] += r.weight;
    for (const c of plan.cached) weights[c.lora] += c.weight;
    for (const l of all) {
      if (plan.cached.some((c) => c.lora === l) || shallow.includes(l)) took[l].cached++;
      else if (weights[l] !== 0) took[l].fresh++;
    }
    return {
      step: i,
      active: [...new Set(plan.evaluations.flatMap((r) => r.loras))].sort((a, b) => a - b),
      shallow: [...new Set(shallow)].sort((a, b) => a - b),
      refreshed: plan.refreshed ?? null,
      cached: plan.cached.map((c) => c.lora).sort((a, b) => a - b),
      dominant: plan.dominant,
      weights,
      ...measures,
      phase: plan.phase,
      partition: options.method === 'cmlora' && all.length ? { high: partition.high.slice(), low: partition.low.slice() } : null,
      unetEvaluations: counts.evaluations,
      unetMultiplyAdds: counts.macs,
      mergeMs: this.stepMergeMs,
    };
  }

  /** Stage 5 on the GPU (`GpuLatents`): the UNet's prediction goes straight into the step graph. */
  async loopOnGpu(latent: Float32Array, composition: CompositionStage, layout?: LayoutStage): Promise<LoopStage> {
    const { job, scheduler, all, options, ort, guided, c0 } = this;
    const readbacksBefore = this.parts.readbacks?.() ?? 0;
    const cache = new ContributionCache(all.length);
    const took = all.map(() => ({ fresh: 0, cached: 0 }));
    const steps: CompositionStep[] = [];
    if (this.stepsRun === 0) return { latent, steps, took, readbacks: 0, onGpu: true };
    const init = this.parts.init;
    const gpu = this.gpuLatents(latent);
    try {
      for (let i = this.start; i < this.end; i++) {
        this.check();
        this.stepMergeMs = 0;
        const macsBefore = this.unetMacs;
        const plan = this.method.plan({ step: i, steps: this.end, count: all.length, options, order: composition.order, partition: composition.partition, latentAmplitude: Infinity, cache: cache.view(i), features: all.map(() => false) });
        const [{ loras }] = plan.evaluations;
        this.stepMergeMs += await this.merge(loras, 'unet');
        this.check();
        const emb = timestepEmbedding(scheduler.timesteps[i], c0);
        // a layout's attention maps come back from the last step only
        const maps = layout && i === this.end - 1 ? layout.prepared.graph.mapLayers.map(unetMapOutputName) : [];
        await gpu.predict({ timestep_embedding: new ort.Tensor('float32', guided ? concat(emb, emb) : emb, [this.batch, c0]), encoder_hidden_states: this.context!, ...this.layoutTensors }, maps);
        this.unetEvaluations += 1;
        this.unetMacs += this.parts.unetMultiplyAdds?.full ?? 0;
        const k = scheduler.linear(i);
        const last = i === this.end - 1;
        // inpainting: the picture's level after this step (clean after the last), as blend() on the CPU
        const level = init?.blend ? (last ? { signal: 1, noise: 0 } : scheduler.noiseLevel(i + 1)) : undefined;
        await gpu.step(k, job.cfg, last ? 1 : scheduler.inputScale(i + 1), k.noise ? this.rng.normal(this.latentSize) : undefined, { preview: this.previewDue(i), latent: last }, level);
        for (const l of loras) took[l].fresh++;
        const record: CompositionStep = {
          step: i,
          active: [...loras].sort((a, b) => a - b),
          shallow: [],
          refreshed: null,
          cached: [],
          dominant: plan.dominant,
          weights: all.map((l) => (loras.includes(l) ? 1 : 0)),
          amplitudes: all.map(() => null),
          mixAmplitude: null,
          latentAmplitude: null,
          latentSimilarity: null,
          phase: plan.phase,
          partition: null,
          unetEvaluations: 1,
          unetMultiplyAdds: this.unetMacs - macsBefore,
          mergeMs: this.stepMergeMs,
        };
        steps.push(record);
        this.progress(i, { ...(this.previewDue(i) ? { preview: await gpu.preview() } : {}), composition: record });
      }
      const readbacks = (this.parts.readbacks?.() ?? 0) - readbacksBefore;
      const lastOutputs = layout ? await gpu.lastOutputs(layout.prepared.graph.mapLayers.map(unetMapOutputName)) : undefined;
      return { latent: await gpu.latent(), steps, took, lastOutputs, readbacks, onGpu: true, captured: gpu.captured };
    } finally {
      gpu.dispose();
    }
  }

  /** Whether the loop mixes several predictions a step (or runs part of the UNet): `loopOnGpuMixed` on the GPU. */
  get mixes(): boolean {
    return compositionMixes(this.options);
  }

  /**
   * A step's UNet runs: the plan's, with DeepCache on its own (the whole UNet every
   * `deepCacheInterval` steps and at a set's first run, its shallow part between), ordered so the
   * set merged now (`current`) runs first.
   */
  private runs(plan: StepPlan, i: number, hasFeatures: (key: string) => boolean, current: string): Evaluation[] {
    const { options } = this;
    const interval = options.deepCacheInterval;
    const planned = plan.evaluations.map((e) => {
      if (e.deep || interval <= 1) return options.research && options.method === 'cmlora' && !e.deep ? { ...e, deep: 'record' as const } : e;
      return { ...e, deep: i % interval === 0 || !hasFeatures(setKey(e.loras)) ? ('record' as const) : ('reuse' as const) };
    });
    return planned.sort((a, b) => Number(setKey(b.loras) === current) - Number(setKey(a.loras) === current));
  }

  /**
   * Stage 5 on the GPU for several predictions a step (LoRA Composite, CMLoRA, the deep-feature
   * cache), as `loopOnCpu` computes it: each planned run writes its raw prediction into its own
   * buffer, cached LoRAs are their anchor's prediction plus kept offsets (GPU buffers), one weighted
   * sum mixes them all, and the step graph guides the mix and steps (CFG is linear, so guiding the
   * mix is mixing the guided predictions). A LoRA's deep features stay in a GPU buffer between its
   * runs. The step's frequency measures are computed on the GPU: read back each step (a handful of
   * numbers) where a page watches the run or CMLoRA's online phase needs the last one to plan the next
   * step, and otherwise kept on the GPU as rows of one record read once after the loop.
   */
  async loopOnGpuMixed(latent: Float32Array, composition: CompositionStage, layout?: LayoutStage): Promise<LoopStage> {
    const { job, scheduler, all, options, ort, guided, c0 } = this;
    const { order, partition } = composition;
    const readbacksBefore = this.parts.readbacks?.() ?? 0;
    const cache = new ContributionCache<OrtNs.Tensor>(all.length);
    const features = new Map<string, OrtNs.Tensor>();
    const took = all.map(() => ({ fresh: 0, cached: 0 }));
    const steps: CompositionStep[] = [];
    if (this.stepsRun === 0) return { latent, steps, took, readbacks: 0, onGpu: true };
    const init = this.parts.init;
    const gpu = this.gpuLatents(latent);
    try {
      const dims = gpu.predictionDims;
      const slots: OrtNs.Tensor[] = [];
      const slot = (n: number) => (slots[n] ??= gpu.allocate(dims));
      const mix = gpu.allocate(dims);
      const offsetBuffers = new Map<number, OrtNs.Tensor>();
      const offsetBuffer = (l: number) => offsetBuffers.get(l) ?? offsetBuffers.set(l, gpu.allocate(dims)).get(l)!;
      const keepsOffsets = options.method === 'cmlora' && options.cache === 'prediction';
      // the measures stay on the GPU, read once after the loop, where nothing needs them sooner: no
      // preview asked (a page watching the run plots them as they come) and no online phase (planned
      // from the last step's latent)
      const keepMeasures = (job.previewEvery ?? 1) === 0 && !(options.method === 'cmlora' && options.profiling === 'online');
      /** Which LoRAs ran alone at each step (a kept step's amplitudes are filled in from it after the loop). */
      const ran: boolean[][] = [];
      let current = '';
      let latentAmplitude = Infinity;
      for (let i = this.start; i < this.end; i++) {
        this.check();
        this.stepMergeMs = 0;
        const macsBefore = this.unetMacs;
        const plan = this.method.plan({ step: i, steps: this.end, count: all.length, options, order, partition, latentAmplitude, cache: cache.view(i), features: all.map((l) => features.has(setKey([l]))) });
        const runs = this.runs(plan, i, (key) => features.has(key), current);
        const emb = timestepEmbedding(scheduler.timesteps[i], c0);
        const feeds = { timestep_embedding: new ort.Tensor('float32', guided ? concat(emb, emb) : emb, [this.batch, c0]), encoder_hidden_states: this.context!, ...this.layoutTensors };
        const before = this.unetEvaluations;
        const alone = new Map<number, OrtNs.Tensor>();
        const shallow: number[] = [];
        const terms: { t: OrtNs.Tensor; w: number }[] = [];
        for (const [n, r] of runs.entries()) {
          const key = setKey(r.loras);
          const reuse = r.deep === 'reuse' && features.has(key);
          const variant = reuse ? 'reuse' : r.deep === 'record' ? 'record' : 'full';
          this.stepMergeMs += await this.merge(r.loras, 'unet');
          this.check();
          if (variant === 'record' && !features.has(key)) features.set(key, gpu.allocate(deepFeatureDims(this.config.unet, this.batch, this.lh, this.lw)));
          // a layout's attention maps come back from the last run of the last step only
          const maps = layout && i === this.end - 1 && n === runs.length - 1 ? layout.prepared.graph.mapLayers.map(unetMapOutputName) : [];
          await gpu.predictInto(feeds, slot(n), { variant, feature: features.get(key), outputs: maps });
          this.unetEvaluations += 1;
          this.unetMacs += this.parts.unetMultiplyAdds?.[variant] ?? 0;
          current = key;
          if (reuse) shallow.push(...r.loras);
          if (r.loras.length === 1) alone.set(r.loras[0], slot(n));
          terms.push({ t: slot(n), w: r.weight });
        }
        // cached LoRAs: their anchor's prediction now plus the offsets kept along the way
        for (const c of plan.cached) {
          const { anchor, offsets } = cache.chain(c.lora, alone);
          terms.push({ t: alone.get(anchor)!, w: c.weight }, ...offsets.map((t) => ({ t, w: c.weight })));
        }
        await gpu.combine(terms.map((x) => x.t), terms.map((x) => x.w), mix);
        // offsets only where a plan reads them (CMLoRA's prediction cache; the CPU loop keeps them all)
        if (keepsOffsets && plan.dominant !== null && alone.has(plan.dominant)) {
          // each offset into its LoRA's own buffer (only its own entry points at it), one after another
          const writes: (() => Promise<void>)[] = [];
          cache.update(alone, plan.dominant, i, (l, eps, base) => {
            const into = offsetBuffer(l);
            writes.push(() => gpu.combine([eps, base], [1, -1], into));
            return into;
          });
          for (const write of writes) await write();
        }
        const k = scheduler.linear(i);
        const last = i === this.end - 1;
        const level = init?.blend ? (last ? { signal: 1, noise: 0 } : scheduler.noiseLevel(i + 1)) : undefined;
        await gpu.step(k, job.cfg, last ? 1 : scheduler.inputScale(i + 1), k.noise ? this.rng.normal(this.latentSize) : undefined, { preview: this.previewDue(i), latent: last }, level, mix);
        // one measure graph a job: a slot per LoRA, those that did not run alone this step filled with the mix (and ignored)
        const slots = all.map((l) => alone.get(l) ?? mix);
        const kk = { cfg: job.cfg, p: k.p, q: k.q };
        const counts = { evaluations: this.unetEvaluations - before, macs: this.unetMacs - macsBefore };
        const m = keepMeasures ? undefined : await gpu.measure(slots, mix, kk, this.cutoffLatent);
        if (keepMeasures) await gpu.keepMeasures(slots, mix, kk, this.cutoffLatent, i - this.start, this.stepsRun);
        ran.push(all.map((l) => alone.has(l)));
        const unmeasured = { amplitudes: all.map(() => null), mixAmplitude: NaN, latentAmplitude: NaN, latentSimilarity: NaN };
        const record = this.mixedRecord(i, plan, shallow, partition, took, counts, m ? measured(m, ran[ran.length - 1], latentAmplitude) : unmeasured);
        steps.push(record);
        if (m) latentAmplitude = m[all.length + 1];
        // a kept step's measures are known once the loop ends: its event goes without the record
        this.progress(i, { ...(this.previewDue(i) ? { preview: await gpu.preview() } : {}), ...(m ? { composition: record } : {}) });
      }
      const readbacks = (this.parts.readbacks?.() ?? 0) - readbacksBefore;
      if (keepMeasures) {
        // every step's measures in one read, after the loop
        const kept = await gpu.keptMeasures();
        const width = all.length + 4;
        let before = Infinity;
        steps.forEach((record, n) => {
          const m = kept.subarray(n * width, (n + 1) * width);
          Object.assign(record, measured(m, ran[n], before));
          before = m[all.length + 1];
        });
      }
      const lastOutputs = layout ? await gpu.lastOutputs(layout.prepared.graph.mapLayers.map(unetMapOutputName)) : undefined;
      return { latent: await gpu.latent(), steps, took, lastOutputs, readbacks, onGpu: true };
    } finally {
      gpu.dispose();
    }
  }

  /**
   * Stage 5 on the CPU: the method plans each step, the UNet runs what it asks for, and the guided
   * predictions are mixed by the plan's weights; guidance moves the latent first, the cache stands in
   * for skipped work, and every step is measured in the frequency domain.
   */
  async loopOnCpu(start: Float32Array, composition: CompositionStage, layout?: LayoutStage): Promise<LoopStage> {
    const { scheduler, all, options, ort, c0, latentSize, channels, lh, lw } = this;
    const onGpuRefused = this.gpuLoopRefusal(layout);
    const { order, partition } = composition;
    const readbacksBefore = this.parts.readbacks?.() ?? 0;
    const latentBand = (latents: Float32Array[]) => latents.map((l) => latentHighBand(l, channels, lh, lw, this.cutoffLatent));
    const guide = layout?.guide;
    const cache = new ContributionCache(all.length);
    const features = new Map<string, Float32Array>();
    const history = new Map<number, Float32Array[]>();
    const took = all.map(() => ({ fresh: 0, cached: 0 }));
    const steps: CompositionStep[] = [];
    let current = '';
    let latent = start;
    // the code's online measure starts at 1 (the high phase at step 0)
    let latentAmplitude = Infinity;
    for (let i = this.start; i < this.end; i++) {
      this.check();
      const t = scheduler.timesteps[i];
      this.stepMergeMs = 0;
      const macsBefore = this.unetMacs;
      // 5a'. gradient guidance moves the latent before the step's prediction (with every LoRA merged;
      // the runs below then start from that set when the plan has it, not merge it again)
      let guidance: GuidanceStep | undefined;
      if (guide?.active(i)) {
        this.stepMergeMs += await this.merge(all, 'unet');
        current = setKey(all);
        ({ latent, record: guidance } = await guide.step(i, latent, (v) => scheduler.scaleModelInput(v, i), new ort.Tensor('float32', timestepEmbedding(t, c0), [1, c0])));
        this.unetMacs += (this.parts.guidanceMultiplyAdds?.maps ?? 0) + (guidance.updated ? (this.parts.guidanceMultiplyAdds?.grad ?? 0) : 0);
        this.check();
      }
      const x = scheduler.scaleModelInput(latent, i);
      const plan = this.method.plan({ step: i, steps: this.end, count: all.length, options, order, partition, latentAmplitude, cache: cache.view(i), features: all.map((l) => features.has(setKey([l]))) });
      // 5a. run the UNet for each planned LoRA set, starting with the set already merged
      const runs = this.runs(plan, i, (key) => features.has(key), current);
      const before = this.unetEvaluations;
      const alone = new Map<number, Float32Array>();
      const shallow: number[] = [];
      const eps = new Float32Array(latentSize);
      for (const r of runs) {
        const key = setKey(r.loras);
        const reuse = r.deep === 'reuse' && features.has(key);
        const out = await this.predict(r.loras, x, t, reuse ? 'reuse' : r.deep === 'record' ? 'record' : 'full', reuse ? features.get(key) : undefined);
        if (out.feature) features.set(key, out.feature);
        current = key;
        if (reuse) shallow.push(...r.loras);
        if (r.loras.length === 1) alone.set(r.loras[0], out.eps);
        for (let k = 0; k < latentSize; k++) eps[k] += r.weight * out.eps[k];
        // the research series: this LoRA's deep features now (kept or new), the unconditional half
        if (options.research && r.loras.length === 1 && features.has(key)) {
          const f = features.get(key)!;
          const list = history.get(r.loras[0]) ?? [];
          list.push(f.slice(0, f.length / this.batch));
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
      const next = this.blend(scheduler.step(eps, i, latent, () => this.rng.normal(latentSize)), i);
      const fresh = [...alone.keys()].sort((a, b) => a - b);
      const amps = latentBand([...fresh.map((l) => scheduler.predictOriginal(alone.get(l)!, i, latent)), scheduler.predictOriginal(eps, i, latent), next]);
      const record = this.mixedRecord(i, plan, shallow, partition, took, { evaluations: this.unetEvaluations - before, macs: this.unetMacs - macsBefore }, {
        amplitudes: all.map((l) => (alone.has(l) ? amps[fresh.indexOf(l)] : null)),
        mixAmplitude: amps[fresh.length],
        latentAmplitude: Number.isFinite(latentAmplitude) ? latentAmplitude : latentBand([latent])[0],
        latentSimilarity: cosineSimilarity(next, latent),
        ...(options.research ? { featureReuse: all.map((l) => featureReuse(history.get(l))) } : {}),
      });
      steps.push(record);
      latent = next;
      latentAmplitude = amps[fresh.length + 1];
      this.progress(i, { ...(this.previewDue(i) ? { preview: latentPreview(latent, lh, lw) } : {}), composition: record, ...(guidance ? { guidance } : {}) });
    }
    const readbacks = (this.parts.readbacks?.() ?? 0) - readbacksBefore;
    return { latent, steps, took, lastOutputs: this.lastOutputs, readbacks, onGpu: false, ...(onGpuRefused ? { onGpuRefused } : {}) };
  }

  /** Stage 6: the VAE decode. */
  async decode(latent: Float32Array): Promise<{ image: ImageData8; ms: number }> {
    const { job } = this;
    this.onProgress?.({ phase: 'decode', step: job.steps, total: job.steps, elapsedMs: this.elapsed() });
    const t0 = performance.now();
    const img = await this.parts.vae({ latent: new this.ort.Tensor('float32', latent, [1, this.channels, this.lh, this.lw]) });
    this.check();
    const image = toImage(img.image.data as Float32Array, job.height, job.width);
    const ms = performance.now() - t0;
    this.onProgress?.({ phase: 'done', step: job.steps, total: job.steps, elapsedMs: this.elapsed() });
    return { image, ms };
  }

  compositionReport(c: CompositionStage, loop: LoopStage): CompositionReport {
    const { options, all } = this;
    return {
      method: options.method,
      options,
      loras: this.parts.loraNames.slice(0, all.length),
      order: c.order,
      partition: options.method === 'cmlora' && all.length ? c.partition : null,
      profile: c.profile,
      steps: loop.steps,
      cacheHitRate: loop.took.map((t) => (t.fresh + t.cached ? t.cached / (t.fresh + t.cached) : null)),
      unetEvaluations: { profile: c.profileEvaluations, denoise: this.unetEvaluations - c.profileEvaluations },
      unetMultiplyAdds: { profile: c.profileMacs, denoise: this.unetMacs - c.profileMacs },
    };
  }

  /**
   * Where each box's concept tokens drew attention at the last step: with nothing confining them
   * (their region's own maps), and as the image used them (under the region weights with injection,
   * inside the joined global prompt without).
   */
  boxReports(layout: LayoutStage, last: Outputs | undefined, windows: ({ row: number; col: number } | null)[]): BoxReport[] {
    if (!last) return [];
    const { prepared } = layout;
    const { lh, lw, textLen, boxes } = this;
    const maps = prepared.graph.mapLayers.map((l) => last[unetMapOutputName(l)].data as Float32Array);
    const m = prepared.masks.get(`${lh}x${lw}`)!;
    const weights = this.injected ? regionWeights(m) : undefined;
    const cells = lh * lw;
    return boxes.map((b, n) => {
      const c = prepared.concepts[n];
      const unmasked = tokensMap(maps, c.region, boxes.length + 1, cells, textLen, c.tokens.positions);
      const used = weights ? tokensMap(maps, c.region, boxes.length + 1, cells, textLen, c.tokens.positions, weights.subarray(c.region * cells, (c.region + 1) * cells)) : unmasked;
      return {
        name: b.name,
        attentionInBox: shareInside(used, m.boxes[n]),
        attentionInBoxUnmasked: shareInside(unmasked, m.boxes[n]),
        window: windows[n],
        conceptTokens: c.tokens.positions,
        conceptSource: c.tokens.source,
      };
    });
  }

  layoutReport(layout: LayoutStage): LayoutReport {
    const grid = this.parts.guidance?.layers ?? { rows: this.lh, cols: this.lw };
    return { options: layout.prepared.options, grid: { rows: grid.rows, cols: grid.cols } };
  }
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

/** A LoRA set as a key that ignores order. */
function setKey(loras: number[]): string {
  return [...loras].sort((a, b) => a - b).join(',');
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

/**
 * A step's record fields from its measures (workers/graph/mix.ts: n amplitudes, the mix's, the next
 * latent's, this latent's, the cosine); `ran`: which LoRAs ran alone (the others' slots are ignored);
 * `before`: the last step's next-latent amplitude (Infinity at the first step, which measures its own).
 */
function measured(m: Float32Array, ran: boolean[], before: number): Pick<CompositionStep, 'amplitudes' | 'mixAmplitude' | 'latentAmplitude' | 'latentSimilarity'> {
  const n = ran.length;
  return {
    amplitudes: ran.map((alone, l) => (alone ? m[l] : null)),
    mixAmplitude: m[n],
    latentAmplitude: Number.isFinite(before) ? before : m[n + 2],
    latentSimilarity: m[n + 3],
  };
}
