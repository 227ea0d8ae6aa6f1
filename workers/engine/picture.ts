// Pixel work around image to image, inpainting and the hires fix, on the CPU: pictures to the VAE's
// [-1, 1] planes, resampling, the mask's blur and its latent form, A1111's "only masked" crop, and the
// overlay that puts the kept pixels back. All arithmetic is float64 where it accumulates.
import type { ImageData8 } from '../api/contract.ts';
import { resizeBicubic } from '../eval/preprocess.ts';
import { maskExtent } from '../layout/masks.ts';

/** RGBA bytes -> [3, H, W] in [-1, 1] (what the VAE encoder reads). */
export function pictureToPlanes(img: ImageData8): Float32Array {
  const n = img.width * img.height;
  const out = new Float32Array(3 * n);
  for (let p = 0; p < n; p++) for (let c = 0; c < 3; c++) out[c * n + p] = (img.data[p * 4 + c] / 255) * 2 - 1;
  return out;
}

/**
 * Bilinear resize of planes [C, H, W] to [C, h, w], half-pixel centres without antialiasing, as
 * torch's interpolate(mode="bilinear", align_corners=False) (A1111's "Latent" upscaler).
 */
export function resizeBilinear(src: Float32Array, channels: number, H: number, W: number, h: number, w: number): Float32Array {
  const out = new Float32Array(channels * h * w);
  const axis = (n: number, N: number) =>
    Array.from({ length: n }, (_, i) => {
      const x = Math.max(0, ((i + 0.5) * N) / n - 0.5);
      const i0 = Math.min(Math.floor(x), N - 1);
      return { i0, i1: Math.min(i0 + 1, N - 1), f: x - i0 };
    });
  const ys = axis(h, H);
  const xs = axis(w, W);
  for (let c = 0; c < channels; c++) {
    const plane = c * H * W;
    for (let y = 0; y < h; y++) {
      const { i0, i1, f } = ys[y];
      for (let x = 0; x < w; x++) {
        const { i0: j0, i1: j1, f: g } = xs[x];
        const top = src[plane + i0 * W + j0] * (1 - g) + src[plane + i0 * W + j1] * g;
        const bottom = src[plane + i1 * W + j0] * (1 - g) + src[plane + i1 * W + j1] * g;
        out[(c * h + y) * w + x] = top * (1 - f) + bottom * f;
      }
    }
  }
  return out;
}

/**
 * The mask in [0, 1], blurred by a Gaussian of standard deviation `radius` pixels (A1111's mask blur;
 * the kernel reaches 2.5 sigma), separably, with the edge pixels repeated.
 */
export function blurMask(mask: Uint8Array, width: number, height: number, radius: number): Float32Array {
  const src = Float64Array.from(mask, (v) => v / 255);
  if (radius <= 0) return Float32Array.from(src);
  const r = Math.max(1, Math.ceil(2.5 * radius));
  const kernel = Array.from({ length: 2 * r + 1 }, (_, i) => Math.exp(-((i - r) ** 2) / (2 * radius * radius)));
  const total = kernel.reduce((a, b) => a + b, 0);
  const pass = (input: Float64Array, along: 'x' | 'y') => {
    const out = new Float64Array(input.length);
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++) {
        let s = 0;
        for (let k = -r; k <= r; k++) {
          const xx = along === 'x' ? Math.min(width - 1, Math.max(0, x + k)) : x;
          const yy = along === 'y' ? Math.min(height - 1, Math.max(0, y + k)) : y;
          s += kernel[k + r] * input[yy * width + xx];
        }
        out[y * width + x] = s / total;
      }
    return out;
  };
  return Float32Array.from(pass(pass(src, 'x'), 'y'));
}

/**
 * The mask on the latent grid: each 8x8 block's mean, rounded to 0 or 1 (A1111's latent mask; the
 * per-step blend keeps a cell or repaints it).
 */
