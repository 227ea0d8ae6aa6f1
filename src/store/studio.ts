// The page's state: generation settings (plain data) and the run status. Works without React.
import { create } from 'zustand';
import type { FileRef, GenerateJob, GenerationReport, ImageData8, LoraInfo, LoraUse, ModelInfo } from '../../workers/api/contract.ts';

export type Status =
  | { kind: 'starting' }
  | { kind: 'loading'; done: number; total: number; label: string }
  | { kind: 'ready' }
  | { kind: 'running'; step: number; total: number; phase: string }
  | { kind: 'cancelling' }
  | { kind: 'error'; message: string };

/** A LoRA the artist added: kept with its file so it can be loaded again for another model. */
export interface LoraEntry {
  key: number;
  file: FileRef & { kind: 'blob' };
  info?: LoraInfo;
  error?: string;
  scale: number;
  enabled: boolean;
}

export interface StudioState {
  loras: LoraEntry[];
  updateLora(key: number, patch: Partial<LoraEntry>): void;
  job: GenerateJob;
  model?: ModelInfo;
  status: Status;
  preview?: ImageData8;
  result?: { image: ImageData8; report: GenerationReport };
  notice?: string;
  /** The last GPU self-test's summary. */
  selfTest?: string;
  setJob(patch: Partial<GenerateJob>): void;
  set(patch: Partial<Omit<StudioState, 'setJob' | 'set' | 'updateLora'>>): void;
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

/** The job's LoRA list: every enabled LoRA that loaded, at its strength. */
export function activeLoras(loras: LoraEntry[]): LoraUse[] {
  return loras.filter((l) => l.enabled && l.info).map((l) => ({ lora: l.info!.id, scale: l.scale }));
}

export const useStudio = create<StudioState>((set) => ({
  job: DEFAULT_JOB,
  loras: [],
  updateLora: (key, patch) => set((s) => ({ loras: s.loras.map((l) => (l.key === key ? { ...l, ...patch } : l)) })),
  status: { kind: 'starting' },
  setJob: (patch) => set((s) => ({ job: { ...s.job, ...patch } })),
  set: (patch) => set(patch),
}));
