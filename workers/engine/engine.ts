// The engine: a loaded model (weights on the GPU, one ORT session per graph and shape) and the
// denoising loop. The same class runs in the browser's worker and in Node.
import type * as OrtNs from 'onnxruntime-web';
import type { AdapterInfo, EmbeddingInfo, GenerateJob, GenerateResult, HiresReport, InitReport, LayoutOptions, LoraInfo, LoraUse, ModelInfo, Precision, ProgressEvent, ResolvedComposition } from '../api/contract.ts';
import { BadArgumentError, bytesText, CancelledError, DeviceLostError, EngineError, GpuOutOfMemoryError } from '../api/errors.ts';
import { CONFIG_METADATA_KEY } from '../checkpoint/config.ts';
import { ModelCheckpoint, VaeFile, type Component, type ModelFiles } from '../checkpoint/model.ts';
import type { GraphBuilder } from '../graph/builder.ts';
import { buildTextEncoder } from '../graph/clip.ts';
import { buildUNet } from '../graph/unet.ts';
import { buildCrossKV } from '../graph/cross-kv.ts';
import { buildGuidanceGraph, guidanceLayers } from '../graph/guidance-graph.ts';
import { layoutGraphOptions } from '../layout/regional.ts';
import { checkGuidance, resolveLayout } from '../layout/options.ts';
import { crossAttentionLayers } from '../graph/cross-kv.ts';
import { regionOutInputName } from '../graph/unet.ts';
import { MAX_BOXES, MAX_STEPS } from '../layout/scene.ts';
import { buildVaeDecoder, buildVaeEncoder } from '../graph/vae.ts';
import { graphSpecs, loadedSpecs, textEncoderFileSpecs } from '../graph/specs.ts';
import type { ByteSource } from '../checkpoint/source.ts';
import { loraTargetTable, type LoraTarget } from '../lora/keys.ts';
import { loraFingerprint, openLora, type LoadedLora } from '../lora/load.ts';
import { openTensorFile } from '../checkpoint/tensor-file.ts';
import { buildVocabulary, embeddingFingerprint, readTextualInversion, type TokenEmbedding, type Vocabulary } from '../text/embeddings.ts';
import { cpuSpectrumMagnitudes } from '../composition/frequency.ts';
import { ortBufferSize, uploadBuffer, writePadded } from '../gpu/buffers.ts';
import { bufferLimit, checkJobFits, checkWeightsFit } from '../gpu/limits.ts';
import { DEFAULT_BUFFER_LIMIT, type GraphOptions } from '../graph/builder.ts';
import { chooseAttention, chunkedAfterRefusal, refusedFusedAttention, type AttentionChoice } from './attention-check.ts';
import { planMemory, type MemoryPlan } from './memory-plan.ts';
import { decodeStaged, encodeStaged, tileStarts, type RunGraph } from './vae-tiles.ts';
import { blurMask, cropMask, latentMask, maskedPlanes, onlyMaskedRegion, overlay, paste, pictureToPlanes, resizeBilinear } from './picture.ts';
import { resizeBicubic } from '../eval/preprocess.ts';
import { SpectrumKernel } from '../gpu/spectrum.ts';
import { multiplyAdds } from '../graph/cost.ts';
import { guessCategory, isLoraCategory } from '../lora/category.ts';
import { MemoryProfileStore, type ProfileStore } from './profile-store.ts';
import { resolveComposition } from '../composition/plan.ts';
import { LoraWeights, type MergeBackend, type MergeStats } from '../lora/merger.ts';
import { isSchedulerName } from '../schedulers/registry.ts';
import { ClipTextTokenizer, type TokenizerFiles } from '../text/tokenizer.ts';
import { TokenTable } from '../text/token-table.ts';
import { compositionMixes, compositionNeedsCpu, denoise, type PipelineParts } from './pipeline.ts';
import type { CapturedUnet, Fetches } from './gpu-loop.ts';
import { buildCombineGraph, buildMeasureGraph } from '../graph/mix.ts';
import { buildStepGraph, previewFactor } from '../graph/step.ts';
import { hasEmphasis, parseEmphasis } from '../text/emphasis.ts';
import { LCM_ORIGINAL_STEPS } from '../schedulers/lcm.ts';
import { flushOrt, ortGpuZeros, sessionOptions, type ConvLayout, type Runtime } from './runtime.ts';
import { WeightSet } from './weights.ts';

/** The most 77-token chunks a prompt is read in (A1111 sets no limit; 8 is 600 tokens). */
export const MAX_CONTEXT_CHUNKS = 8;

/** The WebGPU EP's layout for every session the engine compiles. */
export const CONV_LAYOUT: ConvLayout = 'NCHW';

/** Memory plans kept between jobs (each a small object), the oldest dropped first. */
const PLANS_KEPT = 64;

interface CompiledGraph {
  session: OrtNs.InferenceSession;
  weightNames: string[];
  /** Inputs whose first dimension is the batch's (1 in a batch-1 graph). */
  batched: Set<string>;
  /** Multiply-adds of one run (workers/graph/cost.ts). */
  macs: number;
  /** Its outputs stay in GPU buffers (the denoising loop's UNet and step graphs on WebGPU). */
  outputsOnGpu: boolean;
  /**
   * Compiled with graph capture: every run replays the first one's dispatches, bound to these buffers
   * (its inputs other than weights, and its outputs), which live and die with the session.
   */
  captured?: { inputs: Record<string, OrtNs.Tensor>; outputs: Record<string, OrtNs.Tensor>; recorded: boolean };
}

/** The session first, then the buffers a captured one was bound to. */
async function releaseGraph(g: CompiledGraph): Promise<void> {
  await g.session.release();
  for (const t of [...Object.values(g.captured?.inputs ?? {}), ...Object.values(g.captured?.outputs ?? {})]) t.dispose();
}

/** What an out-of-memory beside the loaded model (a VAE's or a LoRA's weights) is called, and what to try. */
const ALONGSIDE = (during: string) => ({ during, fix: 'close other programs that use the GPU, or use fewer LoRAs' });

export class Engine {
  private model?: {
    ckpt: ModelCheckpoint;
    tokenizer: ClipTextTokenizer;
    weights: Record<Component, WeightSet>;
    /** The text encoder's token embedding table, in CPU memory (text/token-table.ts). */
    tokens: TokenTable;
    precision: 'fp32' | 'fp16';
    info: ModelInfo;
  };
  private readonly sessions = new Map<string, CompiledGraph>();
  private readonly loras = new Map<string, { lora: LoadedLora; info: LoraInfo }>();
  private readonly embeddings = new Map<string, { token: TokenEmbedding; info: EmbeddingInfo }>();
  private embeddingCounter = 0;
  private loraWeights?: LoraWeights;
  private loraTable?: Map<string, LoraTarget>;
  private loraCounter = 0;
  private spectrum?: Promise<SpectrumKernel>;
  /** cmlora's LoRA profiles: in memory unless the host gives a lasting store (a file, IndexedDB). */
  profileStore: ProfileStore = new MemoryProfileStore();
  private cancelRequested = false;
  private busy = false;
  private lostReason?: string;
  /** The device's uncaptured errors this engine has looked at (those before it are another's). */
  private faultsSeen: number;
  /** Set when the GPU ran out of memory: every later call refuses with it until a restart. */
  private outOfMemory?: GpuOutOfMemoryError;
  /** What is running, for an out-of-memory message: its words, its plan, and what to try. */
  private activity: { during: string; plan?: MemoryPlan; fix?: string } = { during: 'between jobs' };

  /** `mergeBackend`: how LoRAs are merged (the batched GPU form unless a benchmark asks otherwise). */
  constructor(readonly rt: Runtime, readonly mergeBackend: MergeBackend = 'batched') {
    rt.gpu?.lost.then((reason) => {
      this.lostReason = reason;
    });
    this.faultsSeen = rt.gpu?.faults.count ?? 0;
  }

  get adapter(): AdapterInfo {
    return {
      backend: this.rt.backend,
      vendor: this.rt.gpu?.adapter.vendor ?? 'cpu',
      architecture: this.rt.gpu?.adapter.architecture ?? 'wasm',
      shaderF16: this.rt.gpu?.adapter.shaderF16 ?? false,
    };
  }

  /** ORT sessions compiled and kept (one per graph and shape). */
  get compiledGraphs(): number {
    return this.sessions.size;
  }

  /** The kept graphs' keys (their kind and shape), least recently used first. */
  get compiledGraphKeys(): string[] {
    return [...this.sessions.keys()];
  }

  /**
   * Compiled graphs kept between jobs. Past it, the least recently used that the running job does
   * not use are released (each holds its shaders and onnxruntime's per-session state; a job of one
   * size and method uses 3 to 9).
   */
  sessionsKept = 16;
  /** The graphs the running job has asked for: never released under it. */
  private readonly jobGraphs = new Set<string>();

  /** Compiled graphs kept that replay a capture: the last one a pass looped with, alone. */
  get capturedGraphs(): number {
    return [...this.sessions.values()].filter((s) => s.captured).length;
  }

  get modelInfo(): ModelInfo | undefined {
    return this.model?.info;
  }

