// The studio's words for what the engine is doing: named phases, and time as an artist reads it.
import type { CompositionMethodId, ProgressEvent } from '../../workers/api/contract.ts';

/** A running job's phase: the engine's own, or `prepare` before its first event (programs compiling, sessions created). */
export type RunPhase = ProgressEvent['phase'] | 'prepare' | 'warmup';

export function phaseWords(phase: RunPhase, step: number, total: number, firstRun: boolean): string {
  switch (phase) {
    case 'prepare':
      return firstRun ? 'Preparing the GPU (first run only)' : 'Starting';
    case 'warmup':
      return 'Warming up, so the times compare';
    case 'text':
      return 'Reading the prompt';
    case 'profile':
      return `Measuring each LoRA's detail (first use only), ${step + 1} of ${total}`;
    case 'encode':
      return 'Reading your picture';
    case 'denoise':
      return `Step ${step} of ${total}`;
    case 'hires':
      return `Hires fix: step ${step} of ${total}`;
    case 'decode':
      return 'Decoding the picture';
    case 'done':
      return 'Done';
  }
}

/** "8 s", "1 min 05 s". */
export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
}

/**
 * Time left from measured step times: the mean of the last (up to 5) intervals between steps, times
 * the steps to go, plus one interval for the decode. Undefined until two steps have been timed.
 */
export function timeLeft(stepTimes: number[], step: number, total: number): number | undefined {
  if (stepTimes.length < 2) return undefined;
  const recent = stepTimes.slice(-6);
  const per = (recent[recent.length - 1] - recent[0]) / (recent.length - 1);
  return per * (total - step + 1);
}

/** The same methods as an artist reads them: a name and one line on what it does. */
export const METHOD_WORDS: Record<CompositionMethodId, { name: string; line: string }> = {
  merge: { name: 'Blend LoRAs', line: 'All LoRAs mixed into the model at once. The fastest.' },
  switch: { name: 'Take turns', line: 'One LoRA at a time, changing every few steps.' },
  composite: { name: 'Each LoRA separately', line: 'Every LoRA paints on its own at each step and the results are averaged. One model run per LoRA per step.' },
  cmlora: { name: 'Smart mix (CMLoRA)', line: 'LoRAs that add fine detail lead early, the others later; work is reused between steps to save time.' },
  none: { name: 'Prompt only', line: 'No LoRAs: the prompt alone, to compare against.' },
};
