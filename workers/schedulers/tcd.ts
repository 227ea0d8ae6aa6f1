// Trajectory Consistency Distillation's sampler (Zheng et al. 2024), as diffusers' TCDScheduler: the
// timesteps of LCM's 50-step distillation schedule and a strategic stochastic step. From step t the
// prediction is taken back to an intermediate s = floor((1 - gamma) * t_next) along the DDIM
// trajectory, then forward to t_next with fresh noise; gamma = 0 is DDIM on these timesteps. For
// TCD-LoRA and other TCD-distilled weights (2 to 8 steps, low CFG).
//
// Unlike LCM, diffusers' TCD step applies no c_skip / c_out boundary scaling: its config carries
// `timestep_scaling` but `step` never reads it. We follow the step.
import { alphasCumprod, alphaLevel, withNoise, type NoiseLevel, validateSteps, type LinearStep, type Scheduler } from './common.ts';
import { LCM_ORIGINAL_STEPS, lcmTimesteps } from './lcm.ts';

/** diffusers' default gamma (its `step`'s `eta`). */
export const TCD_GAMMA = 0.3;

/** diffusers' TCD timesteps: LCM's, `steps` of the 50-step distillation schedule evenly by index. */
export function tcdTimesteps(steps: number, original = LCM_ORIGINAL_STEPS): number[] {
  validateSteps(steps);
  if (steps > original) throw new RangeError(`TCD takes at most ${original} steps (its distillation schedule's), got ${steps}`);
  return lcmTimesteps(steps, original);
}

/** The intermediate timestep s the step goes back to before noising forward to `next`. */
export function tcdIntermediate(next: number, gamma: number): number {
  return Math.floor((1 - gamma) * next);
}

export class TcdScheduler implements Scheduler {
  readonly timesteps: number[];
  readonly initNoiseSigma = 1;
  /** One UNet evaluation per step. */
  readonly order = 1;
  readonly evaluations: number;
  begin = 0;
  private readonly ac = alphasCumprod();

  /** `gamma` in [0, 1]: 0 is deterministic, 1 renoises fully from t = 0 at every step. */
  constructor(readonly steps: number, readonly gamma = TCD_GAMMA) {
    if (!(gamma >= 0 && gamma <= 1)) throw new RangeError(`TCD's gamma must be from 0 to 1 (0.3 is diffusers' default), got ${gamma}`);
    this.timesteps = tcdTimesteps(steps);
    this.evaluations = this.timesteps.length;
  }

  inputScale(): number {
    return 1;
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  predictOriginal(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    const a = this.ac[this.timesteps[i]];
    return sample.map((x, k) => (x - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a));
  }

  /** The forward process at step i's timestep, for starting part-way (image to image). */
  addNoise(x0: Float32Array, noise: Float32Array, i: number): Float32Array {
    return withNoise(x0, noise, this.noiseLevel(i));
  }

  noiseLevel(i: number): NoiseLevel {
    return alphaLevel(this.ac[this.timesteps[i]]);
  }

  /** alphā at step i's timestep, at the intermediate s, and at the next timestep (t = 0 after the last). */
  private alphas(i: number): { a: number; aS: number; aNext: number; renoise: boolean } {
    const last = i === this.timesteps.length - 1;
    const next = last ? 0 : this.timesteps[i + 1];
    return { a: this.ac[this.timesteps[i]], aS: this.ac[tcdIntermediate(next, this.gamma)], aNext: this.ac[next], renoise: this.gamma > 0 && !last };
  }

  linear(i: number): LinearStep {
    const { a, aS, aNext, renoise } = this.alphas(i);
    const x0 = { p: 1 / Math.sqrt(a), q: -Math.sqrt(1 - a) / Math.sqrt(a) };
    if (!renoise) return { ...x0, a: 0, b: Math.sqrt(1 - aS), c: Math.sqrt(aS), d: 0, e: 0, noise: false };
    const r = Math.sqrt(aNext / aS);
    return { ...x0, a: 0, b: r * Math.sqrt(1 - aS), c: r * Math.sqrt(aS), d: 0, e: Math.sqrt(1 - aNext / aS), noise: true };
  }

  step(eps: Float32Array, i: number, sample: Float32Array, noise: () => Float32Array): Float32Array {
    const { a, aS, aNext, renoise } = this.alphas(i);
    const z = renoise ? noise() : undefined;
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      // 1. the clean sample the prediction implies, 2. back along the DDIM trajectory to s
      const x0 = (sample[k] - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a);
      const atS = Math.sqrt(aS) * x0 + Math.sqrt(1 - aS) * eps[k];
      // 3. forward from s to the next timestep with fresh noise (not at the last step, nor with gamma = 0)
      out[k] = z ? Math.sqrt(aNext / aS) * atS + Math.sqrt(1 - aNext / aS) * z[k] : atS;
    }
    return out;
  }
}