  private checkDevice(): void {
    if (this.lostReason) throw new DeviceLostError(this.lostReason);
    if (this.outOfMemory) throw this.outOfMemory;
    const faults = this.rt.gpu?.faults;
    const oom = faults?.since(this.faultsSeen, 'out-of-memory')[0];
    this.faultsSeen = faults?.count ?? 0;
    if (!oom) return;
    const a = this.activity;
    this.outOfMemory = new GpuOutOfMemoryError(a.during, oom.liveBytes, a.plan, a.fix);
    throw this.outOfMemory;
  }

  /**
   * After the GPU's queued work and one turn of the event loop, so that an error WebGPU reports for
   * that work has arrived: throws what checkDevice throws.
   */
  private async settleDevice(): Promise<void> {
    if (this.rt.gpu && !this.lostReason) {
      await this.rt.gpu.allocationsChecked();
      await this.rt.gpu.device.queue.onSubmittedWorkDone();
      await new Promise((r) => setTimeout(r, 0));
    }
    this.checkDevice();
  }

  /**
   * GPU work (a job, a model's, a VAE's or a LoRA's weights) whose out-of-memory is named by
   * `activity` (a job updates it as it goes); checked once the work has ended, either way.
   */
  private async watched<T>(activity: Engine['activity'], work: () => Promise<T>): Promise<T> {
    this.activity = activity;
    try {
      const result = await work();
      await this.settleDevice();
      return result;
    } catch (e) {
      await this.settleDevice();
      throw e;
    } finally {
      this.activity = { during: 'between jobs' };
    }
  }

  /**
   * The CLIP scorer's GPU work (its load, a score), which runs beside the engine's on the same
   * device: an out-of-memory in it is said with what was running, not left for the next job to
   * report as "between jobs".
   */
  async scorerWork<T>(during: string, work: () => Promise<T>): Promise<T> {
    this.checkDevice();
    return this.watched({ during, fix: 'close other programs that use the GPU, or use the built-in scorer' }, work);
  }

  async loadModel(files: ModelFiles, tokenizerFiles: TokenizerFiles, precision: Precision = 'auto', onProgress?: (done: number, total: number) => void): Promise<ModelInfo> {
    if (this.busy) throw new EngineError('busy', 'A generation is running; load the model when it has finished.');
    this.checkDevice();
    this.busy = true;
    this.cancelRequested = false;
    const fix = this.rt.gpu?.adapter.shaderF16 && precision === 'fp32' ? 'load it in fp16 (half the memory) or close other programs that use the GPU' : 'close other programs that use the GPU';
    try {
      return await this.watched({ during: 'while loading the model', fix }, () => this.loadModelNow(files, tokenizerFiles, precision, onProgress));
    } finally {
      this.busy = false;
      this.cancelRequested = false;
    }
  }

  private async loadModelNow(files: ModelFiles, tokenizerFiles: TokenizerFiles, precision: Precision, onProgress?: (done: number, total: number) => void): Promise<ModelInfo> {
    // everything that can refuse the new model runs before the loaded one is let go
    const ckpt = await ModelCheckpoint.open(files);
    const tokenizer = ClipTextTokenizer.fromFiles(tokenizerFiles, ckpt.config.textEncoder.maxPositions);
    if (tokenizer.vocabSize > ckpt.config.textEncoder.vocabSize) {
      throw new EngineError(
        'tokenizer',
        `The tokenizer has ${tokenizer.vocabSize} tokens but the text encoder only ${ckpt.config.textEncoder.vocabSize}: they do not belong together.`,
      );
    }
    const resolved = precision === 'auto' ? (this.rt.gpu?.adapter.shaderF16 ? 'fp16' : 'fp32') : precision;
    if (resolved === 'fp16' && this.rt.backend === 'webgpu' && !this.rt.gpu?.adapter.shaderF16) {
      throw new BadArgumentError('fp16 was requested but this GPU adapter has no shader-f16; use fp32.');
    }
    const dtype = resolved === 'fp16' ? 'float16' : 'float32';
    const specs = graphSpecs(ckpt.config);
    // the graphs' weights go to the GPU (the VAE encoder's, for image to image and inpainting, where
    // the file has it); the token table stays in CPU memory
    const vaeEncoder = specs.vaeEncoder.every((w) => ckpt.locate('vae', w.name));
    const lists = loadedSpecs(specs, vaeEncoder);
    if (this.rt.gpu) {
      const all = [...lists.unet, ...lists.textEncoder, ...lists.vae].map((s) => ({ name: s.name, elements: s.dims.reduce((a, b) => a * b, 1) }));
      checkWeightsFit(all, resolved, this.rt.gpu.adapter);
    }
    this.unload();
    const weights = {
      unet: new WeightSet(this.rt, dtype),
      textEncoder: new WeightSet(this.rt, dtype),
      vae: new WeightSet(this.rt, dtype),
    } as Record<Component, WeightSet>;
    const total = lists.unet.length + lists.textEncoder.length + lists.vae.length + 1;
    let done = 0;
    const tick = () => {
      if (this.cancelRequested) throw new CancelledError();
      this.checkDevice();
      onProgress?.(++done, total);
    };
    let tokens: TokenTable;
    try {
      const table = specs.tokenTable;
      tokens = TokenTable.of(await ckpt.readFloat32('textEncoder', table.name, table.dims), ckpt.config.textEncoder.hidden, resolved);
      tick();
      for (const c of ['textEncoder', 'unet', 'vae'] as Component[]) {
        await weights[c].load(lists[c], { read: (s) => ckpt.readFloat32(c, s.name, s.dims) }, tick);
      }
    } catch (e) {
      for (const w of Object.values(weights)) w.dispose();
      if (this.lostReason) throw new DeviceLostError(this.lostReason);
      throw e;
    }
    const count = (list: { dims: number[] }[]) => list.reduce((a, s) => a + s.dims.reduce((x, y) => x * y, 1), 0);
    const info: ModelInfo = {
      name: ckpt.fileOf('unet').name,
      layout: ckpt.layout,
      config: ckpt.config,
      precision: resolved,
      parameters: { unet: count(lists.unet), textEncoder: count(textEncoderFileSpecs(specs)), vae: count(lists.vae) },
      weightBytes: weights.unet.bytes + weights.textEncoder.bytes + weights.vae.bytes,
      adapter: this.adapter,
      isTestModel: CONFIG_METADATA_KEY in ckpt.fileOf('unet').metadata,
      vaeEncoder,
      inpainting: ckpt.config.unet.inChannels === 9,
    };
    this.model = { ckpt, tokenizer, weights, tokens, precision: resolved, info };
    return info;
  }

  /**
   * A separate VAE file in place of the checkpoint's own (null: the checkpoint's again). The file is
   * checked whole before the VAE in use is let go; the compiled VAE graphs stay (weights are inputs).
   */
  async loadVae(source: ByteSource | null): Promise<ModelInfo> {
    const m = this.model;
    if (!m) throw new BadArgumentError('Load a model before choosing a VAE.');
    if (this.busy) throw new EngineError('busy', 'A model load or a generation is running; choose the VAE when it has finished.');
    this.checkDevice();
    this.busy = true;
    const next = new WeightSet(this.rt, m.weights.vae.dtype);
    try {
      const specs = graphSpecs(m.ckpt.config);
      let encoder: boolean;
      let read: (w: { name: string; dims: number[] }) => Promise<Float32Array>;
      if (source) {
        const file = await VaeFile.open(source, m.ckpt.config.vae);
        encoder = specs.vaeEncoder.every((w) => file.has(w.name));
        read = (w) => file.readFloat32(w.name, w.dims);
      } else {
        encoder = specs.vaeEncoder.every((w) => m.ckpt.locate('vae', w.name));
        read = (w) => m.ckpt.readFloat32('vae', w.name, w.dims);
      }
      const list = loadedSpecs(specs, encoder).vae;
      await this.watched(ALONGSIDE('while loading the VAE'), () => next.load(list, { read }));
      m.weights.vae.dispose();
      m.weights.vae = next;
      const count = (list: { dims: number[] }[]) => list.reduce((a, w) => a + w.dims.reduce((x, y) => x * y, 1), 0);
      const { vaeFile: _, ...rest } = m.info;
      m.info = {
        ...rest,
        vaeEncoder: encoder,
        parameters: { ...m.info.parameters, vae: count(list) },
        weightBytes: m.weights.unet.bytes + m.weights.textEncoder.bytes + next.bytes,
        ...(source ? { vaeFile: source.name } : {}),
      };
      // a plan counts the encoder's weights where they are loaded
      this.plans.clear();
      return m.info;
    } catch (e) {
      next.dispose();
      if (this.lostReason) throw new DeviceLostError(this.lostReason);
      throw e;
    } finally {
      this.busy = false;
    }
  }

  unload(): void {
    for (const s of this.sessions.values()) void releaseGraph(s);
    this.sessions.clear();
    // a plan is the model's (its architecture, its input channels)
    this.plans.clear();
    this.loraWeights?.dispose();
    this.loraWeights = undefined;
    this.loraTable = undefined;
    this.loras.clear();
    this.embeddings.clear();
    if (this.model) for (const w of Object.values(this.model.weights)) w.dispose();
    this.model = undefined;
  }

