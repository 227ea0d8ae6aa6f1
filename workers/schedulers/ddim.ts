// DDIM (Song et al. 2021), eta = 0, with SD 1.5's scheduler settings: "leading" spacing,
// steps_offset = 1, set_alpha_to_one = false.
import { alphasCumprod, leadingTimesteps, alphaLevel, withNoise, type NoiseLevel, roundHalfEven, trailingTimesteps, TRAIN_STEPS, validateSteps, type LinearStep, type Scheduler, type Spacing } from './common.ts';

export function ddimTimesteps(steps: number, spacing: Spacing = 'leading', stepsOffset = 1): number[] {
  validateSteps(steps);
  if (spacing === 'leading') return leadingTimesteps(steps, Math.floor(TRAIN_STEPS / steps), stepsOffset);
  if (spacing === 'trailing') return trailingTimesteps(steps);
  return Array.from({ length: steps }, (_, i) => roundHalfEven(((TRAIN_STEPS - 1) * (steps - 1 - i)) / Math.max(steps - 1, 1)));
}

export class DdimScheduler implements Scheduler {
  readonly timesteps: number[];
  readonly initNoiseSigma = 1;
  begin = 0;
  private readonly ac = alphasCumprod();
  private readonly ratio: number;

  constructor(readonly steps: number, spacing: Spacing = 'leading') {
    this.timesteps = ddimTimesteps(steps, spacing);
    this.ratio = Math.floor(TRAIN_STEPS / steps);
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  predictOriginal(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    const a = this.ac[this.timesteps[i]];
    return sample.map((x, k) => (x - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a));
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

  linear(i: number): LinearStep {
    const t = this.timesteps[i];
    const prevT = t - this.ratio;
    const a = this.ac[t];
    const aPrev = prevT >= 0 ? this.ac[prevT] : this.ac[0];
    return { p: 1 / Math.sqrt(a), q: -Math.sqrt(1 - a) / Math.sqrt(a), a: 0, b: Math.sqrt(1 - aPrev), c: Math.sqrt(aPrev), d: 0, e: 0, noise: false };
  }

  step(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    const t = this.timesteps[i];
    const prevT = t - this.ratio;
    // 1. alphā at this and the previous timestep (alphā_0 past the end: set_alpha_to_one = false)
    const a = this.ac[t];
    const aPrev = prevT >= 0 ? this.ac[prevT] : this.ac[0];
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      // 2. predicted x0, then 3. the deterministic update towards it
      const x0 = (sample[k] - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a);
      out[k] = Math.sqrt(aPrev) * x0 + Math.sqrt(1 - aPrev) * eps[k];
    }
    return out;
  }
}
