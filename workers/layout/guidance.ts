// LoRA-Composer's guidance losses (Sec. 3.3-3.4, Eq. 4-9) on attention maps at one grid, with their
// gradients with respect to the maps: plain float64 on the CPU (the maps are small); the gradient with
// respect to the latent then comes from the UNet's backward graph seeded with these.
//   L = L_ce + alpha * L_fill + beta * L_region
// The concept map of a box is its prompt's attention per cell taken as a distribution over the cells
// and scaled by the box's cell count (1 in every box cell when the concept fills the box evenly and
// nothing else), so the terms below read the same for any box size and lowering them draws attention
// into the box rather than only sharpening it.
// L_ce: 1 - the mean of the top S values of each box's concept map times its mask times a Gaussian
//   centred in the box (Eq. 4).
// L_fill: 1 - the max-projections of the map on both axes, over the box's columns and rows (Eq. 5-7).
// L_region: the mean of the top P self-attention probabilities from a box's cells to cells outside it
//   (Eq. 8).

export interface GuidanceSwitches {
  ce: boolean;
  fill: boolean;
  region: boolean;
}

export interface GuidanceBox {
  /** 1 for the cells inside the box, row-major over the grid. */
  mask: Uint8Array;
  /** The box in cells, for its Gaussian. */
  row: number;
  col: number;
  rows: number;
  cols: number;
}

export interface GuidanceLossOptions extends GuidanceSwitches {
  alpha: number;
  beta: number;
  /** S and P of Eq. 4 and 8 as a share of the box's cells (at least one). */
  topShare: number;
}

/** The schedule a job or scene leaves open: BoxDiff's phi, the first half of the steps guided, early stop on. */
export const GUIDANCE_SCHEDULE_DEFAULTS = { scale: 20, share: 0.5, earlyStop: true };
/** The largest phi the studio, the CLI and the engine accept. */
export const GUIDANCE_MAX_SCALE = 1000;

export const GUIDANCE_DEFAULTS: GuidanceLossOptions = { ce: true, fill: true, region: true, alpha: 0.25, beta: 0.8, topShare: 0.2 };

export interface GuidanceLoss {
  total: number;
  ce: number;
  fill: number;
  region: number;
  /** dL / d(concept map) per box, [cells]. */
  dConcept: Float64Array[];
  /** dL / d(self-attention map) [cells x cells], when region is on. */
  dSelf?: Float64Array;
}

/** A Gaussian over the grid centred in the box, with a standard deviation of half its size per axis, peak 1. */
export function boxGaussian(box: GuidanceBox, gridRows: number, gridCols: number): Float64Array {
  const g = new Float64Array(gridRows * gridCols);
  const cy = box.row + (box.rows - 1) / 2;
  const cx = box.col + (box.cols - 1) / 2;
  const sy = Math.max(0.5, box.rows / 2);
  const sx = Math.max(0.5, box.cols / 2);
  for (let r = 0; r < gridRows; r++) for (let c = 0; c < gridCols; c++) g[r * gridCols + c] = Math.exp(-0.5 * (((r - cy) / sy) ** 2 + ((c - cx) / sx) ** 2));
  return g;
}

/** Indices of the `k` largest values among `candidates` (ties: the lower index first). */
function topIndices(values: ArrayLike<number>, candidates: number[], k: number): number[] {
  return [...candidates].sort((a, b) => values[b] - values[a] || a - b).slice(0, k);
}

const countOf = (share: number, cells: number) => Math.max(1, Math.ceil(share * cells));

/**
 * The loss and its gradients. `concept[n]` is box n's concept map [cells] (its prompt's attention,
 * not normalised; every value >= 0), `self` the self-attention map [cells x cells] (query rows).
 */
export function guidanceLoss(boxes: GuidanceBox[], concept: Float64Array[], self: Float64Array | undefined, gridRows: number, gridCols: number, o: GuidanceLossOptions = GUIDANCE_DEFAULTS): GuidanceLoss {
  const cells = gridRows * gridCols;
  let ce = 0;
  let fill = 0;
  let region = 0;
  const dConcept: Float64Array[] = [];
  const dSelf = o.region && self ? new Float64Array(cells * cells) : undefined;
  boxes.forEach((box, n) => {
    const a = concept[n];
    // the map as a distribution over the cells, times the box's cell count: 1 in every box cell when the
    // concept's attention fills the box evenly and nothing else; raising its top values inside the box
    // draws attention from outside
    const inside = [...box.mask.keys()].filter((q) => box.mask[q]);
    let sum = 0;
    for (let q = 0; q < cells; q++) sum += a[q];
    sum = Math.max(sum, 1e-12) / inside.length;
    const an = Float64Array.from(a, (v) => v / sum);
    const dAn = new Float64Array(cells);
    if (o.ce) {
      const gauss = boxGaussian(box, gridRows, gridCols);
      const v = Float64Array.from(an, (x, q) => x * box.mask[q] * gauss[q]);
      const s = countOf(o.topShare, inside.length);
      const top = topIndices(v, inside, s);
      ce += 1 - top.reduce((p, q) => p + v[q], 0) / s;
      for (const q of top) dAn[q] -= gauss[q] / s;
    }
    if (o.fill) {
      const terms = box.cols + box.rows;
      let f = 0;
      for (let c = box.col; c < box.col + box.cols; c++) {
        let best = box.row * gridCols + c;
        for (let r = 0; r < gridRows; r++) if (an[r * gridCols + c] > an[best]) best = r * gridCols + c;
        f += 1 - an[best];
        dAn[best] -= o.alpha / terms;
      }
      for (let r = box.row; r < box.row + box.rows; r++) {
        let best = r * gridCols + box.col;
        for (let c = 0; c < gridCols; c++) if (an[r * gridCols + c] > an[best]) best = r * gridCols + c;
        f += 1 - an[best];
        dAn[best] -= o.alpha / terms;
      }
      fill += f / terms;
    }
    // back through the normalisation an = |box| a / sum(a)
    let dot = 0;
    for (let q = 0; q < cells; q++) dot += (dAn[q] * an[q]) / inside.length;
    const d = Float64Array.from(dAn, (v) => (v - dot) / sum);
    dConcept.push(d);
    if (dSelf && self) {
      const outside = [...box.mask.keys()].filter((q) => !box.mask[q]);
      if (!outside.length) return;
      const pairs = inside.flatMap((i) => outside.map((j) => i * cells + j));
      const p = countOf(o.topShare, inside.length);
      const top = topIndices(self, pairs, p);
      region += top.reduce((s, q) => s + self[q], 0) / p;
      for (const q of top) dSelf[q] += o.beta / p;
    }
  });
  const total = (o.ce ? ce : 0) + o.alpha * (o.fill ? fill : 0) + o.beta * (dSelf ? region : 0);
  return { total, ce, fill, region, dConcept, ...(dSelf ? { dSelf } : {}) };
}

/**
 * phi_t of Eq. 10: decays linearly over the denoising steps from `scale` to half of it, as BoxDiff's
 * scale range (1.0, 0.5) does.
 */
export function guidanceStepSize(scale: number, step: number, steps: number): number {
  return scale * (1 - 0.5 * (steps > 1 ? step / (steps - 1) : 0));
}
