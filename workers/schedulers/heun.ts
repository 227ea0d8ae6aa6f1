// Heun's method (Karras et al. 2022, Algorithm 1 without churn), as diffusers' HeunDiscreteScheduler
// with SD 1.5's settings ("linspace" spacing). Each of the user's steps is two UNet evaluations: an
// Euler predictor from sigma to sigma_next, then a corrector that re-evaluates at sigma_next and steps
// again from sigma with the mean of the two derivatives. The last step, whose sigma_next is 0, is the
// predictor alone. So `timesteps` is diffusers' interleaved list, [t0, t1, t1, ..., tN-1, tN-1]
// (2N - 1 evaluations), and evaluation i is a predictor when i is even and a corrector when odd.
import { alphasCumprod, interpIndex, SigmaSamples, leadingTimesteps, linspace, roundHalfEven, TRAIN_STEPS, trainSigmas, validateSteps, type LinearStep, type Scheduler, type Spacing } from './common.ts';

/** The user's N timesteps before interleaving, for a schedule trained over `trainSteps`. */
export function heunTimesteps(steps: number, spacing: Spacing = 'linspace', trainSteps = TRAIN_STEPS, stepsOffset = 0): number[] {
  validateSteps(steps);
  if (spacing === 'linspace') return linspace(0, trainSteps - 1, steps).reverse();
  if (spacing === 'leading') return leadingTimesteps(steps, Math.floor(trainSteps / steps), stepsOffset);
  return Array.from({ length: steps }, (_, i) => roundHalfEven(trainSteps - (i * trainSteps) / steps) - 1);
}

/** What the predictor leaves for the corrector: where it started, its derivative and its move. */
interface Predicted {
  i: number;
  sample: Float32Array;
  derivative: Float32Array;
  dt: number;
}

export class HeunScheduler extends SigmaSamples implements Scheduler {
  /** One entry per UNet evaluation: [t0, t1, t1, ..., tN-1, tN-1]. */
  readonly timesteps: number[];
  /** Sigma per evaluation, plus a final 0: [s0, s1, s1, ..., sN-1, sN-1, 0]. */
  readonly sigmas: number[];
  readonly initNoiseSigma: number;
  /** UNet evaluations per user step (diffusers' `order`); image to image starts at evaluation tStart * order. */
  readonly order = 2;
  /** UNet evaluations in all: 2N - 1. */
  readonly evaluations: number;
  /** The evaluation a run starts at: tStart * order, a predictor. */
  begin = 0;
  private predicted: Predicted | undefined;

  /** `train`: the training sigmas, SD 1.5's by default. */
  constructor(readonly steps: number, spacing: Spacing = 'linspace', train: Float64Array = trainSigmas(alphasCumprod())) {
    super();
    const ts = heunTimesteps(steps, spacing, train.length);
    const sig = ts.map((t) => interpIndex(train, t));
    this.timesteps = [ts[0], ...ts.slice(1).flatMap((t) => [t, t])];
    this.sigmas = [sig[0], ...sig.slice(1).flatMap((s) => [s, s]), 0];
    this.evaluations = this.timesteps.length;
    const max = Math.max(...this.sigmas);
    this.initNoiseSigma = spacing === 'leading' ? Math.sqrt(max * max + 1) : max;
  }

  /** Whether evaluation i is a corrector (re-evaluating at the predictor's target) rather than a predictor. */
  isCorrector(i: number): boolean {
    return i % 2 === 1;
  }

  /** The user's step (0 to N - 1) that evaluation i belongs to. */
  stepOf(i: number): number {
    return Math.floor(i / 2);
  }

  /** Whether evaluation i completes a user step: its sample then sits on the user's sigma schedule. */
  endsStep(i: number): boolean {
    return this.isCorrector(i) || i === this.evaluations - 1;
  }

  /**
   * The predictor: x + dt·eps with dt = sigma_next - sigma. The corrector, x_p + dt·(eps_p + eps)/2
   * from the predictor's start x_p, in terms of what the GPU loop keeps: x = x_p + dt·eps_p and the
   * predictor's x0' = x_p - sigma·eps_p give eps_p = (x - x0') / sigma_c, with sigma_c = sigma + dt
   * the corrector's sigma (never 0: the last step has no corrector). So
   * next = (1 - dt/2sigma_c)·x + (dt/2)·eps + (dt/2sigma_c)·x0'. Exact in real arithmetic; in float32
   * the rounding of x and x0' comes back amplified by about |d| = |dt|/2sigma_c (at most 6 with 10
   * steps, 3.5 with 20, 250 with 2), still far under the UNet's own float16 error.
   */
  linear(i: number): LinearStep {
    this.checkBegin();
    const sigma = this.sigmas[i];
    const x0 = { p: 1, q: -sigma };
    if (!this.isCorrector(i)) return { ...x0, a: 1, b: this.sigmas[i + 1] - sigma, c: 0, d: 0, e: 0, noise: false };
    const dt = sigma - this.sigmas[i - 1];
    const w = dt / (2 * sigma);
    return { ...x0, a: 1 - w, b: dt / 2, c: 0, d: w, e: 0, noise: false };
  }

  step(eps: Float32Array, i: number, sample: Float32Array): Float32Array {
    this.checkBegin();
    if (i === this.begin) this.predicted = undefined;
    if (!this.isCorrector(i)) {
      // 1. the derivative (x - x0) / sigma, which is eps, 2. an Euler step to sigma_next, kept for the corrector
      const dt = this.sigmas[i + 1] - this.sigmas[i];
      this.predicted = { i, sample: sample.slice(), derivative: eps.slice(), dt };
      return sample.map((x, k) => x + dt * eps[k]);
    }
    const p = this.predicted;
    if (!p || p.i !== i - 1) {
      throw new Error(`Heun's evaluation ${i} is a corrector and needs the predictor of evaluation ${i - 1} stepped just before it (start at an even evaluation, tStart * order)`);
    }
    this.predicted = undefined;
    // 1. the derivative at sigma_next is eps again (x0 = x - sigma_next·eps), 2. their mean, 3. one step from the predictor's start
    const out = new Float32Array(sample.length);
    for (let k = 0; k < sample.length; k++) out[k] = p.sample[k] + p.dt * ((p.derivative[k] + eps[k]) / 2);
    return out;
  }

  /** A run cannot start at a corrector: it has no predictor to correct (and, on the GPU, no x0' in memory). */
  private checkBegin(): void {
    if (this.isCorrector(this.begin)) {
      throw new RangeError(`Heun's run must begin at a predictor (an even evaluation, tStart * order), got begin = ${this.begin}`);
    }
  }
}
