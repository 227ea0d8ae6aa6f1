// The denoising loop's latents kept in GPU buffers: the UNet's prediction feeds the step graph
// (workers/graph/step.ts) directly, whose outputs are the next latent, the sampler's memory and the
// next UNet input. The CPU uploads only the timestep embedding, the step's nine coefficients and, for
// ancestral samplers, the step's noise; it reads a preview when the page asks and the latent at the end.
// The graphs write into buffers the engine made (two sets, used in turn: a graph never writes what it
// reads), so a cancelled loop gives every byte back at once, and onnxruntime allocates no outputs.
import type * as OrtNs from 'onnxruntime-web';
import type { ImageData8 } from '../api/contract.ts';
import { PREVIEW_RGB, previewFactor, STEP_COEFFICIENTS } from '../graph/step.ts';
import type { LinearStep } from '../schedulers/common.ts';
import type { Ort } from './runtime.ts';

type Feeds = Record<string, OrtNs.Tensor>;
type Outputs = OrtNs.InferenceSession.OnnxValueMapType;
/** Outputs to write into given tensors; `null`: onnxruntime allocates it (on the GPU). */
export type Fetches = Record<string, OrtNs.Tensor | null>;

export interface GpuLoopParts {
  /** The UNet with its outputs on the GPU, written into `fetches`. */
  unet: (feeds: Feeds, fetches: Fetches) => Promise<Outputs>;
  /** The step graph, written into `fetches`. */
  step: (feeds: Feeds, fetches: Fetches) => Promise<Outputs>;
  /** A float32 GPU tensor of these dims that the engine owns (disposing it destroys its buffer). */
  buffer: (dims: number[]) => OrtNs.Tensor;
  /** Fill such a tensor from the CPU. */
  write: (t: OrtNs.Tensor, data: Float32Array) => void;
  /** Read a GPU tensor back (counted as a readback). */
  read: (t: OrtNs.Tensor) => Promise<Float32Array>;
}

export interface LatentShape {
  batch: 1 | 2;
  channels: number;
  height: number;
  width: number;
}

interface LatentSet {
  x: OrtNs.Tensor;
  memory: OrtNs.Tensor;
  modelIn: OrtNs.Tensor;
}

export class GpuLatents {
  /** What the next step reads: CPU tensors before the first step, then one of the two sets. */
  private current: LatentSet;
  private readonly sets: LatentSet[];
  private next = 0;
  private readonly pred: OrtNs.Tensor;
  private readonly previewOut: OrtNs.Tensor;
  private extra?: Outputs;
  private readonly zerosGpu: OrtNs.Tensor;
  private readonly dims: number[];

  /** Starts from a latent on the CPU, whose first UNet input is `latent` times `inputScale`. */
  constructor(private readonly ort: Ort, private readonly parts: GpuLoopParts, shape: LatentShape, latent: Float32Array, inputScale: number) {
    this.dims = [1, shape.channels, shape.height, shape.width];
    const batched = [shape.batch, shape.channels, shape.height, shape.width];
    const scaled = latent.map((v) => v * inputScale);
    const input = new Float32Array(latent.length * shape.batch);
    for (let b = 0; b < shape.batch; b++) input.set(scaled, b * latent.length);
    const f = previewFactor(shape.height, shape.width);
    const made: OrtNs.Tensor[] = [];
    const make = (dims: number[]) => {
      const t = parts.buffer(dims);
      made.push(t);
      return t;
    };
    try {
      this.sets = [0, 1].map(() => ({ x: make(this.dims), memory: make(this.dims), modelIn: make(batched) }));
      this.pred = make(batched);
      this.previewOut = make([1, 3, Math.floor(shape.height / f), Math.floor(shape.width / f)]);
      this.zerosGpu = make(this.dims);
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
    // the first step reads the second set (filled here), so onnxruntime uploads nothing of its own
    const start = this.sets[1];
    parts.write(start.x, latent);
    parts.write(start.memory, new Float32Array(latent.length));
    parts.write(start.modelIn, input);
    parts.write(this.zerosGpu, new Float32Array(latent.length));
    this.current = start;
  }

  /** One UNet run on the current input; `outputs` besides the prediction come back as onnxruntime's GPU tensors (kept until the next run). */
  async predict(feeds: Feeds, outputs: string[] = []): Promise<void> {
    this.releaseExtra();
    const out = await this.parts.unet({ ...feeds, sample: this.current.modelIn }, { noise_pred: this.pred, ...Object.fromEntries(outputs.map((n) => [n, null])) });
    this.extra = Object.fromEntries(outputs.map((n) => [n, out[n]]));
  }

  /** The sampler's step on the last prediction; the next UNet input is scaled by `scaleNext`. */
  async step(k: LinearStep, cfg: number, scaleNext: number, noise?: Float32Array): Promise<void> {
    const coefficients: Record<(typeof STEP_COEFFICIENTS)[number], number> = { cfg, p: k.p, q: k.q, a: k.a, b: k.b, c: k.c, d: k.d, e: k.e, scaleNext };
    const into = this.sets[this.next];
    await this.parts.step(
      {
        pred: this.pred,
        x: this.current.x,
        memory: this.current.memory,
        z: noise ? new this.ort.Tensor('float32', noise, this.dims) : this.zerosGpu,
        k: new this.ort.Tensor('float32', Float32Array.from(STEP_COEFFICIENTS, (name) => coefficients[name]), [STEP_COEFFICIENTS.length]),
      },
      { x_next: into.x, x0: into.memory, model_in: into.modelIn, preview: this.previewOut },
    );
    this.current = into;
    this.next ^= 1;
  }

  /**
   * The latest latent's preview: the latent read back (64 KB at 512x512) and projected to RGB on the
   * CPU (the step graph's own downsampled preview is written too, not yet read).
   */
  async preview(): Promise<ImageData8> {
    const [, channels, h, w] = this.dims;
    return latentPreview(await this.parts.read(this.current.x), h, w, channels);
  }

  /** The latent, read back once at the end. */
  async latent(): Promise<Float32Array> {
    return (await this.parts.read(this.current.x)).slice();
  }

  /** The extra outputs of the last UNet run, read back (the layout's attention maps of the last step). */
  async lastOutputs(names: string[]): Promise<Record<string, OrtNs.Tensor>> {
    const out: Record<string, OrtNs.Tensor> = {};
    for (const n of names) out[n] = new this.ort.Tensor('float32', (await this.parts.read(this.extra![n])).slice(), this.extra![n].dims);
    return out;
  }

  dispose(): void {
    this.releaseExtra();
    for (const s of this.sets) for (const t of [s.x, s.memory, s.modelIn]) t.dispose();
    this.pred.dispose();
    this.previewOut.dispose();
    this.zerosGpu.dispose();
  }

  private releaseExtra(): void {
    if (this.extra) for (const t of Object.values(this.extra)) t.dispose();
    this.extra = undefined;
  }
}

/** A rough RGB view of a latent [channels, h, w] (SD 1.5 latent space), as bytes. */
export function latentPreview(latent: Float32Array, h: number, w: number, channels = 4): ImageData8 {
  const data = new Uint8ClampedArray(h * w * 4);
  const n = h * w;
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = 0; k < Math.min(channels, PREVIEW_RGB.length); k++) v += latent[k * n + p] * PREVIEW_RGB[k][c];
      data[p * 4 + c] = Math.round((v + 1) * 127.5);
    }
    data[p * 4 + 3] = 255;
  }
  return { width: w, height: h, data };
}
