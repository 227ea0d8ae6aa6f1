// The VAE cut into stages at its group norms, for pictures whose whole decode (or encode) does not
// fit the adapter. A group norm needs statistics over the whole map, so a tile cannot run past one
// on its own; the staged form stops before each, and the engine (vae-tiles.ts) keeps the map between
// stages, computes the norm's statistics over all of it and feeds them to the next stage's tiles.
// The parts at the latent's size, where the mid block's attention sees every pixel, run whole.
// Every tile stage reads a window one pixel wider than its output on each side (a 3x3 convolution's
// reach), so tiles put together give the whole map exactly, seams included.
import type { VaeConfig } from '../checkpoint/config.ts';
import { GraphBuilder, type GraphOptions } from './builder.ts';
import { silu } from './layers.ts';

/** One tiled stage; `input`/`output`/`skip` name the maps the engine keeps between stages. */
export type VaeStage =
  /** 3x3 convolution of the map as it is (the encoder's conv_in). */
  | { kind: 'conv'; input: string; conv: string; cin: number; cout: number; output: string }
  /** Group norm with given statistics, SiLU, 3x3 convolution, plus a residual (1x1-projected when the channels change). */
  | { kind: 'norm-conv'; input: string; norm: string; conv: string; cin: number; cout: number; skip?: { input: string; conv?: string; cin: number }; output: string }
  /** Nearest 2x upsampling then a 3x3 convolution (the decoder's upsamplers). */
  | { kind: 'up'; input: string; conv: string; c: number; output: string }
  /** A 3x3 stride-2 convolution padded on the bottom and right only (the encoder's downsamplers). */
  | { kind: 'down'; input: string; conv: string; c: number; output: string };

/** A resnet block as two norm-conv stages; its input map is `a`, its output replaces it. */
function resnetStages(name: string, cin: number, cout: number): VaeStage[] {
  return [
    { kind: 'norm-conv', input: 'a', norm: `${name}.norm1`, conv: `${name}.conv1`, cin, cout, output: 'b' },
    { kind: 'norm-conv', input: 'b', norm: `${name}.norm2`, conv: `${name}.conv2`, cin: cout, cout, skip: { input: 'a', cin, ...(cin !== cout ? { conv: `${name}.conv_shortcut` } : {}) }, output: 'a' },
  ];
}

/** The decoder after its whole `head` (the map `a`, at the latent's size) down to the picture `image`. */
export function decoderStages(cfg: VaeConfig): VaeStage[] {
  const levels = cfg.blockOutChannels.length;
  const stages: VaeStage[] = [];
  let c = cfg.blockOutChannels[levels - 1];
  for (let i = 0; i < levels; i++) {
    const cout = cfg.blockOutChannels[levels - 1 - i];
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      stages.push(...resnetStages(`decoder.up_blocks.${i}.resnets.${j}`, c, cout));
      c = cout;
    }
    if (i < levels - 1) stages.push({ kind: 'up', input: 'a', conv: `decoder.up_blocks.${i}.upsamplers.0.conv`, c, output: 'a' });
  }
  stages.push({ kind: 'norm-conv', input: 'a', norm: 'decoder.conv_norm_out', conv: 'decoder.conv_out', cin: c, cout: 3, output: 'image' });
  return stages;
}

/** The encoder from the picture `image` to the down blocks' output `a` (its whole `tail` does the rest). */
export function encoderStages(cfg: VaeConfig): VaeStage[] {
  const levels = cfg.blockOutChannels.length;
  let c = cfg.blockOutChannels[0];
  const stages: VaeStage[] = [{ kind: 'conv', input: 'image', conv: 'encoder.conv_in', cin: 3, cout: c, output: 'a' }];
  for (let i = 0; i < levels; i++) {
    const cout = cfg.blockOutChannels[i];
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      stages.push(...resnetStages(`encoder.down_blocks.${i}.resnets.${j}`, c, cout));
      c = cout;
    }
    if (i < levels - 1) stages.push({ kind: 'down', input: 'a', conv: `encoder.down_blocks.${i}.downsamplers.0.conv`, c, output: 'a' });
  }
  return stages;
}

/** The output's size over the input's, per side. */
export function stageScale(s: VaeStage): number {
  return s.kind === 'up' ? 2 : s.kind === 'down' ? 0.5 : 1;
}

/** A stage's input and output channels. */
export function stageChannels(s: VaeStage): { cin: number; cout: number } {
  return s.kind === 'up' || s.kind === 'down' ? { cin: s.c, cout: s.c } : { cin: s.cin, cout: s.cout };
}

/**
 * A stage over an `inH` x `inW` map: its output's size, the grid its tiles cover (the input map for
 * `up`, the output map otherwise) and the tile on that grid, `tile` latent cells scaled by the grid's
 * size over the latent's (`latentH`), at most the grid.
 */
