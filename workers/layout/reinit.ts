// Latent re-initialisation (LoRA-Composer Sec. 3.5): after one probe step from random noise, each
// concept's cross-attention map shows where the model would put it; the box-sized window with the
// most attention (Eq. 11) is found, that window of the noise is moved into the concept's box, and the
// latent is renormalised to a standard Gaussian.

export interface CellBox {
  /** Top-left cell and size, in cells of the latent grid. */
  row: number;
  col: number;
  rows: number;
  cols: number;
}

/** A box in pixels as whole latent cells (8 pixels each), clamped to the grid and at least one cell. */
export function cellBox(box: { x: number; y: number; width: number; height: number }, gridRows: number, gridCols: number, cell = 8): CellBox {
  const col = Math.min(gridCols - 1, Math.max(0, Math.round(box.x / cell)));
  const row = Math.min(gridRows - 1, Math.max(0, Math.round(box.y / cell)));
  const cols = Math.max(1, Math.min(gridCols - col, Math.round(box.width / cell)));
  const rows = Math.max(1, Math.min(gridRows - row, Math.round(box.height / cell)));
  return { row, col, rows, cols };
}

/** Eq. 11: the top-left of the rows x cols window of `map` [gridRows, gridCols] with the largest sum (first in raster order on ties). */
export function argmaxWindow(map: ArrayLike<number>, gridRows: number, gridCols: number, rows: number, cols: number): { row: number; col: number; sum: number } {
  // summed-area table, one row and column of zeros in front
  const W = gridCols + 1;
  const sat = new Float64Array((gridRows + 1) * W);
  for (let r = 0; r < gridRows; r++)
    for (let c = 0; c < gridCols; c++) sat[(r + 1) * W + c + 1] = map[r * gridCols + c] + sat[r * W + c + 1] + sat[(r + 1) * W + c] - sat[r * W + c];
  let best = { row: 0, col: 0, sum: -Infinity };
  for (let r = 0; r + rows <= gridRows; r++)
    for (let c = 0; c + cols <= gridCols; c++) {
      const sum = sat[(r + rows) * W + c + cols] - sat[r * W + c + cols] - sat[(r + rows) * W + c] + sat[r * W + c];
      if (sum > best.sum) best = { row: r, col: c, sum };
    }
  return best;
}

/**
 * The re-initialised latent [channels, gridRows, gridCols]: for each concept in order, the window of
 * `noise` where its map peaks is copied into its box; then the whole latent is brought to mean 0 and
 * standard deviation 1. Returns the windows found, for the report.
 */
export function reinitLatent(noise: Float32Array, channels: number, gridRows: number, gridCols: number, concepts: { box: CellBox; map: ArrayLike<number> }[]): { latent: Float32Array; windows: { row: number; col: number }[] } {
  const plane = gridRows * gridCols;
  const out = Float32Array.from(noise);
  const windows = concepts.map(({ box, map }) => {
    const w = argmaxWindow(map, gridRows, gridCols, box.rows, box.cols);
    for (let ch = 0; ch < channels; ch++)
      for (let r = 0; r < box.rows; r++)
        for (let c = 0; c < box.cols; c++) out[ch * plane + (box.row + r) * gridCols + box.col + c] = noise[ch * plane + (w.row + r) * gridCols + w.col + c];
    return { row: w.row, col: w.col };
  });
  let mean = 0;
  for (const v of out) mean += v;
  mean /= out.length;
  let variance = 0;
  for (const v of out) variance += (v - mean) ** 2;
  const std = Math.sqrt(variance / out.length) || 1;
  for (let i = 0; i < out.length; i++) out[i] = (out[i] - mean) / std;
  return { latent: out, windows };
}
