// CMLoRA's step schedule as its code computes it (Yqcca/CMLoRA, pipeline_offline.py ~1082-1180,
// pipeline_online.py, pipeline_async.py ~1097-1176), as pure functions of the step: which LoRA is
// dominant, and whose deep-feature cache is refreshed (recomputed by a whole UNet run). Where the
// code is buggy we do what the paper means; README "Fidelity to CMLoRA" names each case.

/**
 * The steps at which a cache is refreshed (the code's `interval_seq`): `interval` 0 is the paper's
 * non-uniform 2-3-2 pattern (every 2 steps over the first 37.5 % of the steps, every 3 to 87.5 %,
 * then every 2); 1 is every step; c > 1 every c steps from step 0.
 */
export function refreshSteps(steps: number, interval: number): number[] {
  if (interval === 1) return Array.from({ length: steps }, (_, i) => i);
  if (interval > 1) return Array.from({ length: Math.ceil(steps / interval) }, (_, i) => i * interval);
  const a = Math.trunc(0.375 * steps);
  const b = Math.trunc(0.875 * steps);
  const range = (from: number, to: number, by: number) => Array.from({ length: Math.max(0, Math.ceil((to - from) / by)) }, (_, i) => from + i * by);
  return [...range(0, a, 2), ...range(a, b, 3), ...range(b, steps, 2)].sort((x, y) => x - y);
}

/** The LoRAs as the code orders them (`adapters`), and how many lead the high phase (`R`). */
export interface ScheduleOrder {
  /** LoRA indices: the high group first (the code: every non-background LoRA, then the backgrounds). */
  order: number[];
  /** Size of the high group (the code's `len(real_list)`); the rest is the low group. */
  high: number;
}

export interface ScheduleStep {
  dominant: number;
  /** The LoRA whose cache this step refreshes (null: none). */
  refresh: number | null;
  /** Dominant switches so far (async) or refreshes so far (offline, online): the decay's k. */
  switches: number;
}

/**
 * Async (pipeline_async.py): the dominant goes round every LoRA, starting from the last, one place
 * every `switchStep` steps (the code's 20 of 220); on a refresh step the LoRA after the dominant is
 * refreshed, or on a switch step the new dominant (the code's `indicator % N`, read before the switch
 * counter moves).
 */
export function asyncStep(step: number, switchStep: number, o: ScheduleOrder, refresh: Set<number>): ScheduleStep {
  const n = o.order.length;
  // switches up to and including this step (the dominant) and before it (the refresh, which the code
  // does before it counts this step's switch)
  const k = Math.floor(step / switchStep);
  const before = step > 0 ? Math.floor((step - 1) / switchStep) : 0;
  const mod = (x: number) => ((x % n) + n) % n;
  return { dominant: o.order[mod(k - 1)], refresh: refresh.has(step) ? o.order[mod(before)] : null, switches: k };
}

/**
 * Offline and online (pipeline_offline.py, pipeline_online.py): each refresh step moves the dominant
 * one place and refreshes it. In the high phase (or when there is no low group) it goes round the
 * high group; in the low phase round the LoRAs from the second on, which takes in the low group's
 * first (the code's `adapters[1:]` with `indicator % R`). The code writes the low phase's refresh into
 * a slice copy, so it never happens; we refresh as its intent reads.
 */
export function syncStep(step: number, phase: 'high' | 'low', o: ScheduleOrder, refreshList: number[]): ScheduleStep {
  const r = Math.max(1, o.high);
  const low = phase === 'low' && o.high < o.order.length;
  // refreshes before this step, and whether this step is one
  let done = 0;
  while (done < refreshList.length && refreshList[done] < step) done++;
  const now = refreshList[done] === step;
  // Python's modulo: (0 - 1) % R is R - 1
  const index = (k: number) => (low ? 1 : 0) + (((k % r) + r) % r);
  const after = done + (now ? 1 : 0);
  return { dominant: o.order[index(after - 1)], refresh: now ? o.order[index(done)] : null, switches: after };
}
