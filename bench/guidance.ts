// Gradient guidance cost. Measured on the tiny model (WebGPU): time per guided step against an
// unguided step of the same two-box layout, side by side in one process, and the in-box share of each
// concept with guidance on and off. Projected for SD 1.5 at 512x512 from its graphs (no weights
// needed to build them): the multiply-adds of a guided step (the maps run plus the forward-and-backward
// run of the cut UNet) against the UNet's own step, and the activation memory the backward pass keeps.
import type { GuidanceOptions } from '../workers/api/contract.ts';
import { SD15_CONFIG } from '../workers/checkpoint/config.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import type { GraphBuilder } from '../workers/graph/builder.ts';
import { buildGuidanceGraph, GUIDANCE_RECOMPUTE_ABOVE, guidanceLayers } from '../workers/graph/guidance-graph.ts';
import { elementCount } from '../workers/graph/shapes.ts';
import { buildUNet } from '../workers/graph/unet.ts';
import { openTinyEngine, owlAndFoxJob, writeTinyModel } from '../workers/node/tiny.ts';

const STEPS = Number(process.env.BENCH_GUIDANCE_STEPS ?? 6);

/** Multiply-adds of the graph's Conv, ConvTranspose, MatMul and Gemm nodes. */
export function macs(g: GraphBuilder, from = 0, to = g.records.length): number {
  let total = 0;
  for (const n of g.records.slice(from, to)) {
    const out = g.shapes.get(n.outputs[0]);
    if (!out) continue;
    const size = elementCount(out);
    if (n.type === 'Conv') {
      const w = g.shape(n.inputs[1]);
      total += size * w[1] * w[2] * w[3];
    } else if (n.type === 'ConvTranspose') {
      const w = g.shape(n.inputs[1]);
      total += elementCount(g.shape(n.inputs[0])) * w[1] * w[2] * w[3];
    } else if (n.type === 'MatMul' || n.type === 'Gemm') {
      const a = g.shape(n.inputs[0]);
      total += size * (n.type === 'Gemm' && n.attrs.transA ? a[0] : a[a.length - 1]);
    }
  }
  return total;
}

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
  const opt = { batch: 1, latentH: lh, latentW: lw, textLen, dtype: 'float32' as const, regions: 3, isolation: true };
  const maps = buildGuidanceGraph(unet, opt, layers, false);
  const full = buildUNet(unet, { batch: 2, latentH: lh, latentW: lw, textLen, dtype: 'float32', regions: 3, isolation: true });
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

export async function benchGuidance(rt: Runtime) {
  const { dir } = await writeTinyModel('lora-studio-bench-');
  const { engine, loras } = await openTinyEngine(dir, rt, ['kohya', 'loha']);
  const job = (guidance?: GuidanceOptions) => owlAndFoxJob(loras, guidance, STEPS);
  const on: GuidanceOptions = { ce: true, fill: true, region: true, scale: 80, share: 1, earlyStop: false };
  // compile every graph first so the timed runs compare steps only
  for (const j of [job(), job(on)]) await engine.generate({ ...j, steps: 1 });
  const off = (await engine.generate(job())).report;
  const guided = (await engine.generate(job(on))).report;
  engine.unload();
  const measured = {
    steps: STEPS,
    image: '64x64',
    unguidedPerStepMs: off.timingsMs.perStepMs,
    guidedPerStepMs: guided.timingsMs.perStepMs,
    guidedStepVsUnguided: guided.timingsMs.perStepMs / off.timingsMs.perStepMs,
    guidanceMsPerStep: guided.guidance!.ms / STEPS,
    inBoxShare: off.boxes.map((b, n) => ({ box: b.name, off: b.attentionInBoxUnmasked, on: guided.boxes[n].attentionInBoxUnmasked })),
    loss: { first: guided.guidance!.steps[0].loss, last: guided.guidance!.steps.at(-1)!.loss },
  };
  const sd15 = projectSd15();
  console.log(`guidance (tiny model, 64x64, ${STEPS} steps, every step guided): ${measured.unguidedPerStepMs.toFixed(0)} ms/step unguided, ${measured.guidedPerStepMs.toFixed(0)} guided: ${measured.guidedStepVsUnguided.toFixed(2)}x`);
  console.log(`  in-box share: ${measured.inBoxShare.map((s) => `${s.box} ${s.off.toFixed(3)} -> ${s.on.toFixed(3)}`).join(', ')}; L ${measured.loss.first.toFixed(3)} -> ${measured.loss.last.toFixed(3)}`);
  for (const [label, v] of [['keeping every activation', sd15.keepEverything], ['recomputing the large ones (the default)', sd15.recomputeAbove]] as const) {
    console.log(
      `  SD 1.5 512x512, ${label} (projected from its graphs): a guided step is ${v.guidedStepVsUnguided.toFixed(2)}x an unguided one by multiply-adds; the backward pass keeps ${v.backwardKeepsMB.fp16.toFixed(0)} MB (fp16) / ${v.backwardKeepsMB.fp32.toFixed(0)} MB (fp32)`,
    );
  }
  return { measured, sd15 };
}
