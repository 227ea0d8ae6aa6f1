// One denoising step as a graph, so the latent never leaves the GPU between UNet runs: classifier-free
// guidance on the UNet's batch of two, the sampler's step in its linear form (`LinearStep`), the next
// UNet input, and a small RGB preview of the new latent that the CPU reads only when the page asks.
import { GraphBuilder } from './builder.ts';

/** The order of the step's coefficient vector `k` (`signal` and `noise`: inpainting's blend, the picture's noise level after the step). */
export const STEP_COEFFICIENTS = ['cfg', 'p', 'q', 'a', 'b', 'c', 'd', 'e', 'scaleNext', 'signal', 'noise'] as const;

/** A rough latent -> RGB projection for live previews (SD 1.5 latent space), rows by latent channel. */
export const PREVIEW_RGB = [
  [0.298, 0.207, 0.208],
  [0.187, 0.286, 0.173],
  [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473],
];

export interface StepGraphOptions {
  /** The UNet's batch: 2 with classifier-free guidance ([unconditional, conditional]), else 1. */
  batch: 1 | 2;
  channels: number;
  height: number;
  width: number;
  /** The preview's reduction: each preview pixel is the mean of a factor x factor block of latent cells. */
  previewFactor: number;
  /**
   * Inpainting with a 4-channel UNet: after the step, where `mask` [1, 1, H, W] is 0 the latent is the
   * picture's `init` noised by `noise0` to the next level (signal x init + noise x noise0).
   */
  blend?: boolean;
  /** An inpainting UNet's extra input channels (`cond` [1, extra, H, W]: mask, masked picture latent), joined after the latent in `model_in`. */
  extraChannels?: number;
}

/**
 * Inputs `pred` [batch, C, H, W] (the UNet's noise prediction), `x` [1, C, H, W] (the latent), `memory`
 * (the previous x0), `z` (fresh noise) and `k` (the coefficients, `STEP_COEFFICIENTS`); outputs
 * `x_next`, `x0`, `model_in` [batch, C, H, W] (the next UNet input, scaled) and `preview` [1, 3, H/f, W/f]
 * (bytes as floats, before rounding).
 */
export function buildStepGraph(o: StepGraphOptions): GraphBuilder {
  const g = new GraphBuilder('float32');
  const one = [1, o.channels, o.height, o.width];
  const pred = g.input('pred', 'float32', [o.batch, o.channels, o.height, o.width]);
  const x = g.input('x', 'float32', one);
  const memory = g.input('memory', 'float32', one);
  const z = g.input('z', 'float32', one);
  const k = g.input('k', 'float32', [STEP_COEFFICIENTS.length]);
  // one Gather per coefficient: onnxruntime-web binds every output of a Split to one shader, and a
  // browser's shader binds few storage buffers (8 by WebGPU's default, 10 in Chromium on SwiftShader)
  const [cfg, p, q, a, b, c, d, e, scaleNext, signal, level] = STEP_COEFFICIENTS.map((_, i) => g.op('Gather', [k, g.ints([i])], { axis: 0 }));
  const eps = guidedPrediction(g, pred, cfg, o.batch);
  const x0 = cleanEstimate(g, x, eps, p, q);
  const terms = [g.op('Mul', [a, x]), g.op('Mul', [b, eps]), g.op('Mul', [c, x0]), g.op('Mul', [d, memory]), g.op('Mul', [e, z])];
  let next = terms.reduce((sum, t) => g.op('Add', [sum, t]));
  if (o.blend) {
    const init = g.input('init', 'float32', one);
    const noise0 = g.input('noise0', 'float32', one);
    const mask = g.input('mask', 'float32', [1, 1, o.height, o.width]);
    const proper = g.op('Add', [g.op('Mul', [signal, init]), g.op('Mul', [level, noise0])]);
    next = g.op('Add', [g.op('Mul', [mask, next]), g.op('Mul', [g.op('Sub', [g.scalar(1), mask]), proper])]);
  }
  const extra = o.extraChannels ?? 0;
  let scaled = g.op('Mul', [scaleNext, next]);
  if (extra) scaled = g.op('Concat', [scaled, g.input('cond', 'float32', [1, extra, o.height, o.width])], { axis: 1 });
  const modelIn = o.batch === 2 ? g.op('Concat', [scaled, scaled], { axis: 0 }) : scaled;
  g.output(next, 'x_next', 'float32', one);
  g.output(x0, 'x0', 'float32', one);
  g.output(modelIn, 'model_in', 'float32', [o.batch, o.channels + extra, o.height, o.width]);
  // the preview: (v + 1) * 127.5 of the projection, averaged over f x f blocks, as one strided convolution
  const f = o.previewFactor;
  const w = new Float32Array(3 * o.channels * f * f);
  for (let rgb = 0; rgb < 3; rgb++) for (let ch = 0; ch < o.channels; ch++) for (let j = 0; j < f * f; j++) w[(rgb * o.channels + ch) * f * f + j] = ((PREVIEW_RGB[ch]?.[rgb] ?? 0) * 127.5) / (f * f);
  const preview = g.op('Conv', [next, g.floats(w, [3, o.channels, f, f]), g.floats([127.5, 127.5, 127.5], [3])], { kernel_shape: [f, f], strides: [f, f] });
  g.output(preview, 'preview', 'float32', [1, 3, Math.floor(o.height / f), Math.floor(o.width / f)]);
  return g;
}

/** Classifier-free guidance of a UNet prediction: uncond + cfg (cond - uncond) for a batch of two [uncond, cond]; a batch of one as it is. */
export function guidedPrediction(g: GraphBuilder, pred: string, cfg: string, batch: 1 | 2): string {
  if (batch === 1) return pred;
  const [uncond, cond] = g.opMulti('Split', [pred, g.ints([1, 1])], 2, { axis: 0 });
  return g.op('Add', [uncond, g.op('Mul', [cfg, g.op('Sub', [cond, uncond])])]);
}

/** The sampler's clean estimate in its linear form, x0 = p x + q eps. */
export function cleanEstimate(g: GraphBuilder, x: string, eps: string, p: string, q: string): string {
  return g.op('Add', [g.op('Mul', [p, x]), g.op('Mul', [q, eps])]);
}

/** The preview's reduction for a latent: blocks that bring its longer side to at most 64 cells. */
export function previewFactor(height: number, width: number): number {
  return Math.max(1, Math.ceil(Math.max(height, width) / 64));
}

/** The step graph's `preview` output ([3, h, w] floats) as RGBA bytes. */
export function previewImage(rgb: Float32Array, height: number, width: number): { width: number; height: number; data: Uint8ClampedArray } {
  const n = height * width;
  const data = new Uint8ClampedArray(n * 4);
  for (let px = 0; px < n; px++) {
    for (let ch = 0; ch < 3; ch++) data[px * 4 + ch] = Math.round(rgb[ch * n + px]);
    data[px * 4 + 3] = 255;
  }
  return { width, height, data };
}

/** The same projection of a latent [channels, h, w] on the CPU (the loop that stays on the CPU), as bytes. */
export function latentPreview(latent: Float32Array, h: number, w: number, channels = 4): { width: number; height: number; data: Uint8ClampedArray } {
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
