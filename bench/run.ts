// `npm run bench`: every benchmark, measured side by side in one process, written to
// bench/results.json. Compare ratios, not absolute numbers, on shared machines.
// BENCH_ONLY=stages,unet-step,lora-merge,composition,layout,guidance,picture (a comma list) runs those;
// the table at the end is printed from every entry in the file.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRuntime } from '../workers/engine/runtime.ts';
import { dawnFeatures, installNodeWebGpu } from '../workers/node/webgpu.ts';
import { benchComposition } from './composition.ts';
import { benchGuidance } from './guidance.ts';
import { benchLayout } from './layout.ts';
import { benchLoraMerge } from './lora-merge.ts';
import { benchPicture } from './picture.ts';
import { benchStages } from './stages.ts';
import { benchTable, type BenchEntry } from './table.ts';
import { benchUnetStep } from './unet-step.ts';

const FILE = 'bench/results.json';

async function main() {
  await installNodeWebGpu();
  const only = process.env.BENCH_ONLY?.split(',').map((s) => s.trim());
  const runtimes = { webgpu: await createRuntime('webgpu'), wasm: await createRuntime('wasm') };
  const a = runtimes.webgpu.gpu!.adapter;
  const adapter = { vendor: a.vendor, architecture: a.architecture, description: a.description, shaderF16: a.shaderF16, dawnFeatures: dawnFeatures() };
  console.log(`adapter: ${a.vendor}/${a.architecture}`);
  const all: Record<string, () => Promise<unknown>> = {
    stages: () => benchStages(runtimes.webgpu),
    'unet-step-tiny': () => benchUnetStep(runtimes),
    'lora-merge': () => benchLoraMerge(runtimes.webgpu),
    composition: () => benchComposition(runtimes.webgpu),
    layout: () => benchLayout(runtimes.webgpu),
    guidance: () => benchGuidance(runtimes.webgpu),
    picture: () => benchPicture(runtimes.webgpu),
  };
  const unknown = only?.filter((n) => !(n in all) && n !== 'unet-step');
  if (unknown?.length) throw new Error(`BENCH_ONLY names no benchmark: ${unknown.join(', ')} (there are ${Object.keys(all).join(', ')})`);
  // A partial run keeps the other entries, each with its own date and adapter.
  const previous = existsSync(FILE) ? (JSON.parse(readFileSync(FILE, 'utf8')) as { benchmarks?: Record<string, BenchEntry> }) : {};
  const entries: Record<string, BenchEntry> = { ...(previous.benchmarks && Object.values(previous.benchmarks).every((e) => 'result' in e) ? previous.benchmarks : {}) };
  for (const [name, run] of Object.entries(all)) {
    if (only && !only.includes(name) && !(name === 'unet-step-tiny' && only.includes('unet-step'))) continue;
    entries[name] = { date: new Date().toISOString(), adapter, result: (await run()) as Record<string, unknown> };
  }
  const ordered = Object.fromEntries(Object.keys(all).filter((k) => entries[k]).map((k) => [k, entries[k]]));
  mkdirSync('bench', { recursive: true });
  writeFileSync(FILE, JSON.stringify({ date: new Date().toISOString(), adapter, benchmarks: ordered }, null, 2));
  console.log(`\n${benchTable(ordered)}\n\nwritten to ${FILE}`);
  process.exit(0);
}

main().catch((e) => {
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
});
