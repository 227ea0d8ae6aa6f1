// The denoising loop's latents kept in GPU buffers: the UNet's prediction feeds the step graph
// (workers/graph/step.ts) directly, whose outputs are the next latent, the sampler's memory and the
// next UNet input. The CPU uploads only the timestep embedding, the step's nine coefficients and, for
// ancestral samplers, the step's noise; it reads a preview when the page asks and the latent at the end.
// The graphs write into buffers the engine made (two sets, used in turn: a graph never writes what it
// reads), so a cancelled loop gives every byte back at once. What the CPU reads (a preview, the last
// latent, a layout's maps) is an output onnxruntime allocates for that run: its download waits for
// the work onnxruntime has queued, which a read of our own buffer would not.
// Where the engine compiled the UNet with graph capture (`captured`), its runs replay the GPU work of
// its first run on fixed buffers: the UNet input is then one buffer the step graph writes, and the
// timestep embedding and the context are written into the UNet's own input buffers before a run.
import type * as OrtNs from 'onnxruntime-web';
import type { ImageData8 } from '../api/contract.ts';
import type { MeasureGraphOptions } from '../graph/mix.ts';
import { previewFactor, previewImage, STEP_COEFFICIENTS } from '../graph/step.ts';
import { DEEP_FEATURE } from '../graph/unet.ts';
import type { LinearStep, NoiseLevel } from '../schedulers/common.ts';
import type { Ort } from './runtime.ts';

type Feeds = Record<string, OrtNs.Tensor>;
type Outputs = OrtNs.InferenceSession.OnnxValueMapType;
/** Outputs to write into given tensors; `null`: onnxruntime allocates it (on the GPU). */
export type Fetches = Record<string, OrtNs.Tensor | null>;

/** Which UNet graph a run takes: whole, whole keeping its deep features (`deep_feature`), or its shallow part on kept ones. */
export type UnetVariant = 'full' | 'record' | 'reuse';

export interface GpuLoopParts {
  /** The UNet with its outputs on the GPU, written into `fetches`. */
  unet: (feeds: Feeds, fetches: Fetches, variant?: UnetVariant) => Promise<Outputs>;
  /** `out` = the weighted sum of `in0`.. (workers/graph/mix.ts), written into `fetches`. */
  combine: (count: number, dims: number[], feeds: Feeds, fetches: Fetches) => Promise<Outputs>;
  /** A step's measures (workers/graph/mix.ts): read back, or (`o.rows`) kept on the GPU, written into `fetches`. */
  measure: (o: MeasureGraphOptions, feeds: Feeds, fetches?: Fetches) => Promise<Outputs>;
  /** The step graph, written into `fetches`. */
  step: (feeds: Feeds, fetches: Fetches) => Promise<Outputs>;
  /** A float32 GPU tensor of these dims that the engine owns, zero-filled (disposing it destroys its buffer). */
  buffer: (dims: number[]) => OrtNs.Tensor;
  /** Fill such a tensor from the CPU. */
  write: (t: OrtNs.Tensor, data: Float32Array) => void;
  /** Read back an output onnxruntime allocated (counted as a readback). */
  read: (t: OrtNs.Tensor) => Promise<Float32Array>;
  /** The UNet compiled with graph capture, where the job's loop can replay it. */
  captured?: CapturedUnet;
}

/**
 * A UNet session compiled with graph capture (onnxruntime's `enableGraphCapture`): every run replays
 * the dispatches its first run recorded, bound to these buffers, which the engine keeps with the
 * session. A replay ends with its work submitted, so a write from the CPU after it lands after it.
 */
export interface CapturedUnet {
  /** Its inputs other than weights (`sample`, `timestep_embedding`, `encoder_hidden_states`, ...). */
  inputs: Record<string, OrtNs.Tensor>;
  /** Its outputs (`noise_pred`). */
  outputs: Record<string, OrtNs.Tensor>;
  run: () => Promise<void>;
  /** Have onnxruntime submit what it has queued (a write from the CPU then lands after it). */
  flush: () => Promise<void>;
}

export interface LatentShape {
  batch: 1 | 2;
  channels: number;
  height: number;
  width: number;
}

/** Inpainting's inputs, uploaded once: the step graph's blend (`init`, `noise0`, `mask` on the latent grid) and an inpainting UNet's extra channels (`cond`). */
export interface GpuInpainting {
  blend?: { init: Float32Array; noise: Float32Array; mask: Float32Array };
  cond?: { data: Float32Array; channels: number };
}

