// Composition methods on the tiny model (WebGPU): UNet evaluations and wall time per image for each
// method, with 3 and 5 LoRAs at the same steps, side by side in one process, as ratios to
// `composite`; and cmlora's cache hit rate per LoRA. cmlora offline is measured twice: first with
// its profiling runs, then with the profile the engine cached for the same LoRA set and job.
import type { CompositionOptions, GenerateJob } from '../workers/api/contract.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import { openTinyEngine, writeTinyModel } from '../workers/node/tiny.ts';

const STEPS = Number(process.env.BENCH_COMPOSITION_STEPS ?? 20);
const COUNTS = (process.env.BENCH_COMPOSITION_LORAS ?? '3,5').split(',').map(Number);
const FILES = ['kohya', 'locon', 'loha', 'peft', 'kohya-2', 'kohya-3', 'kohya-4'];

const VARIANTS: { name: string; composition: CompositionOptions }[] = [
  { name: 'none', composition: { method: 'none' } },
  { name: 'merge', composition: { method: 'merge' } },
  { name: 'switch', composition: { method: 'switch' } },
  { name: 'composite', composition: { method: 'composite' } },
  { name: 'cmlora-offline-profiled', composition: { method: 'cmlora', profiling: 'offline' } },
  { name: 'cmlora-offline-cached-profile', composition: { method: 'cmlora', profiling: 'offline' } },
  { name: 'cmlora-online', composition: { method: 'cmlora', profiling: 'online' } },
];

export async function benchComposition(rt: Runtime) {
  const { dir } = await writeTinyModel('lora-studio-bench-');
  const { engine, loras } = await openTinyEngine(dir, rt, FILES.slice(0, Math.max(...COUNTS)));
  const job: GenerateJob = { prompt: 'a knight in blue armour, watercolour, castle, holding a lantern', negative: 'blurry', steps: STEPS, cfg: 7, seed: 3, width: 64, height: 64, scheduler: 'dpmpp-2m' };
  await engine.generate({ ...job, steps: 2 }); // compiles the sessions and kernels

  const groups = [];
  for (const count of COUNTS) {
    const uses = loras.slice(0, count).map((l) => ({ lora: l.id, scale: 0.8 }));
    const rows = [];
    for (const v of VARIANTS) {
      const t0 = performance.now();
      const r = await engine.generate({ ...job, loras: uses, composition: v.composition });
      const wallMs = performance.now() - t0;
      const c = r.report.composition;
      rows.push({
        method: v.name,
        unetEvaluations: r.report.unetEvaluations,
        profileEvaluations: c.unetEvaluations.profile,
        wallMs,
        mergeMs: r.report.mergeMs.reduce((a, b) => a + b, 0),
        merges: r.report.mergeMs.length,
        cacheHitRate: c.method === 'cmlora' ? Object.fromEntries(c.loras.map((name, i) => [name, c.cacheHitRate[i]])) : undefined,
        order: c.method === 'cmlora' ? c.order.map((i) => c.loras[i]) : undefined,
        partition: c.partition ? { high: c.partition.high.map((i) => c.loras[i]), low: c.partition.low.map((i) => c.loras[i]) } : undefined,
      });
    }
    const ref = rows.find((r) => r.method === 'composite')!;
    groups.push({ loras: count, rows: rows.map((r) => ({ ...r, evaluationsVsComposite: r.unetEvaluations / ref.unetEvaluations, wallVsComposite: r.wallMs / ref.wallMs })) });
  }
  engine.unload();

  console.log(`composition (tiny model, ${STEPS} steps, 64x64): method   UNet runs   wall s   runs/composite   wall/composite`);
  for (const g of groups) {
    console.log(`  ${g.loras} LoRAs`);
    for (const r of g.rows) {
      console.log(`    ${r.method.padEnd(30)} ${String(r.unetEvaluations).padStart(5)} ${(r.wallMs / 1000).toFixed(1).padStart(8)} ${r.evaluationsVsComposite.toFixed(2).padStart(8)} ${r.wallVsComposite.toFixed(2).padStart(8)}${r.cacheHitRate ? '   cache hits ' + Object.values(r.cacheHitRate).map((h) => (h ?? 0).toFixed(2)).join(' ') : ''}`);
    }
  }
  return { steps: STEPS, latent: '8x8', scheduler: job.scheduler, groups };
}
