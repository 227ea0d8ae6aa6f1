// CMLoRA (Zou et al. 2025, "Cached Multi-LoRA Composition for Multi-Concept Image Generation"; code
// Yqcca/CMLoRA): LoRA Composite led by a dominant LoRA, with per-LoRA caching, as its pipelines run it.
//
// - Order and groups (workers/composition/order.ts): by category as the code (every LoRA but the
//   backgrounds, then the backgrounds) or by the frequency profile (ours, from the paper's notebook).
// - Dominant (workers/composition/schedule.ts): async, round every LoRA every `switchStep` steps from
//   the last; offline and online, one place per cache refresh, round the high group in the high
//   phase and round the LoRAs from the second in the low phase. Offline's high phase is the first
//   `highPhase` of the steps (the code's 120 of 220); online's lasts while the latent's high band is
//   at least `threshold`.
// - Weights: the dominant's prediction weighs c / (c + N - 1), each other 1 / (c + N - 1), c = N - 0.5.
//   Async decays c by 0.5^k at the k-th switch, which the paper describes and the code computes but
//   never applies; we apply it and stop c at 1 (plain averaging).
// - Caching (`cache`): `deep`, the code's DeepCache: every LoRA runs every step, the whole UNet when
//   its deep features are refreshed (one LoRA per refresh step, the 2-3-2 pattern by default, and at
//   its first run), otherwise only the shallow part on its kept deep features; `prediction` (ours): a
//   non-dominant LoRA is recomputed every `cacheHigh` / `cacheLow` steps and reuses its prediction's
//   offset between (workers/composition/cache.ts); `off`: every LoRA fully every step.
import type { PlanFunction, PlanInput } from './plan.ts';
import { asyncStep, refreshSteps, syncStep } from './schedule.ts';

export function dominantCoefficient(input: Pick<PlanInput, 'options'>, switches: number): number {
  const { domCoeff, async } = input.options;
  return async ? Math.max(1, domCoeff - (1 - 0.5 ** switches)) : domCoeff;
}

/** The step's frequency phase: null in the async pipeline, which has none. */
export function cmloraPhase(input: Pick<PlanInput, 'options' | 'step' | 'steps' | 'latentAmplitude'>): 'high' | 'low' | null {
  const o = input.options;
  if (o.async) return null;
  if (o.profiling === 'online') return input.latentAmplitude >= o.threshold ? 'high' : 'low';
  // the code's `i <= 120` of 220 steps
  return input.step <= Math.round(o.highPhase * input.steps) ? 'high' : 'low';
}

export const planCmlora: PlanFunction = (input) => {
  const { step, steps, count, options: o, order, partition, cache, features } = input;
  if (!count) return { evaluations: [{ loras: [], weight: 1 }], cached: [], dominant: null, phase: null };

  // 1. the dominant LoRA and the refresh, by the code's schedule
  const phase = cmloraPhase(input);
  const schedule = { order, high: partition.high.length };
  const refreshes = refreshSteps(steps, o.cacheInterval);
  const s = o.async ? asyncStep(step, o.switchStep, schedule, new Set(refreshes)) : syncStep(step, phase ?? 'high', schedule, refreshes);
  const dominant = s.dominant;

  // 2. weights: w_dom for the dominant, the rest share what is left
  const c = dominantCoefficient(input, s.switches);
  const rest = 1 / (c + count - 1);
  const weight = (i: number) => (i === dominant ? c * rest : rest);

  // 3. what each LoRA runs
  if (o.cache === 'prediction') {
    const evaluations = [{ loras: [dominant], weight: weight(dominant) }];
    const cached: { lora: number; weight: number }[] = [];
    for (const i of order) {
      if (i === dominant) continue;
      const interval = partition.low.includes(i) ? o.cacheLow : o.cacheHigh;
      const entry = cache[i];
      if (entry && entry.age < interval) cached.push({ lora: i, weight: rest });
      else evaluations.push({ loras: [i], weight: rest });
    }
    return { evaluations, cached, dominant, phase, refreshed: null };
  }
  const deep = o.cache === 'deep' && o.cacheInterval !== 1;
  const evaluations = order.map((i) => ({
    loras: [i],
    weight: weight(i),
    ...(deep ? { deep: (!features[i] || i === s.refresh ? 'record' : 'reuse') as 'record' | 'reuse' } : {}),
  }));
  return { evaluations, cached: [], dominant, phase, refreshed: deep ? s.refresh : null };
};
