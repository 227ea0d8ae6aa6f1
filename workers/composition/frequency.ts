// CMLoRA's frequency measures, as its code computes them: the radial profile of an image's spectrum
// divided by its largest bin, and its high band's mean. Offline, each LoRA is profiled on the image it
// makes alone (greyscale, log amplitude: fft_analysis.ipynb); online, the latent is measured at every
// step (channel mean, plain amplitude: pipeline_online.py), with the cutoff in latent cells.
import { alphasCumprod } from '../schedulers/common.ts';
import { Rng } from '../engine/random.ts';

/** Largest power of two not above n (and not above 512, the FFT kernel's limit). */
export function pow2Window(n: number): number {
  let p = 1;
  while (p * 2 <= Math.min(n, 512)) p *= 2;
  return p;
}

/**
 * Channel means of latents [channels, height, width], each cropped to the centred power-of-two window,
 * packed as a batch [count, h, w] for the FFT.
 */
export function profileImages(latents: Float32Array[], channels: number, height: number, width: number): { data: Float32Array; height: number; width: number } {
  const h = pow2Window(height);
  const w = pow2Window(width);
  const y0 = (height - h) >> 1;
  const x0 = (width - w) >> 1;
  const plane = height * width;
  const data = new Float32Array(latents.length * h * w);
  latents.forEach((latent, b) => {
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        let sum = 0;
        for (let c = 0; c < channels; c++) sum += latent[c * plane + (y + y0) * width + x + x0];
        data[(b * h + y) * w + x] = sum / channels;
      }
  });
  return { data, height: h, width: w };
}

/** The profile's bin of frequency (u, v) of an [h, w] spectrum in FFT order: the integer radius of the centred frequency, 0 to floor(hypot(h/2, w/2)). */
export function ringOf(u: number, v: number, h: number, w: number): number {
  return Math.floor(Math.hypot(Math.min(u, h - u), Math.min(v, w - v)));
}

/**
 * The radial profile of CMLoRA's code (fft_analysis.ipynb, pipeline_online.py ~63-91): the spectrum's
 * amplitude (or its log, as the notebook takes for images) averaged over each integer radius of the
 * centred frequency, floor(sqrt(fu^2 + fv^2)), divided by the largest bin. `magnitudes` is |F| of one
 * [h, w] image in FFT order.
 */
export function radialProfile(magnitudes: ArrayLike<number>, h: number, w: number, log: boolean): Float64Array {
  const maxR = Math.floor(Math.hypot(h >> 1, w >> 1));
  const sum = new Float64Array(maxR + 1);
  const count = new Float64Array(maxR + 1);
  for (let u = 0; u < h; u++)
    for (let v = 0; v < w; v++) {
      const r = ringOf(u, v, h, w);
      const a = magnitudes[u * w + v];
      sum[r] += log ? Math.log(a + 1e-8) : a;
      count[r]++;
    }
  const profile = sum.map((x, r) => (count[r] ? x / count[r] : NaN));
  let max = -Infinity;
  for (const x of profile) if (x > max) max = x;
  return profile.map((x) => x / max);
}

/**
 * The high band's share: the mean of the profile from radius `cutoff` on (the notebook's
 * `mean(rel[72:])`), over the radii the image has; 0 when it has none past the cutoff.
 */
export function highBand(profile: Float64Array, cutoff: number): number {
  let s = 0;
  let n = 0;
  for (let r = highBandStart(cutoff); r < profile.length; r++) {
    if (Number.isNaN(profile[r])) continue;
    s += profile[r];
    n++;
  }
  return n ? s / n : 0;
}

/** The first radius of the high band. */
export const highBandStart = (cutoff: number): number => Math.max(0, cutoff);

/** The notebook's cutoff, radius 72 on 512 pixels, at another size (9 on a 64-cell latent). */
export const profileCutoff = (side: number): number => Math.round((72 * side) / 512);

/** An RGBA image as the notebook's greyscale: the channel mean truncated to a byte. */
export function greyscale(data: Uint8ClampedArray | Uint8Array, width: number, height: number): Float32Array {
  const out = new Float32Array(width * height);
  for (let p = 0; p < out.length; p++) out[p] = Math.floor((data[p * 4] + data[p * 4 + 1] + data[p * 4 + 2]) / 3);
  return out;
}

/** A centred power-of-two crop of a [height, width] image (the FFT kernel's sizes). */
export function centredCrop(img: Float32Array, height: number, width: number): { data: Float32Array; height: number; width: number } {
  const h = pow2Window(height);
  const w = pow2Window(width);
  const y0 = (height - h) >> 1;
  const x0 = (width - w) >> 1;
  const data = new Float32Array(h * w);
  for (let y = 0; y < h; y++) data.set(img.subarray((y + y0) * width + x0, (y + y0) * width + x0 + w), y * w);
  return { data, height: h, width: w };
}

