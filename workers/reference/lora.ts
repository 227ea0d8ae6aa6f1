// Float64 CPU twins of the LoRA merge, written from the formulas, for tests.
type Arr = ArrayLike<number>;

export interface ReferenceTerm {
  up: Arr; // [rows, rank]
  down: Arr; // [rank, cols]
  rank: number;
  scale: number;
  hadamard?: { up: Arr; down: Arr; rank: number };
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

/** W' = W + sum_t scale_t * delta_t, in float64. */
export function mergeReference(base: Arr, rows: number, cols: number, terms: ReferenceTerm[]): Float64Array {
  const out = Float64Array.from(base as ArrayLike<number>);
  for (const t of terms) {
    const d = lowRank(t.up, t.down, t.rank, rows, cols);
    const h = t.hadamard ? lowRank(t.hadamard.up, t.hadamard.down, t.hadamard.rank, rows, cols) : undefined;
    for (let i = 0; i < out.length; i++) out[i] += t.scale * d[i] * (h ? h[i] : 1);
  }
  return out;
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
