// Euler ancestral (k-diffusion's sample_euler_ancestral), in diffusers' discrete form with
// "linspace" spacing: timesteps may be fractional and sigmas are interpolated between them.
import { alphasCumprod, interpIndex, SigmaSamples, leadingTimesteps, linspace, trailingTimesteps, TRAIN_STEPS, trainSigmas, validateSteps, type LinearStep, type Scheduler, type Spacing } from './common.ts';

export function eulerTimesteps(steps: number, spacing: Spacing = 'linspace', stepsOffset = 0): number[] {
  validateSteps(steps);
  if (spacing === 'linspace') return linspace(0, TRAIN_STEPS - 1, steps).reverse();
  if (spacing === 'leading') return leadingTimesteps(steps, Math.floor(TRAIN_STEPS / steps), stepsOffset);
  return trailingTimesteps(steps);
}

export class EulerAncestralScheduler extends SigmaSamples implements Scheduler {
  readonly timesteps: number[];
  /** sigma per step, plus a final 0. */
  readonly sigmas: number[];
  readonly initNoiseSigma: number;
  begin = 0;

  constructor(readonly steps: number, spacing: Spacing = 'linspace') {
    super();
    const train = trainSigmas(alphasCumprod());
    this.timesteps = eulerTimesteps(steps, spacing);
    this.sigmas = [...this.timesteps.map((t) => interpIndex(train, t)), 0];
    const max = Math.max(...this.sigmas);
    this.initNoiseSigma = spacing === 'leading' ? Math.sqrt(max * max + 1) : max;
  }

  linear(i: number): LinearStep {
    const { up, dt } = this.split(i);
    return { p: 1, q: -this.sigmas[i], a: 1, b: dt, c: 0, d: 0, e: up, noise: true };
  }

  /** The move from sigma_i to sigma_i+1 as a deterministic part (dt along the derivative) and fresh noise (up). */
  private split(i: number): { up: number; dt: number } {
    const sigma = this.sigmas[i];
    const sigmaTo = this.sigmas[i + 1];
    const up = Math.sqrt((sigmaTo ** 2 * (sigma ** 2 - sigmaTo ** 2)) / sigma ** 2);
    return { up, dt: Math.sqrt(sigmaTo ** 2 - up ** 2) - sigma };
  }

  step(eps: Float32Array, i: number, sample: Float32Array, noise: () => Float32Array): Float32Array {
    const sigma = this.sigmas[i];
    const sigmaTo = this.sigmas[i + 1];
    // 1. split the move to sigmaTo into a deterministic part (down) and fresh noise (up)
    const sigmaUp = Math.sqrt((sigmaTo ** 2 * (sigma ** 2 - sigmaTo ** 2)) / sigma ** 2);
    const sigmaDown = Math.sqrt(sigmaTo ** 2 - sigmaUp ** 2);
    const dt = sigmaDown - sigma;
    const z = noise();
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) {
      // 2. predicted x0 = x - sigma * eps, so the ODE derivative (x - x0) / sigma is eps
      out[k] = sample[k] + eps[k] * dt + z[k] * sigmaUp;
    }
    return out;
  }
}
