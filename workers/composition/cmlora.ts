// CMLoRA (Zou et al. 2025, "Cached Multi-LoRA Composition for Multi-Concept Image Generation"):
// LoRA Composite with a dominant LoRA, chosen by a frequency-domain profile, and per-LoRA caching.
//
// - Phase: high-frequency LoRAs lead early in denoising, low-frequency ones later. Offline, the first
//   `highPhase` share of the steps is the high phase; online, the step is in the high phase while the
//   latent's relative high-frequency amplitude is at least `threshold`.
// - Dominant: round robin over the phase's LoRAs (high phase: the high group; low phase: the low group
//   first, then the high one), advancing every `switchStep` steps (async) or with every refresh of
//   the high-frequency cache (sync).
// - Weights: the dominant LoRA's prediction weighs c / (c + N - 1), each other 1 / (c + N - 1). c
//   starts at `domCoeff` (N - 0.5) and, in the async variant, loses 0.5^k at the k-th switch; we stop
//   it at 1, where the mix is plain averaging, so the dominant never weighs less than the rest.
// - Caching: a non-dominant LoRA is recomputed every `cacheHigh` or `cacheLow` steps (by its group);
//   between, its contribution is its last prediction's offset from that step's dominant prediction,
//   added to the same LoRA's prediction now (workers/composition/cache.ts). The dominant always runs.
import type { PlanFunction, PlanInput } from './plan.ts';

export function dominantCoefficient(input: Pick<PlanInput, 'options'>, switches: number): number {
  const { domCoeff, async } = input.options;
  return async ? Math.max(1, domCoeff - (1 - 0.5 ** switches)) : domCoeff;
}

export const planCmlora: PlanFunction = (input) => {
  const { step, steps, count, options: o, order, partition, latentAmplitude, cache } = input;
  if (!count) return { evaluations: [{ loras: [], weight: 1 }], cached: [], dominant: null, phase: null };

  // 1. the frequency phase of this step
  const phase = o.profiling === 'online' ? (latentAmplitude >= o.threshold ? 'high' : 'low') : step < Math.round(o.highPhase * steps) ? 'high' : 'low';

  // 2. the dominant LoRA
  const candidates = phase === 'high' ? (partition.high.length ? partition.high : order) : [...partition.low, ...partition.high];
  const switches = Math.floor(step / (o.async ? o.switchStep : o.cacheHigh));
  const dominant = candidates[switches % candidates.length];

  // 3. weights: w_dom for the dominant, the rest share what is left
  const c = dominantCoefficient(input, switches);
  const rest = 1 / (c + count - 1);

  // 4. fresh or cached, per LoRA
  const evaluations = [{ loras: [dominant], weight: c * rest }];
  const cached: { lora: number; weight: number }[] = [];
  for (const i of order) {
    if (i === dominant) continue;
    const interval = partition.low.includes(i) ? o.cacheLow : o.cacheHigh;
    const entry = cache[i];
    if (entry && entry.age < interval) cached.push({ lora: i, weight: rest });
    else evaluations.push({ loras: [i], weight: rest });
  }
  return { evaluations, cached, dominant, phase };
};
