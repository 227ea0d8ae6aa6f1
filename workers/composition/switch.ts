// LoRA Switch (Zhong et al. 2024, "Multi-LoRA Composition for Image Generation"): one LoRA active at
// a time, the next one taking over every `switchStep` steps, round robin in the job's order.
import type { PlanFunction } from './plan.ts';

export const planSwitch: PlanFunction = ({ step, count, options }) => {
  if (!count) return { evaluations: [{ loras: [], weight: 1 }], cached: [], dominant: null, phase: null };
  const active = Math.floor(step / options.switchStep) % count;
  return { evaluations: [{ loras: [active], weight: 1 }], cached: [], dominant: active, phase: null };
};
