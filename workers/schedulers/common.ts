// The SD 1.5 noise schedule and the small pieces every sampler shares. All arithmetic is float64.

export interface Scheduler {
  /** Timesteps given to the UNet, one per step (float for the sigma-based samplers). */
  readonly timesteps: number[];
  /** Standard deviation of the initial latent noise. */
  readonly initNoiseSigma: number;
  /** The UNet input for step i. */
  scaleModelInput(sample: Float32Array, i: number): Float32Array;
  /** The clean sample x0 that the noise prediction at step i implies (what the step moves towards). */
  predictOriginal(eps: Float32Array, i: number, sample: Float32Array): Float32Array;
  /** One denoising step: the sample at step i+1 from the noise prediction at step i. */
  step(eps: Float32Array, i: number, sample: Float32Array, noise: () => Float32Array): Float32Array;
  /** Step i as fixed linear maps of whole latents, the form the GPU loop runs (see `LinearStep`). */
  linear(i: number): LinearStep;
  /** The factor `scaleModelInput` multiplies the sample by at step i. */
  inputScale(i: number): number;
  /** A clean latent noised to step i's noise level, as diffusers' `add_noise` (image to image's start, inpainting's blend). */
  addNoise(x0: Float32Array, noise: Float32Array, i: number): Float32Array;
  /** `addNoise` at step i as its two factors: signal x x0 + noise x n (what the GPU loop's inpainting blend computes). */
  noiseLevel(i: number): NoiseLevel;
  /**
   * The step a run starts at (diffusers' `set_begin_index`; image to image starts part-way): a
   * multistep sampler's memory is empty there, so its first step is first order. 0 by default.
   */
  begin: number;
  /** UNet evaluations per step of the user's (diffusers' `order`): 2 for Heun, whose `timesteps` interleave predictor and corrector; 1 when absent. */
  readonly order?: number;
}

export interface NoiseLevel {
  signal: number;
  noise: number;
}

/** The DDPM forward process at alphā: sqrt(alphā) x0 + sqrt(1 - alphā) noise. */
export function alphaLevel(alphaBar: number): NoiseLevel {
  return { signal: Math.sqrt(alphaBar), noise: Math.sqrt(1 - alphaBar) };
}

/**
 * What the samplers on sigmas share (Euler, Euler ancestral, Heun): a sample is x0 + sigma eps, the
 * UNet reads it scaled by 1 / sqrt(sigma^2 + 1), and diffusers' add_noise is x0 + sigma noise.
 */
export abstract class SigmaSamples {
  /** Sigma per UNet evaluation, plus a final 0. */
  abstract readonly sigmas: number[];

  inputScale(i: number): number {
    return 1 / Math.sqrt(this.sigmas[i] ** 2 + 1);
  }

  scaleModelInput(sample: Float32Array, i: number): Float32Array {
    const s = this.inputScale(i);
    return sample.map((v) => v * s);
  }

  /** x0 = x - sigma eps, with the sigma the UNet saw. */
  predictOriginal(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    const sigma = this.sigmas[i];
    return sample.map((x, k) => x - sigma * eps[k]);
  }

  addNoise(x0: Float32Array, noise: Float32Array, i: number): Float32Array {
    return withNoise(x0, noise, this.noiseLevel(i));
  }

  noiseLevel(i: number): NoiseLevel {
    return { signal: 1, noise: this.sigmas[i] };
  }
}

/** signal x x0 + noise x n, element by element. */
export function withNoise(x0: Float32Array, noise: Float32Array, level: NoiseLevel): Float32Array {
  return x0.map((v, k) => level.signal * v + level.noise * noise[k]);
}

/**
 * One step as linear maps, element by element: the clean estimate x0 = p·x + q·ε, then
 * next = a·x + b·ε + c·x0 + d·x0' + e·z, where x0' is the previous step's x0 (the multistep memory,
 * 0 at step 0) and z fresh standard noise (drawn only when `noise` is true, as `step` draws it).
 */
export interface LinearStep {
  p: number;
  q: number;
  a: number;
  b: number;
  c: number;
  d: number;
  e: number;
  noise: boolean;
}

export type Spacing = 'leading' | 'linspace' | 'trailing';

export const TRAIN_STEPS = 1000;
export const BETA_START = 0.00085;
export const BETA_END = 0.012;

/** scaled_linear betas -> cumulative products of alphas. */
export function alphasCumprod(n = TRAIN_STEPS, start = BETA_START, end = BETA_END): Float64Array {
  const out = new Float64Array(n);
  const a = Math.sqrt(start);
  const b = Math.sqrt(end);
  let prod = 1;
  for (let i = 0; i < n; i++) {
    const s = n === 1 ? a : a + ((b - a) * i) / (n - 1);
    prod *= 1 - s * s;
    out[i] = prod;
  }
  return out;
}

/** sigma_t = sqrt((1 - alphā_t) / alphā_t) for every training timestep. */
export function trainSigmas(ac: Float64Array): Float64Array {
  return ac.map((a) => Math.sqrt((1 - a) / a));
}

export function linspace(a: number, b: number, n: number): number[] {
  if (n === 1) return [a];
  return Array.from({ length: n }, (_, i) => a + ((b - a) * i) / (n - 1));
}

/** Piecewise-linear interpolation of ys (given at 0, 1, 2, ...) at position x, as numpy.interp. */
export function interpIndex(ys: Float64Array, x: number): number {
  if (x <= 0) return ys[0];
  if (x >= ys.length - 1) return ys[ys.length - 1];
  const i = Math.floor(x);
  const f = x - i;
  return ys[i] * (1 - f) + ys[i + 1] * f;
}

/** Karras et al. (2022) sigma ramp, rho = 7. */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, n: number, rho = 7): number[] {
  const minInv = sigmaMin ** (1 / rho);
  const maxInv = sigmaMax ** (1 / rho);
  return linspace(0, 1, n).map((r) => (maxInv + r * (minInv - maxInv)) ** rho);
}

/** The (fractional) training timestep whose sigma is `sigma`, by interpolation in log-sigma. */
export function sigmaToTimestep(sigma: number, sigmas: Float64Array): number {
  const logS = Math.log(sigma);
  const logs = Array.from(sigmas, Math.log);
  // sigmas increase with t; find the bracketing pair
  let hi = logs.findIndex((l) => l >= logS);
  if (hi <= 0) return hi === 0 ? 0 : logs.length - 1;
  const lo = hi - 1;
  const w = (logs[lo] - logS) / (logs[lo] - logs[hi]);
  return Math.min(Math.max((1 - w) * lo + w * hi, 0), logs.length - 1);
}

/** numpy's round (half to even), so spacings match diffusers at exact .5 values. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** diffusers' "leading" (every `ratio` steps from 0, plus an offset) and "trailing" (from the end) spacings. */
export function leadingTimesteps(steps: number, ratio: number, offset: number): number[] {
  return Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio + offset);
}

export function trailingTimesteps(steps: number): number[] {
  const ratio = TRAIN_STEPS / steps;
  return Array.from({ length: steps }, (_, i) => roundHalfEven(TRAIN_STEPS - i * ratio) - 1);
}

export function validateSteps(steps: number): void {
  if (!Number.isInteger(steps) || steps < 1 || steps > TRAIN_STEPS) {
    throw new RangeError(`steps must be an integer from 1 to ${TRAIN_STEPS}, got ${steps}`);
  }
}
