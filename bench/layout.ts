// Layout cost on the tiny model (WebGPU): time per denoising step and peak GPU bytes with 1, 3 and 5
// concept boxes (region injection and concept isolation on, no guidance) against the same job without
// a layout, side by side in one process, as ratios: once with LoRA-Composer's code's choices (the
// defaults: each box region's own negative prompt and output projection, isolation between boxes only,
// whole-cell masks) and once with ours before we read the code (the frame's negative and output
// projection, every region walled off, cell-centre masks, the frame's LoRAs in every region); and the
// mean in-box attention share of the box prompts with injection on and off (3 boxes). The tiny model's
// weights are random, so the share says nothing about quality.
import type { GenerateJob, LayoutBox, LayoutOptions, LoraUse } from '../workers/api/contract.ts';
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
  const before: Partial<LayoutOptions> = { masks: 'centre', isolationScope: 'regions', regionBase: 'frame', regionNegative: 'frame', regionOutput: 'shared' };
  const layoutJob = (n: number, injection = true, choices: Partial<LayoutOptions> = {}): GenerateJob => ({ ...job, layout: { boxes: boxes(n, loras), injection, isolation: true, reinit: false, ...choices } });
  // compile every graph first so the timed runs compare steps only
  for (const n of [1, 3, 5]) for (const c of [{}, before]) await engine.generate({ ...layoutJob(n, true, c), steps: 1 });
  await engine.generate({ ...job, steps: 1 });
  const rows = [];
  for (const [choices, label] of [[{}, 'code'], [before, 'ours before']] as const) {
    for (const n of [0, 1, 3, 5]) {
      if (!n && label !== 'code') continue;
      const r = await engine.generate(n ? layoutJob(n, true, choices) : job);
      rows.push({ choices: n ? label : 'no layout', boxes: n, perStepMs: r.report.timingsMs.perStepMs, setupMs: r.report.timingsMs.textEncodeMs, peakGpuBytes: r.report.gpuBytesAllocated, unetEvaluations: r.report.unetEvaluations });
    }
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
  console.log(`layout (tiny model, ${SIZE}x${SIZE}, ${STEPS} steps): choices       boxes   ms/step   vs no layout   peak GPU MB`);
  for (const r of out.rows) console.log(`  ${r.choices.padEnd(12)} ${String(r.boxes).padStart(5)} ${r.perStepMs.toFixed(0).padStart(9)} ${r.perStepVsNoLayout.toFixed(2).padStart(14)} ${(r.peakGpuBytes / 2 ** 20).toFixed(1).padStart(12)}`);
  const f = (s: { used: number; unmasked: number }) => `used ${s.used.toFixed(3)}, unmasked ${s.unmasked.toFixed(3)}`;
  console.log(`  in-box share, 3 boxes: injection ${f(inBox.injection)}; without ${f(inBox.noInjection)} (box area ${inBox.boxArea.toFixed(3)})`);
  return out;
}