  /** Open a LoRA for the loaded model and put its factors on the GPU. */
  async loadLora(source: ByteSource): Promise<LoraInfo> {
    const m = this.model;
    if (!m) throw new BadArgumentError('Load a model before adding LoRAs.');
    if (this.busy) throw new EngineError('busy', 'A model load or a generation is running; add the LoRA when it has finished.');
    this.checkDevice();
    this.loraTable ??= loraTargetTable(m.ckpt.config);
    const lora = await openLora(source, m.ckpt.config, this.loraTable, crossAttentionLayers(m.ckpt.config.unet).length);
    this.checkTokenNames(lora.concepts.map((c) => c.name), lora.name);
    const id = `lora-${++this.loraCounter}`;
    await this.watched(ALONGSIDE(`while loading ${lora.name}`), async () => {
      this.loraWeights ??= await LoraWeights.create(this.rt, { unet: m.weights.unet, textEncoder: m.weights.textEncoder }, this.mergeBackend);
      await this.loraWeights.add(id, lora);
    });
    const count = (c: string) => lora.modules.filter((x) => x.target.component === c).length;
    const info: LoraInfo = {
      id,
      name: lora.name,
      format: lora.format,
      rank: lora.rank,
      unetLayers: count('unet'),
      textEncoderLayers: count('textEncoder'),
      keysMatched: lora.modules.length,
      keysUnmatched: lora.unmatched,
      metadata: lora.metadata,
      factorBytes: lora.factorFloats * 4,
      fingerprint: loraFingerprint(lora),
      ...(lora.concepts.length ? { concepts: lora.concepts.map((c) => c.name) } : {}),
    };
    this.loras.set(id, { lora, info });
    return info;
  }

  /** Open a textual-inversion embedding; prompts then use it by its name. */
  async loadEmbedding(source: ByteSource): Promise<EmbeddingInfo> {
    const m = this.model;
    if (!m) throw new BadArgumentError('Load a model before adding embeddings.');
    if (this.busy) throw new EngineError('busy', 'A model load or a generation is running; add the embedding when it has finished.');
    const token = await readTextualInversion(await openTensorFile(source), m.ckpt.config.textEncoder.hidden);
    this.checkTokenNames([token.name], source.name);
    const info: EmbeddingInfo = { id: `emb-${++this.embeddingCounter}`, name: token.name, file: source.name, vectors: token.count, fingerprint: embeddingFingerprint(token) };
    this.embeddings.set(info.id, { token, info });
    return info;
  }

  unloadEmbedding(id: string): void {
    if (this.busy) throw new EngineError('busy', 'A generation is running; remove the embedding when it has finished.');
    this.embeddings.delete(id);
  }

  get loadedEmbeddings(): EmbeddingInfo[] {
    return [...this.embeddings.values()].map((e) => e.info);
  }

  /** A prompt name may stand for one embedding only. */
  private checkTokenNames(names: string[], file: string): void {
    const taken = new Map<string, string>();
    for (const e of this.embeddings.values()) taken.set(e.token.name.toLowerCase(), e.info.file);
    for (const l of this.loras.values()) for (const c of l.lora.concepts) taken.set(c.name.toLowerCase(), l.info.name);
    const clash = names.find((n) => taken.has(n.toLowerCase()));
    if (clash) throw new BadArgumentError(`${file} names the token "${clash}", which ${taken.get(clash.toLowerCase())} already gives; remove that one first.`);
  }

  /** The added tokens of every loaded embedding and ED-LoRA, in load order. */
  private vocabulary(): Vocabulary | undefined {
    const m = this.model!;
    const tokens = [...[...this.embeddings.values()].map((e) => e.token), ...[...this.loras.values()].flatMap((l) => l.lora.concepts)];
    return buildVocabulary(tokens, m.ckpt.config.textEncoder.vocabSize, m.ckpt.config.textEncoder.hidden, crossAttentionLayers(m.ckpt.config.unet).length);
  }

  unloadLora(id: string): void {
    if (this.busy) throw new EngineError('busy', 'A model load or a generation is running; remove the LoRA when it has finished.');
    if (!this.loras.delete(id)) return;
    this.loraWeights?.remove(id);
  }

  get loadedLoras(): LoraInfo[] {
    return [...this.loras.values()].map((l) => l.info);
  }

  /**
   * Merge exactly these LoRAs into the weights (others are taken out), from the pristine values.
   * Undefined when nothing had to change. Composition methods call this between denoising steps.
   */
  async applyLoras(uses: LoraUse[], components: ('unet' | 'textEncoder')[] = ['textEncoder', 'unet']): Promise<MergeStats | undefined> {
    if (!this.loraWeights) {
      if (uses.length) throw new BadArgumentError(`No LoRA with id "${uses[0].lora}" is loaded.`);
      return undefined;
    }
    this.checkDevice();
    return this.loraWeights.apply(
      uses.map((u) => ({ id: u.lora, unet: u.scale, textEncoder: u.textEncoderScale ?? u.scale })),
      components,
    );
  }

  /** |F| of a batch of images [count, height, width] (powers of two): the WGSL FFT on the GPU, float64 on the wasm backend. */
  private async magnitudes(images: Float32Array, count: number, height: number, width: number): Promise<ArrayLike<number>> {
    const gpu = this.rt.gpu;
    if (!gpu) return cpuSpectrumMagnitudes(images, count, height, width);
    const kernel = await (this.spectrum ??= SpectrumKernel.create(gpu.device));
    const input = uploadBuffer(gpu.device, images, GPUBufferUsage.STORAGE);
    try {
      return await kernel.magnitudes(input, { batch: count, height, width });
    } finally {
      input.destroy();
    }
  }

  cancel(): void {
    if (this.busy) this.cancelRequested = true;
  }

  /** Set once the EP refused a fused attention node in one of this engine's jobs: from then on, chunked. */
  private attentionFallback?: AttentionChoice;

  /**
   * How this engine's graphs compute attention: checked once per runtime (see attention-check.ts), or
   * chunked once the EP refused a fused node at a shape the check did not try.
   */
  async attentionChoice(): Promise<AttentionChoice> {
    return this.attentionFallback ?? chooseAttention(this.rt);
  }

  /**
   * The EP refused a MultiHeadAttention node of this job's graphs (creating its session or running
   * it): every later graph is built in query chunks. The sessions go, since their keys do not name
   * the form (the plans do; they go too, as none made for the fused form will be asked for again).
   */
  private async fallBackFromFused(e: Error): Promise<AttentionChoice> {
    this.attentionFallback = chunkedAfterRefusal(this.rt.backend, e);
    const stale = [...this.sessions.values()];
    this.sessions.clear();
    this.plans.clear();
    await Promise.allSettled(stale.map((s) => releaseGraph(s)));
    return this.attentionFallback;
  }

  /** No attention chunk above 128 MiB, nor above what the adapter binds. */
  private attentionBufferLimit(): number {
    return Math.min(DEFAULT_BUFFER_LIMIT, this.rt.gpu ? bufferLimit(this.rt.gpu.adapter) : DEFAULT_BUFFER_LIMIT);
  }

  private readonly plans = new Map<string, MemoryPlan>();

  /** The memory plan a job would run under on this engine, allocating nothing. */
  async planJob(job: GenerateJob): Promise<MemoryPlan> {
    if (!this.model) throw new BadArgumentError('Load a model before planning a job.');
    return this.plan(job, jobLoraCount(job), await this.attentionChoice());
  }

  /** Refuse a job whose plan still holds a buffer above what the adapter binds (gpu/limits.ts); `encodes` as `plan`'s. */
  private checkFits(job: GenerateJob, attention: AttentionChoice, encodes?: boolean): void {
    if (!this.rt.gpu) return;
    const loras = jobLoraCount(job);
    checkJobFits(job.width, job.height, this.model!.precision, this.rt.gpu.adapter, (width, height, precision) => {
      const p = this.plan({ ...job, width, height }, loras, attention, { precision, encodes });
      return { bytes: p.largestBufferBytes, what: p.largestBuffer };
    });
  }

  /**
   * Whether the job's denoising loop can keep its latents on the GPU, as far as the job says (the
   * pipeline's `gpuLoopRefusal` has the last word; the CFG halves of a tight plan also bring it back):
   * WebGPU, not refused by the job, nothing in its composition or layout that the CPU must read.
   */
  private loopMayStayOnGpu(job: GenerateJob, comp: ResolvedComposition): boolean {
    const layout = job.layout?.boxes.length ? resolveLayout(job.layout) : undefined;
    return this.rt.backend === 'webgpu' && job.latentsOnGpu !== false && !compositionNeedsCpu(comp) && !layout?.guidance && !layout?.reinit;
  }

