// Neural-network building blocks shared by the UNet, the VAE decoder and the CLIP text encoder.
// Shapes are static (the engine builds one graph per batch and latent size), so every Reshape
// target is known when the graph is built.
import type { GraphBuilder } from './builder.ts';

/** An NCHW activation. */
export interface Feat {
  v: string;
  b: number;
  c: number;
  h: number;
  w: number;
}

export function conv2d(g: GraphBuilder, x: Feat, name: string, cout: number, k: number, stride = 1): Feat {
  const pad = (k - 1) >> 1;
  const w = g.weight(`${name}.weight`, [cout, x.c, k, k]);
  const bias = g.weight(`${name}.bias`, [cout]);
  const h = Math.floor((x.h + 2 * pad - k) / stride) + 1;
  const wd = Math.floor((x.w + 2 * pad - k) / stride) + 1;
  const geometry = { kernel_shape: [k, k], pads: [pad, pad, pad, pad], strides: [stride, stride] };
  if (k === 1 || !unfolds(g, x.b * h * wd, x.c * k * k, cout)) return { v: g.op('Conv', [x.v, w, bias], geometry), b: x.b, c: cout, h, w: wd };
  // [B, Ci*k*k, Ho, Wo]: channel ci*k*k + tap holds input channel ci at that tap (a one-hot depthwise kernel)
  const taps = k * k;
  const oneHot = g.shared(`unfold:${x.c}:${k}`, () => {
    const values = new Float32Array(x.c * taps * taps);
    for (let o = 0; o < x.c * taps; o++) values[o * taps + (o % taps)] = 1;
    return g.floats(values, [x.c * taps, 1, k, k]);
  });
  const unfolded = g.op('Reshape', [g.op('Conv', [x.v, oneHot], { ...geometry, group: x.c }), g.ints([x.b, x.c * taps, h * wd])]);
  // the weight as stored, [Co, Ci, k, k] read as [Co, Ci*k*k]
  const y = g.op('MatMul', [g.op('Reshape', [w, g.ints([cout, x.c * taps])]), unfolded]);
  const v = g.op('Add', [g.op('Reshape', [y, g.ints([x.b, cout, h, wd])]), g.op('Reshape', [bias, g.ints([cout, 1, 1])])]);
  return { v, b: x.b, c: cout, h, w: wd };
}

/** Whether a k x k convolution whose weight reads as [cout, patch] over `positions` outputs is unfolded (see ConvForm). */
function unfolds(g: GraphBuilder, positions: number, patch: number, cout: number): boolean {
  if (g.conv === 'direct') return false;
  const fits = positions * patch * g.bytesPerElement <= g.bufferLimit;
  return g.conv === 'unfold' ? fits : fits && positions < cout;
}

/**
 * x * sigmoid(alpha * x) as one node: onnxruntime's `com.microsoft.QuickGelu`. Its optimiser fuses
 * the Mul-and-Sigmoid form into this node anyway (the device's log of a UNet run showed QuickGelu
 * programs and no Sigmoid), so building it so makes the graph what runs: one pass, and no sigmoid map alive beside
 * its input, which the memory plan would otherwise count (at the VAE's last level that map is
 * 128 MiB in fp16).
 */
function sigmoidGate(g: GraphBuilder, v: string, alpha: number): string {
  return g.msOp('QuickGelu', [v], { alpha: { float: alpha } });
}

export function silu(g: GraphBuilder, v: string): string {
  return sigmoidGate(g, v, 1);
}

/** GroupNorm over [B, groups, C/groups*H*W] in the builder's `norm` form, then the per-channel affine. */
export function groupNorm(g: GraphBuilder, x: Feat, name: string, groups: number, eps: number): Feat {
  const grouped = g.op('Reshape', [x.v, g.ints([x.b, groups, -1])]);
  let normed: string;
  if (g.norm === 'reductions') {
    const centred = g.op('Sub', [grouped, g.op('ReduceMean', [grouped], { axes: [2], keepdims: 1 })]);
    const variance = g.op('ReduceMean', [g.op('Mul', [centred, centred])], { axes: [2], keepdims: 1 });
    normed = g.op('Div', [centred, g.op('Sqrt', [g.op('Add', [variance, g.scalar(eps)])])]);
  } else {
    const ones = g.floats(new Array(groups).fill(1), [groups]);
    const zeros = g.floats(new Array(groups).fill(0), [groups]);
    normed = g.op('InstanceNormalization', [grouped, ones, zeros], { epsilon: { float: eps } });
  }
  const back = g.op('Reshape', [normed, g.ints([x.b, x.c, x.h, x.w])]);
  const gamma = g.op('Reshape', [g.weight(`${name}.weight`, [x.c]), g.ints([x.c, 1, 1])]);
  const beta = g.op('Reshape', [g.weight(`${name}.bias`, [x.c]), g.ints([x.c, 1, 1])]);
  return { ...x, v: g.op('Add', [g.op('Mul', [back, gamma]), beta]) };
}