export function stageTiling(s: VaeStage, inH: number, inW: number, tile: number, latentH: number) {
  const scale = stageScale(s);
  const [outH, outW] = [inH * scale, inW * scale];
  const [gridH, gridW] = s.kind === 'up' ? [inH, inW] : [outH, outW];
  const side = tile * (gridH / latentH);
  return { outH, outW, gridH, gridW, th: Math.min(side, gridH), tw: Math.min(side, gridW) };
}

/**
 * Where a tile reads and writes. A stage is tiled over its `grid`: the input map for `up`, the output
 * map otherwise. A grid tile [start, start + size) along one axis reads input [from, from + length)
 * (zero outside the map) and writes output [at, at + size * (up ? 2 : 1)).
 */
export function stageWindow(s: VaeStage, start: number, size: number): { from: number; length: number; at: number; outSize: number } {
  if (s.kind === 'up') return { from: start - 1, length: size + 2, at: 2 * start, outSize: 2 * size };
  if (s.kind === 'down') return { from: 2 * start, length: 2 * size + 1, at: start, outSize: size };
  return { from: start - 1, length: size + 2, at: start, outSize: size };
}

/** The group norm's eps in every VAE norm. */
export const VAE_NORM_EPS = 1e-6;

/**
 * One stage for a grid tile of `th` x `tw`. Inputs: `x` (the input window), for `norm-conv` also
 * `mean` and `invstd` [1, cin, 1, 1] (the group's statistics, per channel), `valid` [1, 1, h, w] (1
 * inside the map: the convolution's zero padding applies after the norm and SiLU) and `skip` (the
 * residual, the output's own window); output `y`. The norm is applied as a per-channel scale and
 * shift made from the statistics and its weight and bias (two passes over the tile, not four), as
 * onnxruntime's InstanceNormalization applies it in the whole graph.
 */
export function buildVaeStage(s: VaeStage, th: number, tw: number, opt: GraphOptions & { dtype: 'float32' | 'float16' }): GraphBuilder {
  const g = new GraphBuilder(opt.dtype, opt);
  const f16 = opt.dtype === 'float16';
  const inF = (name: string, dims: number[]) => {
    const v = g.input(name, 'float32', dims);
    return f16 ? g.op('Cast', [v], { to: 10 }) : v;
  };
  const wy = stageWindow(s, 0, th);
  const wx = stageWindow(s, 0, tw);
  const { cin, cout } = stageChannels(s);
  let x = inF('x', [1, cin, wy.length, wx.length]);
  if (s.kind === 'norm-conv') {
    const gamma = g.op('Reshape', [g.weight(`${s.norm}.weight`, [cin]), g.ints([1, cin, 1, 1])]);
    const beta = g.op('Reshape', [g.weight(`${s.norm}.bias`, [cin]), g.ints([1, cin, 1, 1])]);
    // y = (x - mean) * invstd * gamma + beta = x * scale + (beta - mean * scale)
    const scale = g.op('Mul', [inF('invstd', [1, cin, 1, 1]), gamma]);
    const shift = g.op('Sub', [beta, g.op('Mul', [inF('mean', [1, cin, 1, 1]), scale])]);
    const normed = g.op('Add', [g.op('Mul', [x, scale]), shift]);
    x = g.op('Mul', [silu(g, normed), inF('valid', [1, 1, wy.length, wx.length])]);
  }
  if (s.kind === 'up') x = g.op('Resize', [x, '', g.floatsF32([1, 1, 2, 2])], { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' });
  const weight = g.weight(`${s.conv}.weight`, [cout, cin, 3, 3]);
  const bias = g.weight(`${s.conv}.bias`, [cout]);
  const stride = s.kind === 'down' ? 2 : 1;
  let y = g.op('Conv', [x, weight, bias], { kernel_shape: [3, 3], pads: [0, 0, 0, 0], strides: [stride, stride] });
  if (s.kind === 'up') {
    // the upsampled window starts two pixels before the tile's output, the convolution ate one
    y = g.op('Slice', [y, g.ints([1, 1]), g.ints([1 + wy.outSize, 1 + wx.outSize]), g.ints([2, 3])]);
  }
  if (s.kind === 'norm-conv' && s.skip) {
    let r = inF('skip', [1, s.skip.cin, th, tw]);
    if (s.skip.conv) r = g.op('Conv', [r, g.weight(`${s.skip.conv}.weight`, [cout, s.skip.cin, 1, 1]), g.weight(`${s.skip.conv}.bias`, [cout])], { kernel_shape: [1, 1], pads: [0, 0, 0, 0], strides: [1, 1] });
    y = g.op('Add', [r, y]);
  }
  g.output(f16 ? g.op('Cast', [y], { to: 1 }) : y, 'y', 'float32', [1, cout, wy.outSize, wx.outSize]);
  return g;
}
