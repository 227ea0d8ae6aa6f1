// Float64 CPU twins of the LoRA merge, written from the formulas, for tests.
type Arr = ArrayLike<number>;

export interface ReferenceTerm {
  up: Arr; // [rows, rank]
  down: Arr; // [rank, cols]
  rank: number;
  scale: number;
  hadamard?: { up: Arr; down: Arr; rank: number };
  /** LoKr: the delta is kron(w1, up @ down), w1 [rows, cols]; up @ down is the second factor, and
   * rank 0 means `up` is that factor written out. */
  kron?: { w1: Arr; rows: number; cols: number };
  /** DoRA: see doraReference; `scale` is then the multiplier alone and `alpha` the layer's alpha / rank. */
  dora?: { magnitude: Arr; perInput: boolean; kernel: number; alpha: number };
}

function lowRank(up: Arr, down: Arr, rank: number, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < rank; k++) {
      const a = up[r * rank + k];
      for (let c = 0; c < cols; c++) out[r * cols + c] += a * down[k * cols + c];
    }
  }
  return out;
}

/** W' = W + sum_t scale_t * delta_t, in float64 (a DoRA term adds scale_t times its own difference). */
export function mergeReference(base: Arr, rows: number, cols: number, terms: ReferenceTerm[]): Float64Array {
  const out = Float64Array.from(base as ArrayLike<number>);
  for (const t of terms) {
    let d: Float64Array;
    if (t.kron) {
      const b = rows / t.kron.rows;
      const dK = cols / t.kron.cols;
      const w2 = t.rank === 0 ? t.up : lowRank(t.up, t.down, t.rank, b, dK);
      d = kronReference(t.kron.w1, t.kron.rows, t.kron.cols, w2, b, dK, 1);
    } else {
      d = lowRank(t.up, t.down, t.rank, rows, cols);
      if (t.hadamard) {
        const h = lowRank(t.hadamard.up, t.hadamard.down, t.hadamard.rank, rows, cols);
        for (let i = 0; i < d.length; i++) d[i] *= h[i];
      }
    }
    if (t.dora) d = doraReference(base, d, rows, cols, t.dora.alpha, t.dora.magnitude, t.dora.perInput, t.dora.kernel);
    for (let i = 0; i < out.length; i++) out[i] += t.scale * d[i];
  }
  return out;
}

/**
 * torch.kron of w1 [a, c] (given trailing unit dims) and w2 [b, d, kernel...] (the kernel's
 * positions flattened to `k`): out[i*b + j, k*d + l, s] = w1[i, k] * w2[j, l, s], row-major as
 * [a*b, c*d*k]. `w2Cols` is d*k. Linear layers have k = 1.
 */
export function kronReference(w1: Arr, a: number, c: number, w2: Arr, b: number, w2Cols: number, k: number): Float64Array {
  const d = w2Cols / k;
  const cols = c * w2Cols;
  const out = new Float64Array(a * b * cols);
  for (let i = 0; i < a; i++)
    for (let j = 0; j < b; j++)
      for (let kk = 0; kk < c; kk++)
        for (let l = 0; l < d; l++)
          for (let s = 0; s < k; s++) out[(i * b + j) * cols + (kk * d + l) * k + s] = w1[i * c + kk] * w2[(j * d + l) * k + s];
  return out;
}

/**
 * DoRA's difference from the base weight, at multiplier 1: V = W + alpha * delta, then every output
 * channel (row; `perInput`: every input channel, the `kernel` adjacent columns of each across all
 * rows) of V is scaled to the magnitude m: W' = m * V / ||V||, and the result is W' - W.
 */
export function doraReference(base: Arr, delta: Arr, rows: number, cols: number, alpha: number, magnitude: Arr, perInput: boolean, kernel: number): Float64Array {
  const v = Float64Array.from({ length: rows * cols }, (_, i) => base[i] + alpha * delta[i]);
  const channel = (i: number) => (perInput ? Math.floor((i % cols) / kernel) : Math.floor(i / cols));
  const sums = new Float64Array(perInput ? cols / kernel : rows);
  for (let i = 0; i < v.length; i++) sums[channel(i)] += v[i] * v[i];
  return v.map((x, i) => (magnitude[channel(i)] / Math.sqrt(sums[channel(i)])) * x - base[i]);
}

/** LoHa with Tucker cores: w[o, i, y, x] = sum_{n,m} t[n, m, y, x] a[n, o] b[m, i] (a: [rank, out], b: [rank, in]). */
export function tuckerReference(t: Arr, a: Arr, b: Arr, out: number, inC: number, rank: number, kh: number, kw: number): Float64Array {
  const d = new Float64Array(out * inC * kh * kw);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inC; i++)
      for (let y = 0; y < kh; y++)
        for (let x = 0; x < kw; x++) {
          let s = 0;
          for (let n = 0; n < rank; n++)
            for (let m = 0; m < rank; m++) s += t[((n * rank + m) * kh + y) * kw + x] * a[n * out + o] * b[m * inC + i];
          d[((o * inC + i) * kh + y) * kw + x] = s;
        }
  return d;
}

/** LoCon with a mid tensor (CP form): dW[o, i, y, x] = sum_{n,m} up[o, n] mid[n, m, y, x] down[m, i],
 * the Tucker form above with `a` = up transposed. */
export function cpDeltaReference(up: Arr, mid: Arr, down: Arr, out: number, inC: number, rank: number, kh: number, kw: number): Float64Array {
  const a = new Float64Array(rank * out);
  for (let o = 0; o < out; o++) for (let n = 0; n < rank; n++) a[n * out + o] = up[o * rank + n];
  return tuckerReference(mid, a, down, out, inC, rank, kh, kw);
}
