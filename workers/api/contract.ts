// The engine's public contract: the only types that cross the worker boundary.
import type { ModelConfig } from '../checkpoint/config.ts';
import type { LoraFormat, LoraMetadata } from '../lora/formats.ts';
import type { ErrorInfo } from './errors.ts';

export type SchedulerId = 'ddim' | 'euler-a' | 'euler' | 'dpmpp-2m' | 'dpmpp-2m-karras' | 'lcm' | 'tcd' | 'heun';
export type Precision = 'auto' | 'fp32' | 'fp16';

export interface GenerateJob {
  prompt: string;
  negative: string;
  steps: number;
  /** Classifier-free guidance scale; 1 disables the unconditional branch. */
  cfg: number;
  seed: number;
  width: number;
  height: number;
  scheduler: SchedulerId;
  /** 1 = last CLIP layer (default), 2 = penultimate, ... */
  clipSkip?: number;
  /** LoRAs (loaded with loadLora) used for this image, composed by `composition`. */
  loras?: LoraUse[];
  /** How the LoRAs are composed; by default they are merged (`merge`), or none when there are none. */
  composition?: CompositionOptions;
  /** Concept boxes (LoRA-Composer); `loras` and `composition` then act on the whole frame. */
  layout?: LayoutOptions;
  /**
   * GPU bytes the job may use; the memory plan then decodes the VAE in tiles and runs the CFG halves
   * one after the other where the whole would not fit. Unset: only the adapter's buffer limit binds.
   */
  memoryBudget?: number;
  /** Steps between live previews (0: none); 1 by default. Each preview is one small read of the latent. */
  previewEvery?: number;
  /** false: the denoising loop brings every step back to the CPU even where it could stay on the GPU (a reference for tests). */
  latentsOnGpu?: boolean;
  /** false: the UNet of a GPU-resident loop runs as usual instead of replaying a captured graph (a reference for tests). */
  graphCapture?: boolean;
  /** Image to image and inpainting: the picture the job starts from. */
  init?: InitImage;
  /** Hires fix: after the image, a second pass at a larger size. */
  hires?: HiresFix;
}

/** The picture an image-to-image or inpainting job starts from. */
export interface InitImage {
  /** RGBA at the job's width and height (the studio and the CLI resize it first). */
  image: ImageData8;
  /**
   * How much is repainted (diffusers' `strength`): the run starts at step steps - floor(steps x
   * strength). 0 keeps the picture (its VAE round trip); 1 starts from pure noise, which is text to
   * image with the same seed (diffusers' inpainting pipeline does so at 1; its img2img pipeline noises the picture).
   */
  strength: number;
  /** Inpainting: one byte per pixel at the image's size; 255 repaints, 0 keeps (A1111 and diffusers: white repaints). */
  mask?: Uint8Array;
  /** The mask's blur radius in pixels (A1111's default 4). */
  maskBlur?: number;
  /**
   * Inpaint only the masked area at the job's full resolution (A1111's "only masked"): the mask's
   * bounds plus this padding in pixels are cut out, scaled to the job's size, inpainted and pasted back.
   * Unset: the whole picture is inpainted.
   */
  onlyMaskedPadding?: number;
}

/** A1111's hires fix: generate, upscale, and denoise again at the larger size. */
export interface HiresFix {
  /** Final size over the job's, above 1 and at most 4; each side is rounded to a multiple of 64 (at most 2048). */
  scale: number;
  /** Denoising strength of the second pass (A1111's default 0.7). */
  strength: number;
  /** Steps of the second pass's schedule (default: the job's); it runs floor(steps x strength) of them. */
  steps?: number;
  /** `latent`: the latent is upscaled bilinearly (A1111's "Latent", the default); `image`: the picture is decoded, upscaled bicubically and encoded again. */
  upscaler?: 'latent' | 'image';
}

/** A concept box in image pixels, with its local prompt and LoRAs. */
export interface LayoutBox {
  name: string;
  x: number;
  y: number;
  width: number;
  height: number;
  prompt: string;
  loras: LoraUse[];
  /**
   * The words that name the box's concept (comma-separated; e.g. its LoRAs' trigger words): their
   * tokens in the box prompt are the ones guidance and re-initialisation read. Without them (or when
   * none is in the prompt), the prompt's content tokens other than articles and quality tags.
   */
  trigger?: string;
}

