// The page's state: generation settings (plain data) and the run status. Works without React.
import type { RunPhase } from '../app/words.ts';
import { create } from 'zustand';
import type { CompositionMethodId, CompositionStep, EmbeddingInfo, FileRef, GuidanceStep, GenerateJob, GenerationReport, ImageData8, LoraInfo, LoraUse, ModelInfo, ProgressEvent, ScoreReport, ScorerInfo } from '../../workers/api/contract.ts';
import type { Scene, SceneLora, SceneModel } from '../../workers/layout/scene.ts';
import type { DownloadView } from '../app/actions.ts';
import type { GalleryItem } from '../gallery/gallery.ts';
import type { EmbeddingRecord, LoraRecord, ModelRecord } from '../library/library.ts';
import type { StorageUse } from '../library/opfs.ts';

/** The status while a job runs. */
export type RunStatus = Extract<Status, { kind: 'running' }>;

export type Status =
  | { kind: 'starting' }
  | { kind: 'loading'; done: number; total: number; label: string }
  | { kind: 'ready' }
  | {
      kind: 'running';
      step: number;
      total: number;
      phase: RunPhase;
      /** What runs, where it is one of several (a comparison's method). */
      label?: string;
      /** performance.now() at its start, and when each denoising step arrived (for the time left). */
      startedAt: number;
      stepTimes: number[];
      /** The engine has not run this model yet: its first job compiles the GPU programs. */
      firstRun: boolean;
    }
  | { kind: 'cancelling' }
  | { kind: 'error'; message: string };

/** A LoRA of the library: its stored file, so it can be loaded again for another model. */
export interface LoraEntry {
  key: number;
  record: LoraRecord;
  file: FileRef & { kind: 'blob' };
  info?: LoraInfo;
  error?: string;
  scale: number;
  enabled: boolean;
}

/** A textual-inversion embedding of the library, loaded for the model (info) or not (error). */
export interface EmbeddingEntry {
  key: number;
  record: EmbeddingRecord;
  file: FileRef & { kind: 'blob' };
  info?: EmbeddingInfo;
  error?: string;
}

/** The CLIP scorer: which one, whether it is loaded, or why not; a hub download in progress. */
export interface ScorerState {
  name: string;
  info?: ScorerInfo;
  error?: string;
  download?: { file: string; done: number; total: number | null };
}

/** One image of a method comparison, with its scores. */
export interface CompareEntry {
  method: CompositionMethodId;
  image?: ImageData8;
  report?: GenerationReport;
  score?: ScoreReport;
  error?: string;
}

export interface StudioState {
  loras: LoraEntry[];
  updateLora(key: number, patch: Partial<LoraEntry>): void;
  embeddings: EmbeddingEntry[];
  updateEmbedding(key: number, patch: Partial<EmbeddingEntry>): void;
  job: GenerateJob;
  model?: ModelInfo;
  /** The library id of the loaded model (or the embedded test model's). */
  modelId?: string;
  library: { models: ModelRecord[] };
  downloads: DownloadView[];
  /** A LoRA being fetched from an address. */
  loraDownload?: { name: string; done: number; total?: number };
  usage?: StorageUse;
  gallery: GalleryItem[];
  /** LoRAs the open scene names that the library lacks. */
  missing: SceneLora[];
  /** The open scene's model, when the library lacks it. */
  missingModel?: SceneModel;
  shareUrl?: string;
  status: Status;
  /** The last progress event of the running job (its composition step feeds the live plot). */
  progress?: ProgressEvent;
  /** The running job's composition steps so far. */
  runSteps: CompositionStep[];
  /** The running job's guidance steps so far. */
  runGuidance: GuidanceStep[];
  preview?: ImageData8;
  result?: { image: ImageData8; report: GenerationReport; scene: Scene; score?: ScoreReport };
  scorer?: ScorerState;
  /** The last comparison of the scene across methods (filled in as each finishes). */
  comparison?: CompareEntry[];
  notice?: string;
  /** A problem with something the artist did or opened (a damaged file): shown beside the status, which it leaves alone. */
  alert?: string;
  /** Why a share link could not be opened: shown at the top of the page, where a phone shows it on arrival. */
  linkAlert?: string;
  /** The picture shown enlarged, if any (a result, a gallery picture). */
  lightbox?: { src: ImageData8 | Blob; caption: string };
  /** The service worker: the studio works offline, a new version is waiting, or it could not install. */
  offline?: 'ready' | 'update' | 'failed';
  /** Reload into the waiting new version. */
  applyUpdate?: () => void;
  /** How many pictures one Generate makes (seeds one after another), and the last such batch. */
  batchCount: number;
  batch?: { images: ImageData8[]; seeds: number[] };
  /** Why pictures will be slow here (a software adapter), when they will. */
  adapterNote?: string;
  /** The VAE file chosen in place of the model's own (loaded again with each model). */
  vae?: File;
  /** The last GPU self-test's summary. */
  selfTest?: string;
  /**
   * A GPU memory limit in bytes, set by the artist or learned from an out-of-memory: jobs are planned
   * to stay under it (the picture decoded in tiles, guidance's halves one after the other).
   */
  memoryLimit?: number;
  /** A live preview every this many steps, 0 for none (this device's choice: each read makes the GPU wait). */
  previewEvery: number;
  setJob(patch: Partial<GenerateJob>): void;
  set(patch: Partial<Omit<StudioState, 'setJob' | 'set' | 'updateLora'>>): void;
}

/** Where the studio keeps its GPU memory limit (this device's, so not part of a scene or a link). */
export const MEMORY_LIMIT_KEY = 'lorastudio.memoryLimit';

function storedMemoryLimit(): number | undefined {
  const n = typeof localStorage === 'undefined' ? NaN : Number(localStorage.getItem(MEMORY_LIMIT_KEY));
  return Number.isFinite(n) && n > 0 ? n : undefined;
}

/** Where the studio keeps how often it shows a live preview. */
export const PREVIEW_EVERY_KEY = 'lorastudio.previewEvery';

/** The live preview rates the studio offers, in steps (0: none until the picture). */
export const PREVIEW_RATES = [1, 4, 0] as const;

function storedPreviewEvery(): number {
  const n = typeof localStorage === 'undefined' ? NaN : Number(localStorage.getItem(PREVIEW_EVERY_KEY) ?? NaN);
  return (PREVIEW_RATES as readonly number[]).includes(n) ? n : 1;
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
  return loras
    .filter((l) => l.enabled && l.info)
    .map((l) => ({ lora: l.info!.id, scale: l.scale, category: l.record.category, ...(l.record.trigger?.trim() ? { trigger: l.record.trigger.trim() } : {}) }));
}

export const useStudio = create<StudioState>((set) => ({
  job: DEFAULT_JOB,
  loras: [],
  embeddings: [],
  library: { models: [] },
  downloads: [],
  gallery: [],
  missing: [],
  runSteps: [],
  runGuidance: [],
  batchCount: 1,
  memoryLimit: storedMemoryLimit(),
  previewEvery: storedPreviewEvery(),
  updateLora: (key, patch) => set((s) => ({ loras: s.loras.map((l) => (l.key === key ? { ...l, ...patch } : l)) })),
  updateEmbedding: (key, patch) => set((s) => ({ embeddings: s.embeddings.map((e) => (e.key === key ? { ...e, ...patch } : e)) })),
  status: { kind: 'starting' },
  setJob: (patch) => set((s) => ({ job: { ...s.job, ...patch } })),
  set: (patch) => set(patch),
}));
