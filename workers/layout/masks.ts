// Concept boxes as masks on every attention grid of the UNet, and the self-attention bias of concept
// isolation. Two rules make a box's cells:
// - `covered` (LoRA-Composer's code, multi_lora_sample.py: ceil of the start, floor of the end): a
//   cell belongs to a box when the box covers all of it. A box narrower than a cell at a coarse grid
//   has no cells there, as in the code.
// - `centre` (ours): a cell belongs to a box when its centre lies inside (nearest-neighbour resizing of
//   the pixel mask); a box too small to hold any centre keeps the cell under its own centre, so no
//   concept disappears from the coarse layers.
// Cells outside every box are background.
import type { IsolationScope, MaskRule } from '../api/contract.ts';
import { ISOLATION_BLOCKED, ISOLATION_FACTORS } from '../graph/layers.ts';
import type { SceneBox } from './scene.ts';

export type { IsolationScope, MaskRule };
export const MASK_RULES: MaskRule[] = ['covered', 'centre'];

type Rect = Pick<SceneBox, 'x' | 'y' | 'width' | 'height'>;

/** A box in whole cells of one grid: top-left cell and size. */
export interface CellBox {
  row: number;
  col: number;
  rows: number;
  cols: number;
}

export interface GridMasks {
  rows: number;
  cols: number;
  /** One mask per box, 1 inside. */
  boxes: Uint8Array[];
  /** Each box's cells as a rectangle; null where the box has no cell on this grid. */
  extents: (CellBox | null)[];
  /** 1 where no box is. */
  background: Uint8Array;
}

/** The cells a box covers completely: rows ceil(y0) .. floor(y1), in cells (exact for whole-pixel boxes). */
function coveredExtent(box: Rect, frameW: number, frameH: number, rows: number, cols: number): CellBox | null {
  const r0 = Math.ceil((box.y * rows) / frameH);
  const r1 = Math.min(rows, Math.floor(((box.y + box.height) * rows) / frameH));
  const c0 = Math.ceil((box.x * cols) / frameW);
  const c1 = Math.min(cols, Math.floor(((box.x + box.width) * cols) / frameW));
  return r1 > r0 && c1 > c0 ? { row: r0, col: c0, rows: r1 - r0, cols: c1 - c0 } : null;
}

function centreMask(box: Rect, frameW: number, frameH: number, rows: number, cols: number): Uint8Array {
  const cw = frameW / cols;
  const ch = frameH / rows;
  const mask = new Uint8Array(rows * cols);
  let any = false;
  for (let r = 0; r < rows; r++) {
    const cy = (r + 0.5) * ch;
    if (cy < box.y || cy >= box.y + box.height) continue;
    for (let c = 0; c < cols; c++) {
      const cx = (c + 0.5) * cw;
      if (cx >= box.x && cx < box.x + box.width) {
        mask[r * cols + c] = 1;
        any = true;
      }
    }
  }
  if (!any) {
    const r = Math.min(rows - 1, Math.floor((box.y + box.height / 2) / ch));
    const c = Math.min(cols - 1, Math.floor((box.x + box.width / 2) / cw));
    mask[r * cols + c] = 1;
  }
  return mask;
}

/** The rectangle of a mask's nonzero cells (masks from either rule are rectangles), or null when it has none. */
export function maskExtent(mask: Uint8Array, rows: number, cols: number): CellBox | null {
  let r0 = rows;
  let r1 = -1;
  let c0 = cols;
  let c1 = -1;
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++)
      if (mask[r * cols + c]) {
        r0 = Math.min(r0, r);
        r1 = Math.max(r1, r);
        c0 = Math.min(c0, c);
        c1 = Math.max(c1, c);
      }
  return r1 < 0 ? null : { row: r0, col: c0, rows: r1 - r0 + 1, cols: c1 - c0 + 1 };
}

/** The box's cells on a rows x cols grid over a frameW x frameH image. */
export function rasterBox(box: Rect, frameW: number, frameH: number, rows: number, cols: number, rule: MaskRule = 'covered'): Uint8Array {
  if (rule === 'centre') return centreMask(box, frameW, frameH, rows, cols);
  const mask = new Uint8Array(rows * cols);
  const e = coveredExtent(box, frameW, frameH, rows, cols);
  if (e) for (let r = e.row; r < e.row + e.rows; r++) mask.fill(1, r * cols + e.col, r * cols + e.col + e.cols);
  return mask;
}

export function gridMasks(boxes: Rect[], frameW: number, frameH: number, rows: number, cols: number, rule: MaskRule = 'covered'): GridMasks {
  const masks = boxes.map((b) => rasterBox(b, frameW, frameH, rows, cols, rule));
  const background = new Uint8Array(rows * cols).map((_, i) => (masks.some((m) => m[i]) ? 0 : 1));
  return { rows, cols, boxes: masks, extents: masks.map((m) => maskExtent(m, rows, cols)), background };
}

