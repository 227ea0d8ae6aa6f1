// Composition methods on the tiny model (WebGPU), side by side in one process at the same steps, with
// 3 and 5 LoRAs: UNet runs, multiply-adds and wall time per image, each as a ratio to `composite`.
// cmlora runs as its code runs (async, the deep-feature cache refreshed 2-3-2, groups by category)
// and in its other arrangements: the synchronous schedule, online, our prediction cache, no cache,
// and grouped by frequency profile, first with its profiling runs, then with the profiles kept.
// Then the same schedules counted for SD 1.5 at 512 x 512 from the graphs' multiply-adds, at 20, 50
// and the paper's 220 steps: what the deep cache saves there does not depend on this machine.
import type { CompositionOptions, GenerateJob } from '../workers/api/contract.ts';
import { SD15_CONFIG } from '../workers/checkpoint/config.ts';
import { planCmlora } from '../workers/composition/cmlora.ts';
import { categoryOrder } from '../workers/composition/order.ts';
import { resolveComposition } from '../workers/composition/plan.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import { multiplyAdds } from '../workers/graph/cost.ts';
import { buildUNet } from '../workers/graph/unet.ts';
import { openTinyEngine, writeTinyModel } from '../workers/node/tiny.ts';

const STEPS = Number(process.env.BENCH_COMPOSITION_STEPS ?? 20);
const COUNTS = (process.env.BENCH_COMPOSITION_LORAS ?? '3,5').split(',').map(Number);
const FILES = ['kohya', 'locon', 'loha', 'peft', 'kohya-2', 'kohya-3', 'kohya-4'];
// ComposLoRA's set-up: a character first; the last LoRA of each set is a background (the low group)
const CATEGORIES = ['character', 'clothing', 'style', 'object', 'background'];
const categoriesFor = (n: number) => Array.from({ length: n }, (_, i) => (i === n - 1 ? 'background' : CATEGORIES[Math.min(i, CATEGORIES.length - 2)]));

const VARIANTS: { name: string; composition: CompositionOptions }[] = [
  { name: 'none', composition: { method: 'none' } },
  { name: 'merge', composition: { method: 'merge' } },
  { name: 'switch', composition: { method: 'switch' } },
  { name: 'composite', composition: { method: 'composite' } },
  { name: 'cmlora (the code: async, deep cache)', composition: { method: 'cmlora' } },
  { name: 'cmlora sync offline', composition: { method: 'cmlora', async: false } },
  { name: 'cmlora sync online', composition: { method: 'cmlora', async: false, profiling: 'online' } },
  { name: 'cmlora prediction cache (ours)', composition: { method: 'cmlora', cache: 'prediction' } },
  { name: 'cmlora no cache', composition: { method: 'cmlora', cache: 'off' } },
  { name: 'cmlora by profile, profiled', composition: { method: 'cmlora', partition: 'profile' } },
  { name: 'cmlora by profile, kept profiles', composition: { method: 'cmlora', partition: 'profile' } },
];

/** Whole and shallow UNet multiply-adds for SD 1.5 at 512 x 512 with guidance (batch 2), and cmlora's schedule counted against composite's. */
export function projectSd15(counts = [2, 3, 4, 5], stepsList = [20, 50, 220]) {
  const cfg = SD15_CONFIG;
  const opt = { batch: 2, latentH: 64, latentW: 64, textLen: cfg.textEncoder.maxPositions, dtype: 'float16' as const };
  const full = multiplyAdds(buildUNet(cfg.unet, opt));
  const shallow = multiplyAdds(buildUNet(cfg.unet, { ...opt, deepCache: 'shallow' }));
  const rows = [];
  for (const steps of stepsList)
    for (const n of counts) {
      const { order, partition } = categoryOrder(categoriesFor(n));
      const options = resolveComposition({ method: 'cmlora' }, steps, n);
      const kept = Array.from({ length: n }, () => false);
      let whole = 0;
      let part = 0;
      for (let step = 0; step < steps; step++) {
        const plan = planCmlora({ step, steps, count: n, options, order, partition, latentAmplitude: Infinity, cache: kept.map(() => null), features: kept.slice() });
        for (const e of plan.evaluations) {
          if (e.deep === 'reuse') part++;
          else whole++;
          for (const l of e.loras) kept[l] = true;
        }
      }
      const macs = whole * full + part * shallow;
      rows.push({ steps, loras: n, wholeRuns: whole, shallowRuns: part, gMacs: macs / 1e9, compositeGMacs: (n * steps * full) / 1e9, vsComposite: macs / (n * steps * full) });
    }
  return { unetGMacs: full / 1e9, shallowGMacs: shallow / 1e9, shallowShare: shallow / full, rows };
}

