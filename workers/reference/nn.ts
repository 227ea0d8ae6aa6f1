// Plain float64 CPU twins of the graph blocks, written loop by loop from the definitions, for tests.
// Tensors are { data, shape } in row-major order; weights come by their diffusers names.

export interface T {
  data: Float64Array;
  shape: number[];
}

export type Weights = (name: string) => Float64Array;

export const tensor = (data: ArrayLike<number>, shape: number[]): T => ({ data: Float64Array.from(data), shape });

export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    // Maclaurin series: erf x = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
    let term = ax;
    let sum = ax;
    for (let n = 1; n < 200; n++) {
      term *= (-ax * ax) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // continued fraction for erfc (Lentz), accurate for x >= 3
  let f = ax;
  let c = ax;
  let d = 0;
  for (let n = 1; n < 200; n++) {
    const an = n / 2;
    d = ax + an * d;
    d = 1 / d;
    c = ax + an / c;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

export function conv2d(x: T, w: Float64Array, b: Float64Array, cout: number, k: number, stride = 1, pad = (k - 1) >> 1): T {
  const [B, C, H, W] = x.shape;
  const OH = Math.floor((H + 2 * pad - k) / stride) + 1;
  const OW = Math.floor((W + 2 * pad - k) / stride) + 1;
  const out = new Float64Array(B * cout * OH * OW);
  for (let n = 0; n < B; n++)
    for (let o = 0; o < cout; o++)
      for (let oy = 0; oy < OH; oy++)
        for (let ox = 0; ox < OW; ox++) {
          let s = b[o];
          for (let c = 0; c < C; c++)
            for (let ky = 0; ky < k; ky++) {
              const iy = oy * stride + ky - pad;
              if (iy < 0 || iy >= H) continue;
              for (let kx = 0; kx < k; kx++) {
                const ix = ox * stride + kx - pad;
                if (ix < 0 || ix >= W) continue;
                s += x.data[((n * C + c) * H + iy) * W + ix] * w[((o * C + c) * k + ky) * k + kx];
              }
            }
          out[((n * cout + o) * OH + oy) * OW + ox] = s;
        }
  return { data: out, shape: [B, cout, OH, OW] };
}

export function groupNorm(x: T, groups: number, gamma: Float64Array, beta: Float64Array, eps: number): T {
  const [B, C, H, W] = x.shape;
  const per = (C / groups) * H * W;
  const out = new Float64Array(x.data.length);
  for (let n = 0; n < B; n++)
    for (let g = 0; g < groups; g++) {
      const base = (n * C + g * (C / groups)) * H * W;
      let mean = 0;
      for (let i = 0; i < per; i++) mean += x.data[base + i];
      mean /= per;
      let v = 0;
      for (let i = 0; i < per; i++) v += (x.data[base + i] - mean) ** 2;
      v /= per;
      const inv = 1 / Math.sqrt(v + eps);
      for (let i = 0; i < per; i++) {
        const c = g * (C / groups) + Math.floor(i / (H * W));
        out[base + i] = (x.data[base + i] - mean) * inv * gamma[c] + beta[c];
      }
    }
  return { data: out, shape: x.shape };
}

export const map = (x: T, f: (v: number) => number): T => ({ data: x.data.map(f), shape: x.shape });
export const silu = (x: T) => map(x, (v) => v / (1 + Math.exp(-v)));
export const gelu = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));
export const quickGelu = (v: number) => v / (1 + Math.exp(-1.702 * v));

export function add(a: T, b: T): T {
  return { data: a.data.map((v, i) => v + b.data[i]), shape: a.shape };
}

/** [N, in] x W[out, in]^T + b -> [N, out] */
export function linear(x: T, w: Float64Array, b: Float64Array | undefined, outF: number): T {
  const [N, inF] = x.shape;
  const out = new Float64Array(N * outF);
  for (let n = 0; n < N; n++)
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) s += x.data[n * inF + i] * w[o * inF + i];
      out[n * outF + o] = s;
    }
  return { data: out, shape: [N, outF] };
}

export function layerNorm(x: T, gamma: Float64Array, beta: Float64Array, eps = 1e-5): T {
  const [N, C] = x.shape;
  const out = new Float64Array(x.data.length);
  for (let n = 0; n < N; n++) {
    let mean = 0;
    for (let c = 0; c < C; c++) mean += x.data[n * C + c];
    mean /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x.data[n * C + c] - mean) ** 2;
    v /= C;
    for (let c = 0; c < C; c++) out[n * C + c] = ((x.data[n * C + c] - mean) / Math.sqrt(v + eps)) * gamma[c] + beta[c];
  }
  return { data: out, shape: x.shape };
}

/**
 * Multi-head attention on token matrices q [B*Nq, C], k/v [B*Nk, C]. `bias(b, i, j)` is added to
 * the scores. Returns the output and the head-averaged probabilities [B, Nq, Nk].
 */