  /**
   * The job's memory plan, from its graphs (kept per size, precision, LoRA count and layout).
   * `captured`: the UNet replays a captured graph (its activations stay); `encodes`: the pass encodes
   * a picture (by default where the job has a start picture or the model inpaints; the hires fix's
   * picture upscaler encodes for its second pass).
   */
  private plan(job: GenerateJob, loras: number, attention: AttentionChoice, o: { captured?: boolean; precision?: 'fp16' | 'fp32'; encodes?: boolean } = {}): MemoryPlan {
    const m = this.model!;
    const captured = o.captured ?? false;
    const precision = o.precision ?? m.precision;
    const rank = Math.max(0, ...[...this.loras.values()].map((l) => l.info.rank ?? 0));
    const comp = resolveComposition(job.composition, job.steps, job.loras?.length ?? 0);
    // LoRA sets a step runs or a job keeps deep features for: one merged set, or each LoRA alone
    // (Composite, Switch, CMLoRA)
    const runs = Math.max(1, loras);
    const sets = ['none', 'merge'].includes(comp.method) ? 1 : runs;
    const cached = comp.method === 'cmlora' && comp.cache === 'deep' ? runs : comp.deepCacheInterval > 1 ? sets : 0;
    // a loop mixing several predictions on the GPU keeps one per run, the mix, and CMLoRA's cached offsets
    const kept = compositionMixes(comp) && this.loopMayStayOnGpu(job, comp) ? sets + 1 + (comp.method === 'cmlora' && comp.cache === 'prediction' ? runs : 0) : 0;
    const resolved = job.layout?.boxes.length ? resolveLayout(job.layout) : undefined;
    const layout = resolved && { boxes: job.layout!.boxes.length, injection: resolved.injection, isolation: resolved.isolation, regionOutput: resolved.regionOutput, reinit: resolved.reinit, guidance: !!resolved.guidance };
    // a start picture, or an inpainting model's masked one, goes through the encoder before the loop
    const encodesPicture = o.encodes ?? (!!job.init || m.info.inpainting);
    const key = JSON.stringify([job.width, job.height, precision, job.cfg > 1, attention.form, loras, rank, cached, kept, job.memoryBudget ?? null, captured, layout ?? null, encodesPicture]);
    let p = this.plans.get(key);
    if (!p) {
      p = planMemory(m.ckpt.config, {
        width: job.width,
        height: job.height,
        precision,
        cfg: job.cfg > 1,
        fusedAttention: attention.form === 'fused',
        bufferLimit: this.attentionBufferLimit(),
        budgetBytes: job.memoryBudget,
        loras: { count: loras, rank },
        cachedFeatures: cached,
        keptPredictions: kept,
        transposesConvWeights: this.rt.backend === 'webgpu',
        pointwiseAsIs: CONV_LAYOUT === 'NCHW',
        conv: this.rt.conv,
        capturedUnet: captured,
        layout,
        vaeEncoder: m.info.vaeEncoder,
        encodesPicture,
      });
      // the oldest plans go first past a bound (a refusal's bisection alone adds a handful)
      if (this.plans.size >= PLANS_KEPT) this.plans.delete(this.plans.keys().next().value!);
      this.plans.set(key, p);
    }
    return p;
  }

  /** `captured`: outputs on the GPU and graph capture, with buffers of its own for its inputs and outputs (WebGPU). */
  private async graph(key: string, build: () => GraphBuilder, outputs: 'cpu' | 'gpu' | 'captured' = 'cpu'): Promise<CompiledGraph> {
    const outputsOnGpu = outputs !== 'cpu' && this.rt.backend === 'webgpu';
    const capture = outputs === 'captured' && outputsOnGpu;
    if (outputsOnGpu) key += capture ? ':captured' : ':gpu-out';
    this.jobGraphs.add(key);
    const hit = this.sessions.get(key);
    if (hit) {
      // the map's order is the order of use: move it to the end
      this.sessions.delete(key);
      this.sessions.set(key, hit);
      return hit;
    }
    const g = build();
    for (const v of capture ? [...g.inputs, ...g.outputs] : []) if (v.type !== 'float32') throw new Error(`a captured graph's ${v.name} is ${v.type}, not float32`);
    // NCHW: the WebGPU EP then reads 1x1 convolution weights as they are and inserts no layout
    // transposes around convolutions (bench:gpu counts them: 894 -> 763 dispatches per tiny UNet run)
    const session = await this.rt.ort.InferenceSession.create(g.encode(), { ...sessionOptions(this.rt, { layout: CONV_LAYOUT, outputsOnGpu }), ...(capture ? { enableGraphCapture: true } : {}) });
    const compiled: CompiledGraph = { session, weightNames: [...g.weights.keys()], batched: new Set(g.inputs.filter((i) => i.dims[0] === 1 && i.dims.length > 1).map((i) => i.name)), macs: multiplyAdds(g), outputsOnGpu };
    if (capture) {
      // buffers onnxruntime allocated, which its binding keeps registered (see ortGpuZeros)
      const buffers = async (values: { name: string; dims: number[] }[]) => {
        const made: Record<string, OrtNs.Tensor> = {};
        for (const v of values) made[v.name] = await ortGpuZeros(this.rt, v.dims);
        return made;
      };
      compiled.captured = { inputs: await buffers(g.inputs), outputs: await buffers(g.outputs), recorded: false };
    }
    this.sessions.set(key, compiled);
    if (capture) await this.releaseOtherCaptures(key);
    for (const [k, s] of this.sessions) {
      if (this.sessions.size <= this.sessionsKept) break;
      if (this.jobGraphs.has(k)) continue;
      this.sessions.delete(k);
      await releaseGraph(s);
    }
    return compiled;
  }

  /**
   * A captured graph keeps its activations and its own input and output buffers between runs, and the
   * plan counts one: the UNet the running pass loops with. Any other captured graph (another size's,
   * or the hires fix's first pass's once its second pass starts) goes as this one is made, so no two
   * are ever kept.
   */
  private async releaseOtherCaptures(key: string): Promise<void> {
    for (const [k, s] of this.sessions) {
      if (!s.captured || k === key) continue;
      this.sessions.delete(k);
      await releaseGraph(s);
    }
  }

  /** The loop's view of a captured UNet: its first run records (then the work is submitted), later runs replay. */
  private capturedUnet(g: CompiledGraph, weights: WeightSet): CapturedUnet {
    const io = g.captured!;
    return {
      inputs: io.inputs,
      outputs: io.outputs,
      run: async () => {
        await runGraph(g, weights, io.inputs, io.outputs);
        if (io.recorded) return;
        io.recorded = true;
        // a replay submits its work as it ends; the recording run may leave it queued
        await flushOrt(this.rt);
      },
      flush: () => flushOrt(this.rt),
    };
  }

  async generate(job: GenerateJob, onProgress?: (e: ProgressEvent) => void): Promise<GenerateResult> {
    if (this.busy) throw new EngineError('busy', 'A generation is already running; wait for it or cancel it first.');
    this.checkDevice();
    if (!this.model) throw new BadArgumentError('No model is loaded; choose a checkpoint first.');
    validateJob(job);
    for (const u of [...(job.loras ?? []), ...(job.layout?.boxes.flatMap((b) => b.loras) ?? [])]) {
      if (!this.loras.has(u.lora)) throw new BadArgumentError(`No LoRA with id "${u.lora}" is loaded; add it first.`);
    }
    const info = this.model.info;
    const needsEncoder = job.init ? 'a start picture' : job.hires?.upscaler === 'image' ? "the hires fix's picture upscaler" : info.inpainting ? 'an inpainting model' : undefined;
    if (needsEncoder && !info.vaeEncoder) throw new BadArgumentError(`This model's VAE has no encoder, which ${needsEncoder} needs; choose a VAE file that has one (e.g. sd-vae-ft-mse).`);
    if (info.inpainting && job.layout?.boxes.length) {
      const l = resolveLayout(job.layout);
      if (l.guidance || l.reinit) throw new BadArgumentError('Gradient guidance and latent re-initialisation work on a 4-channel UNet; turn them off for an inpainting model.');
    }
    // busy before the first await: a second job sent meanwhile is refused, not run alongside
    this.busy = true;
    let attention: AttentionChoice;
    try {
      attention = await this.attentionChoice();
      this.checkFits(job, attention);
    } catch (e) {
      this.busy = false;
      throw e;
    }
    this.cancelRequested = false;
    // the step or phase a GPU error came in, for its message
    const watch = (e: ProgressEvent) => {
      this.activity.during = e.phase === 'denoise' || e.phase === 'hires' ? `after step ${e.step} of ${e.total}${e.phase === 'hires' ? " of the hires fix's pass" : ''}` : e.phase === 'decode' ? 'while decoding the picture' : e.phase === 'done' ? 'at the end of this job' : `while this job prepared (${e.phase})`;
      onProgress?.(e);
    };
    const attempt = (a: AttentionChoice) => {
      this.jobGraphs.clear();
      this.rt.gpu?.memory.resetPeak();
      // a buffer onnxruntime could not allocate leaves no error in its results: only the device says
      return this.watched({ during: 'while this job started' }, () => this.run(job, a, watch));
    };
    try {
      try {
        return await attempt(attention);
      } catch (e) {
        if (attention.form !== 'fused' || !refusedFusedAttention(e)) throw e;
        attention = await this.fallBackFromFused(e as Error);
        if (this.cancelRequested) throw new CancelledError();
        this.checkFits(job, attention);
        // the job again from its start, in chunks: the page is told its steps start over
        watch({ phase: 'text', step: 0, total: job.steps, elapsedMs: 0, restart: 'The GPU refused fused attention for this picture; starting again with attention in chunks.' });
        return await attempt(attention);
      }
    } finally {
      this.busy = false;
      this.cancelRequested = false;
    }
  }

