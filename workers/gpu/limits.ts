// What fits in one GPU buffer. WebGPU caps every buffer (maxBufferSize) and every storage binding
// (maxStorageBufferBindingSize); a weight or an activation past either fails deep inside the
// runtime with a validation error nobody can act on. These checks run first, on the sizes the
// graphs will need, and say what to change.
import { EngineError } from '../api/errors.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import type { AttentionForm } from '../graph/builder.ts';
import type { AdapterSummary } from './device.ts';

/** The largest buffer a kernel can bind as storage on this adapter. */
export const bufferLimit = (a: Pick<AdapterSummary, 'maxBufferSize' | 'maxStorageBufferBindingSize'>) => Math.min(a.maxBufferSize, a.maxStorageBufferBindingSize);

const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 3 : 0)} MB`;

export class GpuLimitError extends EngineError {
  constructor(message: string) {
    super('gpu-limit', message);
    this.name = 'GpuLimitError';
  }
}

/** Refuse a model whose largest weight does not fit one buffer, before anything is allocated. */
export function checkWeightsFit(weights: { name: string; elements: number }[], precision: 'fp32' | 'fp16', adapter: AdapterSummary): void {
  const limit = bufferLimit(adapter);
  const largest = weights.reduce((a, w) => (w.elements > a.elements ? w : a), { name: '', elements: 0 });
  const bytes = largest.elements * (precision === 'fp16' ? 2 : 4);
  if (bytes <= limit) return;
  const fix =
    precision === 'fp32' && largest.elements * 2 <= limit
      ? adapter.shaderF16
        ? 'Load it in fp16 (Precision: fp16), which halves every weight.'
        : 'In fp16 it would fit, but this GPU has no shader-f16; no fp32 setting can load it here.'
      : 'No precision setting makes it fit on this GPU.';
  throw new GpuLimitError(`The weight "${largest.name}" needs ${mb(bytes)} in ${precision}, but this GPU allows at most ${mb(limit)} per buffer. ${fix}`);
}

/** The largest single activation a generation of this size makes, and what it is. */
export function largestActivation(cfg: ModelConfig, width: number, height: number, batch: number, bytesPer: number, attention: AttentionForm = 'explicit'): { bytes: number; what: string } {
  const lh = height / 8;
  const lw = width / 8;
  let best = { bytes: 0, what: '' };
  const consider = (elements: number, what: string) => {
    if (elements * bytesPer > best.bytes) best = { bytes: elements * bytesPer, what };
  };
  // UNet self-attention scores, [batch * heads, N, N], at each level that has attention (fused
  // attention never makes them; chunked attention splits them under the limit)
  cfg.unet.attention.forEach((has, l) => {
    if (!has || attention !== 'explicit') return;
    const n = (lh >> l) * (lw >> l);
    consider(batch * cfg.unet.heads * n * n, `the UNet's self-attention scores at ${lw >> l}x${lh >> l}`);
  });
  // VAE decoder: its mid-block attention over every latent pixel, then each level's feature maps,
  // the widest of which meet the highest resolutions just after an upsampling
  if (attention === 'explicit') consider(lh * lw * lh * lw, 'the VAE decoder\'s attention scores');
  const ch = [...cfg.vae.blockOutChannels].reverse();
  ch.forEach((c, i) => {
    const side = 2 ** Math.min(i + 1, ch.length - 1);
    consider(c * lh * lw * side * side, `the VAE decoder's feature maps at ${(lw * side)}x${(lh * side)}`);
  });
  return best;
}

/** Refuse a job whose largest activation does not fit one buffer, naming the largest square size that would. */
export function checkJobFits(cfg: ModelConfig, width: number, height: number, batch: number, precision: 'fp32' | 'fp16', adapter: AdapterSummary, attention: AttentionForm = 'explicit'): void {
  const limit = bufferLimit(adapter);
  const bytesPer = precision === 'fp16' ? 2 : 4;
  const need = largestActivation(cfg, width, height, batch, bytesPer, attention);
  if (need.bytes <= limit) return;
  let side = 0;
  for (let s = 64; s <= 2048; s += 64) if (largestActivation(cfg, s, s, batch, bytesPer, attention).bytes <= limit) side = s;
  const smaller = side ? `Use a smaller size (${side}x${side} fits)` : 'No image size fits';
  const half = precision === 'fp32' && adapter.shaderF16 && largestActivation(cfg, width, height, batch, 2, attention).bytes <= limit ? ', or fp16' : '';
  throw new GpuLimitError(
    `A ${width}x${height} image needs ${mb(need.bytes)} for ${need.what}, but this GPU allows at most ${mb(limit)} per buffer. ${smaller}${half}.`,
  );
}
