// Euler (k-diffusion's sample_euler, Karras et al. 2022 Algorithm 2 without churn), in diffusers'
// EulerDiscreteScheduler form with "linspace" spacing: the same sigmas as Euler ancestral, and a
// deterministic step x_next = x + (sigma_next - sigma) * eps.
import { alphasCumprod, interpIndex, trainSigmas, type LinearStep, type Scheduler } from './common.ts';
import { eulerTimesteps } from './euler-ancestral.ts';

export class EulerScheduler implements Scheduler {
  readonly timesteps: number[];
  /** sigma per step, plus a final 0. */
  readonly sigmas: number[];
  readonly initNoiseSigma: number;

  constructor(readonly steps: number) {
    const train = trainSigmas(alphasCumprod());
    this.timesteps = eulerTimesteps(steps);
    this.sigmas = [...this.timesteps.map((t) => interpIndex(train, t)), 0];
    this.initNoiseSigma = Math.max(...this.sigmas);
  }

  inputScale(i: number): number {
    return 1 / Math.sqrt(this.sigmas[i] ** 2 + 1);
  }

  scaleModelInput(sample: Float32Array, i: number): Float32Array {
    const s = this.inputScale(i);
    return sample.map((v) => v * s);
  }

  predictOriginal(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    const sigma = this.sigmas[i];
    return sample.map((x, k) => x - sigma * eps[k]);
  }

  linear(i: number): LinearStep {
    return { p: 1, q: -this.sigmas[i], a: 1, b: this.sigmas[i + 1] - this.sigmas[i], c: 0, d: 0, e: 0, noise: false };
  }

  step(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    // the ODE derivative (x - x0) / sigma is eps; one Euler step to the next sigma
    const dt = this.sigmas[i + 1] - this.sigmas[i];
    return sample.map((x, k) => x + dt * eps[k]);
  }
}