  /** One pass of the pipeline at the job's size, with its graphs: text to image, or from `extra.init`. */
  private async pass(job: GenerateJob, attention: AttentionChoice, onProgress: ((e: ProgressEvent) => void) | undefined, extra: Pick<PipelineParts, 'init' | 'inpaintInput' | 'loopPhase'> = {}, encodes?: boolean) {
    const m = this.model!;
    const cfg = m.ckpt.config;
    const dtype = m.precision === 'fp16' ? 'float16' : 'float32';
    const batch = job.cfg > 1 ? 2 : 1;
    const lh = job.height / 8;
    const lw = job.width / 8;
    const clipSkip = job.clipSkip ?? 1;
    if (clipSkip < 1 || clipSkip > cfg.textEncoder.layers) throw new BadArgumentError(`clip skip must be 1 to ${cfg.textEncoder.layers}.`);
    const t0 = performance.now();
    const forms: GraphOptions = { attention: attention.form, bufferLimit: this.attentionBufferLimit(), norm: this.rt.norm, conv: this.rt.conv };
    const loraCount = jobLoraCount(job);
    const comp = resolveComposition(job.composition, job.steps, job.loras?.length ?? 0);
    // graph capture where the loop runs on the GPU with nothing but the UNet's three inputs changing:
    // one prediction per step (no Composite or CMLoRA mix, no deep-feature cache), no layout, no blend.
    // Its session keeps the UNet's activations through the decode, and its plan counts them. Without a
    // budget that changes none of the plan's choices (only a buffer above the limit does); with one,
    // the job is captured where that plan still fits it with the UNet's batch whole (the decode perhaps
    // in smaller tiles), and otherwise runs uncaptured on the plain plan.
    const capturable = this.rt.backend === 'webgpu' && job.latentsOnGpu !== false && !job.layout?.boxes.length && !extra.init?.blend && job.graphCapture !== false && !compositionMixes(comp);
    const plain = this.plan(job, loraCount, attention, { encodes });
    const captured = capturable && !plain.cfgHalves ? this.plan(job, loraCount, attention, { captured: true, encodes }) : undefined;
    const capture = !!captured && (job.memoryBudget === undefined || (captured.fits && !captured.cfgHalves));
    const plan = capture ? captured! : plain;
    // the plan's CFG halves: the UNet graphs at batch 1, each guided run made of two
    const unetBatch = plan.cfgHalves ? 1 : batch;
    const vocab = this.vocabulary();
    const te = await this.graph(`te:${clipSkip}`, () => buildTextEncoder(cfg.textEncoder, { batch: 1, seqLen: cfg.textEncoder.maxPositions, dtype, clipSkip, ...forms }));
    const resolved = job.layout?.boxes.length ? resolveLayout(job.layout) : undefined;
    const layout = resolved ? layoutGraphOptions(cfg.unet, lh, lw, job.layout!.boxes.length, resolved) : undefined;
    const layoutKey = layout ? `${layout.regions}:${layout.isolation}:${layout.regionOutputs}` : '';
    // a prompt with an ED-LoRA token gives each cross-attention layer its own context (a layout's
    // regions carry theirs as keys and values)
    const prompts = [job.prompt, job.negative, ...(job.layout && !resolved?.injection ? job.layout.boxes.map((b) => b.prompt) : [])];
    const contextLayers = !layout && vocab && prompts.some((p) => m.tokenizer.encode(p, vocab.added).ids.some((id) => vocab.layerwise.has(id))) ? vocab.layers : 1;
    // A1111's long prompts and BREAK: the context holds as many 77-token chunks as the longer prompt
    // needs (a layout's regions and a layer-wise context read one)
    const contextChunks = layout || contextLayers > 1 ? 1 : Math.min(MAX_CONTEXT_CHUNKS, Math.max(...[job.prompt, job.negative].map((p) => (hasEmphasis(p) || m.tokenizer.encode(p, vocab?.added).truncated ? m.tokenizer.encodeChunks(parseEmphasis(p).runs, vocab?.added).chunks.length : 1))));
    const unetOptions = { batch: unetBatch, latentH: lh, latentW: lw, textLen: cfg.textEncoder.maxPositions * contextChunks, dtype, ...layout, ...(contextLayers > 1 ? { contextLayers } : {}), ...forms } as const;
    const unetKey = `unet:${unetBatch}:${lh}x${lw}:${layoutKey}:${contextLayers}:${contextChunks}`;
    // the denoising loop keeps latents on the GPU where the UNet runs whole (not in CFG halves)
    const resident = this.rt.backend === 'webgpu' && unetBatch === batch && job.latentsOnGpu !== false;
    this.activity.plan = plan;
    const buildMain = () => buildUNet(cfg.unet, unetOptions);
    const unet = await this.graph(unetKey, buildMain, capture ? 'captured' : resident ? 'gpu' : 'cpu');
    // a captured UNet runs only on its own buffers: any other run (none is expected) takes the plain one
    const plainUnet = async () => (unet.captured ? this.graph(unetKey, buildMain, 'gpu') : unet);
    // inpainting: the step graph blends the picture back in (4 channels) or joins the UNet's extra channels (9)
    const stepOptions = { batch, channels: cfg.unet.outChannels, height: lh, width: lw, previewFactor: previewFactor(lh, lw), blend: !!extra.init?.blend, extraChannels: cfg.unet.inChannels - cfg.unet.outChannels } as const;
    const stepGraph = resident ? await this.graph(`step:${JSON.stringify(stepOptions)}`, () => buildStepGraph(stepOptions), 'gpu') : undefined;
    // the deep-feature cache's two graphs, when the job's composition can use them
    const deep = comp.deepCacheInterval > 1 || (comp.method === 'cmlora' && ((comp.cache === 'deep' && comp.cacheInterval !== 1) || comp.research));
    // (their outputs on the GPU where the loop keeps the kept features there)
    const deepOutputs = resident && this.loopMayStayOnGpu(job, comp) ? 'gpu' : 'cpu';
    const unetRecord = deep ? await this.graph(`${unetKey}:deep-full`, () => buildUNet(cfg.unet, { ...unetOptions, deepCache: 'full' }), deepOutputs) : undefined;
    const unetReuse = deep ? await this.graph(`${unetKey}:deep-shallow`, () => buildUNet(cfg.unet, { ...unetOptions, deepCache: 'shallow' }), deepOutputs) : undefined;
    // the cut UNet: its maps for guidance and the re-initialisation probe, its backward pass for guidance
    const guideLayers = resolved && (resolved.guidance || resolved.reinit) ? guidanceLayers(cfg.unet, lh, lw) : undefined;
    const guideKey = `${lh}x${lw}:${layoutKey}`;
    // guidance differentiates through its attention: never fused (no gradient rule), chunked under the limit
    const guideOptions = { batch: 1, latentH: lh, latentW: lw, textLen: cfg.textEncoder.maxPositions, dtype, regions: layout?.regions, isolation: layout?.isolation, regionOutputs: layout?.regionOutputs, attention: 'chunked', bufferLimit: forms.bufferLimit, norm: forms.norm } as const;
    const guideMaps = guideLayers ? await this.graph(`guide-maps:${guideKey}`, () => buildGuidanceGraph(cfg.unet, guideOptions, guideLayers, false)) : undefined;
    const guideGrad = guideLayers && resolved?.guidance ? await this.graph(`guide-grad:${guideKey}`, () => buildGuidanceGraph(cfg.unet, guideOptions, guideLayers, true)) : undefined;
    const kv = layout ? await this.graph('cross-kv', () => buildCrossKV(cfg.unet, { batch: 1, textLen: cfg.textEncoder.maxPositions, dtype })) : undefined;
    // the whole decoder, or (where it does not fit) the staged one in tiles, its graphs made as it runs
    const vae = plan.vaeTile ? undefined : await this.graph(`vae:${lh}x${lw}`, () => buildVaeDecoder(cfg.vae, { batch: 1, latentH: lh, latentW: lw, dtype, ...forms }));
    const sessionCreateMs = performance.now() - t0;
    // the job's LoRAs, then each box's (the pipeline refers to them by this order)
    const uses = [...(job.loras ?? []), ...(job.layout?.boxes.flatMap((b) => b.loras) ?? [])];
    const used = uses.map((u) => ({ use: u, ...this.loras.get(u.lora)! }));
    // a LoRA's profile depends on it, the model and the settings of its profiling image, not on the set
    const profileKey = (i: number, p: { prompt: string; negative: string; steps: number; cutoff: number }) =>
      JSON.stringify([1, used[i].info.fingerprint, used[i].use.scale, used[i].use.textEncoderScale ?? used[i].use.scale, m.info.name, m.precision, job.width, job.height, job.scheduler, job.cfg, clipSkip, p.prompt, p.negative, p.steps, p.cutoff]);
    const regionOut = new RegionOutputs(this.rt, m.weights.unet, crossAttentionLayers(cfg.unet).map((l) => l.name));
    try {
      const result = await denoise(
        {
          ort: this.rt.ort,
          config: cfg,
          tokenizer: m.tokenizer,
          textEncoder: (feeds) => runGraph(te, m.weights.textEncoder, feeds),
          tokens: m.tokens,
          vocabulary: vocab,
          contextLayers,
          contextChunks,
          loraConcepts: used.map((u) => u.lora.concepts.map((c) => c.name)),
          unet: async (feeds, variant = 'full') => {
            const g = variant === 'record' ? unetRecord! : variant === 'reuse' ? unetReuse! : await plainUnet();
            if (unetBatch < batch) return runHalves(this.rt.ort, g, m.weights.unet, feeds);
            const out = await runGraph(g, m.weights.unet, feeds);
            return g.outputsOnGpu ? download(this.rt.ort, out) : out;
          },
          gpuLoop: stepGraph
            ? {
                unet: async (feeds, fetches, variant = 'full') => runGraph(variant === 'record' ? unetRecord! : variant === 'reuse' ? unetReuse! : await plainUnet(), m.weights.unet, feeds, fetches),
                combine: async (count, dims, feeds, fetches) => runGraph(await this.graph(`combine:${count}:${dims.join('x')}`, () => buildCombineGraph(count, dims), 'gpu'), m.weights.unet, feeds, fetches),
                measure: async (o, feeds, fetches) => runGraph(await this.graph(`measure:${JSON.stringify(o)}`, () => buildMeasureGraph(o), o.rows ? 'gpu' : 'cpu'), m.weights.unet, feeds, fetches),
                ...(unet.captured ? { captured: this.capturedUnet(unet, m.weights.unet) } : {}),
                step: (feeds, fetches) => runGraph(stepGraph, m.weights.unet, feeds, fetches),
                buffer: (dims) => gpuTensor(this.rt, dims),
                write: (t, data) => writePadded(this.rt.gpu!.device, t.gpuBuffer as GPUBuffer, data),
                read: async (t) => {
                  readbacks += 1;
                  return (await t.getData()) as Float32Array;
                },
              }
            : undefined,
          gpuLoopUnavailable:
            this.rt.backend !== 'webgpu' ? 'the wasm EP computes on the CPU' : unetBatch < batch ? 'the memory plan runs the CFG halves one after the other' : job.latentsOnGpu === false ? 'the job asked for the CPU loop' : undefined,
          readbacks: () => readbacks,
          ...(this.rt.gpu ? { dispatches: () => this.rt.gpu!.work.dispatches } : {}),
          unetMultiplyAdds: { full: unet.macs, record: unetRecord?.macs ?? unet.macs, reuse: unetReuse?.macs ?? 0 },
          guidanceMultiplyAdds: { maps: guideMaps?.macs ?? 0, grad: guideGrad?.macs ?? 0 },
          vae: vae
            ? (feeds) => runGraph(vae, m.weights.vae, feeds)
            : async (feeds) => {
                const latent = { data: feeds.latent.data as Float32Array, c: feeds.latent.dims[1], h: lh, w: lw };
                const picture = await decodeStaged(cfg.vae, latent, { dtype, ...forms, tile: plan.vaeTile! }, this.stagedRunner(m.weights.vae));
                return { image: new this.rt.ort.Tensor('float32', picture.data, [1, 3, picture.h, picture.w]) };
              },
          isCancelled: () => this.cancelRequested,
          checkDevice: () => this.checkDevice(),
          crossKV: kv
            ? async (context) => {
                const out = await runGraph(kv, m.weights.unet, { encoder_hidden_states: new this.rt.ort.Tensor('float32', context, [1, cfg.textEncoder.maxPositions, cfg.unet.crossAttentionDim]) });
                return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
              }
            : undefined,
          regionOutputs: async (region) => regionOut.copy(region),
          guidance: guideLayers
            ? { layers: guideLayers, maps: (feeds) => runGraph(guideMaps!, m.weights.unet, feeds), ...(guideGrad ? { grad: (feeds: Record<string, OrtNs.Tensor>) => runGraph(guideGrad, m.weights.unet, feeds) } : {}) }
            : undefined,
          setLoras: async (loras, component) => (await this.applyLoras(loras.map((i) => uses[i]), [component]))?.ms,
          magnitudes: (images, count, height, width) => this.magnitudes(images, count, height, width),
          loraNames: used.map((u) => u.info.name),
          loraCategories: used.map((u) => (isLoraCategory(u.use.category) ? u.use.category : guessCategory(u.info.name, u.info.metadata.tags.map((t) => t.tag)))),
          loraTriggers: used.map((u) => u.use.trigger),
          profileStore: this.profileStore,
          profileKey,
          ...extra,
        },
        job,
        onProgress,
      );
      return { result, plan, sessionCreateMs, used };
    } finally {
      regionOut.dispose();
    }
  }