export type MaskRule = 'covered' | 'centre';
export type IsolationScope = 'concepts' | 'regions';

export interface LayoutOptions {
  boxes: LayoutBox[];
  /** Region-aware LoRA injection; off: box prompts join the global prompt and box LoRAs the global ones. */
  injection: boolean;
  /** Concept isolation in self-attention. */
  isolation: boolean;
  /** Latent re-initialisation from a probe step's cross-attention maps. */
  reinit: boolean;
  /** LoRA-Composer's gradient guidance on the latent (Eq. 4-10); none when absent. */
  guidance?: GuidanceOptions;
  /** A box's cells on each attention grid: `covered` (whole cells, as the code; default) or `centre` (ours: cell centres, never empty). */
  masks?: MaskRule;
  /** Pairs isolation cuts: `concepts` (a box's queries and other boxes' keys, as the code; default) or `regions` (ours: background walled off too). */
  isolationScope?: IsolationScope;
  /** A box region's text encoder and projections: `model` (the model with the box's LoRAs, as the code; default) or `frame` (the frame's LoRAs as well). */
  regionBase?: 'model' | 'frame';
  /** The unconditional half of a box region: `concept` (the negative prompt through the box's LoRAs, as the code; default) or `frame` (the frame's negative). */
  regionNegative?: 'concept' | 'frame';
  /** A box region's cross-attention output projection: `own` (with the box's LoRAs, as the code; default) or `shared` (the frame's). */
  regionOutput?: 'own' | 'shared';
}

export type ResolvedLayoutOptions = Required<Omit<LayoutOptions, 'boxes' | 'guidance'>> & { guidance: Required<GuidanceOptions> | null };

/** Gradient guidance (LoRA-Composer's code): z' = z - phi_t * grad(L_ce + L_fill + L_region), per component. */
export interface GuidanceOptions {
  /** Concept enhancement: 8 (1 - top-k mean) of each concept token's map under the box mask and Gaussian (Eq. 4). */
  ce: boolean;
  /** Concept fill: 2 L1 of each token map's max-projections against the box, per axis (Eq. 5-7). */
  fill: boolean;
  /** Region constraint: 10 times the top-k self-attention from a box's cells to the cells outside it (Eq. 8). */
  region: boolean;
  /** phi at the first step; phi_t = scale * sqrt(linspace(1, 0.5)); default 20. */
  scale?: number;
  /** Share of the denoising steps that may be guided, from the first (ours); default 1. */
  share?: number;
  /** End the guidance after the first step, from step 5 on, whose L rose (the code's early stop); default true. */
  earlyStop?: boolean;
  /** The last step that is guided (the code's 25); default 25. */
  lastStep?: number;
}

export interface GuidanceStep {
  step: number;
  /** L and its three weighted terms (loss = ce + fill + region) at this step's latent. */
  loss: number;
  ce: number;
  fill: number;
  region: number;
  /** phi_t used (0 when the latent was not updated). */
  stepSize: number;
  /** Whether the latent moved (it does unless L is exactly 0). */
  updated: boolean;
}

export interface GuidanceReport {
  /** The attention layers whose maps the losses read (down and up blocks on one grid). */
  layers: string[];
  grid: { rows: number; cols: number };
  steps: GuidanceStep[];
  /** The last guided step, when early stop or the last-step cap ended the guidance. */
  stoppedAt: number | null;
  /** Forward-with-maps and backward runs of the cut UNet, and their time. */
  evaluations: number;
  ms: number;
}

