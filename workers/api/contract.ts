// The engine's public contract: the only types that cross the worker boundary.
import type { ModelConfig } from '../checkpoint/config.ts';
import type { ErrorInfo } from './errors.ts';

export type SchedulerId = 'ddim' | 'euler-a' | 'dpmpp-2m' | 'dpmpp-2m-karras';
export type Precision = 'auto' | 'fp32' | 'fp16';

export interface GenerateJob {
  prompt: string;
  negative: string;
  steps: number;
  /** Classifier-free guidance scale; 1 disables the unconditional branch. */
  cfg: number;
  seed: number;
  width: number;
  height: number;
  scheduler: SchedulerId;
  /** 1 = last CLIP layer (default), 2 = penultimate, ... */
  clipSkip?: number;
}

export interface ImageData8 {
  width: number;
  height: number;
  /** RGBA, 8 bits per channel. */
  data: Uint8ClampedArray;
}

export interface Timings {
  textEncodeMs: number;
  denoiseMs: number;
  perStepMs: number;
  decodeMs: number;
  sessionCreateMs: number;
  totalMs: number;
}

export interface ProgressEvent {
  phase: 'text' | 'denoise' | 'decode' | 'done';
  step: number;
  total: number;
  /** A cheap RGB view of the current latent (latent resolution). */
  preview?: ImageData8;
  elapsedMs: number;
}

export interface AdapterInfo {
  backend: 'webgpu' | 'wasm';
  vendor: string;
  architecture: string;
  shaderF16: boolean;
}

export interface GenerationReport {
  steps: number;
  unetEvaluations: number;
  seed: number;
  scheduler: SchedulerId;
  width: number;
  height: number;
  cfg: number;
  prompt: string;
  negative: string;
  precision: 'fp32' | 'fp16';
  adapter: AdapterInfo;
  timingsMs: Timings;
  /** Peak bytes of GPU buffers alive during the job (weights, activations, staging). */
  gpuBytesAllocated: number;
  warnings: string[];
}

export interface GenerateResult {
  image: ImageData8;
  report: GenerationReport;
}

export interface ModelInfo {
  name: string;
  layout: 'single-file' | 'diffusers';
  config: ModelConfig;
  precision: 'fp32' | 'fp16';
  parameters: { unet: number; textEncoder: number; vae: number };
  weightBytes: number;
  adapter: AdapterInfo;
  isTestModel: boolean;
}

/** A file handed to the worker: a browser File/Blob, or a URL read with range requests. */
export type FileRef = { kind: 'blob'; name: string; blob: Blob } | { kind: 'url'; url: string };

export interface ModelRequest {
  single?: FileRef;
  unet?: FileRef;
  textEncoder?: FileRef;
  vae?: FileRef;
  /** tokenizer.json, or vocab.json + merges.txt, as text. */
  tokenizer: { tokenizerJson?: string; vocabJson?: string; mergesTxt?: string };
  precision?: Precision;
}

/** What the worker exposes over Comlink. Errors arrive as ErrorInfo-shaped rejections. */
export interface EngineApi {
  init(): Promise<AdapterInfo>;
  loadModel(req: ModelRequest, onProgress?: (done: number, total: number) => void): Promise<ModelInfo>;
  generate(job: GenerateJob, onProgress?: (e: ProgressEvent) => void): Promise<GenerateResult>;
  cancel(): Promise<void>;
}

export type { ErrorInfo };
