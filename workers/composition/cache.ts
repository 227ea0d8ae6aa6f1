// Cached LoRA contributions (CMLoRA's non-uniform caching): a non-dominant LoRA's guided noise
// prediction kept as its offset from the dominant LoRA's prediction at the step it was computed.
import type { CacheEntry } from './plan.ts';

interface Stored {
  offset: Float32Array;
  at: number;
  anchor: number | null;
}

export class ContributionCache {
  private readonly entries: (Stored | null)[];

  constructor(count: number) {
    this.entries = Array.from({ length: count }, () => null);
  }

  /** What the plan sees at `step`: each entry's age in steps and the dominant it is relative to. */
  view(step: number): (CacheEntry | null)[] {
    return this.entries.map((e) => (e ? { age: step - e.at, anchor: e.anchor } : null));
  }

  store(lora: number, eps: Float32Array, dominantEps: Float32Array, anchor: number | null, step: number): void {
    const offset = new Float32Array(eps.length);
    for (let k = 0; k < eps.length; k++) offset[k] = eps[k] - dominantEps[k];
    this.entries[lora] = { offset, at: step, anchor };
  }

  /** The cached LoRA's prediction now: the current dominant prediction plus its stored offset. */
  contribution(lora: number, dominantEps: Float32Array): Float32Array {
    const e = this.entries[lora];
    if (!e) throw new Error(`LoRA ${lora} has no cached contribution`);
    const out = new Float32Array(dominantEps.length);
    for (let k = 0; k < out.length; k++) out[k] = dominantEps[k] + e.offset[k];
    return out;
  }

  /** Offsets taken against another dominant no longer hold. */
  keepAnchor(anchor: number | null): void {
    this.entries.forEach((e, i) => {
      if (e && e.anchor !== anchor) this.entries[i] = null;
    });
  }
}
