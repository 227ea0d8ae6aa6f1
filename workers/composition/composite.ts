// LoRA Composite (Zhong et al. 2024): at every step each LoRA's own guided noise prediction, averaged.
// N UNet runs per step.
import { eachAlone, type PlanFunction } from './plan.ts';

export const planComposite: PlanFunction = ({ count }) => {
  if (!count) return { evaluations: [{ loras: [], weight: 1 }], cached: [], dominant: null, phase: null };
  return { evaluations: eachAlone(Array.from({ length: count }, (_, i) => i), 1 / count), cached: [], dominant: null, phase: null };
};