/** y = x W^T + b on a 2-D [rows, in] value; PyTorch weight layout [out, in]. */
export function linear(g: GraphBuilder, x: string, name: string, inF: number, outF: number, bias = true): string {
  const w = g.weight(`${name}.weight`, [outF, inF]);
  const inputs = bias ? [x, w, g.weight(`${name}.bias`, [outF])] : [x, w];
  return g.op('Gemm', inputs, { transB: 1 });
}

export function layerNorm(g: GraphBuilder, x: string, name: string, dim: number, eps = 1e-5): string {
  return g.op('LayerNormalization', [x, g.weight(`${name}.weight`, [dim]), g.weight(`${name}.bias`, [dim])], {
    axis: -1,
    epsilon: { float: eps },
  });
}

export function gelu(g: GraphBuilder, v: string): string {
  const erf = g.op('Erf', [g.op('Mul', [v, g.scalar(Math.SQRT1_2)])]);
  return g.op('Mul', [g.op('Mul', [v, g.scalar(0.5)]), g.op('Add', [erf, g.scalar(1)])]);
}

export function quickGelu(g: GraphBuilder, v: string): string {
  return sigmoidGate(g, v, 1.702);
}

/** Concept isolation's bias for a blocked pair: exp(-1e4) is 0 in float32 and float16 alike. */
export const ISOLATION_BLOCKED = -1e4;
/** Columns of concept isolation's factors (layout/masks.ts `isolationFactors`): up to 8 boxes and two more. */
export const ISOLATION_FACTORS = 10;

export interface AttentionIo {
  /** Additive bias on the scores, broadcast to [B, heads, Nq, Nk]; e.g. a region mask. */
  bias?: string;
  /**
   * Concept isolation as factors [2, Nq, F] (self-attention, Nq = Nk): the bias
   * ISOLATION_BLOCKED * relu(L R^T) is made for one query chunk at a time and added to `bias`.
   */
  isolation?: string;
  /** When set, the head-averaged attention probabilities [B, Nq, Nk] become this graph output. */
  probsOutput?: string;
}

/**
 * The widest head, in bytes (head size x element size), that onnxruntime's WebGPU EP runs through its
 * one-pass FlashAttention program on any adapter. That program keeps a tile of keys and values in
 * workgroup memory: 2 x 16 keys x the head's bytes, within the 16 KiB every WebGPU adapter offers.
 * A wider head (the VAE's single 512-wide head; SD 1.5's 160-wide heads in fp32) may take the EP's
 * split-K path instead, which keeps a partial output for every 64 keys: Nq x ceil(Nk / 64) x head
 * size per head, 8 times the score matrix at 512 wide (the VAE at 512x512: 512 MiB in fp32).
 * Measured on onnxruntime-web 1.30 by its profile (tests/engine/attention-paths.test.ts).
 */
export const FLASH_HEAD_BYTES = 512;

/** Whether a layer of head size `d` is fused in a graph of `bytesPerElement` (see FLASH_HEAD_BYTES). */
export const fusesHead = (d: number, bytesPerElement: number) => d * bytesPerElement <= FLASH_HEAD_BYTES;

/**
 * Multi-head scaled dot-product attention on 2-D token values q [B*Nq, C], k/v [B*Nk, C].
 * Returns [B*Nq, C]. The builder's `attention` form decides how (see `AttentionForm`): fused into one
 * MultiHeadAttention node unless the layer's maps are read or its heads are wider than the EP's
 * FlashAttention program takes (`fusesHead`), else MatMul-Softmax-MatMul, split into query chunks
 * when the score tensor [B, heads, Nq, Nk] would exceed the builder's buffer limit.
 */
