// Text-to-image, as the algorithm box reads: encode the prompts, start from seeded noise, and at
// each step predict the noise with classifier-free guidance and let the scheduler step; decode.
import type * as OrtNs from 'onnxruntime-web';
import type { GenerateJob, ImageData8, ProgressEvent } from '../api/contract.ts';
import { CancelledError } from '../api/errors.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import { createScheduler } from '../schedulers/registry.ts';
import type { ClipTextTokenizer } from '../text/tokenizer.ts';
import type { Ort } from './runtime.ts';
import { Rng } from './random.ts';

type Feeds = Record<string, OrtNs.Tensor>;
type Outputs = OrtNs.InferenceSession.OnnxValueMapType;

export interface PipelineParts {
  ort: Ort;
  config: ModelConfig;
  tokenizer: ClipTextTokenizer;
  textEncoder: (ids: OrtNs.Tensor) => Promise<Outputs>;
  unet: (feeds: Feeds) => Promise<Outputs>;
  vae: (feeds: Feeds) => Promise<Outputs>;
  isCancelled: () => boolean;
  checkDevice: () => void;
}

export interface PipelineResult {
  image: ImageData8;
  unetEvaluations: number;
  timings: { textEncodeMs: number; denoiseMs: number; perStepMs: number; decodeMs: number };
  warnings: string[];
}

/** Sinusoidal timestep embedding (cos first: flip_sin_to_cos, no frequency shift), float64. */
export function timestepEmbedding(t: number, dim: number): Float32Array {
  const half = dim / 2;
  const out = new Float32Array(dim);
  for (let i = 0; i < half; i++) {
    const arg = t * Math.exp((-Math.log(10000) * i) / half);
    out[i] = Math.cos(arg);
    out[half + i] = Math.sin(arg);
  }
  return out;
}

/** A rough latent -> RGB projection for live previews (SD 1.5 latent space). */
const PREVIEW = [
  [0.298, 0.207, 0.208],
  [0.187, 0.286, 0.173],
  [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473],
];

export function latentPreview(latent: Float32Array, h: number, w: number): ImageData8 {
  const data = new Uint8ClampedArray(h * w * 4);
  const n = h * w;
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = 0; k < 4; k++) v += latent[k * n + p] * PREVIEW[k][c];
      data[p * 4 + c] = Math.round((v + 1) * 127.5);
    }
    data[p * 4 + 3] = 255;
  }
  return { width: w, height: h, data };
}

/** VAE output in [-1, 1], NCHW -> RGBA bytes. */
export function toImage(pixels: Float32Array, h: number, w: number): ImageData8 {
  const data = new Uint8ClampedArray(h * w * 4);
  const n = h * w;
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) data[p * 4 + c] = Math.round(Math.min(Math.max((pixels[c * n + p] + 1) / 2, 0), 1) * 255);
    data[p * 4 + 3] = 255;
  }
  return { width: w, height: h, data };
}

export async function denoise(parts: PipelineParts, job: GenerateJob, onProgress?: (e: ProgressEvent) => void): Promise<PipelineResult> {
  const { ort, config } = parts;
  const start = performance.now();
  const elapsed = () => performance.now() - start;
  const check = () => {
    parts.checkDevice();
    if (parts.isCancelled()) throw new CancelledError();
  };
  const warnings: string[] = [];
  const lh = job.height / 8;
  const lw = job.width / 8;
  const latentSize = config.unet.inChannels * lh * lw;
  const guided = job.cfg > 1;

  // 1. text conditioning: [uncond, cond] when guided
  onProgress?.({ phase: 'text', step: 0, total: job.steps, elapsedMs: elapsed() });
  const encode = async (text: string, label: string) => {
    const e = parts.tokenizer.encode(text);
    if (e.truncated) warnings.push(`The ${label} is ${e.tokenCount} tokens long; only the first ${parts.tokenizer.maxLength} are used.`);
    const ids = new ort.Tensor('int64', BigInt64Array.from(e.ids, BigInt), [1, e.ids.length]);
    return (await parts.textEncoder(ids)).last_hidden_state.data as Float32Array;
  };
  const cond = await encode(job.prompt, 'prompt');
  const context = guided ? concat(await encode(job.negative, 'negative prompt'), cond) : cond;
  const textLen = config.textEncoder.maxPositions;
  const textEncodeMs = elapsed();
  check();

  // 2. seeded initial noise, scaled to the scheduler's first sigma
  const scheduler = createScheduler(job.scheduler, job.steps);
  const rng = new Rng(job.seed);
  let latent: Float32Array = rng.normal(latentSize).map((v) => v * scheduler.initNoiseSigma);
  const batch = guided ? 2 : 1;
  const ctxTensor = new ort.Tensor('float32', context, [batch, textLen, config.unet.crossAttentionDim]);
  const c0 = config.unet.blockOutChannels[0];

  // 3. the denoising loop
  const loopStart = performance.now();
  let unetEvaluations = 0;
  for (let i = 0; i < scheduler.timesteps.length; i++) {
    check();
    const t = scheduler.timesteps[i];
    const x = scheduler.scaleModelInput(latent, i);
    const emb = timestepEmbedding(t, c0);
    const out = await parts.unet({
      sample: new ort.Tensor('float32', guided ? concat(x, x) : x, [batch, config.unet.inChannels, lh, lw]),
      timestep_embedding: new ort.Tensor('float32', guided ? concat(emb, emb) : emb, [batch, c0]),
      encoder_hidden_states: ctxTensor,
    });
    unetEvaluations += 1;
    const pred = out.noise_pred.data as Float32Array;
    let eps = pred;
    if (guided) {
      eps = new Float32Array(latentSize);
      for (let k = 0; k < latentSize; k++) eps[k] = pred[k] + job.cfg * (pred[latentSize + k] - pred[k]);
    }
    latent = scheduler.step(eps, i, latent, () => rng.normal(latentSize));
    onProgress?.({ phase: 'denoise', step: i + 1, total: job.steps, preview: latentPreview(latent, lh, lw), elapsedMs: elapsed() });
  }
  const denoiseMs = performance.now() - loopStart;
  check();

  // 4. decode
  onProgress?.({ phase: 'decode', step: job.steps, total: job.steps, elapsedMs: elapsed() });
  const decStart = performance.now();
  const img = await parts.vae({ latent: new ort.Tensor('float32', latent, [1, config.unet.inChannels, lh, lw]) });
  const image = toImage(img.image.data as Float32Array, job.height, job.width);
  const decodeMs = performance.now() - decStart;
  onProgress?.({ phase: 'done', step: job.steps, total: job.steps, elapsedMs: elapsed() });
  return { image, unetEvaluations, timings: { textEncodeMs, denoiseMs, perStepMs: denoiseMs / job.steps, decodeMs }, warnings };
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