/** The distinct grids of a UNet's attention layers, largest first. */
export function attentionGrids(layers: { h: number; w: number }[]): { rows: number; cols: number }[] {
  const seen = new Map<string, { rows: number; cols: number }>();
  for (const l of layers) seen.set(`${l.h}x${l.w}`, { rows: l.h, cols: l.w });
  return [...seen.values()].sort((a, b) => b.rows * b.cols - a.rows * a.cols);
}

/** What softmax sees for a forbidden pair: exp(-1e4) is 0 in float32 and float16 alike. */
export const BLOCKED = ISOLATION_BLOCKED;

/**
 * Which self-attention pairs concept isolation cuts:
 * - `concepts` (LoRA-Composer's code, multi_lora_sample.py ~392-404, and the paper's "concept region
 *   mask"): a query in box a may not see a key in any other box b; background queries see everything
 *   and box queries see the background.
 * - `regions` (ours before we read the code): every region is walled off, the background counted as
 *   one, so a concept never sees its surroundings.
 */
export const ISOLATION_SCOPES: IsolationScope[] = ['concepts', 'regions'];

/**
 * The additive bias [n, n] (query rows) of concept isolation. The code adds -1e6 once per (box of the
 * query, other box of the key) pair; we block a pair once, whatever the count, so the bias stays within
 * float16. The two differ only in a query row whose every key is blocked, which the code then
 * resolves by the counts and we leave unmasked.
 */
export function isolationBias(m: GridMasks, scope: IsolationScope = 'concepts'): Float32Array {
  const n = m.rows * m.cols;
  // each cell's boxes as a bit set (at most MAX_BOXES = 8 boxes)
  const sets = new Uint32Array(n);
  m.boxes.forEach((b, i) => b.forEach((v, q) => v && (sets[q] |= 1 << i)));
  const single = (s: number) => s !== 0 && (s & (s - 1)) === 0;
  const bias = new Float32Array(n * n);
  for (let q = 0; q < n; q++) {
    const a = sets[q];
    for (let k = 0; k < n; k++) {
      const b = sets[k];
      // concepts: some box of the query differs from some box of the key (impossible only when either
      // is background or both are the same single box); regions: no region in common
      const blocked = scope === 'concepts' ? a !== 0 && b !== 0 && !(a === b && single(a)) : (a & b) === 0 && (a | b) !== 0;
      if (blocked) bias[q * n + k] = BLOCKED;
    }
  }
  return bias;
}

/**
 * Concept isolation's bias in factors, [2, n, F] (F = ISOLATION_FACTORS): left L and right R with
 * isolationBias = BLOCKED * relu(L R^T), which the UNet graph computes for the query rows of one
 * attention chunk at a time, so the n x n bias (512 MiB in fp16 at 1024x1024) is never a buffer.
 * With N the cell's "in some box", S its box when it is in exactly one, M its boxes and G its
 * "in no box" (all 0 or 1):
 * - concepts: blocked = N_q N_k - S_q . S_k (both in boxes, unless both in the same single box),
 *   L = [N, S], R = [N, -S];
 * - regions: blocked = relu(1 - M_q . M_k - G_q G_k) (no box in common, not both background),
 *   L = [1, M, G], R = [1, -M, -G].
 * Every product is a small whole number, so the graph's bias is exactly this one in fp16 and fp32.
 */
export function isolationFactors(m: GridMasks, scope: IsolationScope = 'concepts'): Float32Array {
  const n = m.rows * m.cols;
  const F = ISOLATION_FACTORS;
  const boxes = m.boxes.length;
  if (boxes > F - 2) throw new Error(`concept isolation takes at most ${F - 2} boxes, got ${boxes}`);
  const out = new Float32Array(2 * n * F);
  const left = (q: number, f: number, v: number) => (out[q * F + f] = v);
  const right = (q: number, f: number, v: number) => (out[(n + q) * F + f] = v);
  for (let q = 0; q < n; q++) {
    const inside = m.boxes.filter((b) => b[q]).length;
    if (scope === 'concepts') {
      const some = inside > 0 ? 1 : 0;
      left(q, 0, some);
      right(q, 0, some);
      if (inside === 1) {
        const j = m.boxes.findIndex((b) => b[q]);
        left(q, 1 + j, 1);
        right(q, 1 + j, -1);
      }
    } else {
      left(q, 0, 1);
      right(q, 0, 1);
      m.boxes.forEach((b, j) => b[q] && (left(q, 1 + j, 1), right(q, 1 + j, -1)));
      if (!inside) {
        left(q, 1 + boxes, 1);
        right(q, 1 + boxes, -1);
      }
    }
  }
  return out;
}

/**
 * Weights of the regions for region-aware cross-attention, [R, n] with R = 1 + boxes: the background
 * (global prompt) first, then each box; a cell in several boxes shares itself equally among them (the
 * code divides each region's output by the cell's box count).
 */
export function regionWeights(m: GridMasks): Float32Array {
  const n = m.rows * m.cols;
  const regions = [m.background, ...m.boxes];
  const out = new Float32Array(regions.length * n);
  for (let i = 0; i < n; i++) {
    const count = regions.reduce((a, r) => a + r[i], 0);
    regions.forEach((r, k) => (out[k * n + i] = r[i] / count));
  }
  return out;
}
