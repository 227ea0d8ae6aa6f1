// LoRA merge: every LoRA merged into the weights once, at its strength; one UNet run per step.
import type { PlanFunction } from './plan.ts';

export const planMerge: PlanFunction = ({ count }) => ({
  evaluations: [{ loras: Array.from({ length: count }, (_, i) => i), weight: 1 }],
  cached: [],
  dominant: null,
  phase: null,
});
