// LoRA Switch (Zhong et al. 2024, "Multi-LoRA Composition for Image Generation"), as ComposLoRA's
// callback switches it (callbacks.py): after step i the next LoRA takes over when i > 0 and
// i % switchStep == 0, round robin in the job's order, so the first LoRA runs steps 0 to switchStep
// and each later one switchStep steps. The pipeline encodes the prompt with the first LoRA's text
// encoder only, as compose_lora.py does.
import type { PlanFunction } from './plan.ts';

/** The LoRA active at `step`. */
export const switchActive = (step: number, switchStep: number, count: number): number => (step <= switchStep ? 0 : Math.floor((step - 1) / switchStep) % count);

export const planSwitch: PlanFunction = ({ step, count, options }) => {
  if (!count) return { evaluations: [{ loras: [], weight: 1 }], cached: [], dominant: null, phase: null };
  const active = switchActive(step, options.switchStep, count);
  return { evaluations: [{ loras: [active], weight: 1 }], cached: [], dominant: active, phase: null };
};
