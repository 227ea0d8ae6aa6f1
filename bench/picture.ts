// Working from a picture on the tiny model, side by side in one run: time per image for text to image,
// image to image at 0.5, inpainting (half the picture, 4-channel blend), inpainting with the 9-channel
// checkpoint, and the hires fix (2x, strength 0.5), each as a ratio to text to image. Every case runs
// once to compile its graphs, then twice measured; the faster run counts.
import { join } from 'node:path';
import type { GenerateJob, GenerateResult } from '../workers/api/contract.ts';
import { Engine } from '../workers/engine/engine.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import { openModelPath } from '../workers/node/files.ts';
import { writeTinyModel } from '../workers/node/tiny.ts';

export async function benchPicture(rt: Runtime) {
  const { dir } = await writeTinyModel('lora-studio-bench-');
  const open = async (file: string) => {
    const { files, tokenizer } = await openModelPath(join(dir, file));
    const engine = new Engine(rt);
    await engine.loadModel(files, tokenizer!, 'fp32');
    return engine;
  };
  const engine = await open('tiny-sd15.safetensors');
  const plain: GenerateJob = { prompt: 'a red fox in a forest', negative: 'blurry', steps: 8, cfg: 7, seed: 1, width: 64, height: 64, scheduler: 'dpmpp-2m', previewEvery: 0 };
  const picture = (await engine.generate({ ...plain, seed: 2 })).image;
  const half = Uint8Array.from({ length: 64 * 64 }, (_, p) => (p % 64 < 32 ? 255 : 0));
  const best = async (e: Engine, job: GenerateJob) => {
    await e.generate(job);
    const runs: GenerateResult[] = [await e.generate(job), await e.generate(job)];
    return runs.reduce((a, b) => (a.report.timingsMs.totalMs <= b.report.timingsMs.totalMs ? a : b));
  };
  const cases: [string, Engine, GenerateJob][] = [
    ['text to image', engine, plain],
    ['image to image 0.5', engine, { ...plain, init: { image: picture, strength: 0.5 } }],
    ['inpainting (half, blend)', engine, { ...plain, init: { image: picture, strength: 1, mask: half } }],
    ['hires fix 2x, 0.5', engine, { ...plain, hires: { scale: 2, strength: 0.5 } }],
  ];
  const rows: { case: string; totalMs: number; unetEvaluations: number; latentsOnGpu: boolean; vsTextToImage: number }[] = [];
  for (const [name, e, job] of cases) {
    const r = await best(e, job);
    rows.push({ case: name, totalMs: r.report.timingsMs.totalMs, unetEvaluations: r.report.unetEvaluations + (r.report.hires?.stepsRun ?? 0), latentsOnGpu: r.report.latentsOnGpu, vsTextToImage: 0 });
  }
  engine.unload();
  const inpaintModel = await open('tiny-sd15-inpainting.safetensors');
  const r9 = await best(inpaintModel, { ...plain, init: { image: picture, strength: 1, mask: half } });
  rows.push({ case: 'inpainting (9-channel model)', totalMs: r9.report.timingsMs.totalMs, unetEvaluations: r9.report.unetEvaluations, latentsOnGpu: r9.report.latentsOnGpu, vsTextToImage: 0 });
  inpaintModel.unload();
  for (const r of rows) r.vsTextToImage = r.totalMs / rows[0].totalMs;
  console.log('picture (tiny model, 64x64, 8 steps): case                     ms/image  UNet runs  on GPU  vs text to image');
  for (const r of rows) console.log(`  ${r.case.padEnd(30)} ${r.totalMs.toFixed(0).padStart(8)} ${String(r.unetEvaluations).padStart(10)} ${String(r.latentsOnGpu).padStart(7)} ${r.vsTextToImage.toFixed(2).padStart(17)}`);
  return { steps: 8, size: 64, rows };
}