/** |F| of each image of a batch [count, height, width], by a separable DFT in float64 (the wasm backend's path). */
export function cpuSpectrumMagnitudes(images: Float32Array, count: number, height: number, width: number): Float64Array {
  const twiddles = (n: number) => Float64Array.from({ length: 2 * n }, (_, k) => (k % 2 ? Math.sin : Math.cos)((-2 * Math.PI * (k >> 1)) / n));
  const tw = twiddles(width);
  const th = twiddles(height);
  const out = new Float64Array(count * height * width);
  const re = new Float64Array(height * width);
  const im = new Float64Array(height * width);
  for (let b = 0; b < count; b++) {
    const img = images.subarray(b * height * width, (b + 1) * height * width);
    for (let y = 0; y < height; y++)
      for (let v = 0; v < width; v++) {
        let sr = 0;
        let si = 0;
        for (let x = 0; x < width; x++) {
          const k = (v * x) % width;
          sr += img[y * width + x] * tw[2 * k];
          si += img[y * width + x] * tw[2 * k + 1];
        }
        re[y * width + v] = sr;
        im[y * width + v] = si;
      }
    for (let v = 0; v < width; v++)
      for (let u = 0; u < height; u++) {
        let sr = 0;
        let si = 0;
        for (let y = 0; y < height; y++) {
          const k = (u * y) % height;
          const c = th[2 * k];
          const s = th[2 * k + 1];
          sr += re[y * width + v] * c - im[y * width + v] * s;
          si += re[y * width + v] * s + im[y * width + v] * c;
        }
        out[b * height * width + u * width + v] = Math.hypot(sr, si);
      }
  }
  return out;
}

export function cosineSimilarity(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}

/** A 2D DFT of [h, w] complex values in place (float64), forward or inverse (scaled by 1/(h w)). */
export function dft2d(re: Float64Array, im: Float64Array, h: number, w: number, inverse = false): void {
  const sign = inverse ? 1 : -1;
  const line = (get: (k: number) => [number, number], set: (k: number, r: number, i: number) => void, n: number) => {
    const r = new Float64Array(n);
    const i = new Float64Array(n);
    const input = Array.from({ length: n }, (_, k) => get(k));
    for (let f = 0; f < n; f++) {
      let sr = 0;
      let si = 0;
      for (let k = 0; k < n; k++) {
        const a = (sign * 2 * Math.PI * ((f * k) % n)) / n;
        sr += input[k][0] * Math.cos(a) - input[k][1] * Math.sin(a);
        si += input[k][0] * Math.sin(a) + input[k][1] * Math.cos(a);
      }
      r[f] = sr;
      i[f] = si;
    }
    for (let f = 0; f < n; f++) set(f, r[f], i[f]);
  };
  for (let y = 0; y < h; y++) line((k) => [re[y * w + k], im[y * w + k]], (k, r, i) => ((re[y * w + k] = r), (im[y * w + k] = i)), w);
  for (let x = 0; x < w; x++) line((k) => [re[k * w + x], im[k * w + x]], (k, r, i) => ((re[k * w + x] = r), (im[k * w + x] = i)), h);
  if (inverse) for (let k = 0; k < h * w; k++) (re[k] /= h * w), (im[k] /= h * w);
}

/** The latent's high band (the online measure): the plain-amplitude profile of its channel mean, from `cutoff` latent cells. */
export function latentHighBand(latent: Float32Array, channels: number, height: number, width: number, cutoff: number): number {
  const img = profileImages([latent], channels, height, width);
  return highBand(radialProfile(cpuSpectrumMagnitudes(img.data, 1, img.height, img.width), img.height, img.width, false), cutoff);
}

/**
 * The online threshold we derive (README "Fidelity to CMLoRA"): the latent measure, at the step where
 * the offline pipeline ends its high phase, of a latent made as the scheduler makes it there,
 * x_t / alpha_t = x0 + (sigma_t / alpha_t) noise, with x0 a random field whose amplitude falls as 1/f
 * (the spectrum of natural images) and unit variance like SD's latents. Averaged over four fields.
 */
export function derivedThreshold(timestep: number, size: { height: number; width: number }, cutoff: number): number {
  const ac = alphasCumprod();
  const t = Math.min(ac.length - 1, Math.max(0, timestep));
  const lo = Math.floor(t);
  const a = ac[lo] + (ac[Math.min(ac.length - 1, lo + 1)] - ac[lo]) * (t - lo);
  const ratio = Math.sqrt((1 - a) / a);
  const { height: h, width: w } = { height: pow2Window(size.height), width: pow2Window(size.width) };
  let sum = 0;
  const seeds = 4;
  for (let s = 0; s < seeds; s++) {
    const rng = new Rng(1000 + s);
    const re = Float64Array.from(rng.normal(h * w));
    const im = new Float64Array(h * w);
    dft2d(re, im, h, w);
    for (let u = 0; u < h; u++)
      for (let v = 0; v < w; v++) {
        const f = Math.max(1, Math.hypot(Math.min(u, h - u), Math.min(v, w - v)));
        re[u * w + v] /= f;
        im[u * w + v] /= f;
      }
    dft2d(re, im, h, w, true);
    let mean = 0;
    for (const x of re) mean += x / re.length;
    let sd = 0;
    for (const x of re) sd += (x - mean) ** 2 / re.length;
    sd = Math.sqrt(sd) || 1;
    const noise = rng.normal(h * w);
    const x = Float32Array.from(re, (v, k) => (v - mean) / sd + ratio * noise[k]);
    sum += highBand(radialProfile(cpuSpectrumMagnitudes(x, 1, h, w), h, w, false), cutoff);
  }
  return sum / seeds;
}
