// A LoRA layer's change written out on the CPU: the wasm backend's merge, and the DoRA gains every
// backend needs. A DoRA layer's result is W' = g * (W + alpha * delta), g = m / ||W + alpha * delta||
// per channel; the gains depend only on the base weight and the file, so they are worked out once,
// when the LoRA is added, in float64, and the merge stays a sum of terms scaled by the strengths.
import type { LoraModule } from './load.ts';

/** up [rows, rank] @ down [rank, cols], float32. */
function product(up: Float32Array, down: Float32Array, rank: number, rows: number, cols: number): Float32Array {
  const p = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let k = 0; k < rank; k++) {
      const a = up[r * rank + k];
      if (a === 0) continue;
      const row = r * cols;
      const dk = k * cols;
      for (let c = 0; c < cols; c++) p[row + c] += a * down[dk + c];
    }
  return p;
}

/** The layer's delta at scale 1, as the target's [rows, cols] matrix (before alpha, before DoRA). */
export function moduleDelta(m: LoraModule): Float32Array {
  const { rows, cols } = m.target;
  if (m.kron) {
    const { w1, rows: a, cols: c } = m.kron;
    const b = rows / a;
    const w2Cols = cols / c;
    const w2 = m.factors.rank === 0 ? m.factors.up : product(m.factors.up, m.factors.down, m.factors.rank, b, w2Cols);
    const out = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      const i = Math.floor(r / b);
      const j = r % b;
      for (let col = 0; col < cols; col++) out[r * cols + col] = w1[i * c + Math.floor(col / w2Cols)] * w2[j * w2Cols + (col % w2Cols)];
    }
    return out;
  }
  const p = product(m.factors.up, m.factors.down, m.factors.rank, rows, cols);
  if (m.hadamard) {
    const q = product(m.hadamard.up, m.hadamard.down, m.hadamard.rank, rows, cols);
    for (let i = 0; i < p.length; i++) p[i] *= q[i];
  }
  return p;
}

/** Columns of one input channel (the kernel's positions) of the layer's target. */
export const kernelSize = (m: LoraModule) => m.target.dims.slice(2).reduce((a, b) => a * b, 1);

/** g = m / ||W + alpha * delta|| for each channel of a DoRA layer; `base` is the pristine weight. */
export function doraGains(m: LoraModule, base: Float32Array, delta = moduleDelta(m)): Float32Array {
  return channelGains(base, delta, m.target.cols, m.alphaScale, m.dora!.magnitude, m.dora!.perInput, kernelSize(m));
}

/** The gains of a [rows, cols] weight: per row, or per input channel of `kernel` adjacent columns. */
export function channelGains(base: ArrayLike<number>, delta: ArrayLike<number>, cols: number, alpha: number, magnitude: ArrayLike<number>, perInput: boolean, kernel: number): Float32Array {
  const sums = new Float64Array(magnitude.length);
  for (let i = 0; i < base.length; i++) {
    const v = base[i] + alpha * delta[i];
    sums[perInput ? Math.floor((i % cols) / kernel) : Math.floor(i / cols)] += v * v;
  }
  // an all-zero channel stays zero whatever its gain
  return Float32Array.from(sums, (s, i) => (s > 0 ? magnitude[i] / Math.sqrt(s) : 1));
}

/** Adds the layer's change to `out` as a merge term does: `scale` times the delta (the multiplier
 * times alpha / rank); DoRA: the multiplier times g * (W + alpha * delta) - W, `gains` its g. */
export function addModuleDelta(out: Float32Array, base: Float32Array, m: LoraModule, scale: number, gains?: Float32Array): void {
  const d = moduleDelta(m);
  if (!m.dora) {
    for (let i = 0; i < out.length; i++) out[i] += scale * d[i];
    return;
  }
  const { cols } = m.target;
  const k = kernelSize(m);
  for (let i = 0; i < out.length; i++) {
    const g = gains![m.dora.perInput ? Math.floor((i % cols) / k) : Math.floor(i / cols)];
    out[i] += scale * ((g - 1) * base[i] + g * (m.alphaScale * d[i]));
  }
}
