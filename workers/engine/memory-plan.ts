// A job's memory plan, made from the graphs it will run before anything is allocated: the three
// models' weights on the GPU (CLIP's token table stays in CPU memory), the largest graph's live
// activations, the LoRA arena and the pristine copies of the weights LoRAs touch, and the
// deep-feature cache. A layout's job adds its regions to the UNet and runs the cut UNet of guidance
// (and its backward pass) and the region keys' graph between the UNet's runs. It picks what fits the adapter: fused attention
// where the adapter runs it right, else query chunks under the buffer limit; the two CFG halves one
// after the other when the batch of two does not fit. `npm run cli -- plan` prints it.
import type { MemoryPlanReport, ResolvedLayoutOptions } from '../api/contract.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import { latentSize } from '../checkpoint/config.ts';
import { DEFAULT_BUFFER_LIMIT, type AttentionForm, type ConvForm, type GraphBuilder, type WeightSpec } from '../graph/builder.ts';
import { buildTextEncoder, tokenEmbeddingSpec } from '../graph/clip.ts';
import { buildCrossKV } from '../graph/cross-kv.ts';
import { buildGuidanceGraph, guidanceLayers } from '../graph/guidance-graph.ts';
import { FLASH_HEAD_BYTES } from '../graph/layers.ts';
import { graphMemory, type GraphMemory } from '../graph/memory.ts';
import { graphSpecs, loadedSpecs } from '../graph/specs.ts';
import { buildUNet } from '../graph/unet.ts';
import { buildVaeDecoder, buildVaeEncoder } from '../graph/vae.ts';
import { layoutGraphOptions } from '../layout/regional.ts';
import { stagedGraphs } from './vae-tiles.ts';

/** Tile sides tried for the staged VAE decode, largest first (latent cells). */
export const VAE_TILES = [48, 32, 24, 16, 8];

/**
 * The staged decode's memory (vae-tiles.ts): the decoder's weights, and the largest of its graphs'
 * activations (the head at the latent's size, every stage at its tile's); the maps kept between
 * stages live in CPU memory.
 */
function stagedMemory(whole: GraphMemory, graphs: GraphBuilder[], options: Parameters<typeof graphMemory>[1]): GraphMemory {
  const parts = graphs.map((g) => graphMemory(g, options));
  const largest = parts.reduce((a, m) => (m.largestBufferBytes > a.largestBufferBytes ? m : a));
  return {
    weightBytes: whole.weightBytes,
    activationPeakBytes: Math.max(...parts.map((m) => m.activationPeakBytes)),
    largestBufferBytes: largest.largestBufferBytes,
    largestBuffer: largest.largestBuffer,
    largestWeightBytes: whole.largestWeightBytes,
    largestWeight: whole.largestWeight,
    weightTransposeBytes: Math.max(...parts.map((m) => m.weightTransposeBytes)),
    weightTransposes: Math.max(...parts.map((m) => m.weightTransposes)),
  };
}

export interface PlanRequest {
  width: number;
  height: number;
  precision: 'fp16' | 'fp32';
  /** Classifier-free guidance (a scale above 1) runs the UNet on a batch of two, or two halves. */
  cfg: boolean;
  /** The forms this adapter can run; `fused` only where the adapter check passed. */
  fusedAttention: boolean;
  /** The largest single buffer the adapter binds (default 128 MiB, WebGPU's guaranteed minimum). */
  bufferLimit?: number;
  /** The device memory the plan may use; unset: no budget, only the buffer limit binds. */
  budgetBytes?: number;
  /** LoRAs loaded at once and their rank (their factors are kept in f32). */
  loras?: { count: number; rank: number };
  /** CMLoRA's deep-feature cache: one feature per LoRA. */
  cachedFeatures?: number;
  /** Predictions the loop keeps on the GPU besides its own (several a step: each run's, the mix, CMLoRA's cached offsets). */
  keptPredictions?: number;
  /** The executor transposes convolution weights every run (weights as inputs; see graph/memory.ts). */
  transposesConvWeights?: boolean;
  /** ...except 1x1 convolutions (the WebGPU EP in NCHW). */
  pointwiseAsIs?: boolean;
  /** How k x k convolutions are built (default `direct`; the engine's is its runtime's, `auto` on WebGPU). */
  conv?: ConvForm;
  /** The UNet runs as a captured graph, whose session keeps its activations between runs (so through the text encoder and the decode too). */
  capturedUnet?: boolean;
  /**
   * A layout (LoRA-Composer): its boxes and what it asks. Its UNet attends per region; guidance runs
   * the cut UNet and its backward pass, re-initialisation the cut UNet, between the UNet's runs.
   */
  layout?: PlanLayout;
  /** The VAE encoder's weights are on the GPU (the engine loads them with the decoder's where the file has them). */
  vaeEncoder?: boolean;
  /**
   * The job encodes a picture (image to image, an inpainting model), before the loop: the encoder's
   * activations, in the decode's tiles where it is tiled (its weights too, as it cannot run without).
   */
  encodesPicture?: boolean;
}