  /** The job: its start picture prepared, the first pass, the inpainting overlay, and the hires fix's second pass. */
  private async run(job: GenerateJob, attention: AttentionChoice, onProgress?: (e: ProgressEvent) => void): Promise<GenerateResult> {
    const m = this.model!;
    const t0 = performance.now();
    const init = job.init;
    const W = job.width;
    const H = job.height;
    const blur = init?.maskBlur ?? DEFAULT_MASK_BLUR;
    // A1111's "only masked": the mask's surroundings cut out, inpainted at the job's size, pasted back
    if (init?.mask && init.onlyMaskedPadding !== undefined) {
      const region = onlyMaskedRegion(init.mask, W, H, init.onlyMaskedPadding);
      if (region && (region.width < W || region.height < H)) {
        const image = resizeBicubic(init.image, W, H, region);
        const mask = cropMask(init.mask, W, region, W, H);
        const inner = await this.run({ ...job, init: { ...init, image, mask, onlyMaskedPadding: undefined } }, attention, onProgress);
        const back = resizeBicubic(inner.image, region.width, region.height);
        const image2 = overlay(init.image, paste(init.image, back, region), blurMask(init.mask, W, H, blur));
        return { image: image2, report: { ...inner.report, init: { ...inner.report.init!, region } } };
      }
    }
    const inpaintingModel = m.ckpt.config.unet.inChannels === 9;
    const lh = H / 8;
    const lw = W / 8;
    let encodeMs = 0;
    const extra: Pick<PipelineParts, 'init' | 'inpaintInput'> = {};
    // the blurred mask: the latent grid's mask and the final overlay both read it
    const blurred = init?.mask ? blurMask(init.mask, W, H, blur) : undefined;
    if (init || inpaintingModel) {
      const e0 = performance.now();
      onProgress?.({ phase: 'encode', step: 0, total: job.steps, elapsedMs: 0 });
      // text to image with an inpainting model: everything repaints, over a mid-grey picture (as A1111)
      const planes = init ? pictureToPlanes(init.image) : new Float32Array(3 * W * H);
      if (init) {
        const latent = await this.encodePicture(planes, job, attention);
        extra.init = { latent, strength: init.strength, ...(blurred && !inpaintingModel ? { blend: latentMask(blurred, W, H) } : {}) };
      }
      if (inpaintingModel) {
        const mask = init?.mask ?? new Uint8Array(W * H).fill(255);
        const masked = await this.encodePicture(maskedPlanes(planes, mask), job, attention);
        extra.inpaintInput = { mask: latentMask(blurred ?? blurMask(mask, W, H, 0), W, H), masked };
      }
      encodeMs = performance.now() - e0;
    }
    const { result, plan, sessionCreateMs, used } = await this.pass(job, attention, onProgress, extra);
    let image = result.image;
    // the kept pixels back exactly, the blurred mask's edge blended (A1111's overlay)
    if (init && blurred) image = overlay(init.image, image, blurred);
    const warnings = [...result.warnings];
    // a plan that cannot meet the job's memory limit runs anyway, and says so (each pass its own)
    const overBudget = (p: MemoryPlan, what: string) => {
      if (job.memoryBudget === undefined || p.peakBytes <= job.memoryBudget) return;
      warnings.push(`The GPU memory limit is ${bytesText(job.memoryBudget)}, but ${what} needs at least ${bytesText(p.peakBytes)} (${p.vaeTile ? 'with the picture decoded in tiles' : "the model's weights and the UNet's work at this size"}); it ran anyway. A smaller picture or fewer LoRAs need less.`);
    };
    overBudget(plan, 'this job');
    let hires: HiresReport | undefined;
    if (job.hires) {
      const h0 = performance.now();
      const fix = job.hires;
      const size = hiresSize(job);
      const job2: GenerateJob = { ...job, width: size.width, height: size.height, steps: fix.steps ?? job.steps, hires: undefined, init: undefined, layout: scaleLayout(job.layout, size.width / W, size.height / H) };
      const upscaler = fix.upscaler ?? 'latent';
      // the second pass encodes the upscaled picture (and an inpainting model's grey one)
      const encodes2 = upscaler === 'image' || inpaintingModel;
      this.checkFits(job2, attention, encodes2);
      const C = m.ckpt.config.unet.outChannels;
      const latent =
        upscaler === 'latent'
          ? resizeBilinear(result.latent, C, lh, lw, size.height / 8, size.width / 8)
          : await this.encodePicture(pictureToPlanes(resizeBicubic(image, size.width, size.height)), job2, attention);
      const extra2: Pick<PipelineParts, 'init' | 'inpaintInput' | 'loopPhase'> = { init: { latent, strength: fix.strength }, loopPhase: 'hires' };
      if (inpaintingModel) {
        const grey = new Float32Array(3 * size.width * size.height);
        extra2.inpaintInput = { mask: new Float32Array((size.width / 8) * (size.height / 8)).fill(1), masked: await this.encodePicture(grey, job2, attention) };
      }
      const second = await this.pass(job2, attention, onProgress, extra2, encodes2);
      overBudget(second.plan, "the hires fix's pass");
      image = second.result.image;
      warnings.push(...second.result.warnings.filter((w) => !warnings.includes(w)));
      hires = {
        width: size.width,
        height: size.height,
        upscaler,
        strength: fix.strength,
        steps: job2.steps,
        stepsRun: second.result.stepsRun,
        decodeTiles: second.plan.vaeTile ? tileCount(size, second.plan.vaeTile) : 1,
        ms: performance.now() - h0,
      };
    }
    const timings = { ...result.timings, sessionCreateMs, totalMs: performance.now() - t0 };
    return {
      image,
      report: {
        steps: job.steps,
        unetEvaluations: result.unetEvaluations,
        unetMultiplyAdds: result.unetMultiplyAdds,
        seed: job.seed,
        scheduler: job.scheduler,
        width: job.width,
        height: job.height,
        cfg: job.cfg,
        prompt: job.prompt,
        negative: job.negative,
        precision: m.precision,
        adapter: this.adapter,
        timingsMs: timings,
        gpuBytesAllocated: this.rt.gpu?.memory.peak ?? 0,
        gpuLargestBufferBytes: this.rt.gpu?.memory.largest ?? 0,
        memoryPlan: {
          ...plan,
          attention: attention.form,
          attentionReason: attention.reason,
        },
        readbacksPerStep: result.loopReadbacks / Math.max(1, result.stepsRun),
        ...(result.loopDispatches === undefined ? {} : { dispatchesPerStep: result.loopDispatches / Math.max(1, result.stepsRun) }),
        latentsOnGpu: result.latentsOnGpu,
        ...(result.latentsOnGpuReason ? { latentsOnGpuReason: result.latentsOnGpuReason } : {}),
        graphCaptured: result.graphCaptured,
        groupNorm: this.rt.norm,
        warnings,
        loras: used.map((u) => ({ name: u.info.name, format: u.info.format, scale: u.use.scale, textEncoderScale: u.use.textEncoderScale ?? u.use.scale })),
        loraKeysMatched: used.reduce((a, u) => a + u.info.keysMatched, 0),
        loraKeysUnmatched: used.flatMap((u) => u.info.keysUnmatched.map((k) => `${u.info.name}: ${k.key} (${k.reason})`)),
        mergeMs: result.mergeMs,
        composition: result.composition,
        boxes: result.boxes,
        ...(result.layout ? { layout: result.layout } : {}),
        ...(result.guidance ? { guidance: result.guidance } : {}),
        ...(init ? { init: { strength: init.strength, startStep: result.startStep, stepsRun: result.stepsRun, mode: inpaintingModel && init.mask ? 'inpaint-model' : init.mask ? 'inpaint' : 'img2img', ...(init.mask ? { maskBlur: blur } : {}), encodeMs } as InitReport } : {}),
        ...(hires ? { hires } : {}),
      },
    };
  }

