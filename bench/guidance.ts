// Gradient guidance as LoRA-Composer's code runs it. Measured on the tiny model (WebGPU), side by side
// in one process: time per step with and without guidance and per guided step, peak GPU bytes, the
// in-box share of each concept with guidance on and off in both box arrangements (owl left and fox
// right, and swapped), and L with its three terms per step. Projected for SD 1.5 at 512x512 from its
// graphs (no weights needed to build them): the multiply-adds of a guided step (the maps run plus the
// forward-and-backward run of the cut UNet, now through the mid and up blocks) against the UNet's own
// step, and the activation memory the backward pass keeps, with and without recomputation.
import type { GenerateJob, GuidanceOptions, LayoutOptions } from '../workers/api/contract.ts';
import { SD15_CONFIG } from '../workers/checkpoint/config.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import type { GraphBuilder } from '../workers/graph/builder.ts';
import { buildGuidanceGraph, GUIDANCE_RECOMPUTE_ABOVE, guidanceLayers } from '../workers/graph/guidance-graph.ts';
import { elementCount } from '../workers/graph/shapes.ts';
import { multiplyAdds } from '../workers/graph/cost.ts';
import { buildUNet } from '../workers/graph/unet.ts';
import { openTinyEngine, owlAndFoxJob, writeTinyModel } from '../workers/node/tiny.ts';

const STEPS = Number(process.env.BENCH_GUIDANCE_STEPS ?? 6);

export const macs = multiplyAdds;

/** Bytes of the forward values (before node `split`) that backward nodes read: what the backward pass keeps alive. */
export function keptActivationBytes(g: GraphBuilder, split: number, bytesPerValue: number): number {
  const produced = new Set(g.records.slice(0, split).flatMap((n) => n.outputs));
  const kept = new Set(g.records.slice(split).flatMap((n) => n.inputs.filter((v) => produced.has(v))));
  let total = 0;
  for (const v of kept) total += elementCount(g.shapes.get(v) ?? []) * bytesPerValue;
  return total;
}

function projectSd15() {
  const cfg = SD15_CONFIG;
  const unet = cfg.unet;
  const [lh, lw] = [64, 64];
  const textLen = cfg.textEncoder.maxPositions;
  const layers = guidanceLayers(unet, lh, lw);
  const opt = { batch: 1, latentH: lh, latentW: lw, textLen, dtype: 'float32' as const, regions: 3, isolation: true, regionOutputs: true };
  const maps = buildGuidanceGraph(unet, opt, layers, false);
  const full = buildUNet(unet, { batch: 2, latentH: lh, latentW: lw, textLen, dtype: 'float32', regions: 3, isolation: true, regionOutputs: true });
  const step = macs(full);
  // the gradient graph after pruning: its forward nodes are those the maps graph has too
  const forward = new Set(maps.records.flatMap((n) => n.outputs));
  const variant = (recomputeAbove: number) => {
    const grad = buildGuidanceGraph(unet, opt, layers, true, recomputeAbove);
    const split = grad.records.findIndex((n) => !n.outputs.every((o) => forward.has(o)));
    const guided = macs(maps) + macs(grad);
    return {
      guidedExtraGMacs: guided / 1e9,
      guidedStepVsUnguided: (step + guided) / step,
      backwardKeepsMB: { fp32: keptActivationBytes(grad, split, 4) / 2 ** 20, fp16: keptActivationBytes(grad, split, 2) / 2 ** 20 },
      weights: [...grad.weights.values()].reduce((a, w) => a + elementCount(w.dims), 0),
    };
  };
  const kept = variant(Infinity);
  const recomputed = variant(GUIDANCE_RECOMPUTE_ABOVE);
  return {
    layers,
    unetStepGMacs: step / 1e9,
    keepEverything: { guidedExtraGMacs: kept.guidedExtraGMacs, guidedStepVsUnguided: kept.guidedStepVsUnguided, backwardKeepsMB: kept.backwardKeepsMB },
    recomputeAbove: { elements: GUIDANCE_RECOMPUTE_ABOVE, guidedExtraGMacs: recomputed.guidedExtraGMacs, guidedStepVsUnguided: recomputed.guidedStepVsUnguided, backwardKeepsMB: recomputed.backwardKeepsMB },
    cutUNetWeightsMB: { fp32: (kept.weights * 4) / 2 ** 20, fp16: (kept.weights * 2) / 2 ** 20 },
  };
}

