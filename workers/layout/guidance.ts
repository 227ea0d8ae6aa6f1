// LoRA-Composer's guidance losses (Sec. 3.3-3.4, Eq. 4-9) as its code computes them
// (multi_lora_sample.py `_compute_max_attention_per_index` ~33-107 and `_compute_loss` ~142-153), on
// attention maps at one grid, with their gradients with respect to the maps: plain float64 on the CPU
// (the maps are small); the gradient with respect to the latent then comes from the UNet's backward
// graph seeded with these.
// Per concept token t of box n, with A its raw softmax probability per cell (heads and layers
// averaged), smoothed by the code's 3x3 Gaussian (sigma 0.5, reflect padding), M the box mask and G
// a Gaussian over the box (sigma half the box, peak 1):
//   ce    8 * max(0, 1 - mean(topk(A*M*G, k)))                        (Eq. 4)
//   fill  2 * L1(max over rows of A*M, cols of M) + 2 * L1(max over cols of A*M, rows of M)   (Eq. 5-7)
// and per box, with S the self-attention map (heads and layers averaged):
//   region  10 * max(0, mean(topk(S[box cells -> cells outside the box], k)))                (Eq. 8)
// with k = 20 % of the box's cells; L is the sum of all terms. The code's L1 is a mean over the whole
// grid's columns (rows), not only the box's.
import type { CellBox } from './masks.ts';

export interface GuidanceSwitches {
  ce: boolean;
  fill: boolean;
  region: boolean;
}

export interface GuidanceBox {
  /** 1 for the cells inside the box, row-major over the grid. */
  mask: Uint8Array;
  /** The box's cells as a rectangle (null when it has none on this grid: the box is skipped). */
  extent: CellBox | null;
}

export interface GuidanceLossOptions extends GuidanceSwitches {
  /** The code's weights: 8 per concept token (ce), 2 per axis (fill), 10 per box (region). */
  weights: { ce: number; fill: number; region: number };
  /** k of the top-k means, as a share of the box's cells (the code truncates; we keep at least one). */
  topShare: number;
  /** The Gaussian over the box in the ce term (the code's `gassion_sample`). */
  gaussian: boolean;
  /** The 3x3 smoothing of each token's map before ce and fill (the code's `smooth_attentions`). */
  smooth: boolean;
}

export const GUIDANCE_LOSS_DEFAULTS: GuidanceLossOptions = {
  ce: true,
  fill: true,
  region: true,
  weights: { ce: 8, fill: 2, region: 10 },
  topShare: 0.2,
  gaussian: true,
  smooth: true,
};

/**
 * The schedule a job or scene leaves open, as the code runs it: phi = 20 sqrt(linspace(1, 0.5)),
 * every step guided until early stop or step 25 (`lastStep`), early stop on. `share` (ours) can end
 * the guidance earlier.
 */
export const GUIDANCE_SCHEDULE_DEFAULTS = { scale: 20, share: 1, earlyStop: true, lastStep: 25 };
/** The largest phi the studio, the CLI and the engine accept. */
export const GUIDANCE_MAX_SCALE = 1000;

export interface GuidanceLoss {
  total: number;
  /** The weighted terms, summed over tokens (ce, fill) and boxes (region): total = ce + fill + region. */
  ce: number;
  fill: number;
  region: number;
  /** dL / d(token map) per box and concept token, [cells]. */
  dTokens: Float64Array[][];
  /** dL / d(self-attention map) [cells x cells], when region is on. */
  dSelf?: Float64Array;
}

/** The code's 3x3 smoothing kernel: exp(-((i - 1) / (2 sigma))^2) per axis, normalised to sum 1 (sigma 0.5: e^-d^2). */
export function smoothingKernel(sigma = 0.5): Float64Array {
  const k1 = [0, 1, 2].map((i) => Math.exp(-(((i - 1) / (2 * sigma)) ** 2)));
  const k = new Float64Array(9);
  for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) k[a * 3 + b] = k1[a] * k1[b];
  const sum = k.reduce((s, v) => s + v, 0);
  return k.map((v) => v / sum);
}

/** Reflect padding's index (the edge not repeated), or the edge itself on a one-cell axis. */
const reflect = (i: number, n: number) => (n === 1 ? 0 : i < 0 ? -i : i >= n ? 2 * n - 2 - i : i);

/** 3x3 smoothing with reflect padding, and its adjoint (for the gradient). */
export function smooth3x3(x: ArrayLike<number>, rows: number, cols: number, kernel = smoothingKernel()): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      let s = 0;
      for (let a = -1; a <= 1; a++) for (let b = -1; b <= 1; b++) s += kernel[(a + 1) * 3 + b + 1] * x[reflect(r + a, rows) * cols + reflect(c + b, cols)];
      out[r * cols + c] = s;
    }
  return out;
}

export function smooth3x3Adjoint(dy: ArrayLike<number>, rows: number, cols: number, kernel = smoothingKernel()): Float64Array {
  const dx = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++)
      for (let a = -1; a <= 1; a++) for (let b = -1; b <= 1; b++) dx[reflect(r + a, rows) * cols + reflect(c + b, cols)] += kernel[(a + 1) * 3 + b + 1] * dy[r * cols + c];
  return dx;
}

/** The code's Gaussian over a box: exp(-(x^2 + y^2) / 2) on linspace(-1, 1) per axis, divided by its maximum. */
export function boxGaussian(extent: CellBox, gridRows: number, gridCols: number): Float64Array {
  const g = new Float64Array(gridRows * gridCols);
  const lin = (n: number, i: number) => (n === 1 ? -1 : -1 + (2 * i) / (n - 1));
  let max = 0;
  for (let r = 0; r < extent.rows; r++)
    for (let c = 0; c < extent.cols; c++) {
      const v = Math.exp(-(lin(extent.rows, r) ** 2 / 2 + lin(extent.cols, c) ** 2 / 2));
      g[(extent.row + r) * gridCols + extent.col + c] = v;
      max = Math.max(max, v);
    }
  return g.map((v) => v / max);
}

