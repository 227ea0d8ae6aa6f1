// Stage times of one generation on the tiny model (text encoding, a denoising step, decoding,
// session creation), the peak GPU bytes the engine held, and the time to CLIP-score the result with
// the tiny scorer: plain, with two merged LoRAs, and with a two-box layout.
import type { GenerateJob } from '../workers/api/contract.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import { ClipScorer } from '../workers/eval/scorer.ts';
import { makeTinyClip, tinyClipFiles } from '../workers/eval/tiny-clip.ts';
import { openTinyEngine, owlAndFoxJob, writeTinyModel } from '../workers/node/tiny.ts';

export async function benchStages(rt: Runtime) {
  const { dir } = await writeTinyModel('lora-studio-bench-');
  const { engine, loras } = await openTinyEngine(dir, rt, ['kohya', 'loha']);
  const scorer = await ClipScorer.open('tiny', new Map(tinyClipFiles(makeTinyClip()).map((f) => [f.path, new Blob(f.parts as BlobPart[])])), rt);
  const plain: GenerateJob = { prompt: 'a red fox in a forest', negative: 'blurry', steps: 8, cfg: 7, seed: 1, width: 64, height: 64, scheduler: 'dpmpp-2m' };
  const cases: [string, GenerateJob][] = [
    ['plain 64x64', plain],
    ['plain 128x128', { ...plain, width: 128, height: 128 }],
    ['2 LoRAs merged 64x64', { ...plain, loras: loras.map((l) => ({ lora: l.id, scale: 0.8 })) }],
    ['2-box layout 64x64', { ...owlAndFoxJob(loras), steps: 8 }],
  ];
  const rows = [];
  for (const [name, job] of cases) {
    const first = await engine.generate(job); // creates the sessions: its sessionCreateMs is the cold cost
    const warm = await engine.generate(job);
    const t0 = performance.now();
    await scorer.score({ image: warm.image, prompt: job.prompt, loras: [], boxes: job.layout?.boxes.map((b) => ({ ...b, loras: [] })) ?? [] });
    const scoreMs = performance.now() - t0;
    const t = warm.report.timingsMs;
    rows.push({ case: name, textEncodeMs: t.textEncodeMs, perStepMs: t.perStepMs, decodeMs: t.decodeMs, firstSessionCreateMs: first.report.timingsMs.sessionCreateMs, totalMs: t.totalMs, peakGpuMB: warm.report.gpuBytesAllocated / 2 ** 20, clipScoreMs: scoreMs });
  }
  engine.unload();
  await scorer.dispose();
  console.log('stages (tiny model, 8 steps): case                    text ms  ms/step  decode ms  sessions ms  peak GPU MB  CLIP score ms');
  for (const r of rows) console.log(`  ${r.case.padEnd(22)} ${r.textEncodeMs.toFixed(0).padStart(8)} ${r.perStepMs.toFixed(0).padStart(8)} ${r.decodeMs.toFixed(0).padStart(10)} ${r.firstSessionCreateMs.toFixed(0).padStart(12)} ${r.peakGpuMB.toFixed(1).padStart(12)} ${r.clipScoreMs.toFixed(0).padStart(14)}`);
  return { steps: 8, rows };
}