/** The owl-and-fox job, or with the boxes swapped (the fox on the left, where its attention gathers unguided). */
function arrangement(job: GenerateJob, swapped: boolean): GenerateJob {
  if (!swapped) return job;
  const [owl, fox] = job.layout!.boxes;
  return { ...job, layout: { ...job.layout!, boxes: [{ ...owl, x: fox.x }, { ...fox, x: owl.x }] } };
}

export async function benchGuidance(rt: Runtime) {
  const { dir } = await writeTinyModel('lora-studio-bench-');
  const { engine, loras } = await openTinyEngine(dir, rt, ['kohya', 'loha']);
  // the code's guidance (its defaults: phi 20 sqrt(linspace(1, 0.5)), early stop, cap at step 25), with isolation on as the code runs it
  const code: GuidanceOptions = { ce: true, fill: true, region: true };
  const job = (guidance?: GuidanceOptions, swapped = false, patch: Partial<LayoutOptions> = {}) => {
    const j = arrangement(owlAndFoxJob(loras, guidance, STEPS), swapped);
    return { ...j, layout: { ...j.layout!, isolation: true, ...patch } };
  };
  // compile every graph first so the timed runs compare steps only
  for (const j of [job(), job(code)]) await engine.generate({ ...j, steps: 1 });
  const runs = [];
  for (const swapped of [false, true]) {
    const off = (await engine.generate(job(undefined, swapped))).report;
    const on = (await engine.generate(job(code, swapped))).report;
    const g = on.guidance!;
    const guidedSteps = g.steps.filter((s) => s.updated).length;
    runs.push({
      arrangement: swapped ? 'fox left, owl right' : 'owl left, fox right',
      unguidedPerStepMs: off.timingsMs.perStepMs,
      perStepMs: on.timingsMs.perStepMs,
      perStepVsUnguided: on.timingsMs.perStepMs / off.timingsMs.perStepMs,
      perGuidedStepMs: (on.timingsMs.denoiseMs - (STEPS - g.steps.length) * off.timingsMs.perStepMs) / Math.max(1, g.steps.length),
      guidedSteps,
      stoppedAt: g.stoppedAt,
      peakGpuBytes: { off: off.gpuBytesAllocated, on: on.gpuBytesAllocated },
      inBoxShare: off.boxes.map((b, n) => ({ box: b.name, off: b.attentionInBoxUnmasked, on: on.boxes[n].attentionInBoxUnmasked })),
      lossPerStep: g.steps.map((s) => ({ step: s.step, loss: s.loss, ce: s.ce, fill: s.fill, region: s.region })),
    });
  }
  engine.unload();
  const sd15 = projectSd15();
  console.log(`guidance (tiny model, 64x64, ${STEPS} steps, the code's schedule and isolation):`);
  for (const r of runs) {
    console.log(`  ${r.arrangement}: ${r.unguidedPerStepMs.toFixed(0)} ms/step unguided, ${r.perStepMs.toFixed(0)} guided (${r.perStepVsUnguided.toFixed(2)}x; a guided step ${r.perGuidedStepMs.toFixed(0)} ms); ${r.guidedSteps} guided steps, stopped at ${r.stoppedAt}; peak GPU ${(r.peakGpuBytes.off / 2 ** 20).toFixed(0)} -> ${(r.peakGpuBytes.on / 2 ** 20).toFixed(0)} MB`);
    console.log(`    in-box share (unmasked): ${r.inBoxShare.map((s) => `${s.box} ${s.off.toFixed(3)} -> ${s.on.toFixed(3)}`).join(', ')}`);
    console.log(`    L = ce + fill + region per step: ${r.lossPerStep.map((s) => `${s.loss.toFixed(2)} (${s.ce.toFixed(2)} + ${s.fill.toFixed(2)} + ${s.region.toFixed(2)})`).join(', ')}`);
  }
  for (const [label, v] of [['keeping every activation', sd15.keepEverything], ['recomputing the large ones (the default)', sd15.recomputeAbove]] as const) {
    console.log(
      `  SD 1.5 512x512, ${label} (projected from its graphs): a guided step is ${v.guidedStepVsUnguided.toFixed(2)}x an unguided one by multiply-adds; the backward pass keeps ${v.backwardKeepsMB.fp16.toFixed(0)} MB (fp16) / ${v.backwardKeepsMB.fp32.toFixed(0)} MB (fp32)`,
    );
  }
  return { steps: STEPS, image: '64x64', runs, sd15 };
}
