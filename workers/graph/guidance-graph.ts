// The graphs of LoRA-Composer's gradient guidance: the UNet (batch 1, the conditional prompt) cut
// after the attention layers whose maps the losses read, with those maps as outputs; and the same
// with its backward part, which takes dLoss/dmap seeds and gives dLoss/dsample. The losses read the
// down- and up-block layers of one grid, as the code's AttentionStore does (attn_util.py ~60-105,
// 176): 16x16 for SD 1.5 at 512x512 and 16x32 at 512x1024, the code's `attn_resolution`; for images
// too small to have a grid 16 cells wide, the finest. So the backward pass runs through the mid block
// and the up blocks down to that grid.
import type { UNetConfig } from '../checkpoint/config.ts';
import { emitGradient } from './autodiff.ts';
import type { GraphBuilder } from './builder.ts';
import { buildUNet, unetAttentionLayers, type UNetGraphOptions } from './unet.ts';

/** The maps' grid: 16x16 for SD 1.5 at 512x512, the resolution BoxDiff and LoRA-Composer guide at. */
const MIN_SIDE = 16;

export interface GuidanceLayers {
  /** Cross-attention layers whose maps feed L_ce and L_fill. */
  cross: string[];
  /** Self-attention layers whose maps feed L_region. */
  self: string[];
  rows: number;
  cols: number;
}

export function guidanceLayers(cfg: UNetConfig, latentH: number, latentW: number): GuidanceLayers {
  const all = unetAttentionLayers(cfg, latentH, latentW);
  const down = all.filter((l) => l.name.startsWith('down_blocks.'));
  if (!down.length) throw new Error('this UNet has no attention in its down blocks, so it cannot be guided');
  // the coarsest grid still at least 16 cells on its short side; below that (small images) the finest
  const wide = down.filter((l) => Math.min(l.h, l.w) >= MIN_SIDE);
  const pick = wide.length ? wide.reduce((a, l) => (l.h * l.w < a.h * a.w ? l : a)) : down.reduce((a, l) => (l.h * l.w > a.h * a.w ? l : a));
  const at = all.filter((l) => (l.name.startsWith('down_blocks.') || l.name.startsWith('up_blocks.')) && l.h === pick.h && l.w === pick.w);
  return { cross: at.filter((l) => l.kind === 'cross').map((l) => l.name), self: at.filter((l) => l.kind === 'self').map((l) => l.name), rows: pick.h, cols: pick.w };
}

export const guidanceSeedName = (mapOutput: string) => `seed.${mapOutput}`;

/**
 * Forward values above this many elements are recomputed for the backward pass instead of kept: at
 * SD 1.5 512x512 that is the 64x64 grid's attention scores and probabilities (8 heads x 4096 x 4096).
 */
export const GUIDANCE_RECOMPUTE_ABOVE = 1 << 22;
export const GUIDANCE_GRAD_OUTPUT = 'grad_sample';

/**
 * `withGradient` false: the maps alone. True: also the seeds as inputs (one per map output, same
 * shape) and `grad_sample`, dLoss/dsample. `opt.batch` must be 1.
 */
export function buildGuidanceGraph(cfg: UNetConfig, opt: UNetGraphOptions, layers: GuidanceLayers, withGradient: boolean, recomputeAbove = GUIDANCE_RECOMPUTE_ABOVE): GraphBuilder {
  if (opt.batch !== 1) throw new Error('guidance graphs run on the conditional prompt alone (batch 1)');
  const g = buildUNet(cfg, { ...opt, mapLayers: [...layers.cross, ...layers.self], noisePrediction: false });
  if (withGradient) {
    const seeds = new Map<string, string>();
    for (const out of g.outputs) seeds.set(out.name, g.input(guidanceSeedName(out.name), 'float32', out.dims));
    // `sample` is a float32 input (cast inside fp16 graphs), so its gradient comes out as float32
    g.output(emitGradient(g, { wrt: 'sample', seeds, recomputeAbove }), GUIDANCE_GRAD_OUTPUT, 'float32', [1, cfg.inChannels, opt.latentH, opt.latentW]);
  }
  g.prune();
  return g;
}
