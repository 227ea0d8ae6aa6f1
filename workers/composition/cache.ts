// Cached LoRA contributions (CMLoRA's non-uniform caching). A non-dominant LoRA computed at step s is
// kept as its offset from that step's dominant prediction: r_i = eps_i(s) - eps_d(s). At a later step
// its prediction is rebuilt as the anchor's prediction now plus the offset, where the anchor's is the
// fresh one if the anchor ran this step, or is itself rebuilt from the anchor's own entry.
//
// The chains end: the dominant LoRA never keeps an entry, and an entry always points at a LoRA that
// was dominant when it was stored, whose own entry can only be newer. Following a chain goes forward
// in time and stops at a LoRA that ran this step (a LoRA without an entry always runs).
import type { CacheEntry } from './plan.ts';

interface Stored<T> {
  offset: T;
  at: number;
  anchor: number;
}

/** Offsets are `T`: Float32Array on the CPU, a GPU tensor in the loop that stays on the GPU (which does the arithmetic itself). */
export class ContributionCache<T = Float32Array> {
  private readonly entries: (Stored<T> | null)[];

  constructor(count: number) {
    this.entries = Array.from({ length: count }, () => null);
  }

  /** What the plan sees at `step`: each entry's age in steps. */
  view(step: number): (CacheEntry | null)[] {
    return this.entries.map((e) => (e ? { age: step - e.at } : null));
  }

  /** A cached LoRA's prediction at this step: the fresh prediction of `anchor` (a LoRA that ran) plus `offsets`. */
  chain(lora: number, ran: { has(l: number): boolean }): { anchor: number; offsets: T[] } {
    const offsets: T[] = [];
    let at = lora;
    while (!ran.has(at)) {
      const e = this.entries[at];
      if (!e || offsets.length > this.entries.length) throw new Error(`LoRA ${lora}: its cached contribution does not lead to a LoRA that ran`);
      offsets.push(e.offset);
      at = e.anchor;
    }
    return { anchor: at, offsets };
  }

  /** A cached LoRA's prediction at this step, from the predictions of the LoRAs that ran. */
  contribution(this: ContributionCache<Float32Array>, lora: number, fresh: Map<number, Float32Array>): Float32Array {
    const { anchor, offsets } = this.chain(lora, fresh);
    const out = Float32Array.from(fresh.get(anchor)!);
    for (const o of offsets) for (let k = 0; k < out.length; k++) out[k] += o[k];
    return out;
  }

  /**
   * After a step: LoRAs that ran keep their offset from the dominant; the dominant keeps none.
   * `offset(lora, eps, base)` makes eps - base (on the CPU by default; the GPU loop queues it on the GPU).
   */
  update(fresh: Map<number, T>, dominant: number, step: number, offset: (lora: number, eps: T, base: T) => T = subtract as unknown as (lora: number, eps: T, base: T) => T): void {
    const base = fresh.get(dominant)!;
    for (const [lora, eps] of fresh) if (lora !== dominant) this.entries[lora] = { offset: offset(lora, eps, base), at: step, anchor: dominant };
    this.entries[dominant] = null;
  }
}

function subtract(_lora: number, eps: Float32Array, base: Float32Array): Float32Array {
  const out = new Float32Array(eps.length);
  for (let k = 0; k < eps.length; k++) out[k] = eps[k] - base[k];
  return out;
}
