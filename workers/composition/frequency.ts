// The frequency profile CMLoRA orders LoRAs by. The profiled image is the channel mean of a latent
// (the paper's code does the same for latents), cropped to a power-of-two square window for the FFT;
// its profile is the relative high-frequency amplitude: the mean spectral amplitude above the cutoff
// radius divided by the mean amplitude over the whole spectrum (scale-free, so LoRAs that only make
// the latent louder do not look sharper).
import type { Partition } from './plan.ts';

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

/** Relative high-frequency amplitude from the band means (0 for an empty image). */
export const relativeAmplitude = (high: number, all: number): number => (all > 0 ? high / all : 0);

/**
 * Order (most high-frequency first; ties keep the job's order) and partition: a LoRA belongs to the
 * high-frequency group when its amplitude is at least the set's mean. The paper contrasts LoRAs with
 * each other, so the reference is the set itself; with equal amplitudes every LoRA is "high".
 */
export function orderAndPartition(amplitudes: number[]): { order: number[]; partition: Partition } {
  const order = amplitudes.map((_, i) => i).sort((a, b) => amplitudes[b] - amplitudes[a] || a - b);
  const mean = amplitudes.reduce((s, a) => s + a, 0) / Math.max(1, amplitudes.length);
  const tolerance = 1e-9 * Math.max(1, Math.abs(mean));
  const high = order.filter((i) => amplitudes[i] >= mean - tolerance);
  const low = order.filter((i) => amplitudes[i] < mean - tolerance);
  return { order, partition: { high, low } };
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

/**
 * The same band means on the CPU, for the wasm backend (no GPU): a separable DFT in float64 with the
 * radius measured as in shaders/spectrum-band.wgsl. Returns the relative amplitude per image.
 */
export function cpuRelativeAmplitudes(images: Float32Array, count: number, height: number, width: number, cutoff: number): number[] {
  const twiddles = (n: number) => Float64Array.from({ length: 2 * n }, (_, k) => (k % 2 ? Math.sin : Math.cos)((-2 * Math.PI * (k >> 1)) / n));
  const tw = twiddles(width);
  const th = twiddles(height);
  const out: number[] = [];
  const re = new Float64Array(height * width);
  const im = new Float64Array(height * width);
  for (let b = 0; b < count; b++) {
    const img = images.subarray(b * height * width, (b + 1) * height * width);
    // rows
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
    // columns, then the band sums
    let high = 0;
    let nHigh = 0;
    let all = 0;
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
        const amp = Math.hypot(sr, si);
        all += amp;
        const fu = Math.min(u, height - u) / height;
        const fv = Math.min(v, width - v) / width;
        if (Math.hypot(fu, fv) > cutoff) {
          high += amp;
          nHigh++;
        }
      }
    out.push(relativeAmplitude(nHigh ? high / nHigh : 0, all / (height * width)));
  }
  return out;
}
