// Concept boxes as masks on every attention grid of the UNet. A cell belongs to a box when its centre
// lies inside the box (nearest-neighbour resizing of the pixel mask, as resizing a layout image
// would do); a box too small to hold any cell centre at a coarse grid still gets the cell under its
// own centre, so no concept disappears from the 8x8 layers. Cells outside every box are background.
import type { SceneBox } from './scene.ts';

export interface GridMasks {
  rows: number;
  cols: number;
  /** One mask per box, 1 inside. */
  boxes: Uint8Array[];
  /** 1 where no box is. */
  background: Uint8Array;
}

/** The box's cells on a rows x cols grid over a frameW x frameH image. */
export function rasterBox(box: Pick<SceneBox, 'x' | 'y' | 'width' | 'height'>, frameW: number, frameH: number, rows: number, cols: number): Uint8Array {
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

export function gridMasks(boxes: Pick<SceneBox, 'x' | 'y' | 'width' | 'height'>[], frameW: number, frameH: number, rows: number, cols: number): GridMasks {
  const masks = boxes.map((b) => rasterBox(b, frameW, frameH, rows, cols));
  const background = new Uint8Array(rows * cols).map((_, i) => (masks.some((m) => m[i]) ? 0 : 1));
  return { rows, cols, boxes: masks, background };
}

/** The distinct grids of a UNet's attention layers, largest first. */
export function attentionGrids(layers: { h: number; w: number }[]): { rows: number; cols: number }[] {
  const seen = new Map<string, { rows: number; cols: number }>();
  for (const l of layers) seen.set(`${l.h}x${l.w}`, { rows: l.h, cols: l.w });
  return [...seen.values()].sort((a, b) => b.rows * b.cols - a.rows * a.cols);
}

/** What softmax sees for a forbidden pair: exp(-1e4) is 0 in float32 and float16 alike. */
export const BLOCKED = -1e4;

/**
 * Concept isolation for self-attention (Sec. 3.4): the additive bias [n, n] that lets a query attend
 * only to keys of a region it shares (the concept region mask), and keeps foreground and background
 * apart (region perceptual restriction). Cells in two overlapping boxes see both.
 */
export function isolationBias(m: GridMasks): Float32Array {
  const n = m.rows * m.cols;
  const regions = [...m.boxes, m.background];
  const bias = new Float32Array(n * n);
  for (let q = 0; q < n; q++)
    for (let k = 0; k < n; k++) {
      const shared = regions.some((r) => r[q] && r[k]);
      bias[q * n + k] = shared ? 0 : BLOCKED;
    }
  return bias;
}

/**
 * Weights of the regions for region-aware cross-attention, [R, n] with R = 1 + boxes: the background
 * (global prompt) first, then each box; a cell in several boxes shares itself equally among them.
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
