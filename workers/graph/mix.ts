// The graphs that let several predictions a step stay on the GPU (LoRA Composite, CMLoRA, the deep-
// feature cache): a weighted sum of whole tensors, which mixes the step's predictions and keeps
// CMLoRA's cached offsets, and the step's frequency measures, computed where the predictions are so
// that the CPU reads a handful of numbers a step instead of every prediction.
//
// Classifier-free guidance is linear, so the engine mixes the UNet's raw batch of two and guides the
// mix (in the step graph): sum w_i (u_i + s (c_i - u_i)) = U + s (C - U) with U = sum w_i u_i, C = sum w_i c_i.
import { GraphBuilder } from './builder.ts';
import { highBandStart, pow2Window, ringOf } from '../composition/frequency.ts';
import { cleanEstimate, guidedPrediction } from './step.ts';

/** Inputs `in0`..`in{count-1}` of `dims` and `w` [count]; output `out` = sum of w[j] * in_j. */
export function buildCombineGraph(count: number, dims: number[]): GraphBuilder {
  if (count < 1) throw new Error('a weighted sum needs at least one input');
  const g = new GraphBuilder('float32');
  const w = g.input('w', 'float32', [count]);
  let sum = '';
  for (let j = 0; j < count; j++) {
    const term = g.op('Mul', [g.op('Gather', [w, g.ints([j])], { axis: 0 }), g.input(`in${j}`, 'float32', dims)]);
    sum = j ? g.op('Add', [sum, term]) : term;
  }
  g.output(sum, 'out', 'float32', dims);
  return g;
}

export interface MeasureGraphOptions {
  batch: 1 | 2;
  channels: number;
  height: number;
  width: number;
  /** The predictions measured on their own this step (the LoRAs that ran alone). */
  predictions: number;
  /** The high band's first radius, in latent cells. */
  cutoff: number;
  /**
   * Kept on the GPU for `rows` steps: the measures are added as row `row` (input [1]) of `history`
   * [rows, n + 4] (input), written as `history_out`, and nothing else is output.
   */
  rows?: number;
}

/**
 * A step's measures, as the CPU loop takes them (workers/composition/frequency.ts): the latent high
 * band (`latentHighBand`: channel mean over the centred power-of-two window, |DFT|, the radial profile
 * over its largest bin, the mean from `cutoff` on) of each prediction's clean estimate
 * x0 = p x + q eps (eps guided by `cfg`), of the mix's, of the next latent and of this one, then the
 * cosine of the next latent with this one.
 *
 * Inputs `x`, `next` [1, C, H, W], `pred0`..`pred{n-1}` and `mix` [batch, C, H, W] (raw: guided here),
 * `k` [3] = cfg, p, q; output `measures` [n + 4]: n amplitudes, the mix's, the next latent's, this
 * latent's, the cosine.
 *
 * The DFT is four MatMuls with cosine and sine tables, the radial profile each ring's cells gathered
 * and averaged; all in float32 (the CPU's are float64).
 */
