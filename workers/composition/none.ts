// Prompt only: the base model, whatever LoRAs the job names.
import type { PlanFunction } from './plan.ts';

export const planNone: PlanFunction = () => ({ evaluations: [{ loras: [], weight: 1 }], cached: [], dominant: null, phase: null });