export interface BoxReport {
  name: string;
  /**
   * Share (0 to 1) of the cross-attention mass the image gave the box prompt's content tokens that
   * fell inside the box, at the last step: with region injection, its region's maps under the region
   * weights; without, its tokens in the joined global prompt. Low means the concept leaks or vanishes.
   */
  attentionInBox: number;
  /**
   * The same share from the box prompt's maps with nothing masked: where its tokens would draw
   * attention if every cell could see them. The concept-enhancement guidance raises this one.
   */
  attentionInBoxUnmasked: number;
  /** Latent re-initialisation: the top-left latent cell of the window moved into the box. */
  window: { row: number; col: number } | null;
  /** The prompt tokens read as the box's concept (positions in its 77-token context) and where they came from. */
  conceptTokens: number[];
  conceptSource: 'trigger' | 'content' | 'all-content';
}

/** What a layout ran with: every option resolved, and the grid guidance and re-initialisation read. */
export interface LayoutReport {
  options: ResolvedLayoutOptions;
  /** The grid of the maps that guidance and re-initialisation read. */
  grid: { rows: number; cols: number };
}

export type CompositionMethodId = 'none' | 'merge' | 'switch' | 'composite' | 'cmlora';

/** A composition method and its settings; unset fields take the defaults the README lists. */
export interface CompositionOptions {
  method: CompositionMethodId;
  /** switch: steps per LoRA (the first gets one more, as ComposLoRA's callback); cmlora async: steps between changes of the dominant LoRA. */
  switchStep?: number;
  /** cmlora: `offline` profiles each LoRA (on its own image) before; `online` measures the latent at every step. */
  profiling?: 'offline' | 'online';
  /** cmlora offline: denoising steps of each LoRA's profiling image (default: the job's). */
  profileSteps?: number;
  /** The high band starts at this radius on a 512-pixel image (the notebook's 72), scaled to the image or latent measured. */
  cutoff?: number;
  /** cmlora online: the low phase starts once the latent's high band falls below this (default: derived, see the README). */
  threshold?: number;
  /** cmlora offline: the share of the steps in the high phase (the code's step 120 of 220). */
  highPhase?: number;
  /** cmlora `cache: prediction` (ours): steps a non-dominant LoRA's contribution is reused, for high- and low-frequency LoRAs. */
  cacheHigh?: number;
  cacheLow?: number;
  /** cmlora: the dominant LoRA's initial weight relative to the others (N - 0.5 when unset). */
  domCoeff?: number;
  /** cmlora: the async pipeline (the dominant goes round every LoRA every switchStep steps, w_dom decays); false: the offline / online pipeline. */
  async?: boolean;
  /** cmlora: `deep` reuses each LoRA's deep UNet features between refreshes (the code's DeepCache); `prediction` (ours) reuses its prediction's offset; `off` runs every LoRA fully. */
  cache?: 'deep' | 'prediction' | 'off';
  /** cmlora deep cache: 0 the paper's 2-3-2 refresh pattern, 1 every step (no caching), c > 1 every c steps. */
  cacheInterval?: number;
  /** cmlora: how LoRAs are grouped and ordered: `category` (the code: backgrounds last and low) or `profile` (by the frequency profile). */
  partition?: 'category' | 'profile';
  /** Every method: reuse the deep UNet features for N - 1 of every N steps (DeepCache on its own); 1 = off. */
  deepCacheInterval?: number;
  /** cmlora: record each LoRA's deep features at every step and report how alike they are (the paper's research series). */
  research?: boolean;
}

export type ResolvedComposition = Required<CompositionOptions>;

