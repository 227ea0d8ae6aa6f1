// Named errors of the engine. Each carries a stable `code` so the page and the CLI can react to the
// kind of failure, and a message written as a sentence a user can act on.

export type EngineErrorCode =
  | 'safetensors-format'
  | 'safetensors-truncated'
  | 'pth-format'
  | 'unsupported-architecture'
  | 'not-a-model'
  | 'missing-tensor'
  | 'shape-mismatch'
  | 'not-a-lora'
  | 'lora-shape-mismatch'
  | 'non-finite-weights'
  | 'gpu-limit'
  | 'gpu-out-of-memory'
  | 'worker-crashed'
  | 'tokenizer'
  | 'bad-argument'
  | 'gpu-unavailable'
  | 'device-lost'
  | 'cancelled'
  | 'busy'
  | 'io'
  | 'scorer';

export class EngineError extends Error {
  readonly code: EngineErrorCode;
  /** Numbers the page can act on (e.g. a GPU's bytes), carried across the worker boundary. */
  data?: Record<string, number>;
  constructor(code: EngineErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = 'EngineError';
  }
}

/** The file is not a valid safetensors container (bad header, offsets, dtypes). */
export class SafetensorsFormatError extends EngineError {
  constructor(file: string, problem: string) {
    super('safetensors-format', `${file} is not a valid .safetensors file: ${problem}.`);
    this.name = 'SafetensorsFormatError';
  }
}

/** The header promises more bytes than the file holds: an interrupted download. */
export class SafetensorsTruncatedError extends EngineError {
  constructor(file: string, expectedBytes: number, actualBytes: number, firstMissing: string) {
    super(
      'safetensors-truncated',
      `${file} is truncated: its header describes ${expectedBytes} bytes but the file has ${actualBytes} ` +
        `(tensor "${firstMissing}" is cut off). Download it again.`,
    );
    this.name = 'SafetensorsTruncatedError';
  }
}

/** A PyTorch .pth/.pt file we cannot read safely or that is damaged. */
export class PthFormatError extends EngineError {
  constructor(file: string, problem: string) {
    super('pth-format', `${file} cannot be read as a PyTorch checkpoint: ${problem}.`);
    this.name = 'PthFormatError';
  }
}

/** A valid checkpoint, but of an architecture this engine does not run (SD 2.x, SDXL, ...). */
export class UnsupportedArchitectureError extends EngineError {
  constructor(file: string, found: string, evidence: string, kind: 'checkpoint' | 'LoRA' = 'checkpoint') {
    super(
      'unsupported-architecture',
      `${file} is a ${found} ${kind} (${evidence}); LoRA Studio runs Stable Diffusion 1.5-family models ` +
        `(UNet cross-attention width 768, CLIP ViT-L/14 text encoder).`,
    );
    this.name = 'UnsupportedArchitectureError';
  }
}

/** The file holds something other than a full model, e.g. a LoRA or a VAE alone. */
export class NotAModelError extends EngineError {
  constructor(file: string, found: string, hint: string) {
    super('not-a-model', `${file} is ${found}, not a Stable Diffusion checkpoint. ${hint}`);
    this.name = 'NotAModelError';
  }
}

export class MissingTensorError extends EngineError {
  constructor(component: string, key: string) {
    super('missing-tensor', `The ${component} is incomplete: tensor "${key}" is missing from the checkpoint.`);
    this.name = 'MissingTensorError';
  }
}

export class ShapeMismatchError extends EngineError {
  constructor(key: string, expected: readonly number[], got: readonly number[]) {
    super(
      'shape-mismatch',
      `Tensor "${key}" has shape [${got.join(', ')}] but the model needs [${expected.join(', ')}].`,
    );
    this.name = 'ShapeMismatchError';
  }
}

export class BadArgumentError extends EngineError {
  constructor(message: string) {
    super('bad-argument', message);
    this.name = 'BadArgumentError';
  }
}

export class CancelledError extends EngineError {
  constructor() {
    super('cancelled', 'The job was cancelled.');
    this.name = 'CancelledError';
  }
}