interface LatentSet {
  x: OrtNs.Tensor;
  memory: OrtNs.Tensor;
  modelIn: OrtNs.Tensor;
}

export class GpuLatents {
  /** What the next step reads: CPU tensors before the first step, then one of the two sets. */
  private current: LatentSet;
  /** What the last step read (its latent is measured against the new one). */
  private previous?: LatentSet;
  private readonly sets: LatentSet[];
  private next = 0;
  /** Where `predict` writes the prediction (made at its first run: a mixing loop gives each run its own). */
  private predBuffer?: OrtNs.Tensor;
  /** The dims of a UNet prediction (the batch of two with CFG). */
  readonly predictionDims: number[];
  /** Where the step graph writes the preview on the steps nobody reads it. */
  private readonly previewOut: OrtNs.Tensor;
  /** The last UNet run's outputs asked for by name, and the last step's outputs to be read. */
  private extra?: Outputs;
  private readable?: Outputs;
  /** Zero noise for the samplers that draw none (a new buffer is zero-filled). */
  private readonly zeros: OrtNs.Tensor;
  private readonly dims: number[];
  /** Inpainting's fixed inputs of the step graph, on the GPU. */
  private readonly fixed: Record<string, OrtNs.Tensor> = {};
  /** The buffers this loop made (the captured UNet's belong to the engine). */
  private readonly owned: OrtNs.Tensor[] = [];
  /** Captured: the first UNet input, written once onnxruntime has submitted what it queued before. */
  private startInput?: Float32Array;
  /** Captured: the CPU tensor last written into each UNet input (the context is written once). */
  private readonly written = new Map<string, OrtNs.Tensor>();
  /** The measures kept on the GPU: two records used in turn, and the last one, to be read. */
  private history?: { records: OrtNs.Tensor[]; next: number; last?: OrtNs.Tensor };

