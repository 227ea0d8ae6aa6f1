// Layout cost on the tiny model (WebGPU): time per denoising step with 1, 3 and 5 concept boxes
// (region injection and concept isolation on) against the same job without a layout, side by side in
// one process, as ratios; and the mean in-box attention share of the box prompts with injection on
// and off (3 boxes). The tiny model's weights are random, so the share says nothing about quality.
import type { GenerateJob, LayoutBox, LoraUse } from '../workers/api/contract.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import { openTinyEngine, writeTinyModel } from '../workers/node/tiny.ts';

const STEPS = Number(process.env.BENCH_LAYOUT_STEPS ?? 6);
const SIZE = 128;

/** n boxes side by side across the frame, each with one test LoRA. */
function boxes(n: number, loras: LoraUse[]): LayoutBox[] {
  const w = Math.floor(SIZE / n / 8) * 8;
  return Array.from({ length: n }, (_, i) => ({ name: `c${i}`, x: i * w, y: 16, width: w, height: SIZE - 32, prompt: `concept number ${i}`, loras: [loras[i % loras.length]] }));
}

export async function benchLayout(rt: Runtime) {
  const { dir } = await writeTinyModel('lora-studio-bench-');
  const { engine, loras: infos } = await openTinyEngine(dir, rt, ['kohya', 'locon', 'loha', 'peft', 'kohya-2']);
  const loras: LoraUse[] = infos.map((l) => ({ lora: l.id, scale: 0.8 }));
  const job: GenerateJob = { prompt: 'friends in a garden', negative: '', steps: STEPS, cfg: 5, seed: 9, width: SIZE, height: SIZE, scheduler: 'dpmpp-2m' };
  const layoutJob = (n: number, injection = true): GenerateJob => ({ ...job, layout: { boxes: boxes(n, loras), injection, isolation: true, reinit: false } });
  // compile every graph first so the timed runs compare steps only
  for (const j of [job, layoutJob(1), layoutJob(3), layoutJob(5)]) await engine.generate({ ...j, steps: 1 });
  const rows = [];
  for (const n of [0, 1, 3, 5]) {
    const r = await engine.generate(n ? layoutJob(n) : job);
    rows.push({ boxes: n, perStepMs: r.report.timingsMs.perStepMs, setupMs: r.report.timingsMs.textEncodeMs, unetEvaluations: r.report.unetEvaluations });
  }
  const base = rows[0].perStepMs;
  const share = async (injection: boolean) => {
    const r = await engine.generate(layoutJob(3, injection));
    const mean = (f: (b: (typeof r.report.boxes)[number]) => number) => r.report.boxes.reduce((a, b) => a + f(b), 0) / r.report.boxes.length;
    return { used: mean((b) => b.attentionInBox), unmasked: mean((b) => b.attentionInBoxUnmasked) };
  };
  const inBox = { injection: await share(true), noInjection: await share(false), boxArea: boxes(3, loras).reduce((a, b) => a + b.width * b.height, 0) / 3 / (SIZE * SIZE) };
  engine.unload();
  const out = { steps: STEPS, image: `${SIZE}x${SIZE}`, rows: rows.map((r) => ({ ...r, perStepVsNoLayout: r.perStepMs / base })), inBoxShare3Boxes: inBox };
  console.log(`layout (tiny model, ${SIZE}x${SIZE}, ${STEPS} steps): boxes   ms/step   vs no layout`);
  for (const r of out.rows) console.log(`  ${String(r.boxes).padStart(5)} ${r.perStepMs.toFixed(0).padStart(9)} ${r.perStepVsNoLayout.toFixed(2).padStart(9)}`);
  const f = (s: { used: number; unmasked: number }) => `used ${s.used.toFixed(3)}, unmasked ${s.unmasked.toFixed(3)}`;
  console.log(`  in-box share, 3 boxes: injection ${f(inBox.injection)}; without ${f(inBox.noInjection)} (box area ${inBox.boxArea.toFixed(3)})`);
  return out;
}