export function attention(
  g: GraphBuilder,
  q: string,
  k: string,
  v: string,
  dims: { b: number; nq: number; nk: number; c: number; heads: number },
  io: AttentionIo = {},
): string {
  const { b, nq, nk, c, heads } = dims;
  if (g.attention === 'fused' && !io.probsOutput && fusesHead(c / heads, g.bytesPerElement)) {
    // bias [B or 1, 1, Nq, Nk] is the node's attention_bias, broadcast over batch and heads; with
    // isolation the node runs on query chunks whose bias [1, 1, rows, Nk] stays within the limit
    const tokens = (x: string, n: number) => g.op('Reshape', [x, g.ints([b, n, c])]);
    let bias = io.bias;
    if (bias && g.shape(bias).length < 4) bias = g.op('Reshape', [bias, g.ints([...new Array(4 - g.shape(bias).length).fill(1), ...g.shape(bias)])]);
    const biasBatch = bias ? g.shape(bias)[0] : 1;
    const rows = chunkRows(nq, io.isolation ? attentionChunks({ b: biasBatch, nq, nk, heads: 1 }, g.bytesPerElement, g.bufferLimit) : 1);
    const qParts = rows.length === 1 ? [tokens(q, nq)] : g.opMulti('Split', [tokens(q, nq), g.ints(rows)], rows.length, { axis: 1 });
    const biasParts = chunkBias(g, bias, io.isolation, rows, nk);
    const kt = tokens(k, nk);
    const vt = tokens(v, nk);
    const outs = qParts.map((qc, i) => g.msOp('MultiHeadAttention', [qc, kt, vt, ...(biasParts[i] ? ['', '', biasParts[i]] : [])], { num_heads: heads }));
    return g.op('Reshape', [outs.length === 1 ? outs[0] : g.op('Concat', outs, { axis: 1 }), g.ints([b * nq, c])]);
  }
  const d = c / heads;
  const qh = g.op('Transpose', [g.op('Reshape', [q, g.ints([b, nq, heads, d])])], { perm: [0, 2, 1, 3] });
  const kh = g.op('Transpose', [g.op('Reshape', [k, g.ints([b, nk, heads, d])])], { perm: [0, 2, 3, 1] });
  const vh = g.op('Transpose', [g.op('Reshape', [v, g.ints([b, nk, heads, d])])], { perm: [0, 2, 1, 3] });
  const chunks = g.attention === 'explicit' ? 1 : attentionChunks(dims, g.bytesPerElement, g.bufferLimit);
  const rows = chunkRows(nq, chunks);
  const qParts = rows.length === 1 ? [qh] : g.opMulti('Split', [qh, g.ints(rows)], rows.length, { axis: 2 });
  const biasParts = chunkBias(g, io.bias, io.isolation, rows, nk);
  const ctxParts: string[] = [];
  const mapParts: string[] = [];
  qParts.forEach((qc, i) => {
    let scores = g.op('Mul', [g.op('MatMul', [qc, kh]), g.scalar(1 / Math.sqrt(d))]);
    if (biasParts[i]) scores = g.op('Add', [scores, biasParts[i]]);
    const probs = g.op('Softmax', [scores], { axis: -1 });
    if (io.probsOutput) mapParts.push(g.op('ReduceMean', [probs], { axes: [1], keepdims: 0 }));
    ctxParts.push(g.op('MatMul', [probs, vh]));
  });
  if (io.probsOutput) {
    const mean = mapParts.length === 1 ? mapParts[0] : g.op('Concat', mapParts, { axis: 1 });
    const out = g.dtype === 'float16' ? g.op('Cast', [mean], { to: 1 }) : mean;
    g.output(out, io.probsOutput, 'float32', [b, nq, nk]);
  }
  const ctx = ctxParts.length === 1 ? ctxParts[0] : g.op('Concat', ctxParts, { axis: 2 });
  return g.op('Reshape', [g.op('Transpose', [ctx], { perm: [0, 2, 1, 3] }), g.ints([b * nq, c])]);
}

/**
 * The additive bias of each query chunk (`rows`): `bias` ([.., .., Nq or 1, Nk]) cut along its query
 * axis, plus concept isolation's bias made from its factors for those rows alone. Empty strings
 * where there is neither.
 */
