// The page's state: generation settings (plain data) and the run status. Works without React.
import { create } from 'zustand';
import type { GenerateJob, GenerationReport, ImageData8, ModelInfo } from '../../workers/api/contract.ts';

export type Status =
  | { kind: 'starting' }
  | { kind: 'loading'; done: number; total: number; label: string }
  | { kind: 'ready' }
  | { kind: 'running'; step: number; total: number; phase: string }
  | { kind: 'cancelling' }
  | { kind: 'error'; message: string };

export interface StudioState {
  job: GenerateJob;
  model?: ModelInfo;
  status: Status;
  preview?: ImageData8;
  result?: { image: ImageData8; report: GenerationReport };
  notice?: string;
  setJob(patch: Partial<GenerateJob>): void;
  set(patch: Partial<Omit<StudioState, 'setJob' | 'set'>>): void;
}

export const DEFAULT_JOB: GenerateJob = {
  prompt: 'a watercolor painting of a cat in a red hat',
  negative: 'blurry, lowres',
  steps: 20,
  cfg: 7.5,
  seed: 1,
  width: 512,
  height: 512,
  scheduler: 'dpmpp-2m',
  clipSkip: 1,
};

export const useStudio = create<StudioState>((set) => ({
  job: DEFAULT_JOB,
  status: { kind: 'starting' },
  setJob: (patch) => set((s) => ({ job: { ...s.job, ...patch } })),
  set: (patch) => set(patch),
}));
