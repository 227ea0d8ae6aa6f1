// Euler (k-diffusion's sample_euler, Karras et al. 2022 Algorithm 2 without churn), in diffusers'
// EulerDiscreteScheduler form with "linspace" spacing: Euler ancestral's sigmas, input scaling and x0,
// with a deterministic step x_next = x + (sigma_next - sigma) * eps.
import type { LinearStep } from './common.ts';
import { EulerAncestralScheduler } from './euler-ancestral.ts';

export class EulerScheduler extends EulerAncestralScheduler {
  override linear(i: number): LinearStep {
    return { p: 1, q: -this.sigmas[i], a: 1, b: this.sigmas[i + 1] - this.sigmas[i], c: 0, d: 0, e: 0, noise: false };
  }

  override step(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    // the ODE derivative (x - x0) / sigma is eps; one Euler step to the next sigma
    const dt = this.sigmas[i + 1] - this.sigmas[i];
    return sample.map((x, k) => x + dt * eps[k]);
  }
}
