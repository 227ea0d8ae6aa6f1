// Every composition method, by the name the engine, the CLI and the studio use.
import type { CompositionMethodId } from '../api/contract.ts';
import { planCmlora } from './cmlora.ts';
import { planComposite } from './composite.ts';
import { planMerge } from './merge.ts';
import { planNone } from './none.ts';
import type { PlanFunction } from './plan.ts';
import { planSwitch } from './switch.ts';

export interface MethodEntry {
  label: string;
  plan: PlanFunction;
  /** Whether the method runs each LoRA alone (and so can show a per-LoRA frequency profile). */
  perLora: boolean;
  /** What it costs and when to use it, in a sentence for the studio and `--help`. */
  summary: string;
}

export const METHODS: Record<CompositionMethodId, MethodEntry> = {
  none: { label: 'Prompt only', plan: planNone, perLora: false, summary: 'No LoRA: the base model and the prompt. One UNet run per step.' },
  merge: { label: 'LoRA merge', plan: planMerge, perLora: false, summary: 'All LoRAs merged into the weights once. One UNet run per step; concepts can blur into each other.' },
  switch: { label: 'LoRA Switch', plan: planSwitch, perLora: true, summary: 'One LoRA at a time, the next every few steps. One UNet run per step.' },
  composite: { label: 'LoRA Composite', plan: planComposite, perLora: true, summary: "Every LoRA's guided prediction at every step, averaged. N UNet runs per step." },
  cmlora: {
    label: 'CMLoRA',
    plan: planCmlora,
    perLora: true,
    summary: 'Composite led by a dominant LoRA chosen by frequency profile, with per-LoRA caching: between 1 and N UNet runs per step.',
  },
};
