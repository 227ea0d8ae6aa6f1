// Shared test fixtures: the tiny model written to a temporary folder, and runtimes per backend.
import { createRuntime, type Backend, type Runtime } from '../workers/engine/runtime.ts';
import type { TinyModel } from '../workers/engine/test-model.ts';
import { writeTinyModel } from '../workers/node/tiny.ts';
import { installNodeWebGpu } from '../workers/node/webgpu.ts';

let model: Promise<{ dir: string; model: TinyModel }> | undefined;

export function tinyModelDir(): Promise<{ dir: string; model: TinyModel }> {
  model ??= writeTinyModel('lora-studio-test-');
  return model;
}

const runtimes = new Map<Backend, Promise<Runtime>>();

export function runtime(backend: Backend): Promise<Runtime> {
  let r = runtimes.get(backend);
  if (!r) {
    r = (async () => {
      if (backend === 'webgpu') await installNodeWebGpu();
      return createRuntime(backend);
    })();
    runtimes.set(backend, r);
  }
  return r;
}

/** Largest absolute difference, and the largest magnitude of the reference (for relative checks). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): { diff: number; scale: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { diff, scale };
}

export function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}