  /**
   * A picture [3, H, W] in [-1, 1] through the VAE encoder: the scaled latent [C, H/8, W/8], in the
   * memory plan's tiles (the decoder's, in pixels) where the whole would not fit.
   */
  private async encodePicture(planes: Float32Array, job: GenerateJob, attention: AttentionChoice): Promise<Float32Array> {
    const m = this.model!;
    const cfg = m.ckpt.config;
    const lh = job.height / 8;
    const lw = job.width / 8;
    const tile = this.plan(job, jobLoraCount(job), attention, { encodes: true }).vaeTile;
    const dtype = m.precision === 'fp16' ? 'float16' : 'float32';
    const forms: GraphOptions = { attention: attention.form, bufferLimit: this.attentionBufferLimit(), norm: this.rt.norm, conv: this.rt.conv };
    if (tile) return (await encodeStaged(cfg.vae, { data: planes, c: 3, h: job.height, w: job.width }, { dtype, ...forms, tile }, this.stagedRunner(m.weights.vae))).data;
    const enc = await this.graph(`vae-enc:${lh}x${lw}`, () => buildVaeEncoder(cfg.vae, { batch: 1, latentH: lh, latentW: lw, dtype, ...forms }));
    return (await runGraph(enc, m.weights.vae, { image: new this.rt.ort.Tensor('float32', planes, [1, 3, job.height, job.width]) })).latent.data as Float32Array;
  }

  /** Runs the staged VAE's graphs (compiled once, kept with the job's others) on CPU maps. */
  private stagedRunner(weights: WeightSet): RunGraph {
    return async (key, build, feeds) => {
      const g = await this.graph(key, build);
      const tensors = Object.fromEntries(Object.entries(feeds).map(([name, f]) => [name, new this.rt.ort.Tensor('float32', f.data, f.dims)]));
      const out = await runGraph(g, weights, tensors);
      return out[g.session.outputNames[0]].data as Float32Array;
    };
  }
}

/**
 * Box regions' own cross-attention output projections: copies of the UNet's current `to_out` weights
 * (taken while a region's LoRAs are merged), as session inputs, kept for one job.
 */
class RegionOutputs {
  private readonly buffers: GPUBuffer[] = [];

  constructor(private readonly rt: Runtime, private readonly weights: WeightSet, private readonly layers: string[]) {}

