// The engine's public contract: the only types that cross the worker boundary.
import type { ModelConfig } from '../checkpoint/config.ts';
import type { LoraFormat, LoraMetadata } from '../lora/formats.ts';
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
  /** LoRAs (loaded with loadLora) merged into the weights for this image. */
  loras?: LoraUse[];
}

export interface LoraUse {
  /** The id loadLora returned. */
  lora: string;
  /** Multiplier of the UNet part (kohya's "weight"); 0 leaves the model exactly as it is. */
  scale: number;
  /** Multiplier of the text-encoder part; defaults to `scale`. */
  textEncoderScale?: number;
}

export interface LoraInfo {
  id: string;
  name: string;
  format: LoraFormat;
  /** Largest rank of its layers. */
  rank: number;
  /** Layers applied to the UNet and to the text encoder. */
  unetLayers: number;
  textEncoderLayers: number;
  keysMatched: number;
  /** Layers that match nothing in the model (or that the studio cannot apply), with why. */
  keysUnmatched: { key: string; reason: string }[];
  metadata: LoraMetadata;
  factorBytes: number;
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
  loras: { name: string; format: LoraFormat; scale: number; textEncoderScale: number }[];
  /** LoRA layers applied, summed over the job's LoRAs. */
  loraKeysMatched: number;
  /** "file: layer (reason)" for every layer of the job's LoRAs that was not applied. */
  loraKeysUnmatched: string[];
  /** Wall time of each weight merge the job ran (GPU work included). */
  mergeMs: number[];
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
  loadLora(file: FileRef): Promise<LoraInfo>;
  unloadLora(id: string): Promise<void>;
  /** The LoRA merge kernel against its float64 reference on this GPU. */
  selfTest(): Promise<MergeSelfTestResult[]>;
}

export interface MergeSelfTestResult {
  storage: 'f32' | 'f16';
  mode: 'batched' | 'direct';
  maxError: number;
  tolerance: number;
  restoredExactly: boolean;
  ok: boolean;
}

export type { ErrorInfo };