export class DeviceLostError extends EngineError {
  constructor(reason: string) {
    super('device-lost', `The GPU device was lost (${reason}). Restart the engine to continue; your scene is kept.`);
    this.name = 'DeviceLostError';
  }
}

/** GPU bytes in words: GB from 1 GiB up, MB below (one decimal). */
export const bytesText = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GB` : `${(b / 2 ** 20).toFixed(1)} MB`);

/** Where an out-of-memory message turns from what happened to what to do (the studio words its own). */
export const RESTART_ADVICE = ' Restart the engine, then ';

/**
 * The GPU could not allocate a buffer (an uncaptured GPUOutOfMemoryError). What it computed since is
 * not to be trusted, and onnxruntime may keep the failed buffer in its pool, so the engine refuses
 * further work until it is restarted. `data`: `liveBytes` held on the device when it failed, and the
 * job's `plannedPeakBytes` where there was a plan.
 */
export class GpuOutOfMemoryError extends EngineError {
  constructor(during: string, liveBytes: number, plan?: { peakBytes: number; largestBufferBytes: number }, fix = 'use a smaller picture, fewer LoRAs or a GPU memory limit') {
    super(
      'gpu-out-of-memory',
      `The GPU ran out of memory ${during} (${bytesText(liveBytes)} were in use${plan ? `; the job planned ${bytesText(plan.peakBytes)} at peak, largest buffer ${bytesText(plan.largestBufferBytes)}` : ''}). ` +
        `${RESTART_ADVICE.trimStart()}${fix}; your scene is kept.`,
    );
    this.name = 'GpuOutOfMemoryError';
    this.data = { liveBytes, ...(plan ? { plannedPeakBytes: plan.peakBytes } : {}) };
  }
}

/** The file holds no LoRA tensors in any format the studio reads. */
export class NotALoraError extends EngineError {
  constructor(file: string, found: string) {
    super('not-a-lora', `${file} is not a LoRA: ${found}`);
    this.name = 'NotALoraError';
  }
}

/** A LoRA layer whose factors do not fit the model's weight (usually: a LoRA for another model). */
export class LoraShapeMismatchError extends EngineError {
  constructor(file: string, key: string, weight: string, expected: readonly number[], got: string) {
    super(
      'lora-shape-mismatch',
      `${file} does not fit this model: LoRA layer "${key}" has ${got}, but the model's ${weight} is [${expected.join(', ')}]. ` +
        'Check that the LoRA was trained for Stable Diffusion 1.5.',
    );
    this.name = 'LoraShapeMismatchError';
  }
}

/** A tensor holding NaN or infinite values: a damaged file, or one saved from a training run that diverged. */
export class NonFiniteWeightsError extends EngineError {
  constructor(file: string, tensor: string, count: number) {
    super(
      'non-finite-weights',
      `${file} is damaged: tensor "${tensor}" holds ${count} NaN or infinite value${count === 1 ? '' : 's'}, which would turn every image black. ` +
        'Download it again; if it stays so, the file itself is broken.',
    );
    this.name = 'NonFiniteWeightsError';
  }
}

/** Plain data form of an error, as it crosses the worker boundary. */
export interface ErrorInfo {
  code: EngineErrorCode | 'internal';
  name: string;
  message: string;
  data?: Record<string, number>;
}

export function toErrorInfo(err: unknown): ErrorInfo {
  if (err instanceof EngineError) return { code: err.code, name: err.name, message: err.message, ...(err.data ? { data: { ...err.data } } : {}) };
  const e = err as { name?: string; message?: string };
  return { code: 'internal', name: e?.name ?? 'Error', message: e?.message ?? String(err) };
}

export function fromErrorInfo(info: ErrorInfo): Error {
  if (info.code === 'internal') {
    const e = new Error(info.message);
    e.name = info.name;
    return e;
  }
  const e = new EngineError(info.code, info.message);
  e.name = info.name;
  if (info.data) e.data = { ...info.data };
  return e;
}