export async function benchComposition(rt: Runtime) {
  const { dir } = await writeTinyModel('lora-studio-bench-');
  const { engine, loras } = await openTinyEngine(dir, rt, FILES.slice(0, Math.max(...COUNTS)));
  const job: GenerateJob = { prompt: 'a knight in blue armour, watercolour, castle, holding a lantern', negative: 'blurry', steps: STEPS, cfg: 7, seed: 3, width: 64, height: 64, scheduler: 'dpmpp-2m' };
  // compiles the sessions and kernels, the deep-cache graphs included
  await engine.generate({ ...job, steps: 2, loras: loras.slice(0, 2).map((l) => ({ lora: l.id, scale: 0.8 })), composition: { method: 'cmlora' } });

  const groups = [];
  for (const count of COUNTS) {
    const cats = categoriesFor(count);
    const uses = loras.slice(0, count).map((l, i) => ({ lora: l.id, scale: 0.8, category: cats[i] }));
    const rows = [];
    for (const v of VARIANTS) {
      const t0 = performance.now();
      const r = await engine.generate({ ...job, loras: uses, composition: v.composition });
      const wallMs = performance.now() - t0;
      const c = r.report.composition;
      const shallowRuns = c.steps.reduce((a, s) => a + (s.shallow?.length ?? 0), 0);
      rows.push({
        method: v.name,
        unetEvaluations: r.report.unetEvaluations,
        profileEvaluations: c.unetEvaluations.profile,
        shallowRuns,
        gMacs: r.report.unetMultiplyAdds / 1e9,
        wallMs,
        mergeMs: r.report.mergeMs.reduce((a, b) => a + b, 0),
        profile: c.method === 'cmlora' && c.profile ? { source: c.profile.source, ms: c.profile.ms } : undefined,
        order: c.method === 'cmlora' ? c.order.map((i) => c.loras[i]) : undefined,
      });
    }
    const ref = rows.find((r) => r.method === 'composite')!;
    groups.push({
      loras: count,
      categories: cats,
      rows: rows.map((r) => ({ ...r, evaluationsVsComposite: r.unetEvaluations / ref.unetEvaluations, macsVsComposite: r.gMacs / ref.gMacs, wallVsComposite: r.wallMs / ref.wallMs })),
    });
  }
  engine.unload();
  const sd15 = projectSd15();

  console.log(`composition (tiny model, ${STEPS} steps, 64x64): UNet runs (shallow), G multiply-adds, wall s, then each / composite`);
  for (const g of groups) {
    console.log(`  ${g.loras} LoRAs (${g.categories.join(', ')})`);
    for (const r of g.rows) {
      console.log(
        `    ${r.method.padEnd(38)} ${String(r.unetEvaluations).padStart(4)} (${String(r.shallowRuns).padStart(3)}) ${r.gMacs.toFixed(3).padStart(8)} ${(r.wallMs / 1000).toFixed(1).padStart(7)}   runs ${r.evaluationsVsComposite.toFixed(2)}  macs ${r.macsVsComposite.toFixed(2)}  wall ${r.wallVsComposite.toFixed(2)}`,
      );
    }
  }
  console.log(`  SD 1.5 512x512: whole UNet ${sd15.unetGMacs.toFixed(0)} G multiply-adds, shallow ${sd15.shallowGMacs.toFixed(0)} G (${(100 * sd15.shallowShare).toFixed(1)} %); cmlora / composite:`);
  for (const r of sd15.rows) console.log(`    ${String(r.steps).padStart(3)} steps, ${r.loras} LoRAs: ${r.wholeRuns} whole + ${r.shallowRuns} shallow runs = ${r.vsComposite.toFixed(3)} of composite`);
  return { steps: STEPS, latent: '8x8', scheduler: job.scheduler, groups, sd15 };
}