  /** Starts from a latent on the CPU, whose first UNet input is `latent` times `inputScale` (with an inpainting UNet's extra channels after it). */
  constructor(private readonly ort: Ort, private readonly parts: GpuLoopParts, shape: LatentShape, latent: Float32Array, inputScale: number, inpainting: GpuInpainting = {}) {
    this.dims = [1, shape.channels, shape.height, shape.width];
    this.predictionDims = [shape.batch, shape.channels, shape.height, shape.width];
    const extra = inpainting.cond?.channels ?? 0;
    const batched = [shape.batch, shape.channels + extra, shape.height, shape.width];
    const one = (shape.channels + extra) * shape.height * shape.width;
    const first = new Float32Array(one);
    first.set(latent.map((v) => v * inputScale));
    if (inpainting.cond) first.set(inpainting.cond.data, latent.length);
    const input = new Float32Array(one * shape.batch);
    for (let b = 0; b < shape.batch; b++) input.set(first, b * one);
    const f = previewFactor(shape.height, shape.width);
    const made = this.owned;
    const make = (dims: number[]) => {
      const t = parts.buffer(dims);
      made.push(t);
      return t;
    };
    const cap = parts.captured;
    try {
      // captured: one UNet input for both sets (the step graph never reads it), the UNet's own
      const modelIn = cap ? cap.inputs.sample : undefined;
      this.sets = [0, 1].map(() => ({ x: make(this.dims), memory: make(this.dims), modelIn: modelIn ?? make(batched) }));
      this.predBuffer = cap?.outputs.noise_pred;
      this.previewOut = make([1, 3, Math.floor(shape.height / f), Math.floor(shape.width / f)]);
      this.zeros = make(this.dims);
      const upload = (name: string, dims: number[], data: Float32Array) => {
        this.fixed[name] = make(dims);
        parts.write(this.fixed[name], data);
      };
      if (inpainting.blend) {
        upload('init', this.dims, inpainting.blend.init);
        upload('noise0', this.dims, inpainting.blend.noise);
        upload('mask', [1, 1, shape.height, shape.width], inpainting.blend.mask);
      }
      if (inpainting.cond) upload('cond', [1, extra, shape.height, shape.width], inpainting.cond.data);
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
    // the first step reads the second set (filled here; its memory stays zero), so onnxruntime
    // uploads nothing of its own
    const start = this.sets[1];
    parts.write(start.x, latent);
    if (cap) this.startInput = input;
    else parts.write(start.modelIn, input);
    this.current = start;
  }

  /** Whether the UNet runs replay a captured graph. */
  get captured(): boolean {
    return !!this.parts.captured;
  }

  /** One UNet run on the current input; `outputs` besides the prediction come back as onnxruntime's GPU tensors (kept until the next run). */
  async predict(feeds: Feeds, outputs: string[] = []): Promise<void> {
    this.releaseExtra();
    const cap = this.parts.captured;
    if (cap) {
      if (outputs.length) throw new Error('a captured UNet has no outputs besides its prediction');
      if (this.startInput) {
        // a cancelled loop may have left step-graph work queued that writes this buffer
        await cap.flush();
        this.parts.write(cap.inputs.sample, this.startInput);
        this.startInput = undefined;
      }
      for (const [name, t] of Object.entries(feeds)) {
        const into = cap.inputs[name];
        if (!into) throw new Error(`the captured UNet has no input "${name}"`);
        if (this.written.get(name) === t) continue;
        this.parts.write(into, t.data as Float32Array);
        this.written.set(name, t);
      }
      await cap.run();
      return;
    }
    const out = await this.parts.unet({ ...feeds, sample: this.current.modelIn }, { noise_pred: this.pred(), ...Object.fromEntries(outputs.map((n) => [n, null])) });
    this.extra = Object.fromEntries(outputs.map((n) => [n, out[n]]));
  }

  /**
   * The sampler's step on the last prediction; the next UNet input is scaled by `scaleNext`. `read`:
   * what the CPU will read of this step (its preview, its latent), allocated by onnxruntime.
   */
  async step(k: LinearStep, cfg: number, scaleNext: number, noise: Float32Array | undefined, read: { preview: boolean; latent: boolean }, level: NoiseLevel = { signal: 0, noise: 0 }, pred = this.pred()): Promise<void> {
    const coefficients: Record<(typeof STEP_COEFFICIENTS)[number], number> = { cfg, p: k.p, q: k.q, a: k.a, b: k.b, c: k.c, d: k.d, e: k.e, scaleNext, signal: level.signal, noise: level.noise };
    const into = this.sets[this.next];
    this.releaseReadable();
    const out = await this.parts.step(
      {
        pred,
        x: this.current.x,
        memory: this.current.memory,
        z: noise ? new this.ort.Tensor('float32', noise, this.dims) : this.zeros,
        k: new this.ort.Tensor('float32', Float32Array.from(STEP_COEFFICIENTS, (name) => coefficients[name]), [STEP_COEFFICIENTS.length]),
        ...this.fixed,
      },
      { x_next: read.latent ? null : into.x, x0: into.memory, model_in: into.modelIn, preview: read.preview ? null : this.previewOut },
    );
    this.readable = { ...(read.latent ? { x_next: out.x_next } : {}), ...(read.preview ? { preview: out.preview } : {}) };
    this.previous = this.current;
    this.current = into;
    this.next ^= 1;
  }

  /** A float32 buffer of these dims for this loop (zero-filled; released with it). */
  allocate(dims: number[]): OrtNs.Tensor {
    const t = this.parts.buffer(dims);
    this.owned.push(t);
    return t;
  }

  private pred(): OrtNs.Tensor {
    return (this.predBuffer ??= this.allocate(this.predictionDims));
  }

  /**
   * One UNet run on the current input, its prediction written into `into` (a loop mixing several a
   * step keeps each). `record` writes the run's deep features into `feature`, `reuse` reads them from it.
   */
  async predictInto(feeds: Feeds, into: OrtNs.Tensor, o: { variant?: UnetVariant; feature?: OrtNs.Tensor; outputs?: string[] } = {}): Promise<void> {
    if (this.parts.captured) throw new Error('a captured UNet writes its prediction into its own buffer');
    this.releaseExtra();
    const variant = o.variant ?? 'full';
    if (variant !== 'full' && !o.feature) throw new Error(`a "${variant}" run needs its deep-feature buffer`);
    const outputs = o.outputs ?? [];
    const fetches: Fetches = { noise_pred: into, ...Object.fromEntries(outputs.map((n) => [n, null])), ...(variant === 'record' ? { [DEEP_FEATURE]: o.feature! } : {}) };
    const out = await this.parts.unet({ ...feeds, sample: this.current.modelIn, ...(variant === 'reuse' ? { [DEEP_FEATURE]: o.feature! } : {}) }, fetches, variant);
    this.extra = Object.fromEntries(outputs.map((n) => [n, out[n]]));
  }

  /** `into` = sum of weights[j] * inputs[j] (an input given twice counts once with its weights added). */
  async combine(inputs: OrtNs.Tensor[], weights: number[], into: OrtNs.Tensor): Promise<void> {
    const terms = new Map<OrtNs.Tensor, number>();
    inputs.forEach((t, j) => terms.set(t, (terms.get(t) ?? 0) + weights[j]));
    if (terms.has(into)) throw new Error('a weighted sum cannot write one of its inputs');
    const list = [...terms];
    const feeds: Feeds = { w: new this.ort.Tensor('float32', Float32Array.from(list, ([, w]) => w), [list.length]) };
    list.forEach(([t], j) => (feeds[`in${j}`] = t));
    await this.parts.combine(list.length, into.dims.slice(), feeds, { out: into });
  }

  /**
   * The last step's measures (workers/graph/mix.ts), read back: the high band of each of `preds`'
   * clean estimates, of the mix's, of the new latent and of the one before, then their cosine.
   */
  async measure(preds: OrtNs.Tensor[], mix: OrtNs.Tensor, k: { cfg: number; p: number; q: number }, cutoff: number): Promise<Float32Array> {
    const out = await this.parts.measure(this.measureOptions(preds, mix, cutoff), this.measureFeeds(preds, mix, k));
    return out.measures.data as Float32Array;
  }

  /**
   * The same measures kept on the GPU as row `row` of a record of `rows` steps, nothing read: the
   * last row's record is an output onnxruntime allocates, which `keptMeasures` reads once.
   */
  async keepMeasures(preds: OrtNs.Tensor[], mix: OrtNs.Tensor, k: { cfg: number; p: number; q: number }, cutoff: number, row: number, rows: number): Promise<void> {
    const o = { ...this.measureOptions(preds, mix, cutoff), rows };
    const width = preds.length + 4;
    const h = (this.history ??= { records: [this.allocate([rows, width]), this.allocate([rows, width])], next: 0 });
    const last = row === rows - 1;
    const feeds = { ...this.measureFeeds(preds, mix, k), history: h.records[h.next ^ 1], row: new this.ort.Tensor('float32', Float32Array.of(row), [1]) };
    const out = await this.parts.measure(o, feeds, { history_out: last ? null : h.records[h.next] });
    if (last) h.last = out.history_out;
    h.next ^= 1;
  }

  /** The measures `keepMeasures` kept, [rows, n + 4], read back once after the last row. */
  async keptMeasures(): Promise<Float32Array> {
    const t = this.history?.last;
    if (!t) throw new Error('the measures of the last step were not kept');
    return (await this.parts.read(t)).slice();
  }

  private measureOptions(preds: OrtNs.Tensor[], mix: OrtNs.Tensor, cutoff: number): MeasureGraphOptions {
    const [batch, channels, height, width] = mix.dims;
    return { batch: batch as 1 | 2, channels, height, width, predictions: preds.length, cutoff };
  }

  private measureFeeds(preds: OrtNs.Tensor[], mix: OrtNs.Tensor, k: { cfg: number; p: number; q: number }): Feeds {
    if (!this.previous) throw new Error('no step to measure');
    return {
      x: this.previous.x,
      next: this.readable?.x_next ?? this.current.x,
      mix,
      k: new this.ort.Tensor('float32', Float32Array.from([k.cfg, k.p, k.q]), [3]),
      ...Object.fromEntries(preds.map((t, j) => [`pred${j}`, t])),
    };
  }

  /** The last step's preview, downsampled on the GPU (at most 64 cells on the long side), read back. */
  async preview(): Promise<ImageData8> {
    const t = this.readable?.preview;
    if (!t) throw new Error('the last step was not asked for its preview');
    const [, , h, w] = t.dims;
    return previewImage(await this.parts.read(t), h, w);
  }

  /** The last step's latent, read back once at the end. */
  async latent(): Promise<Float32Array> {
    const t = this.readable?.x_next;
    if (!t) throw new Error('the last step was not asked for its latent');
    return (await this.parts.read(t)).slice();
  }

  /** The extra outputs of the last UNet run, read back (the layout's attention maps of the last step). */
  async lastOutputs(names: string[]): Promise<Record<string, OrtNs.Tensor>> {
    const out: Record<string, OrtNs.Tensor> = {};
    for (const n of names) out[n] = new this.ort.Tensor('float32', (await this.parts.read(this.extra![n])).slice(), this.extra![n].dims);
    return out;
  }

  dispose(): void {
    this.releaseExtra();
    this.releaseReadable();
    this.history?.last?.dispose();
    for (const t of this.owned) t.dispose();
  }

  private releaseReadable(): void {
    if (this.readable) for (const t of Object.values(this.readable)) t.dispose();
    this.readable = undefined;
  }

  private releaseExtra(): void {
    if (this.extra) for (const t of Object.values(this.extra)) t.dispose();
    this.extra = undefined;
  }
}