export type PlanLayout = { boxes: number; guidance: boolean } & Pick<ResolvedLayoutOptions, 'injection' | 'isolation' | 'regionOutput' | 'reinit'>;

/** The plan as the report carries it (workers/api/contract.ts), less the device check's words. */
export type MemoryPlan = Omit<MemoryPlanReport, 'attention' | 'attentionReason'> & { attention: AttentionForm };

/** Weights a LoRA of kohya's usual kind touches: the transformer blocks' linears and projections, the text encoder's attention and MLP. */
export function loraTargets(weights: Iterable<WeightSpec>): WeightSpec[] {
  return [...weights].filter(
    (w) => w.name.endsWith('.weight') && (/\.attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.)/.test(w.name) || /\.(self_attn|mlp)\./.test(w.name)) && w.dims.length >= 2,
  );
}

const count = (dims: number[]) => dims.reduce((a, b) => a * b, 1);

export function planMemory(cfg: ModelConfig, req: PlanRequest): MemoryPlan {
  const { h: lh, w: lw } = latentSize(req.width, req.height);
  const dtype = req.precision === 'fp16' ? 'float16' : 'float32';
  const bytes = req.precision === 'fp16' ? 2 : 4;
  const limit = req.bufferLimit ?? DEFAULT_BUFFER_LIMIT;
  const attention: AttentionForm = req.fusedAttention ? 'fused' : 'chunked';
  const textLen = cfg.textEncoder.maxPositions;
  const notes: string[] = [
    req.fusedAttention
      ? `attention fused (MultiHeadAttention): no score matrix is a buffer, but for heads wider than ${FLASH_HEAD_BYTES} bytes (the VAE's), which run in query chunks`
      : `attention in query chunks: no score buffer above ${(limit / 2 ** 20).toFixed(0)} MiB`,
  ];
  const memOptions = { transposesConvWeights: req.transposesConvWeights ?? false, pointwiseAsIs: req.pointwiseAsIs ?? false };
  // the graphs' forms, as the engine builds them
  const forms = { dtype, attention, bufferLimit: limit, conv: req.conv } as const;
  const lay = req.layout;
  const layout = lay ? layoutGraphOptions(cfg.unet, lh, lw, lay.boxes, lay) : undefined;
  const unetAt = (batch: number) => graphMemory(buildUNet(cfg.unet, { batch, latentH: lh, latentW: lw, textLen, ...forms, ...layout }), memOptions);
  const text = graphMemory(buildTextEncoder(cfg.textEncoder, { batch: 1, seqLen: textLen, clipSkip: 1, ...forms }));
  // the weights on the GPU are what the engine loads (graph/specs.ts), whichever graph binds them:
  // every UNet weight (a layout's UNet graph leaves the cross-attention keys' and values' projections
  // to the region keys' graph), the text encoder's less the token table, and the VAE's decoder and,
  // where loaded, its encoder
  const specs = graphSpecs(cfg);
  const loaded = loadedSpecs(specs, !!(req.vaeEncoder || req.encodesPicture));
  const sizeOf = (w: WeightSpec) => count(w.dims) * bytes;
  const weightBytes = { unet: 0, textEncoder: 0, vae: 0 };
  for (const part of ['unet', 'textEncoder', 'vae'] as const) weightBytes[part] = loaded[part].reduce((a, w) => a + sizeOf(w), 0);
  const heaviest = [...loaded.unet, ...loaded.textEncoder, ...loaded.vae].reduce((a, w) => (sizeOf(w) > sizeOf(a) ? w : a));
  // a layout's other graphs, each run on its own between the UNet's runs, on the UNet's weights: the
  // region keys and values of each prompt, and guidance's cut UNet (maps; with guidance its backward
  // pass), whose attention is always chunked (there is no gradient rule for the fused node)
  const between: { name: string; memory: GraphMemory }[] = [];
  if (lay && layout) {
    between.push({ name: 'region keys', memory: graphMemory(buildCrossKV(cfg.unet, { batch: 1, textLen, dtype }), memOptions) });
    if (lay.guidance || lay.reinit) {
      const layers = guidanceLayers(cfg.unet, lh, lw);
      const guide = { batch: 1, latentH: lh, latentW: lw, textLen, dtype, regions: layout.regions, isolation: layout.isolation, regionOutputs: layout.regionOutputs, attention: 'chunked', bufferLimit: limit } as const;
      between.push({ name: 'the cut UNet for its attention maps', memory: graphMemory(buildGuidanceGraph(cfg.unet, guide, layers, false), memOptions) });
      if (lay.guidance) between.push({ name: 'its backward pass', memory: graphMemory(buildGuidanceGraph(cfg.unet, guide, layers, true), memOptions) });
    }
  }
  const betweenPeak = Math.max(0, ...between.map((b) => b.memory.activationPeakBytes));
  const wholeVae = graphMemory(buildVaeDecoder(cfg.vae, { batch: 1, latentH: lh, latentW: lw, ...forms }), memOptions);
  let vae = wholeVae;
  const wholeEncoder = req.encodesPicture ? graphMemory(buildVaeEncoder(cfg.vae, { batch: 1, latentH: lh, latentW: lw, ...forms }), memOptions) : undefined;
  const encoderAt = (tile: number | null) => (!wholeEncoder ? undefined : tile ? stagedMemory(wholeEncoder, stagedGraphs(cfg.vae, lh, lw, { ...forms, tile }, 'encode'), memOptions) : wholeEncoder);
  let encoder = encoderAt(null);

  const targets = [...loraTargets(specs.unet), ...loraTargets(specs.textEncoder)];
  const loras = req.loras ?? { count: 0, rank: 0 };
  const loraArenaBytes = loras.count * targets.reduce((a, t) => a + loras.rank * (t.dims[0] + count(t.dims.slice(1))), 0) * 4;
  const pristineBytes = loras.count ? targets.reduce((a, t) => a + count(t.dims), 0) * bytes : 0;
  const deepChannels = cfg.unet.blockOutChannels[Math.min(1, cfg.unet.blockOutChannels.length - 1)];
  const cacheBytes = (req.cachedFeatures ?? 0) * (req.cfg ? 2 : 1) * deepChannels * lh * lw * 4;
  // the latent, the noise prediction and the scheduler's history (two steps), in f32, and the
  // predictions a loop mixing several keeps
  const latentBytes = (4 * cfg.unet.inChannels + (req.keptPredictions ?? 0) * cfg.unet.outChannels) * 4 * lh * lw * (req.cfg ? 2 : 1);

  const total = (u: GraphMemory) => {
    const weights = weightBytes.unet + weightBytes.textEncoder + weightBytes.vae;
    const activations = req.capturedUnet
      ? u.activationPeakBytes + Math.max(text.activationPeakBytes, vae.activationPeakBytes, encoder?.activationPeakBytes ?? 0)
      : Math.max(u.activationPeakBytes, text.activationPeakBytes, vae.activationPeakBytes, betweenPeak, encoder?.activationPeakBytes ?? 0);
    return weights + activations + loraArenaBytes + pristineBytes + cacheBytes + latentBytes;
  };
  let unet = unetAt(req.cfg ? 2 : 1);
  let cfgHalves = false;
  let vaeTile: number | null = null;
  const vaeLargest = () => Math.max(vae.largestBufferBytes, encoder?.largestBufferBytes ?? 0);
  const over = (u: GraphMemory) => u.largestBufferBytes > limit || vaeLargest() > limit || (req.budgetBytes !== undefined && total(u) > req.budgetBytes);
  // Until it fits: tile the VAE decode while it sets the peak (or holds a buffer above the limit),
  // else run the CFG halves one after the other; stop when neither helps.
  const tiles = VAE_TILES.filter((t) => t < Math.max(lh, lw));
  let next = 0;
  while (over(unet)) {
    const vaeSets = Math.max(vae.activationPeakBytes, encoder?.activationPeakBytes ?? 0) >= unet.activationPeakBytes || vaeLargest() > limit;
    if (vaeSets && next < tiles.length) {
      vaeTile = tiles[next++];
      vae = stagedMemory(wholeVae, stagedGraphs(cfg.vae, lh, lw, { ...forms, tile: vaeTile }, 'decode'), memOptions);
      encoder = encoderAt(vaeTile);
      continue;
    }
    if (req.cfg && !cfgHalves) {
      const half = unetAt(1);
      if (total(half) < total(unet) || (unet.largestBufferBytes > limit && half.largestBufferBytes < unet.largestBufferBytes)) {
        unet = half;
        cfgHalves = true;
        continue;
      }
    }
    break;
  }
  if (vaeTile) notes.push(`the VAE decodes in ${vaeTile * 8}x${vaeTile * 8} tiles, stage by stage: the whole image's decode does not fit`);
  if (cfgHalves) notes.push('the two CFG halves run one after the other: the batch of two does not fit');
  // the token table the text encoder's rows are looked up in (text/token-table.ts): CPU memory
  const tokenTableBytes = count(tokenEmbeddingSpec(cfg.textEncoder).dims) * bytes;
  notes.push(`CLIP's token table (${(tokenTableBytes / 2 ** 20).toFixed(0)} MiB) stays in CPU memory: a prompt reads 77 of its rows`);
  if (req.capturedUnet) notes.push("the UNet replays a captured graph: its session keeps the UNet's activations between runs");
  if (loaded.vae.length > specs.vae.length) notes.push(`the VAE's encoder (${(specs.vaeEncoder.reduce((a, w) => a + sizeOf(w), 0) / 2 ** 20).toFixed(0)} MiB of weights) is on the GPU${req.encodesPicture ? ' and encodes the start picture before the loop' : ''}`);
  if (lay) {
    const cut = between.slice(1).map((b) => b.name);
    notes.push(`a layout of ${lay.boxes} box${lay.boxes === 1 ? '' : 'es'}: the UNet attends per region${cut.length ? `; ${cut.join(' and ')} run${cut.length === 1 ? 's' : ''} between its runs` : ''}`);
  }
  // the largest single buffer: an activation, a transposed copy, or a weight as it is bound (tiling
  // and halves change only the first two)
  const largest = [unet, { largestBufferBytes: sizeOf(heaviest), largestBuffer: `the weight ${heaviest.name}` }, text, vae, ...(encoder ? [encoder] : []), ...between.map((b) => b.memory)]
    .map((m) => ({ largestBufferBytes: m.largestBufferBytes, largestBuffer: m.largestBuffer }))
    .reduce((a, m) => (m.largestBufferBytes > a.largestBufferBytes ? m : a));
  const peakBytes = total(unet);
  const fits = largest.largestBufferBytes <= limit && (req.budgetBytes === undefined || peakBytes <= req.budgetBytes);
  if (!fits) notes.push(largest.largestBufferBytes > limit ? `the largest buffer (${largest.largestBuffer}) is above the limit` : 'the peak is above the budget');
  return {
    width: req.width,
    height: req.height,
    precision: req.precision,
    attention,
    cfgHalves,
    vaeTile,
    peakBytes,
    largestBufferBytes: largest.largestBufferBytes,
    largestBuffer: largest.largestBuffer,
    bufferLimitBytes: limit,
    fits,
    parts: {
      weightBytes,
      activationBytes: { unet: unet.activationPeakBytes, textEncoder: text.activationPeakBytes, vae: vae.activationPeakBytes, ...(encoder ? { vaeEncoder: encoder.activationPeakBytes } : {}), ...(lay ? { layout: betweenPeak } : {}) },
      loraArenaBytes,
      pristineBytes,
      cacheBytes,
      latentBytes,
    },
    weightTransposesPerStep: unet.weightTransposes * (cfgHalves ? 2 : 1),
    weightTransposeBytesPerStep: unet.weightTransposeBytes * (cfgHalves ? 2 : 1),
    cpuBytes: tokenTableBytes,
    notes,
  };
}
