// The contract between the denoising loop and a composition method: at each step the method's plan
// function says which LoRA sets the UNet runs with and how their noise predictions are mixed. Plans
// are pure functions of the step and what the loop has observed so far, so they are tested alone.
import type { CompositionMethodId, CompositionOptions, ResolvedComposition } from '../api/contract.ts';
import { BadArgumentError } from '../api/errors.ts';

export interface Partition {
  high: number[];
  low: number[];
}

/** A cached contribution: how many steps ago it was computed. */
export interface CacheEntry {
  age: number;
}

export interface PlanInput {
  step: number;
  steps: number;
  /** Number of LoRAs; plans speak of them by index. */
  count: number;
  options: ResolvedComposition;
  /** Frequency profile (cmlora): LoRA order, high first, and the partition. */
  order: number[];
  partition: Partition;
  /** Relative high-frequency amplitude of the latent the step starts from (cmlora online). */
  latentAmplitude: number;
  /** Per LoRA: its cached contribution, or null when there is none (`cache: prediction`). */
  cache: (CacheEntry | null)[];
  /** Per LoRA: whether its deep UNet features from an earlier step are kept (`cache: deep`). */
  features: boolean[];
}

export interface Evaluation {
  /** LoRAs merged into the UNet for this run ([] = the base model). */
  loras: number[];
  /** Weight of this run's noise prediction in the step's mix. */
  weight: number;
  /**
   * Deep-feature cache: `record` runs the whole UNet and keeps this LoRA set's deep features; `reuse`
   * runs only the shallow part on the kept ones. Absent: the whole UNet, nothing kept.
   */
  deep?: 'record' | 'reuse';
}

export interface StepPlan {
  evaluations: Evaluation[];
  /** LoRAs whose contribution is reused from the cache instead, with their weights. */
  cached: { lora: number; weight: number }[];
  dominant: number | null;
  phase: 'high' | 'low' | null;
  /** The LoRA whose deep features this step refreshes by schedule. */
  refreshed?: number | null;
}

export type PlanFunction = (input: PlanInput) => StepPlan;

export const METHOD_IDS: readonly CompositionMethodId[] = ['none', 'merge', 'switch', 'composite', 'cmlora'];

export function isMethodId(s: unknown): s is CompositionMethodId {
  return typeof s === 'string' && (METHOD_IDS as readonly string[]).includes(s);
}

/** The code's high phase: steps 0 to 120 of 220. */
export const CODE_HIGH_PHASE = 120 / 220;

/**
 * Fill in the defaults: CMLoRA's and ComposLoRA's code wherever they have one (the async pipeline,
 * its dominant switch every 20 of 220 steps and N - 0.5 coefficient, the 2-3-2 deep-cache refresh,
 * groups by category, the offline split at step 120 of 220, the notebook's radius 72 of 512,
 * ComposLoRA's switch every 5 steps); `threshold` NaN means derived by the pipeline (README).
 */
export function resolveComposition(o: CompositionOptions | undefined, steps: number, loraCount: number): ResolvedComposition {
  const method = o?.method ?? (loraCount ? 'merge' : 'none');
  if (!isMethodId(method)) throw new BadArgumentError(`Unknown composition method "${String(method)}"; use one of ${METHOD_IDS.join(', ')}.`);
  const r: ResolvedComposition = {
    method,
    switchStep: o?.switchStep ?? (method === 'switch' ? 5 : Math.max(1, Math.round((steps * 20) / 220))),
    profiling: o?.profiling ?? 'offline',
    profileSteps: o?.profileSteps ?? steps,
    cutoff: o?.cutoff ?? 72,
    threshold: o?.threshold ?? NaN,
    highPhase: o?.highPhase ?? CODE_HIGH_PHASE,
    cacheHigh: o?.cacheHigh ?? 2,
    cacheLow: o?.cacheLow ?? 3,
    domCoeff: o?.domCoeff ?? Math.max(1, loraCount - 0.5),
    async: o?.async ?? true,
    cache: o?.cache ?? 'deep',
    cacheInterval: o?.cacheInterval ?? 0,
    partition: o?.partition ?? 'category',
    deepCacheInterval: o?.deepCacheInterval ?? 1,
    research: o?.research ?? false,
  };
  const whole = (v: number, name: string, lo: number, hi: number) => {
    if (!Number.isInteger(v) || v < lo || v > hi) throw new BadArgumentError(`${name} must be a whole number from ${lo} to ${hi} (got ${v}).`);
  };
  const real = (v: number, name: string, lo: number, hi: number) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi) throw new BadArgumentError(`${name} must be a number from ${lo} to ${hi} (got ${v}).`);
  };
  const oneOf = (v: unknown, name: string, choices: string[]) => {
    if (!choices.includes(v as string)) throw new BadArgumentError(`${name} must be ${choices.join(' or ')} (got ${String(v).slice(0, 20)}).`);
  };
  whole(r.switchStep, 'switchStep', 1, 1000);
  whole(r.profileSteps, 'profileSteps', 1, 250);
  whole(r.cacheHigh, 'cacheHigh', 1, 1000);
  whole(r.cacheLow, 'cacheLow', 1, 1000);
  whole(r.cacheInterval, 'cacheInterval', 0, 1000);
  whole(r.deepCacheInterval, 'deepCacheInterval', 1, 1000);
  real(r.cutoff, 'cutoff', 0, 362);
  if (!Number.isNaN(r.threshold)) real(r.threshold, 'threshold', 0, 10);
  real(r.highPhase, 'highPhase', 0, 1);
  real(r.domCoeff, 'domCoeff', 1, 100);
  oneOf(r.profiling, 'profiling', ['offline', 'online']);
  oneOf(r.cache, 'cache', ['deep', 'prediction', 'off']);
  oneOf(r.partition, 'partition', ['category', 'profile']);
  if (typeof r.async !== 'boolean') throw new BadArgumentError('async must be true or false.');
  if (typeof r.research !== 'boolean') throw new BadArgumentError('research must be true or false.');
  return r;
}

/** Every LoRA, each alone, in the given order. */
export const eachAlone = (order: number[], weight: number): Evaluation[] => order.map((i) => ({ loras: [i], weight }));
