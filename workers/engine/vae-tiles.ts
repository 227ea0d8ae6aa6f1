// A VAE decode in overlapping tiles, for when the whole image's decode does not fit the memory plan
// (at 512x512 the decoder's full-resolution feature maps, not the UNet, set the peak). Every tile has
// the same latent size, so one compiled graph decodes them all; tiles overlap by `overlap` latent
// cells and are feathered together: inside an overlap each tile's weight ramps linearly from its
// edge, and every pixel is the weighted mean of the tiles that cover it (weights sum to one).
// Like any tiled decode (diffusers' `enable_vae_tiling` too) the result differs slightly from the
// whole decode, because each tile's group norms and mid-block attention see only that tile.

export interface VaeTiling {
  /** Tile side in latent cells (clamped to the latent's own size per axis). */
  tile: number;
  /** Overlap between neighbouring tiles, in latent cells. */
  overlap: number;
}

/** Tile starts along one axis of `n` cells: equal tiles of `size`, the last one flush with the end. */
export function tileStarts(n: number, size: number, overlap: number): number[] {
  if (size >= n) return [0];
  if (overlap >= size) throw new RangeError(`a tile's overlap (${overlap}) must be below its size (${size})`);
  const stride = size - overlap;
  const starts: number[] = [];
  for (let s = 0; s + size < n; s += stride) starts.push(s);
  starts.push(n - size);
  return starts;
}

/**
 * The weight of pixel p (0-based, in a tile of `size` pixels starting at `start`) along one axis:
 * a linear ramp over the part the tile shares with its neighbour on each side, 1 elsewhere.
 */
function ramp(p: number, start: number, size: number, before: number | undefined, after: number | undefined): number {
  let w = 1;
  // the overlap with the previous tile: [start, prevEnd)
  if (before !== undefined && before > start) {
    const width = before - start;
    if (p - start < width) w = Math.min(w, (p - start + 0.5) / width);
  }
  // the overlap with the next tile: [nextStart, start + size)
  if (after !== undefined && after < start + size) {
    const width = start + size - after;
    if (p >= after) w = Math.min(w, (start + size - p - 0.5) / width);
  }
  return w;
}

/**
 * Decode `latent` [C, lh, lw] tile by tile; `decode` turns one latent tile [C, th, tw] into its pixels
 * [3, th*8, tw*8]. Returns [3, lh*8, lw*8]. The encoder runs the same way the other way round: the
 * picture's planes as `latent`, tiles and overlap in pixels (multiples of 8), `scale` 1/8 and
 * `outChannels` the latent's.
 */
export async function decodeTiled(
  latent: Float32Array,
  dims: { channels: number; lh: number; lw: number },
  tiling: VaeTiling,
  decode: (tile: Float32Array, th: number, tw: number) => Promise<Float32Array>,
  scale = 8,
  outChannels = 3,
): Promise<Float32Array> {
  const { channels, lh, lw } = dims;
  const th = Math.min(tiling.tile, lh);
  const tw = Math.min(tiling.tile, lw);
  const rows = tileStarts(lh, th, tiling.overlap);
  const cols = tileStarts(lw, tw, tiling.overlap);
  const H = lh * scale;
  const W = lw * scale;
  const sum = new Float64Array(outChannels * H * W);
  const weight = new Float64Array(H * W);
  const tile = new Float32Array(channels * th * tw);
  for (let ri = 0; ri < rows.length; ri++) {
    for (let ci = 0; ci < cols.length; ci++) {
      const r0 = rows[ri];
      const c0 = cols[ci];
      for (let c = 0; c < channels; c++)
        for (let y = 0; y < th; y++) tile.set(latent.subarray((c * lh + r0 + y) * lw + c0, (c * lh + r0 + y) * lw + c0 + tw), (c * th + y) * tw);
      const px = await decode(tile, th, tw);
      const [y0, x0, ph, pw] = [r0 * scale, c0 * scale, th * scale, tw * scale];
      const prevRowEnd = ri > 0 ? (rows[ri - 1] + th) * scale : undefined;
      const nextRow = ri < rows.length - 1 ? rows[ri + 1] * scale : undefined;
      const prevColEnd = ci > 0 ? (cols[ci - 1] + tw) * scale : undefined;
      const nextCol = ci < cols.length - 1 ? cols[ci + 1] * scale : undefined;
      const wx = Array.from({ length: pw }, (_, x) => ramp(x0 + x, x0, pw, prevColEnd, nextCol));
      for (let y = 0; y < ph; y++) {
        const wy = ramp(y0 + y, y0, ph, prevRowEnd, nextRow);
        for (let x = 0; x < pw; x++) {
          const w = wy * wx[x];
          const at = (y0 + y) * W + x0 + x;
          weight[at] += w;
          for (let k = 0; k < outChannels; k++) sum[k * H * W + at] += w * px[(k * ph + y) * pw + x];
        }
      }
    }
  }
  const out = new Float32Array(outChannels * H * W);
  for (let k = 0; k < outChannels; k++) for (let i = 0; i < H * W; i++) out[k * H * W + i] = sum[k * H * W + i] / weight[i];
  return out;
}
