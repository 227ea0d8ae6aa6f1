// `npm run bench`: every benchmark, measured side by side in one process, written to
// bench/results.json. Compare ratios, not absolute numbers, on shared machines.
// BENCH_ONLY=unet-step, lora-merge, composition, layout or guidance runs one of them.
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRuntime } from '../workers/engine/runtime.ts';
import { installNodeWebGpu } from '../workers/node/webgpu.ts';
import { benchComposition } from './composition.ts';
import { benchGuidance } from './guidance.ts';
import { benchLayout } from './layout.ts';
import { benchLoraMerge } from './lora-merge.ts';
import { benchUnetStep } from './unet-step.ts';

async function main() {
  await installNodeWebGpu();
  const only = process.env.BENCH_ONLY;
  const runtimes = { webgpu: await createRuntime('webgpu'), wasm: await createRuntime('wasm') };
  const adapter = runtimes.webgpu.gpu!.adapter;
  console.log(`adapter: ${adapter.vendor}/${adapter.architecture}`);
  const benchmarks: Record<string, unknown> = {};
  if (!only || only === 'unet-step') benchmarks['unet-step-tiny'] = await benchUnetStep(runtimes);
  if (!only || only === 'lora-merge') benchmarks['lora-merge'] = await benchLoraMerge(runtimes.webgpu);
  if (!only || only === 'composition') benchmarks.composition = await benchComposition(runtimes.webgpu);
  if (!only || only === 'layout') benchmarks.layout = await benchLayout(runtimes.webgpu);
  if (!only || only === 'guidance') benchmarks.guidance = await benchGuidance(runtimes.webgpu);
  const result = {
    date: new Date().toISOString(),
    adapter: { vendor: adapter.vendor, architecture: adapter.architecture, description: adapter.description, shaderF16: adapter.shaderF16 },
    benchmarks,
  };
  mkdirSync('bench', { recursive: true });
  writeFileSync('bench/results.json', JSON.stringify(result, null, 2));
  process.exit(0);
}

main();