export function latentMask(mask: Float32Array, width: number, height: number): Float32Array {
  const lw = width / 8;
  const lh = height / 8;
  const out = new Float32Array(lh * lw);
  for (let y = 0; y < lh; y++)
    for (let x = 0; x < lw; x++) {
      let s = 0;
      for (let dy = 0; dy < 8; dy++) for (let dx = 0; dx < 8; dx++) s += mask[(y * 8 + dy) * width + x * 8 + dx];
      out[y * lw + x] = s / 64 >= 0.5 ? 1 : 0;
    }
  return out;
}

/** The picture's pixels where the mask keeps them, the VAE's mid grey (0) where it repaints (diffusers: image * (mask < 0.5)). */
export function maskedPlanes(planes: Float32Array, mask: Uint8Array): Float32Array {
  const n = mask.length;
  return planes.map((v, i) => (mask[i % n] / 255 < 0.5 ? v : 0));
}

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/**
 * A1111's "only masked" region: the mask's bounds plus `padding`, inside the picture, then grown
 * (around its centre, kept inside the picture) to the job's aspect ratio. Undefined for an empty mask.
 */
export function onlyMaskedRegion(mask: Uint8Array, width: number, height: number, padding: number): Rect | undefined {
  const e = maskExtent(mask, height, width);
  if (!e) return undefined;
  let left = Math.max(0, e.col - padding);
  let top = Math.max(0, e.row - padding);
  let right = Math.min(width, e.col + e.cols + padding);
  let bottom = Math.min(height, e.row + e.rows + padding);
  // the job's aspect ratio is the picture's (both are the job's size): grow the short side
  const grow = (lo: number, hi: number, want: number, limit: number): [number, number] => {
    const extra = Math.min(want, limit) - (hi - lo);
    if (extra <= 0) return [lo, hi];
    let a = lo - Math.floor(extra / 2);
    let b = hi + Math.ceil(extra / 2);
    if (a < 0) [a, b] = [0, b - a];
    if (b > limit) [a, b] = [Math.max(0, a - (b - limit)), limit];
    return [a, b];
  };
  const w = right - left;
  const h = bottom - top;
  if (w / h < width / height) [left, right] = grow(left, right, Math.round((h * width) / height), width);
  else [top, bottom] = grow(top, bottom, Math.round((w * height) / width), height);
  return { x: left, y: top, width: right - left, height: bottom - top };
}

/** The result over the original with the blurred mask as its alpha: kept pixels come back exactly. */
export function overlay(original: ImageData8, result: ImageData8, alpha: Float32Array): ImageData8 {
  const data = new Uint8ClampedArray(original.data.length);
  for (let p = 0; p < alpha.length; p++) {
    const a = alpha[p];
    for (let c = 0; c < 3; c++) data[p * 4 + c] = a <= 0 ? original.data[p * 4 + c] : a >= 1 ? result.data[p * 4 + c] : Math.round(original.data[p * 4 + c] * (1 - a) + result.data[p * 4 + c] * a);
    data[p * 4 + 3] = 255;
  }
  return { width: original.width, height: original.height, data };
}

/** `part` pasted into `picture` at `at` (same-size copy of the pixels). */
export function paste(picture: ImageData8, part: ImageData8, at: { x: number; y: number }): ImageData8 {
  const data = picture.data.slice();
  for (let y = 0; y < part.height; y++) data.set(part.data.subarray(y * part.width * 4, (y + 1) * part.width * 4), ((at.y + y) * picture.width + at.x) * 4);
  return { width: picture.width, height: picture.height, data };
}

/** A one-byte-per-pixel mask's rectangle, resampled bicubically to w x h. */
export function cropMask(mask: Uint8Array, width: number, region: Rect, w: number, h: number): Uint8Array {
  const rgba = new Uint8ClampedArray(region.width * region.height * 4);
  for (let y = 0; y < region.height; y++) for (let x = 0; x < region.width; x++) rgba[(y * region.width + x) * 4] = mask[(region.y + y) * width + region.x + x];
  const big = resizeBicubic({ width: region.width, height: region.height, data: rgba }, w, h);
  return Uint8Array.from({ length: w * h }, (_, p) => big.data[p * 4]);
}
