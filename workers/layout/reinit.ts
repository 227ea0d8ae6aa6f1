// Latent re-initialisation (LoRA-Composer Sec. 3.5, Eq. 11), as the code's `replace_latents` does it
// (multi_lora_sample.py ~186-229): a probe run of the UNet on the first noise gives, for each concept,
// its tokens' cross-attention maps on the guidance grid; the box-sized window with the most attention
// (a sum over the box's cells, i.e. a convolution with a ones kernel, top 1) is found, that window of
// the noise, scaled from grid cells to latent cells, is copied into the concept's box, and the whole
// latent is brought back to the first noise's mean and standard deviation.
import type { CellBox } from './masks.ts';

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

/** Mean and standard deviation (unbiased, as torch's `std`). */
export function meanStd(x: ArrayLike<number>): { mean: number; std: number } {
  let mean = 0;
  for (let i = 0; i < x.length; i++) mean += x[i];
  mean /= x.length;
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += (x[i] - mean) ** 2;
  return { mean, std: Math.sqrt(ss / Math.max(1, x.length - 1)) };
}

export interface ReinitConcept {
  /** The concept's box in cells of the map's grid. */
  box: CellBox;
  /** Its attention on that grid [gridRows * gridCols]: the sum of its concept tokens' maps. */
  map: ArrayLike<number>;
}

/**
 * The re-initialised latent [channels, gridRows * scale, gridCols * scale]: for each concept in order,
 * the window of `noise` where its map peaks is copied into its box (each read from the first noise,
 * not from what earlier concepts wrote); then the latent is brought to the noise's mean and standard
 * deviation. `scale` is latent cells per grid cell. Returns the windows found, in grid cells.
 */
export function reinitLatent(noise: Float32Array, channels: number, gridRows: number, gridCols: number, scale: number, concepts: ReinitConcept[]): { latent: Float32Array; windows: { row: number; col: number }[] } {
  const lh = gridRows * scale;
  const lw = gridCols * scale;
  const plane = lh * lw;
  const out = Float32Array.from(noise);
  const windows = concepts.map(({ box, map }) => {
    const w = argmaxWindow(map, gridRows, gridCols, box.rows, box.cols);
    for (let ch = 0; ch < channels; ch++)
      for (let r = 0; r < box.rows * scale; r++)
        for (let c = 0; c < box.cols * scale; c++) {
          out[ch * plane + (box.row * scale + r) * lw + box.col * scale + c] = noise[ch * plane + (w.row * scale + r) * lw + w.col * scale + c];
        }
    return { row: w.row, col: w.col };
  });
  const target = meanStd(noise);
  const now = meanStd(out);
  const k = now.std > 0 ? target.std / now.std : 1;
  for (let i = 0; i < out.length; i++) out[i] = (out[i] - now.mean) * k + target.mean;
  return { latent: out, windows };
}