function chunkBias(g: GraphBuilder, bias: string | undefined, isolation: string | undefined, rows: number[], nk: number): string[] {
  const given = !bias ? rows.map(() => '') : rows.length === 1 || g.shape(bias)[2] === 1 ? rows.map(() => bias) : g.opMulti('Split', [bias, g.ints(rows)], rows.length, { axis: 2 });
  if (!isolation) return given;
  // the factors cut once per grid and chunking, for all its self-attention layers (each makes its
  // chunks' bias itself: shared, they would all be alive at once, the whole n x n again)
  const [right, ...leftParts] = g.shared(`isolation:${isolation}:${rows.join(',')}`, () => {
    const F = ISOLATION_FACTORS;
    const [l, r] = g.opMulti('Split', [isolation, g.ints([1, 1])], 2, { axis: 0 });
    const left = g.op('Reshape', [l, g.ints([rows.reduce((a, n) => a + n, 0), F])]);
    return [g.op('Reshape', [r, g.ints([nk, F])]), ...(rows.length === 1 ? [left] : g.opMulti('Split', [left, g.ints(rows)], rows.length, { axis: 0 }))];
  });
  return leftParts.map((lp, i) => {
    // L R^T: whole numbers (0 or 1 after the relu), exact in float16 as in float32
    const blocked = g.op('Mul', [g.op('Relu', [g.op('Gemm', [lp, right], { transB: 1 })]), g.scalar(ISOLATION_BLOCKED)]);
    const own = g.op('Reshape', [blocked, g.ints([1, 1, rows[i], nk])]);
    return given[i] ? g.op('Add', [given[i], own]) : own;
  });
}

/** Query chunks so that one chunk's score tensor [B, heads, rows, Nk] stays within `limit` bytes. */
export function attentionChunks(dims: { b: number; nq: number; nk: number; heads: number }, bytesPerElement: number, limit: number): number {
  const perRow = dims.b * dims.heads * dims.nk * bytesPerElement;
  const rowsPerChunk = Math.max(1, Math.floor(limit / perRow));
  return Math.ceil(dims.nq / rowsPerChunk);
}

/** `n` rows in `chunks` nearly equal parts (the first ones one longer). */
export function chunkRows(n: number, chunks: number): number[] {
  const k = Math.max(1, Math.min(n, chunks));
  return Array.from({ length: k }, (_, i) => Math.floor(n / k) + (i < n % k ? 1 : 0));
}

/**
 * Region-aware cross-attention (LoRA-Composer, Eq. 2-3): every region r has its own keys and values
 * (its local prompt through its own LoRA), given as inputs k, v [B, R, Nk, C]; the shared queries q
 * [B*Nq, C] attend to each region separately, and each query keeps the regions it lies in:
 *   out(i) = sum_r w[r, i] * softmax(q_i k_r^T / sqrt(d)) v_r
 * with w [R, Nq] the region masks normalised per cell (the background is a region too).
 * `probsOutput` gets the head-averaged maps of every region, unmasked: [B, R, Nq, Nk].
 * Unless the builder's form is explicit, it runs on query chunks whose scores and per-region results
 * stay within the builder's buffer limit.
 * With `outputs` (the code's region_rewrite, multi_lora_sample.py ~295-307) each region's result goes
 * through that region's own output projection before the weighting: region 0 through
 * `outputs.shared` (the UNet's to_out), region r >= 1 through the inputs `outputs.region(r)`; the
 * caller then applies no output projection of its own.
 */
