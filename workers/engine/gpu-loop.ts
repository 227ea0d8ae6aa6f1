// The denoising loop's latents kept in GPU buffers: the UNet's prediction feeds the step graph
// (workers/graph/step.ts) directly, whose outputs are the next latent, the sampler's memory and the
// next UNet input. The CPU uploads only the timestep embedding, the step's nine coefficients and, for
// ancestral samplers, the step's noise; it reads a preview when the page asks and the latent at the end.
import type * as OrtNs from 'onnxruntime-web';
import type { ImageData8 } from '../api/contract.ts';
import { previewImage, STEP_COEFFICIENTS } from '../graph/step.ts';
import type { LinearStep } from '../schedulers/common.ts';
import type { Ort } from './runtime.ts';

type Feeds = Record<string, OrtNs.Tensor>;
type Outputs = OrtNs.InferenceSession.OnnxValueMapType;

export interface GpuLoopParts {
  /** The UNet with its outputs left in GPU buffers. */
  unet: (feeds: Feeds) => Promise<Outputs>;
  /** The step graph, outputs in GPU buffers. */
  step: (feeds: Feeds) => Promise<Outputs>;
  /** Read a GPU tensor back (counted as a readback). */
  read: (t: OrtNs.Tensor) => Promise<Float32Array>;
}

export interface LatentShape {
  batch: 1 | 2;
  channels: number;
  height: number;
  width: number;
}

export class GpuLatents {
  private x: OrtNs.Tensor;
  private memory: OrtNs.Tensor;
  private modelIn: OrtNs.Tensor;
  private last?: Outputs;
  private previewOut?: OrtNs.Tensor;
  private readonly zeros: OrtNs.Tensor;
  private readonly dims: number[];

  /** Starts from a latent on the CPU, whose first UNet input is `latent` times `inputScale`. */
  constructor(private readonly ort: Ort, private readonly parts: GpuLoopParts, shape: LatentShape, latent: Float32Array, inputScale: number) {
    this.dims = [1, shape.channels, shape.height, shape.width];
    this.x = new ort.Tensor('float32', latent, this.dims);
    this.zeros = new ort.Tensor('float32', new Float32Array(latent.length), this.dims);
    this.memory = this.zeros;
    const scaled = latent.map((v) => v * inputScale);
    const input = new Float32Array(latent.length * shape.batch);
    for (let b = 0; b < shape.batch; b++) input.set(scaled, b * latent.length);
    this.modelIn = new ort.Tensor('float32', input, [shape.batch, ...this.dims.slice(1)]);
  }

  /** One UNet run on the current input; its outputs stay on the GPU until the next run. */
  async predict(feeds: Feeds): Promise<void> {
    const out = await this.parts.unet({ ...feeds, sample: this.modelIn });
    this.releaseLast();
    this.last = out;
  }

  /** The sampler's step on the last prediction; the next UNet input is scaled by `scaleNext`. */
  async step(k: LinearStep, cfg: number, scaleNext: number, noise?: Float32Array): Promise<void> {
    if (!this.last) throw new Error('step before a prediction');
    const coefficients: Record<(typeof STEP_COEFFICIENTS)[number], number> = { cfg, p: k.p, q: k.q, a: k.a, b: k.b, c: k.c, d: k.d, e: k.e, scaleNext };
    const out = await this.parts.step({
      pred: this.last.noise_pred,
      x: this.x,
      memory: this.memory,
      z: noise ? new this.ort.Tensor('float32', noise, this.dims) : this.zeros,
      k: new this.ort.Tensor('float32', Float32Array.from(STEP_COEFFICIENTS, (name) => coefficients[name]), [STEP_COEFFICIENTS.length]),
    });
    for (const t of [this.x, this.memory, this.modelIn, this.previewOut]) if (t && t !== this.zeros) t.dispose();
    this.x = out.x_next;
    this.memory = out.x0;
    this.modelIn = out.model_in;
    this.previewOut = out.preview;
  }

  /** The latest latent's preview, read back (a few KB). */
  async preview(): Promise<ImageData8> {
    const t = this.previewOut!;
    const [, , h, w] = t.dims;
    return previewImage(await this.parts.read(t), h, w);
  }

  /** The latent, read back once at the end. */
  async latent(): Promise<Float32Array> {
    return (await this.parts.read(this.x)).slice();
  }

  /** Outputs of the last UNet run, read back (the layout's attention maps of the last step). */
  async lastOutputs(names: string[]): Promise<Record<string, OrtNs.Tensor>> {
    const out: Record<string, OrtNs.Tensor> = {};
    for (const n of names) out[n] = new this.ort.Tensor('float32', (await this.parts.read(this.last![n])).slice(), this.last![n].dims);
    return out;
  }

  dispose(): void {
    this.releaseLast();
    for (const t of [this.x, this.memory, this.modelIn, this.previewOut]) if (t && t !== this.zeros) t.dispose();
  }

  private releaseLast(): void {
    if (this.last) for (const t of Object.values(this.last)) t.dispose();
    this.last = undefined;
  }
}