/** What a composition method did at one denoising step (LoRAs are indices into the job's `loras`). */
export interface CompositionStep {
  step: number;
  /** LoRAs whose noise prediction was computed at this step. */
  active: number[];
  /** Of those, the LoRAs that ran only the UNet's shallow part, on their cached deep features. */
  shallow: number[];
  /** The LoRA whose deep-feature cache this step refreshed (cmlora's schedule), if any. */
  refreshed: number | null;
  /** LoRAs whose prediction's offset was reused from the cache (`cache: prediction`). */
  cached: number[];
  dominant: number | null;
  /** Weight of each LoRA's noise prediction in the step's mix (0: not used). */
  weights: number[];
  /** High band (the online measure) of the clean latent each LoRA alone predicts; null where it was not computed alone. */
  amplitudes: (number | null)[];
  /** The same for the mixed prediction the step used (null where the latent stayed on the GPU). */
  mixAmplitude: number | null;
  /** The same for the noisy latent the step started from: what the online phase compares with the threshold (null where the latent stayed on the GPU). */
  latentAmplitude: number | null;
  /** Research series: per LoRA, the share (0 to 1) of earlier steps whose deep features have a cosine of at least 0.9 with this step's (the paper's measure); null where not recorded. */
  featureReuse?: (number | null)[];
  /** Cosine similarity of the latent after this step to the latent before it (null where the latent stayed on the GPU). */
  latentSimilarity: number | null;
  /** cmlora: which frequency phase the step was in, and the partition it used. */
  phase: 'high' | 'low' | null;
  partition: { high: number[]; low: number[] } | null;
  unetEvaluations: number;
  /** Multiply-adds of this step's UNet runs (a shallow run costs less than a whole one). */
  unetMultiplyAdds: number;
  mergeMs: number;
}

export interface CompositionReport {
  method: CompositionMethodId;
  options: ResolvedComposition;
  /** The job's LoRA names, which the indices below refer to. */
  loras: string[];
  /** The sequence the method used them in (cmlora: high-frequency first, by amplitude). */
  order: number[];
  partition: { high: number[]; low: number[] } | null;
  /** cmlora's frequency profile: each LoRA's high band (offline: of its own image), where each came from, and what the runs cost. */
  profile: { source: 'run' | 'cache' | 'online' | 'category'; amplitudes: number[]; sources: ('run' | 'cache')[]; unetEvaluations: number; ms: number } | null;
  steps: CompositionStep[];
  /** Per LoRA: the share of the steps it took part in that reused cached work (deep features or a prediction). */
  cacheHitRate: (number | null)[];
  unetEvaluations: { profile: number; denoise: number };
  unetMultiplyAdds: { profile: number; denoise: number };
}

export interface LoraUse {
  /** The id loadLora returned. */
  lora: string;
  /** Multiplier of the UNet part (kohya's "weight"); 0 leaves the model exactly as it is. */
  scale: number;
  /** Multiplier of the text-encoder part; defaults to `scale`. */
  textEncoderScale?: number;
  /** ComposLoRA's category (character, clothing, style, background, object); guessed from the file when absent. */
  category?: string;
  /** Its trigger words: the prompt of its profiling image (cmlora offline). */
  trigger?: string;
}

export interface LoraInfo {
  id: string;
  name: string;
  format: LoraFormat;
  /** Largest rank of its layers. */
  rank: number;
  /** Layers applied to the UNet and to the text encoder. */
  unetLayers: number;
  textEncoderLayers: number;
  keysMatched: number;
  /** Layers that match nothing in the model (or that the studio cannot apply), with why. */
  keysUnmatched: { key: string; reason: string }[];
  metadata: LoraMetadata;
  factorBytes: number;
  /** Fingerprint of its layers and factor values: equal for the same LoRA under another file name. */
  fingerprint: string;
  /** ED-LoRA (Mix-of-Show): the concept tokens it adds to prompts, e.g. `<ai1>`, `<ai2>`. */
  concepts?: string[];
}

/** A textual-inversion embedding: prompts use it by `name`. */
export interface EmbeddingInfo {
  id: string;
  name: string;
  /** The file it came from. */
  file: string;
  /** Vectors it stands for in a prompt. */
  vectors: number;
  fingerprint: string;
}

export interface ImageData8 {
  width: number;
  height: number;
  /** RGBA, 8 bits per channel. */
  data: Uint8ClampedArray;
}

export interface Timings {
  textEncodeMs: number;
  denoiseMs: number;
  perStepMs: number;
  decodeMs: number;
  sessionCreateMs: number;
  totalMs: number;
}

export interface ProgressEvent {
  /** `encode`: the init picture through the VAE encoder; `hires`: the hires fix's second pass (its steps count from 1 again). */
  phase: 'text' | 'profile' | 'encode' | 'denoise' | 'hires' | 'decode' | 'done';
  step: number;
  total: number;
  /** A cheap RGB view of the current latent (latent resolution). */
  preview?: ImageData8;
  elapsedMs: number;
  /** Denoise events: what the composition method did at this step. */
  composition?: CompositionStep;
  /** Denoise events of a guided step: the loss and the update. */
  guidance?: GuidanceStep;
  /** Set on the event that starts a job over from its first step, and why (the GPU refused a form of attention). */
  restart?: string;
}

