// How cmlora orders and groups the job's LoRAs. `category` is the code's `check_anime_lora`
// (pipeline_offline.py ~77-96): every LoRA but the backgrounds in the job's order, then the
// backgrounds; the first are the high group, the backgrounds the low one (the code drops a LoRA of
// an unknown category; we keep it among the first). `profile` (ours, from the paper's notebook): by
// the frequency profile, most high-frequency first, the high group those at or above the set's mean.
import type { Partition } from './plan.ts';

export interface Grouping {
  order: number[];
  partition: Partition;
}

export function categoryOrder(categories: string[]): Grouping {
  const ids = categories.map((_, i) => i);
  const high = ids.filter((i) => categories[i] !== 'background');
  const low = ids.filter((i) => categories[i] === 'background');
  return { order: [...high, ...low], partition: { high, low } };
}

/**
 * Order (most high-frequency first; ties keep the job's order) and partition: a LoRA belongs to the
 * high-frequency group when its amplitude is at least the set's mean; with equal amplitudes every
 * LoRA is high.
 */
export function profileOrder(amplitudes: number[]): Grouping {
  const order = amplitudes.map((_, i) => i).sort((a, b) => amplitudes[b] - amplitudes[a] || a - b);
  const mean = amplitudes.reduce((s, a) => s + a, 0) / Math.max(1, amplitudes.length);
  const tolerance = 1e-9 * Math.max(1, Math.abs(mean));
  const high = order.filter((i) => amplitudes[i] >= mean - tolerance);
  const low = order.filter((i) => amplitudes[i] < mean - tolerance);
  return { order: [...high, ...low], partition: { high, low } };
}
