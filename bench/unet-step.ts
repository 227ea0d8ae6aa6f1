// UNet step time of the tiny model on the WebGPU EP vs the wasm EP, measured side by side in one
// process at three latent sizes. Times are medians of repeated runs after a warm-up.
import type * as OrtNs from 'onnxruntime-web';
import { sessionOptions, type Backend, type Runtime } from '../workers/engine/runtime.ts';
import { makeTinyModel } from '../workers/engine/test-model.ts';
import { WeightSet } from '../workers/engine/weights.ts';
import { buildUNet } from '../workers/graph/unet.ts';
import { Rng } from '../workers/engine/random.ts';

const SIZES = (process.env.BENCH_SIZES ?? '8,16,32').split(',').map(Number);
const REPEATS = Number(process.env.BENCH_REPEATS ?? 5);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function stepTime(rt: Runtime, size: number, model: ReturnType<typeof makeTinyModel>) {
  const cfg = model.config.unet;
  const g = buildUNet(cfg, { batch: 2, latentH: size, latentW: size, textLen: 77, dtype: 'float32' });
  const ws = new WeightSet(rt, 'float32');
  for (const s of g.weights.values()) ws.add(s, model.weights.unet.get(s.name)!);
  const t0 = performance.now();
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
  const createMs = performance.now() - t0;
  const rng = new Rng(1);
  const feeds: Record<string, OrtNs.Tensor> = {
    ...ws.feeds(g.weights.keys()),
    sample: new rt.ort.Tensor('float32', rng.normal(2 * 4 * size * size), [2, 4, size, size]),
    timestep_embedding: new rt.ort.Tensor('float32', rng.normal(2 * cfg.blockOutChannels[0]), [2, cfg.blockOutChannels[0]]),
    encoder_hidden_states: new rt.ort.Tensor('float32', rng.normal(2 * 77 * cfg.crossAttentionDim), [2, 77, cfg.crossAttentionDim]),
  };
  const w0 = performance.now();
  await session.run(feeds);
  const firstRunMs = performance.now() - w0;
  const times: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const s = performance.now();
    await session.run(feeds);
    times.push(performance.now() - s);
  }
  await session.release();
  ws.dispose();
  return { createMs, firstRunMs, stepMs: median(times), runs: times };
}

export async function benchUnetStep(runtimes: Record<Backend, Runtime>) {
  const model = makeTinyModel(1234);
  const rows = [];
  for (const size of SIZES) {
    const webgpu = await stepTime(runtimes.webgpu, size, model);
    const wasm = await stepTime(runtimes.wasm, size, model);
    rows.push({ latent: `${size}x${size}`, image: `${size * 8}x${size * 8}`, batch: 2, webgpuStepMs: webgpu.stepMs, wasmStepMs: wasm.stepMs, webgpuOverWasm: webgpu.stepMs / wasm.stepMs, webgpu, wasm });
  }
  const base = rows[0];
  const out = { wasmThreads: 1, repeats: REPEATS, rows: rows.map((r) => ({ ...r, webgpuGrowth: r.webgpuStepMs / base.webgpuStepMs, wasmGrowth: r.wasmStepMs / base.wasmStepMs })) };
  console.log('unet-step-tiny: latent   webgpu ms   wasm ms   webgpu/wasm   growth(webgpu, wasm)');
  for (const r of out.rows) {
    console.log(`  ${r.latent.padEnd(8)} ${r.webgpuStepMs.toFixed(1).padStart(9)} ${r.wasmStepMs.toFixed(1).padStart(9)} ${r.webgpuOverWasm.toFixed(2).padStart(12)}   ${r.webgpuGrowth.toFixed(1)}x, ${r.wasmGrowth.toFixed(1)}x`);
  }
  return out;
}