export interface AdapterInfo {
  backend: 'webgpu' | 'wasm';
  vendor: string;
  architecture: string;
  shaderF16: boolean;
}

export interface MemoryPlanReport {
  width: number;
  height: number;
  precision: 'fp16' | 'fp32';
  peakBytes: number;
  largestBufferBytes: number;
  /** What the largest buffer is (a graph value or a transposed weight). */
  largestBuffer: string;
  /** fused: MultiHeadAttention; chunked: MatMul-Softmax-MatMul in query chunks; explicit: in one piece. */
  attention: 'fused' | 'chunked' | 'explicit';
  /** Why this attention form (the adapter check's verdict, in plain words). */
  attentionReason: string;
  cfgHalves: boolean;
  /** Within the buffer limit (and the budget, when one is given). */
  fits: boolean;
  /** The VAE decoded in tiles of this many latent cells a side, or whole (null). */
  vaeTile: number | null;
  bufferLimitBytes: number;
  parts: {
    /** `vae`: the decoder's, and the encoder's where it is loaded. */
    weightBytes: { unet: number; textEncoder: number; vae: number };
    /**
     * `vae`: the decode's; `vaeEncoder`: the encode of a start picture (absent when the job has none);
     * `layout`: the largest of a layout's graphs that run between the UNet's (region keys, guidance's
     * cut UNet and its backward pass; absent without a layout).
     */
    activationBytes: { unet: number; textEncoder: number; vae: number; vaeEncoder?: number; layout?: number };
    loraArenaBytes: number;
    pristineBytes: number;
    cacheBytes: number;
    latentBytes: number;
  };
  weightTransposesPerStep: number;
  weightTransposeBytesPerStep: number;
  /** CPU memory the job keeps instead of GPU memory, not counted in `peakBytes`: CLIP's token embedding table. */
  cpuBytes: number;
  notes: string[];
}

export interface GenerationReport {
  steps: number;
  unetEvaluations: number;
  /** Multiply-adds of every UNet run of the job (profiling, probe and guidance included), each at its real cost. */
  unetMultiplyAdds: number;
  seed: number;
  scheduler: SchedulerId;
  width: number;
  height: number;
  cfg: number;
  prompt: string;
  negative: string;
  precision: 'fp32' | 'fp16';
  adapter: AdapterInfo;
  timingsMs: Timings;
  /** Peak bytes of GPU buffers alive during the job (weights, activations, staging). */
  gpuBytesAllocated: number;
  /** The largest single GPU buffer alive during the job, weights included (measured). */
  gpuLargestBufferBytes: number;
  /** What the job's graphs need, planned before anything was allocated (workers/engine/memory-plan.ts). */
  memoryPlan: MemoryPlanReport;
  /** GPU results the CPU read during the denoising loop (UNet outputs, previews), per step; 0 when the latents stay on the GPU and no preview is asked for. */
  readbacksPerStep: number;
  /** Compute dispatches on the GPU during the denoising loop, per step, as the device counted them (onnxruntime's and ours); WebGPU only. */
  dispatchesPerStep?: number;
  /** The denoising loop kept its latents on the GPU (CFG and the sampler's step as GPU work); false: each step came back to the CPU, with `latentsOnGpuReason`. */
  latentsOnGpu: boolean;
  latentsOnGpuReason?: string;
  /** The loop's UNet runs replayed the GPU work its first run recorded (onnxruntime's graph capture): plain, merged and switched jobs without a layout on WebGPU. */
  graphCaptured: boolean;
  /** How the graphs built their group norms: one InstanceNormalization each, or ReduceMean ops (on a CPU adapter, where they are faster). */
  groupNorm: 'instance' | 'reductions';
  loras: { name: string; format: LoraFormat; scale: number; textEncoderScale: number }[];
  /** LoRA layers applied, summed over the job's LoRAs. */
  loraKeysMatched: number;
  /** "file: layer (reason)" for every layer of the job's LoRAs that was not applied. */
  loraKeysUnmatched: string[];
  /** Wall time of each weight merge the job ran (GPU work included). */
  mergeMs: number[];
  composition: CompositionReport;
  /** One entry per layout box (empty without a layout). */
  boxes: BoxReport[];
  /** The layout's resolved options, when the job has boxes. */
  layout?: LayoutReport;
  /** Gradient guidance, when the layout asked for it. */
  guidance?: GuidanceReport;
  /** Image to image and inpainting: what the job started from. */
  init?: InitReport;
  /** Hires fix: the second pass (the report's own size, steps and timings are the first pass's). */
  hires?: HiresReport;
  warnings: string[];
}