  async copy(region: number): Promise<Record<string, OrtNs.Tensor>> {
    const out: Record<string, OrtNs.Tensor> = {};
    const device = this.rt.gpu?.device;
    const encoder = device?.createCommandEncoder();
    for (const layer of this.layers) {
      for (const part of ['weight', 'bias'] as const) {
        const name = `${layer}.to_out.0.${part}`;
        const t = this.weights.tensors.get(name)!;
        const src = this.weights.buffers.get(name);
        if (src && device && encoder) {
          const dst = device.createBuffer({ size: src.size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
          this.buffers.push(dst);
          encoder.copyBufferToBuffer(src, 0, dst, 0, src.size);
          out[regionOutInputName(region, layer, part)] = this.rt.ort.Tensor.fromGpuBuffer(dst, { dataType: this.weights.dtype, dims: t.dims });
        } else {
          const data = t.data as Float32Array | Uint16Array;
          out[regionOutInputName(region, layer, part)] = data instanceof Uint16Array ? new this.rt.ort.Tensor('float16', data.slice(), t.dims) : new this.rt.ort.Tensor('float32', data.slice(), t.dims);
        }
      }
    }
    if (device && encoder) {
      device.queue.submit([encoder.finish()]);
      await device.queue.onSubmittedWorkDone();
    }
    return out;
  }

  dispose(): void {
    for (const b of this.buffers) b.destroy();
    this.buffers.length = 0;
  }
}

/** A1111's default mask blur, in pixels. */
export const DEFAULT_MASK_BLUR = 4;

/** The LoRAs a job uses: its own and its boxes'. */
function jobLoraCount(job: GenerateJob): number {
  return (job.loras?.length ?? 0) + (job.layout?.boxes.reduce((a, b) => a + b.loras.length, 0) ?? 0);
}

/** The hires fix's final size: the job's times its scale, each side rounded to a multiple of 64 (the UNet's), at most 2048. */
export function hiresSize(job: GenerateJob): { width: number; height: number } {
  const side = (v: number) => Math.min(2048, Math.max(64, Math.round((v * job.hires!.scale) / 64) * 64));
  return { width: side(job.width), height: side(job.height) };
}

/** A layout's boxes scaled with the picture (the hires fix's second pass), kept inside the frame. */
function scaleLayout(layout: LayoutOptions | undefined, sx: number, sy: number): LayoutOptions | undefined {
  if (!layout) return undefined;
  return { ...layout, boxes: layout.boxes.map((b) => ({ ...b, x: Math.floor(b.x * sx), y: Math.floor(b.y * sy), width: Math.floor(b.width * sx), height: Math.floor(b.height * sy) })) };
}

function tileCount(size: { width: number; height: number }, tile: number): number {
  const [lh, lw] = [size.height / 8, size.width / 8];
  return tileStarts(lh, Math.min(tile, lh)).length * tileStarts(lw, Math.min(tile, lw)).length;
}

/** Reads of GPU results by the CPU: a run whose outputs come back, a download, a preview. */
let readbacks = 0;

/**
 * Run a session on its weights and those of `feeds` that it takes (a pruned graph takes fewer); its
 * outputs come back to the CPU unless it keeps them on the GPU (`outputsOnGpu`).
 */
async function runGraph(g: CompiledGraph, weights: WeightSet, feeds: Record<string, OrtNs.Tensor>, fetches?: Fetches) {
  const all = weights.feeds(g.weightNames);
  for (const name of g.session.inputNames) if (feeds[name]) all[name] = feeds[name];
  const out = fetches ? await g.session.run(all, fetches) : await g.session.run(all);
  if (!g.outputsOnGpu) readbacks += 1;
  return out;
}

/**
 * A float32 tensor in a GPU buffer the engine owns (zero-filled, as WebGPU makes every buffer):
 * disposing it destroys the buffer. It has no download: a read of it would not wait for the work
 * onnxruntime has queued, so what the CPU reads comes from outputs onnxruntime allocates.
 * Its size is `ortBufferSize`'s (a 21-float buffer of exact size put wrong numbers in the kept
 * measures of tests/engine/gpu-mix).
 */
function gpuTensor(rt: Runtime, dims: number[]): OrtNs.Tensor {
  const bytes = dims.reduce((a, b) => a * b, 1) * 4;
  const buffer = rt.gpu!.device.createBuffer({ size: ortBufferSize(bytes), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  return rt.ort.Tensor.fromGpuBuffer(buffer, { dataType: 'float32', dims, dispose: () => buffer.destroy() });
}

/** A run's GPU outputs as CPU tensors (one readback); the GPU buffers are released. */
async function download(ort: Runtime['ort'], out: OrtNs.InferenceSession.OnnxValueMapType): Promise<Record<string, OrtNs.Tensor>> {
  readbacks += 1;
  const cpu: Record<string, OrtNs.Tensor> = {};
  for (const [name, t] of Object.entries(out)) cpu[name] = new ort.Tensor('float32', (await t.getData(true)) as Float32Array, t.dims);
  return cpu;
}

/**
 * A batch-of-two run made of two batch-1 runs (the plan's CFG halves): every input the batch-1 graph
 * takes with batch 1 but is given with 2 is split, every output put back together along the batch.
 */
async function runHalves(ort: Runtime['ort'], g: CompiledGraph, weights: WeightSet, feeds: Record<string, OrtNs.Tensor>) {
  const halves: Record<string, OrtNs.Tensor>[] = [{}, {}];
  for (const [name, t] of Object.entries(feeds)) {
    if (t.dims[0] !== 2 || !g.batched.has(name)) {
      halves[0][name] = halves[1][name] = t;
      continue;
    }
    const data = t.data as Float32Array;
    const n = data.length / 2;
    for (let h = 0; h < 2; h++) halves[h][name] = new ort.Tensor('float32', data.slice(h * n, (h + 1) * n), [1, ...t.dims.slice(1)]);
  }
  const [a, b] = [await runGraph(g, weights, halves[0]), await runGraph(g, weights, halves[1])];
  const out: Record<string, OrtNs.Tensor> = {};
  for (const name of Object.keys(a)) {
    const x = a[name].data as Float32Array;
    const y = b[name].data as Float32Array;
    const both = new Float32Array(x.length + y.length);
    both.set(x);
    both.set(y, x.length);
    out[name] = new ort.Tensor('float32', both, [2, ...a[name].dims.slice(1)]);
  }
  return out;
}

export function validateJob(job: GenerateJob): void {
  const bad = (m: string) => new BadArgumentError(m);
  if (!Number.isInteger(job.width) || !Number.isInteger(job.height) || job.width % 64 || job.height % 64 || job.width < 64 || job.height < 64 || job.width > 2048 || job.height > 2048) {
    throw bad(`Image size ${job.width}x${job.height} is not allowed: width and height must be multiples of 64 from 64 to 2048.`);
  }
  if (!Number.isInteger(job.steps) || job.steps < 1 || job.steps > MAX_STEPS) throw bad(`Steps must be a whole number from 1 to ${MAX_STEPS} (got ${job.steps}).`);
  if (!Number.isFinite(job.cfg) || job.cfg < 1 || job.cfg > 30) throw bad(`Guidance scale must be from 1 to 30 (got ${job.cfg}).`);
  if (!Number.isInteger(job.seed) || job.seed < 0 || job.seed > 0xffffffff) throw bad(`Seed must be a whole number from 0 to 4294967295 (got ${job.seed}).`);
  if (job.memoryBudget !== undefined && !(Number.isFinite(job.memoryBudget) && job.memoryBudget > 0)) throw bad(`The memory budget must be a positive number of bytes (got ${job.memoryBudget}).`);
  if (job.previewEvery !== undefined && !(Number.isInteger(job.previewEvery) && job.previewEvery >= 0)) throw bad(`previewEvery must be a whole number of steps, 0 for no preview (got ${job.previewEvery}).`);
  if (!isSchedulerName(job.scheduler)) throw bad(`Unknown scheduler "${job.scheduler}".`);
  if ((job.scheduler === 'lcm' || job.scheduler === 'tcd') && job.steps > LCM_ORIGINAL_STEPS) throw bad(`${job.scheduler.toUpperCase()} takes at most ${LCM_ORIGINAL_STEPS} steps (the schedule it was distilled on); got ${job.steps}.`);
  if (typeof job.prompt !== 'string' || typeof job.negative !== 'string') throw bad('Prompts must be text.');
  if (job.loras !== undefined && !Array.isArray(job.loras)) throw bad('loras must be a list of {lora, scale}.');
  for (const u of job.loras ?? []) {
    const scales = [u.scale, u.textEncoderScale ?? u.scale];
    if (typeof u.lora !== 'string' || !scales.every((x) => typeof x === 'number' && Number.isFinite(x) && Math.abs(x) <= 10)) {
      throw bad(`LoRA strengths must be numbers from -10 to 10 (got ${JSON.stringify(u)}).`);
    }
    if (u.category !== undefined && !isLoraCategory(u.category)) throw bad(`A LoRA's category must be one of character, clothing, style, background, object (got ${JSON.stringify(u.category).slice(0, 40)}).`);
    if (u.trigger !== undefined && (typeof u.trigger !== 'string' || u.trigger.length > 500)) throw bad('A LoRA\'s trigger words must be text of at most 500 characters.');
  }
  if (job.composition !== undefined && (typeof job.composition !== 'object' || job.composition === null)) throw bad('composition must be {method, ...options}.');
  if (job.layout !== undefined) {
    const l = job.layout;
    if (typeof l !== 'object' || l === null || !Array.isArray(l.boxes)) throw bad('layout must be {boxes, injection, isolation, reinit}.');
    if (l.boxes.length > MAX_BOXES) throw bad(`The layout has ${l.boxes.length} boxes; at most ${MAX_BOXES} are supported.`);
    for (const b of l.boxes) {
      const label = `Box "${b.name}"`;
      if (![b.x, b.y, b.width, b.height].every(Number.isFinite)) throw bad(`${label} needs a position and a size in pixels.`);
      if (b.width < 8 || b.height < 8) throw bad(`${label} is ${b.width}x${b.height} pixels; a box must be at least 8x8 (one latent cell).`);
      if (b.x < 0 || b.y < 0 || b.x + b.width > job.width || b.y + b.height > job.height) throw bad(`${label} reaches outside the ${job.width}x${job.height} frame.`);
      if (typeof b.prompt !== 'string' || !Array.isArray(b.loras)) throw bad(`${label} needs a prompt and a list of LoRAs.`);
    }
    if (l.guidance !== undefined) checkGuidance(l.guidance);
    for (const b of l.boxes) if (b.trigger !== undefined && (typeof b.trigger !== 'string' || b.trigger.length > 500)) throw bad(`Box "${b.name}": trigger must be text of at most 500 characters.`);
    resolveLayout(l);
  }
  resolveComposition(job.composition, job.steps, job.loras?.length ?? 0);
  if (job.init !== undefined) {
    const i = job.init;
    if (typeof i !== 'object' || i === null || typeof i.image !== 'object' || i.image === null) throw bad('init must be {image, strength, mask?}.');
    const img = i.image;
    if (img.width !== job.width || img.height !== job.height || !((img.data as unknown) instanceof Uint8ClampedArray || (img.data as unknown) instanceof Uint8Array) || img.data.length !== job.width * job.height * 4) {
      throw bad(`The start picture must be RGBA at the job's size, ${job.width}x${job.height} (got ${img.width}x${img.height}); resize it first.`);
    }
    if (typeof i.strength !== 'number' || !(i.strength >= 0 && i.strength <= 1)) throw bad(`Strength must be from 0 (keep the picture) to 1 (repaint it wholly); got ${i.strength}.`);
    if (i.mask !== undefined && (!(i.mask instanceof Uint8Array) || i.mask.length !== job.width * job.height)) throw bad(`The inpainting mask must hold one byte per pixel of the ${job.width}x${job.height} picture.`);
    if (i.maskBlur !== undefined && !(Number.isFinite(i.maskBlur) && i.maskBlur >= 0 && i.maskBlur <= 64)) throw bad(`Mask blur must be from 0 to 64 pixels (got ${i.maskBlur}).`);
    if (i.onlyMaskedPadding !== undefined && !(Number.isInteger(i.onlyMaskedPadding) && i.onlyMaskedPadding >= 0 && i.onlyMaskedPadding <= 2048)) throw bad(`The padding around the masked area must be a whole number of pixels from 0 to 2048 (got ${i.onlyMaskedPadding}).`);
    if (i.onlyMaskedPadding !== undefined && !i.mask) throw bad('"Only the masked area" needs a mask.');
  }
  if (job.hires !== undefined) {
    const h = job.hires;
    if (typeof h !== 'object' || h === null) throw bad('hires must be {scale, strength}.');
    if (job.init) throw bad('The hires fix follows text to image; with a start picture, raise the size of the job instead.');
    if (typeof h.scale !== 'number' || !(h.scale > 1 && h.scale <= 4)) throw bad(`The hires fix's scale must be above 1 and at most 4 (got ${h.scale}).`);
    if (typeof h.strength !== 'number' || !(h.strength >= 0 && h.strength <= 1)) throw bad(`The hires fix's strength must be from 0 to 1 (got ${h.strength}).`);
    if (h.steps !== undefined && !(Number.isInteger(h.steps) && h.steps >= 1 && h.steps <= MAX_STEPS)) throw bad(`The hires fix's steps must be a whole number from 1 to ${MAX_STEPS} (got ${h.steps}).`);
    if (h.upscaler !== undefined && h.upscaler !== 'latent' && h.upscaler !== 'image') throw bad(`The hires fix's upscaler is "latent" or "image" (got ${JSON.stringify(h.upscaler).slice(0, 40)}).`);
    if ((job.scheduler === 'lcm' || job.scheduler === 'tcd') && (h.steps ?? job.steps) > LCM_ORIGINAL_STEPS) throw bad(`LCM takes at most ${LCM_ORIGINAL_STEPS} steps; the hires fix asks for ${h.steps}.`);
    const { width, height } = hiresSize(job);
    if (width <= job.width && height <= job.height) throw bad(`A hires scale of ${h.scale} leaves ${job.width}x${job.height} as it is (sides round to multiples of 64, at most 2048).`);
  }
}

export { CancelledError };
