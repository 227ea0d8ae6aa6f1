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
  /** Per LoRA: its cached contribution, or null when there is none. */
  cache: (CacheEntry | null)[];
}

export interface Evaluation {
  /** LoRAs merged into the UNet for this run ([] = the base model). */
  loras: number[];
  /** Weight of this run's noise prediction in the step's mix. */
  weight: number;
}

export interface StepPlan {
  evaluations: Evaluation[];
  /** LoRAs whose contribution is reused from the cache instead, with their weights. */
  cached: { lora: number; weight: number }[];
  dominant: number | null;
  phase: 'high' | 'low' | null;
}

export type PlanFunction = (input: PlanInput) => StepPlan;

export const METHOD_IDS: readonly CompositionMethodId[] = ['none', 'merge', 'switch', 'composite', 'cmlora'];

export function isMethodId(s: unknown): s is CompositionMethodId {
  return typeof s === 'string' && (METHOD_IDS as readonly string[]).includes(s);
}

/**
 * Fill in the defaults. Paper and code values where they give them (the dominant coefficient N - 0.5
 * and its halving decay, a switch every tenth of the steps, the 0.6 high-frequency phase, the cutoff
 * of the code's radial profile); our own choices where they are silent (see the README).
 */
export function resolveComposition(o: CompositionOptions | undefined, steps: number, loraCount: number): ResolvedComposition {
  const method = o?.method ?? (loraCount ? 'merge' : 'none');
  if (!isMethodId(method)) throw new BadArgumentError(`Unknown composition method "${String(method)}"; use one of ${METHOD_IDS.join(', ')}.`);
  const r: ResolvedComposition = {
    method,
    switchStep: o?.switchStep ?? (method === 'switch' ? 5 : Math.max(1, Math.round(steps / 10))),
    profiling: o?.profiling ?? 'offline',
    profileSteps: o?.profileSteps ?? 5,
    cutoff: o?.cutoff ?? 72 / 512,
    threshold: o?.threshold ?? 0.68,
    highPhase: o?.highPhase ?? 0.6,
    cacheHigh: o?.cacheHigh ?? 2,
    cacheLow: o?.cacheLow ?? 3,
    domCoeff: o?.domCoeff ?? Math.max(1, loraCount - 0.5),
    async: o?.async ?? true,
  };
  const whole = (v: number, name: string, lo: number, hi: number) => {
    if (!Number.isInteger(v) || v < lo || v > hi) throw new BadArgumentError(`${name} must be a whole number from ${lo} to ${hi} (got ${v}).`);
  };
  const real = (v: number, name: string, lo: number, hi: number) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi) throw new BadArgumentError(`${name} must be a number from ${lo} to ${hi} (got ${v}).`);
  };
  whole(r.switchStep, 'switchStep', 1, 1000);
  whole(r.profileSteps, 'profileSteps', 1, 50);
  whole(r.cacheHigh, 'cacheHigh', 1, 1000);
  whole(r.cacheLow, 'cacheLow', 1, 1000);
  real(r.cutoff, 'cutoff', 0, 0.7);
  real(r.threshold, 'threshold', 0, 10);
  real(r.highPhase, 'highPhase', 0, 1);
  real(r.domCoeff, 'domCoeff', 1, 100);
  if (r.profiling !== 'offline' && r.profiling !== 'online') throw new BadArgumentError(`profiling must be offline or online (got ${String(r.profiling)}).`);
  if (typeof r.async !== 'boolean') throw new BadArgumentError('async must be true or false.');
  return r;
}

/** Every LoRA, each alone, in the given order. */
export const eachAlone = (order: number[], weight: number): Evaluation[] => order.map((i) => ({ loras: [i], weight }));