export interface InitReport {
  strength: number;
  /** The schedule's step the run started at, and the steps it ran (steps - start). */
  startStep: number;
  stepsRun: number;
  /** `img2img`, `inpaint` (masked blending with a 4-channel UNet) or `inpaint-model` (a 9-channel inpainting UNet). */
  mode: 'img2img' | 'inpaint' | 'inpaint-model';
  /** Inpainting: the mask's blur radius in pixels. */
  maskBlur?: number;
  /** "Only masked": the area cut out and inpainted at full resolution, in the picture's pixels. */
  region?: { x: number; y: number; width: number; height: number };
  encodeMs: number;
}

export interface HiresReport {
  width: number;
  height: number;
  upscaler: 'latent' | 'image';
  strength: number;
  steps: number;
  stepsRun: number;
  /** VAE tiles of the final decode (1: whole). */
  decodeTiles: number;
  ms: number;
}

/** A LoRA as the scorer needs it: the words that name its concept and pictures of that concept. */
export interface ScoreConcept {
  /** The LoRA's name. */
  name: string;
  /** Its trigger words (comma-separated), replaced by `classWord` before text similarity. */
  trigger?: string;
  /** The concept's class ("dog", "dress"), as LoRA-Composer substitutes it. */
  classWord?: string;
  /** Reference images of the concept; `id` keys the scorer's cache of their embeddings. */
  references?: { id: string; image: ImageData8 }[];
}

export interface ScoreRequest {
  image: ImageData8;
  /** The global prompt, compared with the whole image. */
  prompt: string;
  /** Whole-frame LoRAs: the whole image against their references. */
  loras: ScoreConcept[];
  /** Concept boxes in image pixels: each crop against its local prompt and its LoRAs' references. */
  boxes: { name: string; x: number; y: number; width: number; height: number; prompt: string; loras: ScoreConcept[] }[];
}

export interface ConceptScore {
  /** The box's name, or the LoRA's for a whole-frame LoRA. */
  name: string;
  /** The text the crop was compared with (trigger words replaced); null for a whole-frame LoRA. */
  text: string | null;
  /** Cosine similarity of the CLIP embeddings of the crop and the text. */
  textImage: number | null;
  /** Mean cosine similarity of the crop (or whole image) to the concept's reference images. */
  imageImage: number | null;
  /** LoRA-Composer's code: max(0, cosine) with the first reference image only; null without references. */
  imageImageFirst: number | null;
  references: number;
}

export interface ScoreReport {
  /** The scorer's name (its repository or folder). */
  scorer: string;
  /** Cosine similarity of the whole image and the global prompt. */
  global: number;
  /**
   * CLIPScore as CMLoRA's and ComposLoRA's scripts compute it (torchmetrics): 100 max(cos, 0) of the
   * whole image and the LoRAs' trigger words joined by ", " (the full prompt when no LoRA has any).
   */
  clipScore: number;
  /** The text `clipScore` was computed against. */
  clipScoreText: string;
  /** CLIPScore against the full prompt: 100 max(global, 0). */
  clipScorePrompt: number;
  boxes: ConceptScore[];
  loras: ConceptScore[];
  /**
   * LoRA-Composer's textual similarity as its clipscore.py: 2.5 max(0, cos) of each box crop and
   * "A photo depicts " + its prompt with class words, averaged over the boxes (the whole image and the
   * global prompt when there are none); no global term.
   */
  textSimilarity: number;
  /** Ours before: the raw cosines of the box crops with their prompts and of the whole image with the global prompt, averaged. */
  textSimilarityRaw: number;
  /** Image similarity (ours): the mean cosine with every reference, over the concepts that have references; null if none. */
  imageSimilarity: number | null;
  /** LoRA-Composer's code: max(0, cosine) with each concept's first reference, averaged; null if none. */
  imageSimilarityFirst: number | null;
  ms: number;
}

