// The VAE's decoder (latent -> image in [-1, 1]) and encoder (image -> latent) as ONNX graphs, built
// from its config.
import type { VaeConfig } from '../checkpoint/config.ts';
import { GraphBuilder, type GraphOptions } from './builder.ts';
import { attention, conv2d, fromTokens, groupNorm, linear, silu, toTokens, upsampleNearest2x, type Feat } from './layers.ts';
import { resnetBlock } from './unet.ts';

export interface VaeGraphOptions extends GraphOptions {
  /** The decoder's latent size; the encoder's image is 8 times larger per side. */
  batch: number;
  latentH: number;
  latentW: number;
  dtype: 'float32' | 'float16';
  /**
   * The part to build (default all): the decoder's `head` ends after its mid block and outputs
   * `features`; the encoder's `tail` starts at its mid block from `features` (the down blocks' output,
   * at the latent's size). The staged decode and encode (vae-stages.ts) run the rest in tiles.
   */
  part?: 'all' | 'head' | 'tail';
}

/** Single-head self-attention over all pixels, as in the VAE's mid block. */
export function vaeAttention(g: GraphBuilder, x: Feat, name: string, groups: number): Feat {
  const h = groupNorm(g, x, `${name}.group_norm`, groups, 1e-6);
  const t = toTokens(g, h);
  const n = x.h * x.w;
  const a = attention(
    g,
    linear(g, t, `${name}.to_q`, x.c, x.c),
    linear(g, t, `${name}.to_k`, x.c, x.c),
    linear(g, t, `${name}.to_v`, x.c, x.c),
    { b: x.b, nq: n, nk: n, c: x.c, heads: 1 },
  );
  const o = fromTokens(g, linear(g, a, `${name}.to_out.0`, x.c, x.c), x);
  return { ...x, v: g.op('Add', [o.v, x.v]) };
}

export function buildVaeDecoder(cfg: VaeConfig, opt: VaeGraphOptions): GraphBuilder {
  const g = new GraphBuilder(opt.dtype, opt);
  const levels = cfg.blockOutChannels.length;
  const groups = cfg.normGroups;
  const eps = 1e-6;
  let z = g.input('latent', 'float32', [opt.batch, cfg.latentChannels, opt.latentH, opt.latentW]);
  if (opt.dtype === 'float16') z = g.op('Cast', [z], { to: 10 });
  z = g.op('Mul', [z, g.scalar(1 / cfg.scalingFactor)]);
  let h: Feat = { v: z, b: opt.batch, c: cfg.latentChannels, h: opt.latentH, w: opt.latentW };
  h = conv2d(g, h, 'post_quant_conv', cfg.latentChannels, 1);
  h = conv2d(g, h, 'decoder.conv_in', cfg.blockOutChannels[levels - 1], 3);
  h = resnetBlock(g, h, 'decoder.mid_block.resnets.0', h.c, groups, eps);
  h = vaeAttention(g, h, 'decoder.mid_block.attentions.0', groups);
  h = resnetBlock(g, h, 'decoder.mid_block.resnets.1', h.c, groups, eps);
  if (opt.part === 'head') {
    g.output(opt.dtype === 'float16' ? g.op('Cast', [h.v], { to: 1 }) : h.v, 'features', 'float32', [opt.batch, h.c, h.h, h.w]);
    return g;
  }
  for (let i = 0; i < levels; i++) {
    const cout = cfg.blockOutChannels[levels - 1 - i];
    for (let j = 0; j <= cfg.layersPerBlock; j++) h = resnetBlock(g, h, `decoder.up_blocks.${i}.resnets.${j}`, cout, groups, eps);
    if (i < levels - 1) h = conv2d(g, upsampleNearest2x(g, h), `decoder.up_blocks.${i}.upsamplers.0.conv`, cout, 3);
  }
  h = groupNorm(g, h, 'decoder.conv_norm_out', groups, eps);
  h = conv2d(g, { ...h, v: silu(g, h.v) }, 'decoder.conv_out', 3, 3);
  const out = opt.dtype === 'float16' ? g.op('Cast', [h.v], { to: 1 }) : h.v;
  g.output(out, 'image', 'float32', [opt.batch, 3, h.h, h.w]);
  return g;
}

