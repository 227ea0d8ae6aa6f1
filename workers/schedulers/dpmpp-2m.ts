// DPM-Solver++(2M) (Lu et al. 2022), multistep, midpoint form, as diffusers'
// DPMSolverMultistepScheduler with final_sigmas_type "zero" and lower_order_final.
// With `karras`, sigmas follow the Karras ramp and timesteps are their rounded inverse.
import {
  alphasCumprod,
  withNoise,
  type NoiseLevel,
  roundHalfEven,
  interpIndex,
  karrasSigmas,
  leadingTimesteps,
  linspace,
  trailingTimesteps,
  sigmaToTimestep,
  TRAIN_STEPS,
  trainSigmas,
  validateSteps,
  type LinearStep,
  type Scheduler,
  type Spacing,
} from './common.ts';

export function dpmTimesteps(steps: number, spacing: Spacing = 'linspace', stepsOffset = 0): number[] {
  validateSteps(steps);
  if (spacing === 'linspace') return linspace(0, TRAIN_STEPS - 1, steps + 1).map(roundHalfEven).reverse().slice(0, steps);
  if (spacing === 'leading') return leadingTimesteps(steps, Math.floor(TRAIN_STEPS / (steps + 1)), stepsOffset);
  return trailingTimesteps(steps);
}

export class DpmSolverPP2MScheduler implements Scheduler {
  readonly timesteps: number[];
  readonly sigmas: number[];
  readonly initNoiseSigma = 1;
  begin = 0;
  /** x0 predicted at the previous step: the multistep memory. */
  private prevX0: Float64Array | undefined;

  constructor(readonly steps: number, readonly karras = false, spacing: Spacing = 'linspace') {
    const train = trainSigmas(alphasCumprod());
    if (karras) {
      const ramp = karrasSigmas(train[0], train[TRAIN_STEPS - 1], steps);
      this.timesteps = ramp.map((s) => roundHalfEven(sigmaToTimestep(s, train)));
      this.sigmas = [...ramp, 0];
    } else {
      this.timesteps = dpmTimesteps(steps, spacing);
      this.sigmas = [...this.timesteps.map((t) => interpIndex(train, t)), 0];
    }
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  predictOriginal(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    const s = this.sigmas[i];
    const alpha = 1 / Math.sqrt(s * s + 1);
    return sample.map((x, k) => (x - alpha * s * eps[k]) / alpha);
  }

  inputScale(): number {
    return 1;
  }

  /** Its samples are variance preserving: alpha_t x0 + sigma_t noise, with alpha_t = 1 / sqrt(sigma^2 + 1). */
  addNoise(x0: Float32Array, noise: Float32Array, i: number): Float32Array {
    return withNoise(x0, noise, this.noiseLevel(i));
  }

  noiseLevel(i: number): NoiseLevel {
    const s = this.sigmas[i];
    const alpha = 1 / Math.sqrt(s * s + 1);
    return { signal: alpha, noise: alpha * s };
  }

  linear(i: number): LinearStep {
    const vp = (s: number) => ({ alpha: 1 / Math.sqrt(s * s + 1), sigma: s / Math.sqrt(s * s + 1) });
    const lambda = (c: { alpha: number; sigma: number }) => Math.log(c.alpha) - Math.log(c.sigma);
    const cur = vp(this.sigmas[i]);
    const next = vp(this.sigmas[i + 1]);
    const x0 = { p: 1 / cur.alpha, q: -cur.sigma / cur.alpha };
    if (next.sigma === 0) return { ...x0, a: 0, b: 0, c: 1, d: 0, e: 0, noise: false };
    const h = lambda(next) - lambda(cur);
    const ratio = next.sigma / cur.sigma;
    const c = next.alpha * (Math.exp(-h) - 1);
    if (i === this.begin || i === this.steps - 1) return { ...x0, a: ratio, b: 0, c: -c, d: 0, e: 0, noise: false };
    // x0 - 0.5·c·(x0 - x0') / r, with r the previous log-SNR step over this one
    const r = (lambda(cur) - lambda(vp(this.sigmas[i - 1]))) / h;
    return { ...x0, a: ratio, b: 0, c: -c - (0.5 * c) / r, d: (0.5 * c) / r, e: 0, noise: false };
  }

  step(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    if (i === this.begin) this.prevX0 = undefined;
    // 1. VP coefficients alpha_t, sigma_t of this and the next sigma; lambda = log(alpha / sigma)
    const vp = (s: number) => ({ alpha: 1 / Math.sqrt(s * s + 1), sigma: s / Math.sqrt(s * s + 1) });
    const cur = vp(this.sigmas[i]);
    const next = vp(this.sigmas[i + 1]);
    const lambda = (c: { alpha: number; sigma: number }) => Math.log(c.alpha) - Math.log(c.sigma);
    // 2. the data prediction x0 = (x - sigma_t * eps) / alpha_t
    const x0 = new Float64Array(sample.length);
    for (let k = 0; k < sample.length; k++) x0[k] = (sample[k] - cur.sigma * eps[k]) / cur.alpha;
    const out = new Float32Array(sample.length);
    const last = i === this.steps - 1;
    const firstOrder = !this.prevX0 || last; // lower_order_final; the final sigma is zero
    if (next.sigma === 0) {
      out.set(x0);
    } else {
      const h = lambda(next) - lambda(cur);
      const ratio = next.sigma / cur.sigma;
      const c = next.alpha * (Math.exp(-h) - 1);
      if (firstOrder) {
        for (let k = 0; k < sample.length; k++) out[k] = ratio * sample[k] - c * x0[k];
      } else {
        // 3. second order: D1 from the previous x0 over the previous log-SNR step
        const prev = vp(this.sigmas[i - 1]);
        const r = (lambda(cur) - lambda(prev)) / h;
        const p = this.prevX0!;
        for (let k = 0; k < sample.length; k++) {
          const d1 = (x0[k] - p[k]) / r;
          out[k] = ratio * sample[k] - c * x0[k] - 0.5 * c * d1;
        }
      }
    }
    this.prevX0 = x0;
    return out;
  }
}