export function buildMeasureGraph(o: MeasureGraphOptions): GraphBuilder {
  const g = new GraphBuilder('float32');
  const one = [1, o.channels, o.height, o.width];
  const batched = [o.batch, o.channels, o.height, o.width];
  const x = g.input('x', 'float32', one);
  const next = g.input('next', 'float32', one);
  const k = g.input('k', 'float32', [3]);
  const [cfg, p, q] = [0, 1, 2].map((i) => g.op('Gather', [k, g.ints([i])], { axis: 0 }));
  const clean = (pred: string) => cleanEstimate(g, x, guidedPrediction(g, pred, cfg, o.batch), p, q);
  const preds = Array.from({ length: o.predictions }, (_, j) => g.input(`pred${j}`, 'float32', batched));
  const mix = g.input('mix', 'float32', batched);
  const images = [...preds.map(clean), clean(mix), next, x];
  const count = images.length;
  const stacked = concat(g, images);
  // the channel mean over the centred power-of-two window
  const h = pow2Window(o.height);
  const w = pow2Window(o.width);
  const y0 = (o.height - h) >> 1;
  const x0 = (o.width - w) >> 1;
  const cropped = h === o.height && w === o.width ? stacked : g.op('Slice', [stacked, g.ints([y0, x0]), g.ints([y0 + h, x0 + w]), g.ints([2, 3])]);
  const plane = g.op('ReduceMean', [cropped], { axes: [1], keepdims: 0 });
  // F = Ch M Cw - Sh M Sw - i (Sh M Cw + Ch M Sw), with C[u, y] = cos(2 pi u y / n), S likewise
  const table = (n: number, f: (a: number) => number) => {
    const t = new Float32Array(n * n);
    for (let u = 0; u < n; u++) for (let y = 0; y < n; y++) t[u * n + y] = f((2 * Math.PI * ((u * y) % n)) / n);
    return g.floats(t, [n, n]);
  };
  const [ch, sh, cw, sw] = [table(h, Math.cos), table(h, Math.sin), table(w, Math.cos), table(w, Math.sin)];
  const cm = g.op('MatMul', [ch, plane]);
  const sm = g.op('MatMul', [sh, plane]);
  const re = g.op('Sub', [g.op('MatMul', [cm, cw]), g.op('MatMul', [sm, sw])]);
  const im = g.op('Add', [g.op('MatMul', [sm, cw]), g.op('MatMul', [cm, sw])]);
  const magnitude = g.op('Sqrt', [g.op('Add', [g.op('Mul', [re, re]), g.op('Mul', [im, im])])]);
  // the radial profile (`radialProfile`'s rings): each ring's mean, the rings the window has
  const sizes = new Float64Array(ringOf(h >> 1, w >> 1, h, w) + 1);
  for (let u = 0; u < h; u++) for (let v = 0; v < w; v++) sizes[ringOf(u, v, h, w)]++;
  const bins = [...sizes.keys()].filter((r) => sizes[r] > 0);
  // each bin's cells gathered into a row (padded with a zero cell past the image), summed, averaged:
  // an index table of bins x the largest ring, not a bins x cells matrix
  const members: number[][] = bins.map(() => []);
  const slot = new Map(bins.map((r, i) => [r, i]));
  for (let u = 0; u < h; u++) for (let v = 0; v < w; v++) members[slot.get(ringOf(u, v, h, w))!].push(u * w + v);
  const widest = Math.max(...members.map((m) => m.length));
  const index = members.flatMap((m) => [...m, ...new Array<number>(widest - m.length).fill(h * w)]);
  const padded = g.op('Concat', [g.op('Reshape', [magnitude, g.ints([count, h * w])]), g.floats(new Float32Array(count), [count, 1])], { axis: 1 });
  const rings = g.op('Gather', [padded, g.op('Reshape', [g.ints(index), g.ints([bins.length, widest])])], { axis: 1 });
  const profile = g.op('Mul', [g.op('ReduceSum', [rings, g.ints([2])], { keepdims: 0 }), g.floats(bins.map((r) => 1 / sizes[r]), [bins.length])]);
  // the high band's mean over the largest bin
  const high = bins.filter((r) => r >= highBandStart(o.cutoff));
  const band = new Float32Array(bins.length);
  bins.forEach((r, i) => (band[i] = high.includes(r) ? 1 / high.length : 0));
  // an all-zero image has no largest bin: its band is 0, as on the CPU (whose bins are then NaN and skipped)
  const top = g.op('Max', [g.op('ReduceMax', [profile], { axes: [1], keepdims: 0 }), g.scalar(1e-30)]);
  const amplitudes = g.op('Div', [g.op('Reshape', [g.op('MatMul', [profile, g.floats(band, [bins.length, 1])]), g.ints([count])]), top]);
  // the cosine of the next latent with this one
  const dot = (a: string, b: string) => g.op('ReduceSum', [g.op('Mul', [a, b]), g.ints([0, 1, 2, 3])], { keepdims: 0 });
  // (0 where either is zero, as on the CPU)
  const cosine = g.op('Div', [dot(next, x), g.op('Max', [g.op('Sqrt', [g.op('Mul', [dot(next, next), dot(x, x)])]), g.scalar(1e-30)])]);
  const measures = g.op('Concat', [amplitudes, g.op('Reshape', [cosine, g.ints([1])])], { axis: 0 });
  if (!o.rows) {
    g.output(measures, 'measures', 'float32', [count + 1]);
    return g;
  }
  // the step's row written, the others kept as they were (a choice, not a sum: a step whose
  // measures are not finite spoils its own row only)
  const history = g.input('history', 'float32', [o.rows, count + 1]);
  const row = g.input('row', 'float32', [1]);
  const here = g.op('Equal', [g.floats(Float32Array.from({ length: o.rows }, (_, r) => r), [o.rows, 1]), row]);
  g.output(g.op('Where', [here, g.op('Reshape', [measures, g.ints([1, count + 1])]), history]), 'history_out', 'float32', [o.rows, count + 1]);
  return g;
}

/** Concat on axis 0 in pieces of at most six (a shader binds each input and the output: 8 at most by WebGPU's default). */
function concat(g: GraphBuilder, values: string[]): string {
  if (values.length === 1) return values[0];
  if (values.length <= 6) return g.op('Concat', values, { axis: 0 });
  const pieces: string[] = [];
  for (let i = 0; i < values.length; i += 6) pieces.push(concat(g, values.slice(i, i + 6)));
  return concat(g, pieces);
}
