// The Latent Consistency Model sampler (Luo et al. 2023), as diffusers' LCMScheduler: timesteps from
// the 50-step schedule it was distilled on, the consistency function's boundary scalings, and fresh
// noise between steps. For LCM-LoRA and other consistency-distilled weights (4 to 8 steps, low CFG).
import { alphasCumprod, alphaLevel, withNoise, type NoiseLevel, TRAIN_STEPS, validateSteps, type LinearStep, type Scheduler } from './common.ts';

/** The schedule the consistency model was distilled on, and its boundary condition's constants. */
export const LCM_ORIGINAL_STEPS = 50;
const SIGMA_DATA = 0.5;
const TIMESTEP_SCALING = 10;

/** diffusers' LCM timesteps: `steps` of the distillation schedule's, evenly by index, from the top. */
export function lcmTimesteps(steps: number, original = LCM_ORIGINAL_STEPS): number[] {
  validateSteps(steps);
  if (steps > original) throw new RangeError(`LCM takes at most ${original} steps (its distillation schedule's), got ${steps}`);
  const k = Math.floor(TRAIN_STEPS / original);
  const origin = Array.from({ length: original }, (_, i) => (i + 1) * k - 1).reverse();
  return Array.from({ length: steps }, (_, i) => origin[Math.floor((i * original) / steps)]);
}

/** c_skip and c_out of the consistency function at a timestep: x0_cm = c_out * x0 + c_skip * x. */
export function lcmScalings(t: number): { cSkip: number; cOut: number } {
  const s = t * TIMESTEP_SCALING;
  return { cSkip: SIGMA_DATA ** 2 / (s * s + SIGMA_DATA ** 2), cOut: s / Math.sqrt(s * s + SIGMA_DATA ** 2) };
}

export class LcmScheduler implements Scheduler {
  readonly timesteps: number[];
  readonly initNoiseSigma = 1;
  begin = 0;
  private readonly ac = alphasCumprod();

  constructor(readonly steps: number) {
    this.timesteps = lcmTimesteps(steps);
  }

  inputScale(): number {
    return 1;
  }

  addNoise(x0: Float32Array, noise: Float32Array, i: number): Float32Array {
    return withNoise(x0, noise, this.noiseLevel(i));
  }

  noiseLevel(i: number): NoiseLevel {
    return alphaLevel(this.ac[this.timesteps[i]]);
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  predictOriginal(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    const a = this.ac[this.timesteps[i]];
    return sample.map((x, k) => (x - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a));
  }

  linear(i: number): LinearStep {
    const t = this.timesteps[i];
    const a = this.ac[t];
    const { cSkip, cOut } = lcmScalings(t);
    const x0 = { p: 1 / Math.sqrt(a), q: -Math.sqrt(1 - a) / Math.sqrt(a) };
    // the last step returns the consistency model's clean estimate itself
    if (i === this.timesteps.length - 1) return { ...x0, a: cSkip, b: 0, c: cOut, d: 0, e: 0, noise: false };
    const aPrev = this.ac[this.timesteps[i + 1]];
    return { ...x0, a: Math.sqrt(aPrev) * cSkip, b: 0, c: Math.sqrt(aPrev) * cOut, d: 0, e: Math.sqrt(1 - aPrev), noise: true };
  }

  step(eps: Float32Array, i: number, sample: Float32Array, noise: () => Float32Array): Float32Array {
    const t = this.timesteps[i];
    const a = this.ac[t];
    const { cSkip, cOut } = lcmScalings(t);
    const last = i === this.timesteps.length - 1;
    const aPrev = last ? 0 : this.ac[this.timesteps[i + 1]];
    const z = last ? undefined : noise();
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      // 1. the clean sample the prediction implies, 2. the consistency function's estimate
      const x0 = (sample[k] - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a);
      const denoised = cOut * x0 + cSkip * sample[k];
      // 3. noised again to the next timestep, or returned at the last
      out[k] = z ? Math.sqrt(aPrev) * denoised + Math.sqrt(1 - aPrev) * z[k] : denoised;
    }
    return out;
  }
}
