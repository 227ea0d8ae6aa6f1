// What fits in one GPU buffer. WebGPU caps every buffer (maxBufferSize) and every storage binding
// (maxStorageBufferBindingSize); a weight or an activation past either fails deep inside the
// runtime with a validation error nobody can act on. These checks run first, on the sizes the
// graphs will need, and say what to change.
import { EngineError } from '../api/errors.ts';
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

/** A job's largest single buffer at a size and precision, by its memory plan, and what it is. */
export type LargestBufferAt = (width: number, height: number, precision: 'fp32' | 'fp16') => { bytes: number; what: string };

/**
 * Refuse a job whose plan still holds a buffer larger than the adapter binds, naming the largest
 * square size whose plan fits (and fp16 where that fits). The plan has already split attention,
 * tiled the decode and run the CFG halves one after the other where those help, so what is left
 * fits no other way. Larger pictures need larger buffers, so the size is found by bisection.
 */
export function checkJobFits(width: number, height: number, precision: 'fp32' | 'fp16', adapter: AdapterSummary, largestAt: LargestBufferAt): void {
  const limit = bufferLimit(adapter);
  const need = largestAt(width, height, precision);
  if (need.bytes <= limit) return;
  // sides of 64k pixels: k = lo fits (0: none), k = hi does not (a square as wide as the job's larger side)
  let lo = 0;
  let hi = Math.ceil(Math.max(width, height) / 64);
  while (hi - lo > 1) {
    const k = (lo + hi) >> 1;
    if (largestAt(64 * k, 64 * k, precision).bytes <= limit) lo = k;
    else hi = k;
  }
  const smaller = lo ? `Use a smaller size (${64 * lo}x${64 * lo} fits)` : 'No image size fits';
  const half = precision === 'fp32' && adapter.shaderF16 && largestAt(width, height, 'fp16').bytes <= limit ? ', or fp16' : '';
  throw new GpuLimitError(
    `A ${width}x${height} image needs a buffer of ${mb(need.bytes)} (${need.what}), but this GPU allows at most ${mb(limit)} per buffer, even with attention in chunks and the picture decoded in tiles. ${smaller}${half}.`,
  );
}