export function attention(q: T, k: T, v: T, b: number, heads: number, bias?: (n: number, i: number, j: number) => number): { out: T; probs: Float64Array } {
  const C = q.shape[1];
  const nq = q.shape[0] / b;
  const nk = k.shape[0] / b;
  const d = C / heads;
  const out = new Float64Array(b * nq * C);
  const probs = new Float64Array(b * nq * nk);
  const scores = new Float64Array(nk);
  for (let n = 0; n < b; n++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < nq; i++) {
        let max = -Infinity;
        for (let j = 0; j < nk; j++) {
          let s = 0;
          for (let e = 0; e < d; e++) s += q.data[(n * nq + i) * C + h * d + e] * k.data[(n * nk + j) * C + h * d + e];
          s = s / Math.sqrt(d) + (bias ? bias(n, i, j) : 0);
          scores[j] = s;
          if (s > max) max = s;
        }
        let z = 0;
        for (let j = 0; j < nk; j++) z += scores[j] = Math.exp(scores[j] - max);
        for (let j = 0; j < nk; j++) {
          const p = scores[j] / z;
          probs[(n * nq + i) * nk + j] += p / heads;
          for (let e = 0; e < d; e++) out[(n * nq + i) * C + h * d + e] += p * v.data[(n * nk + j) * C + h * d + e];
        }
      }
  return { out: { data: out, shape: [b * nq, C] }, probs };
}

/** Region-aware cross-attention in float64: per region r, attention to (k[r], v[r]) weighted by w[r][i]. */
export function regionalAttention(q: T, k: T[], v: T[], w: ArrayLike<number>[], b: number, heads: number): { out: T; probs: Float64Array[] } {
  const C = q.shape[1];
  const nq = q.shape[0] / b;
  const out = new Float64Array(b * nq * C);
  const probs = k.map((kr, r) => {
    const a = attention(q, kr, v[r], b, heads);
    for (let n = 0; n < b; n++) for (let i = 0; i < nq; i++) for (let c = 0; c < C; c++) out[(n * nq + i) * C + c] += w[r][i] * a.out.data[(n * nq + i) * C + c];
    return a.probs;
  });
  return { out: { data: out, shape: [b * nq, C] }, probs };
}

/**
 * LoRA-Composer's `region_rewrite` in float64, transcribed from the code rather than from our graph:
 * on an h x w grid, cells in no box keep the global attention (keys k[0], values v[0]) through the
 * global output projection outs[0]; a cell in boxes keeps none of it and takes, from each of its
 * boxes r, that region's attention through that region's projection outs[r], divided by its box
 * count. `boxes[r - 1]` is box r's cell rectangle [rowStart, colStart, rowEnd, colEnd) (end exclusive).
 */
export function regionRewrite(q: T, k: T[], v: T[], outs: { w: Float64Array; b: Float64Array }[], boxes: [number, number, number, number][], h: number, w: number, batch: number, heads: number): T {
  const C = q.shape[1];
  const n = h * w;
  const count = new Float64Array(n);
  for (const [r0, c0, r1, c1] of boxes) for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) count[r * w + c] += 1;
  const out = new Float64Array(batch * n * C);
  const project = (r: number) => linear(attention(q, k[r], v[r], batch, heads).out, outs[r].w, outs[r].b, C).data;
  const global = project(0);
  for (let b = 0; b < batch; b++) for (let i = 0; i < n; i++) if (!count[i]) for (let c = 0; c < C; c++) out[(b * n + i) * C + c] = global[(b * n + i) * C + c];
  boxes.forEach(([r0, c0, r1, c1], j) => {
    const y = project(j + 1);
    for (let b = 0; b < batch; b++)
      for (let r = r0; r < r1; r++)
        for (let c = c0; c < c1; c++) {
          const i = r * w + c;
          for (let e = 0; e < C; e++) out[(b * n + i) * C + e] += y[(b * n + i) * C + e] / count[i];
        }
  });
  return { data: out, shape: [batch * n, C] };
}

export function toTokens(x: T): T {
  const [B, C, H, W] = x.shape;
  const out = new Float64Array(x.data.length);
  for (let n = 0; n < B; n++) for (let c = 0; c < C; c++) for (let p = 0; p < H * W; p++) out[(n * H * W + p) * C + c] = x.data[(n * C + c) * H * W + p];
  return { data: out, shape: [B * H * W, C] };
}

export function fromTokens(t: T, like: number[]): T {
  const [B, C, H, W] = like;
  const out = new Float64Array(t.data.length);
  for (let n = 0; n < B; n++) for (let c = 0; c < C; c++) for (let p = 0; p < H * W; p++) out[(n * C + c) * H * W + p] = t.data[(n * H * W + p) * C + c];
  return { data: out, shape: like };
}

export function upsample2x(x: T): T {
  const [B, C, H, W] = x.shape;
  const out = new Float64Array(B * C * H * W * 4);
  for (let nc = 0; nc < B * C; nc++)
    for (let y = 0; y < 2 * H; y++)
      for (let xx = 0; xx < 2 * W; xx++) out[(nc * 2 * H + y) * 2 * W + xx] = x.data[(nc * H + (y >> 1)) * W + (xx >> 1)];
  return { data: out, shape: [B, C, 2 * H, 2 * W] };
}

export function concatChannels(a: T, b: T): T {
  const [B, Ca, H, W] = a.shape;
  const Cb = b.shape[1];
  const out = new Float64Array(B * (Ca + Cb) * H * W);
  const hw = H * W;
  for (let n = 0; n < B; n++) {
    out.set(a.data.subarray(n * Ca * hw, (n + 1) * Ca * hw), n * (Ca + Cb) * hw);
    out.set(b.data.subarray(n * Cb * hw, (n + 1) * Cb * hw), n * (Ca + Cb) * hw + Ca * hw);
  }
  return { data: out, shape: [B, Ca + Cb, H, W] };
}