export function regionalAttention(
  g: GraphBuilder,
  q: string,
  k: string,
  v: string,
  weights: string,
  dims: { b: number; nq: number; nk: number; c: number; heads: number; regions: number },
  probsOutput?: string,
  outputs?: { shared: string; region: (r: number) => { weight: string; bias: string } },
): string {
  const { b, nq, nk, c, heads, regions: r } = dims;
  const d = c / heads;
  const qh = g.op('Reshape', [g.op('Transpose', [g.op('Reshape', [q, g.ints([b, nq, heads, d])])], { perm: [0, 2, 1, 3] }), g.ints([b, heads, 1, nq, d])]);
  const kh = g.op('Transpose', [g.op('Reshape', [k, g.ints([b, r, nk, heads, d])])], { perm: [0, 3, 1, 4, 2] });
  const vh = g.op('Transpose', [g.op('Reshape', [v, g.ints([b, r, nk, heads, d])])], { perm: [0, 3, 1, 2, 4] });
  // Query chunks, unless the form is explicit: a chunk's scores [B, heads, R, rows, Nk] and its
  // per-region results [B, heads, R, rows, d] stay within the buffer limit (at 1024x1024 with five
  // boxes the whole scores would be 231 MiB in fp16). A query's result reads only its own row.
  const chunks = g.attention === 'explicit' ? 1 : attentionChunks({ b, nq, nk: r * Math.max(nk, d), heads }, g.bytesPerElement, g.bufferLimit);
  const rows = chunkRows(nq, chunks);
  const split = (x: string, axis: number) => (rows.length === 1 ? [x] : g.opMulti('Split', [x, g.ints(rows)], rows.length, { axis }));
  const qParts = split(qh, 3);
  const wParts = split(weights, 1);
  const mapParts: string[] = [];
  // each region's own output projection, shared by the chunks
  const projections = outputs ? Array.from({ length: r }, (_, j) => (j === 0 ? undefined : outputs.region(j))) : [];
  const outParts = qParts.map((qc, i) => {
    const n = rows[i];
    const scores = g.op('Mul', [g.op('MatMul', [qc, kh]), g.scalar(1 / Math.sqrt(d))]);
    const probs = g.op('Softmax', [scores], { axis: -1 });
    if (probsOutput) mapParts.push(g.op('ReduceMean', [probs], { axes: [1], keepdims: 0 }));
    const perRegion = g.op('MatMul', [probs, vh]); // [B, heads, R, rows, d]
    if (!outputs) {
      const ctx = g.op('Mul', [perRegion, g.op('Reshape', [wParts[i], g.ints([1, 1, r, n, 1])])]);
      return g.op('ReduceSum', [ctx, g.ints([2])], { keepdims: 0 }); // [B, heads, rows, d]
    }
    // [B, R, rows, C], then one projection per region, weighted by its mask and summed
    const tokens = g.op('Reshape', [g.op('Transpose', [perRegion], { perm: [0, 2, 3, 1, 4] }), g.ints([b, r, n * c])]);
    const parts = r === 1 ? [tokens] : g.opMulti('Split', [tokens, g.ints(new Array(r).fill(1))], r, { axis: 1 });
    const w = r === 1 ? [wParts[i]] : g.opMulti('Split', [wParts[i], g.ints(new Array(r).fill(1))], r, { axis: 0 });
    let sum = '';
    for (let j = 0; j < r; j++) {
      const x = g.op('Reshape', [parts[j], g.ints([b * n, c])]);
      const own = projections[j];
      const y = own ? g.op('Gemm', [x, own.weight, own.bias], { transB: 1 }) : linear(g, x, outputs.shared, c, c);
      const weighted = g.op('Mul', [g.op('Reshape', [y, g.ints([b, n, c])]), g.op('Reshape', [w[j], g.ints([1, n, 1])])]);
      sum = sum ? g.op('Add', [sum, weighted]) : weighted;
    }
    return sum; // [B, rows, C]
  });
  if (probsOutput) {
    const mean = mapParts.length === 1 ? mapParts[0] : g.op('Concat', mapParts, { axis: 2 });
    g.output(g.dtype === 'float16' ? g.op('Cast', [mean], { to: 1 }) : mean, probsOutput, 'float32', [b, r, nq, nk]);
  }
  if (!outputs) {
    const summed = outParts.length === 1 ? outParts[0] : g.op('Concat', outParts, { axis: 2 });
    return g.op('Reshape', [g.op('Transpose', [summed], { perm: [0, 2, 1, 3] }), g.ints([b * nq, c])]);
  }
  return g.op('Reshape', [outParts.length === 1 ? outParts[0] : g.op('Concat', outParts, { axis: 1 }), g.ints([b * nq, c])]);
}

/** NCHW -> tokens [B*H*W, C]. */
export function toTokens(g: GraphBuilder, x: Feat): string {
  const t = g.op('Transpose', [g.op('Reshape', [x.v, g.ints([x.b, x.c, x.h * x.w])])], { perm: [0, 2, 1] });
  return g.op('Reshape', [t, g.ints([x.b * x.h * x.w, x.c])]);
}

/** tokens [B*H*W, C] -> NCHW. */
export function fromTokens(g: GraphBuilder, t: string, like: Feat): Feat {
  const r = g.op('Transpose', [g.op('Reshape', [t, g.ints([like.b, like.h * like.w, like.c])])], { perm: [0, 2, 1] });
  return { ...like, v: g.op('Reshape', [r, g.ints([like.b, like.c, like.h, like.w])]) };
}

export function upsampleNearest2x(g: GraphBuilder, x: Feat): Feat {
  const scales = g.floatsF32([1, 1, 2, 2]);
  const v = g.op('Resize', [x.v, '', scales], { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' });
  return { ...x, v, h: x.h * 2, w: x.w * 2 };
}