/** The files of a CLIP scorer in the Hugging Face ONNX layout (config.json, onnx/text_model.onnx, ...). */
export interface ScorerRequest {
  name: string;
  files: Record<string, FileRef>;
}

export interface ScorerInfo {
  name: string;
  dtype: 'fp32' | 'fp16' | 'q8';
  projectionDim: number;
  imageSize: number;
  maxTokens: number;
}

export interface GenerateResult {
  image: ImageData8;
  report: GenerationReport;
}

export interface ModelInfo {
  name: string;
  layout: 'single-file' | 'diffusers';
  config: ModelConfig;
  precision: 'fp32' | 'fp16';
  parameters: { unet: number; textEncoder: number; vae: number };
  weightBytes: number;
  adapter: AdapterInfo;
  isTestModel: boolean;
  /** The VAE has its encoder: image to image, inpainting and the hires fix's image upscaler work. */
  vaeEncoder: boolean;
  /** An inpainting checkpoint: its UNet takes 9 channels (latent, mask, masked picture's latent). */
  inpainting: boolean;
  /** The separate VAE file in use (loadVae), or undefined for the checkpoint's own. */
  vaeFile?: string;
}

/** A file handed to the worker: a browser File/Blob, or a URL read with range requests. */
export type FileRef = { kind: 'blob'; name: string; blob: Blob } | { kind: 'url'; url: string };

export interface ModelRequest {
  single?: FileRef;
  unet?: FileRef;
  textEncoder?: FileRef;
  vae?: FileRef;
  /** tokenizer.json, or vocab.json + merges.txt, as text. */
  tokenizer: { tokenizerJson?: string; vocabJson?: string; mergesTxt?: string };
  precision?: Precision;
}

/** What the worker exposes over Comlink. Errors arrive as ErrorInfo-shaped rejections. */
export interface EngineApi {
  init(): Promise<AdapterInfo>;
  loadModel(req: ModelRequest, onProgress?: (done: number, total: number) => void): Promise<ModelInfo>;
  generate(job: GenerateJob, onProgress?: (e: ProgressEvent) => void): Promise<GenerateResult>;
  cancel(): Promise<void>;
  loadLora(file: FileRef): Promise<LoraInfo>;
  unloadLora(id: string): Promise<void>;
  /** A textual-inversion embedding (.safetensors or .pt); prompts use it by its name. */
  loadEmbedding(file: FileRef): Promise<EmbeddingInfo>;
  unloadEmbedding(id: string): Promise<void>;
  /** A separate VAE (e.g. sd-vae-ft-mse) in place of the checkpoint's own; null goes back to the checkpoint's. */
  loadVae(file: FileRef | null): Promise<ModelInfo>;
  /** The LoRA merge kernel against its float64 reference on this GPU. */
  selfTest(): Promise<MergeSelfTestResult[]>;
  /** Loads the CLIP model that scores results (replacing the one loaded before). */
  loadScorer(req: ScorerRequest): Promise<ScorerInfo>;
  /** CLIP similarities of an image to its prompts and reference images. */
  score(req: ScoreRequest): Promise<ScoreReport>;
  /** Calls `onLost` (once) if the GPU device is lost, whether or not a job is running. */
  watch(onLost: (reason: string) => void): Promise<void>;
}

export interface MergeSelfTestResult {
  storage: 'f32' | 'f16';
  mode: 'batched' | 'direct';
  maxError: number;
  tolerance: number;
  restoredExactly: boolean;
  ok: boolean;
}

export type { ErrorInfo };