/** Indices of the `k` largest values among `candidates` (ties: the lower index first). */
function topIndices(values: ArrayLike<number>, candidates: number[], k: number): number[] {
  return [...candidates].sort((a, b) => values[b] - values[a] || a - b).slice(0, k);
}

/** k of the top-k means: 20 % of the box's cells, truncated as the code does, at least one (ours: the code's 0 gives NaN). */
export const topCount = (share: number, cells: number) => Math.max(1, Math.floor(share * cells));

/**
 * The loss and its gradients. `tokens[n]` holds box n's concept-token maps [cells] (raw attention
 * probabilities), `self` the self-attention map [cells x cells] (query rows).
 */
export function guidanceLoss(boxes: GuidanceBox[], tokens: Float64Array[][], self: Float64Array | undefined, gridRows: number, gridCols: number, o: GuidanceLossOptions = GUIDANCE_LOSS_DEFAULTS): GuidanceLoss {
  const cells = gridRows * gridCols;
  const kernel = smoothingKernel();
  let ce = 0;
  let fill = 0;
  let region = 0;
  const dTokens: Float64Array[][] = [];
  const dSelf = o.region && self ? new Float64Array(cells * cells) : undefined;
  boxes.forEach((box, n) => {
    const e = box.extent;
    if (!e) {
      dTokens.push(tokens[n].map(() => new Float64Array(cells)));
      return;
    }
    const inside = [...box.mask.keys()].filter((q) => box.mask[q]);
    const all = [...Array(cells).keys()];
    const k = topCount(o.topShare, inside.length);
    const gauss = o.gaussian ? boxGaussian(e, gridRows, gridCols) : Float64Array.from(box.mask);
    dTokens.push(
      tokens[n].map((raw) => {
        const a = o.smooth ? smooth3x3(raw, gridRows, gridCols, kernel) : Float64Array.from(raw);
        const da = new Float64Array(cells);
        if (o.ce) {
          const v = Float64Array.from(a, (x, q) => x * box.mask[q] * gauss[q]);
          const top = topIndices(v, all, k);
          const term = 1 - top.reduce((s, q) => s + v[q], 0) / k;
          if (term > 0) {
            ce += o.weights.ce * term;
            for (const q of top) da[q] -= (o.weights.ce * box.mask[q] * gauss[q]) / k;
          }
        }
        if (o.fill) {
          // columns: max over rows of A*M against 1 in the box's columns, 0 elsewhere (where A*M is 0)
          for (let c = e.col; c < e.col + e.cols; c++) {
            let best = e.row * gridCols + c;
            for (let r = e.row; r < e.row + e.rows; r++) if (a[r * gridCols + c] > a[best]) best = r * gridCols + c;
            fill += (o.weights.fill * Math.abs(a[best] - 1)) / gridCols;
            da[best] += (o.weights.fill * Math.sign(a[best] - 1)) / gridCols;
          }
          for (let r = e.row; r < e.row + e.rows; r++) {
            let best = r * gridCols + e.col;
            for (let c = e.col; c < e.col + e.cols; c++) if (a[r * gridCols + c] > a[best]) best = r * gridCols + c;
            fill += (o.weights.fill * Math.abs(a[best] - 1)) / gridRows;
            da[best] += (o.weights.fill * Math.sign(a[best] - 1)) / gridRows;
          }
        }
        return o.smooth ? smooth3x3Adjoint(da, gridRows, gridCols, kernel) : da;
      }),
    );
    if (dSelf && self) {
      const outside = all.filter((q) => !box.mask[q]);
      if (!outside.length) return;
      const pairs = inside.flatMap((i) => outside.map((j) => i * cells + j));
      const top = topIndices(self, pairs, k);
      const term = top.reduce((s, q) => s + self[q], 0) / k;
      if (term > 0) {
        region += o.weights.region * term;
        for (const q of top) dSelf[q] += o.weights.region / k;
      }
    }
  });
  return { total: ce + fill + region, ce, fill, region, dTokens, ...(dSelf ? { dSelf } : {}) };
}

/** phi_t as the code's step size: `scale * sqrt(linspace(1, 0.5, steps)[step])` (~767, 801). */
export function guidanceStepSize(scale: number, step: number, steps: number): number {
  return scale * Math.sqrt(1 - 0.5 * (steps > 1 ? step / (steps - 1) : 0));
}

/**
 * The code's refinement schedule (~799-851): a step is guided while the flag holds; after the update
 * (made whenever L is not 0), the flag drops when L rose above the last kept L at step 5 or later, or
 * at `lastStep`. `guided` (ours, from the share) can end it sooner.
 */
export class RefineSchedule {
  private on = true;
  private previous = 1e3;
  stoppedAt: number | null = null;

  constructor(private readonly o: { earlyStop: boolean; lastStep: number; guided: number }) {}

  active(step: number): boolean {
    return this.on && step < this.o.guided;
  }

  /** After step `step`'s loss: whether the latent is updated (it is unless L is exactly 0). */
  record(step: number, loss: number): boolean {
    if ((this.o.earlyStop && this.previous < loss && step >= 5) || step >= this.o.lastStep) {
      this.on = false;
      this.stoppedAt = step;
    } else this.previous = loss;
    return loss !== 0;
  }
}