/**
 * The encoder: image [B, 3, 8h, 8w] in [-1, 1] -> the scaled latent [B, C, h, w], the mean of the
 * diagonal Gaussian it predicts (diffusers' `latent_dist.mode()`; see the README for why not a sample).
 * Its down blocks halve the size with a stride-2 convolution padded by one pixel on the right and
 * at the bottom only, as diffusers' Downsample2D pads in the VAE.
 */
export function buildVaeEncoder(cfg: VaeConfig, opt: VaeGraphOptions): GraphBuilder {
  const g = new GraphBuilder(opt.dtype, opt);
  const levels = cfg.blockOutChannels.length;
  const groups = cfg.normGroups;
  const eps = 1e-6;
  const H = opt.latentH * 2 ** (levels - 1);
  const W = opt.latentW * 2 ** (levels - 1);
  let h: Feat;
  if (opt.part === 'tail') {
    const c = cfg.blockOutChannels[levels - 1];
    let x = g.input('features', 'float32', [opt.batch, c, opt.latentH, opt.latentW]);
    if (opt.dtype === 'float16') x = g.op('Cast', [x], { to: 10 });
    h = { v: x, b: opt.batch, c, h: opt.latentH, w: opt.latentW };
  } else {
    let x = g.input('image', 'float32', [opt.batch, 3, H, W]);
    if (opt.dtype === 'float16') x = g.op('Cast', [x], { to: 10 });
    h = conv2d(g, { v: x, b: opt.batch, c: 3, h: H, w: W }, 'encoder.conv_in', cfg.blockOutChannels[0], 3);
    for (let i = 0; i < levels; i++) {
      const cout = cfg.blockOutChannels[i];
      for (let j = 0; j < cfg.layersPerBlock; j++) h = resnetBlock(g, h, `encoder.down_blocks.${i}.resnets.${j}`, cout, groups, eps);
      if (i < levels - 1) h = downsample(g, h, `encoder.down_blocks.${i}.downsamplers.0.conv`);
    }
  }
  h = resnetBlock(g, h, 'encoder.mid_block.resnets.0', h.c, groups, eps);
  h = vaeAttention(g, h, 'encoder.mid_block.attentions.0', groups);
  h = resnetBlock(g, h, 'encoder.mid_block.resnets.1', h.c, groups, eps);
  h = groupNorm(g, h, 'encoder.conv_norm_out', groups, eps);
  h = conv2d(g, { ...h, v: silu(g, h.v) }, 'encoder.conv_out', 2 * cfg.latentChannels, 3);
  h = conv2d(g, h, 'quant_conv', 2 * cfg.latentChannels, 1);
  // the first C channels are the mean; the rest (the log-variance) is not used
  const mean = g.op('Slice', [h.v, g.ints([0]), g.ints([cfg.latentChannels]), g.ints([1])]);
  let z = g.op('Mul', [mean, g.scalar(cfg.scalingFactor)]);
  if (opt.dtype === 'float16') z = g.op('Cast', [z], { to: 1 });
  g.output(z, 'latent', 'float32', [opt.batch, cfg.latentChannels, h.h, h.w]);
  return g;
}

/** A 3x3 stride-2 convolution padded (0, 1) on each axis: ONNX pads are [top, left, bottom, right]. */
function downsample(g: GraphBuilder, x: Feat, name: string): Feat {
  const w = g.weight(`${name}.weight`, [x.c, x.c, 3, 3]);
  const bias = g.weight(`${name}.bias`, [x.c]);
  const v = g.op('Conv', [x.v, w, bias], { kernel_shape: [3, 3], pads: [0, 0, 1, 1], strides: [2, 2] });
  return { ...x, v, h: Math.floor((x.h + 1 - 3) / 2) + 1, w: Math.floor((x.w + 1 - 3) / 2) + 1 };
}
