// The SD 1.5 UNet as an ONNX graph, built from its config. Weight inputs carry diffusers names.
// Optional extras for the composition issues: additive attention biases (region masks) per
// attention layer, and head-averaged cross-attention maps as outputs.
import type { UNetConfig } from '../checkpoint/config.ts';
import { GraphBuilder, type GraphOptions } from './builder.ts';
import { attention, conv2d, ISOLATION_FACTORS, regionalAttention, fromTokens, gelu, groupNorm, layerNorm, linear, silu, toTokens, upsampleNearest2x, type Feat } from './layers.ts';

export interface UNetGraphOptions extends GraphOptions {
  batch: number;
  latentH: number;
  latentW: number;
  textLen: number;
  dtype: 'float32' | 'float16';
  /** Attention layers (e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1") given a bias input. */
  biasLayers?: string[];
  /** Cross-attention layers whose maps become outputs. */
  mapLayers?: string[];
  /**
   * Layout (LoRA-Composer): the number of regions (background + boxes). Every cross-attention layer
   * then attends to per-region keys and values given as inputs (`region_k.<layer>`, `region_v.<layer>`,
   * [batch, R, textLen, C]), weighted per cell by `region_w.<h>x<w>` [R, h*w].
   */
  regions?: number;
  /**
   * Layout: every self-attention layer adds concept isolation's bias, made from the factors its grid
   * shares, `self_iso.<h>x<w>` [2, n, ISOLATION_FACTORS] (layout/masks.ts `isolationFactors`).
   */
  isolation?: boolean;
  /**
   * Layout: each box region's cross-attention result goes through its own output projection, given
   * as inputs `region_out.<r>.<layer>.weight` [C, C] and `.bias` [C] for r >= 1 (the region's LoRAs
   * merged), as LoRA-Composer's code does; region 0 (the background) uses the UNet's own to_out.
   */
  regionOutputs?: boolean;
  /**
   * Layer-wise conditioning (ED-LoRA prompts): `encoder_hidden_states` is [batch, L, textLen, dim] and
   * the l-th cross-attention layer (in graph order) reads context l.
   */
  contextLayers?: number;
  /**
   * DeepCache (CMLoRA's cache, `cache_layer_id` 0 and `cache_block_id` 1 in SD 1.5): `full` also
   * outputs `deep_feature`, the input of the last up block (the deep part's result); `shallow` runs only
   * conv_in, the first down block's layers (not its downsampler) and the last up block, which starts
   * from `deep_feature` given as an input, so the deep features of an earlier full run are reused.
   */
  deepCache?: 'full' | 'shallow';
  /** False: no `noise_pred` output (a graph for the attention maps alone; prune it to drop the rest). */
  noisePrediction?: boolean;
}

export const regionKeyInputName = (layer: string) => `region_k.${layer}`;
export const regionValueInputName = (layer: string) => `region_v.${layer}`;
export const regionWeightInputName = (h: number, w: number) => `region_w.${h}x${w}`;
export const selfIsolationInputName = (h: number, w: number) => `self_iso.${h}x${w}`;
export const regionOutInputName = (region: number, layer: string, part: 'weight' | 'bias') => `region_out.${region}.${layer}.to_out.0.${part}`;

export const unetBiasInputName = (layer: string) => `attn_bias.${layer}`;
export const DEEP_FEATURE = 'deep_feature';

/** The deep feature's shape: the second level's channels at the latent's size. */
export function deepFeatureDims(cfg: UNetConfig, batch: number, latentH: number, latentW: number): number[] {
  return [batch, cfg.blockOutChannels[Math.min(1, cfg.blockOutChannels.length - 1)], latentH, latentW];
}
export const unetMapOutputName = (layer: string) => `attn_map.${layer}`;

interface Ctx {
  g: GraphBuilder;
  cfg: UNetConfig;
  opt: UNetGraphOptions;
  temb: string;
  context: string;
  /** Inputs shared by all layers on one grid, created once. */
  shared: Map<string, string>;
}

function sharedInput(ctx: Ctx, name: string, dims: number[]): string {
  let v = ctx.shared.get(name);
  if (!v) {
    v = ctx.g.input(name, ctx.g.dtype, dims);
    ctx.shared.set(name, v);
  }
  return v;
}

/** `temb`: the time embedding after its SiLU, made once for every block of the UNet. */
export function resnetBlock(g: GraphBuilder, x: Feat, name: string, cout: number, groups: number, eps: number, temb?: { v: string; dim: number }): Feat {
  // a shortcut that narrows the map runs first, so that the wider input is not kept alive through
  // the block as the residual (the VAE's last level: 128 channels at 512x512 kept instead of 256)
  const early = x.c > cout ? conv2d(g, x, `${name}.conv_shortcut`, cout, 1) : undefined;
  let h = groupNorm(g, x, `${name}.norm1`, groups, eps);
  h = conv2d(g, { ...h, v: silu(g, h.v) }, `${name}.conv1`, cout, 3);
  if (temb) {
    const e = linear(g, temb.v, `${name}.time_emb_proj`, temb.dim, cout);
    h = { ...h, v: g.op('Add', [h.v, g.op('Reshape', [e, g.ints([x.b, cout, 1, 1])])]) };
  }
  h = groupNorm(g, h, `${name}.norm2`, groups, eps);
  h = conv2d(g, { ...h, v: silu(g, h.v) }, `${name}.conv2`, cout, 3);
  const skip = early ?? (x.c === cout ? x : conv2d(g, x, `${name}.conv_shortcut`, cout, 1));
  // its weights keep their place in the model's list, after the block's others
  if (early) g.declareLast([`${name}.conv_shortcut.weight`, `${name}.conv_shortcut.bias`]);
  return { ...h, v: g.op('Add', [skip.v, h.v]) };
}

function attnIo(ctx: Ctx, layer: string, nq: number, nk: number, grid: { h: number; w: number; c: number }) {
  const { opt } = ctx;
  const probsOutput = opt.mapLayers?.includes(layer) ? unetMapOutputName(layer) : undefined;
  const bias = opt.biasLayers?.includes(layer) ? ctx.g.input(unetBiasInputName(layer), ctx.g.dtype, [opt.batch, 1, nq, nk]) : undefined;
  const self = layer.endsWith('.attn1');
  const isolation = self && opt.isolation ? sharedInput(ctx, selfIsolationInputName(grid.h, grid.w), [2, nq, ISOLATION_FACTORS]) : undefined;
  const regional =
    !self && opt.regions
      ? {
          k: ctx.g.input(regionKeyInputName(layer), ctx.g.dtype, [opt.batch, opt.regions, nk, grid.c]),
          v: ctx.g.input(regionValueInputName(layer), ctx.g.dtype, [opt.batch, opt.regions, nk, grid.c]),
          w: sharedInput(ctx, regionWeightInputName(grid.h, grid.w), [opt.regions, nq]),
          regions: opt.regions,
          outputs: opt.regionOutputs
            ? {
                shared: `${layer}.to_out.0`,
                region: (r: number) => ({
                  weight: ctx.g.input(regionOutInputName(r, layer, 'weight'), ctx.g.dtype, [grid.c, grid.c]),
                  bias: ctx.g.input(regionOutInputName(r, layer, 'bias'), ctx.g.dtype, [grid.c]),
                }),
              }
            : undefined,
        }
      : undefined;
  return { bias, isolation, probsOutput, regional };
}

/** One BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward; tokens [B*N, C]. */
export function transformerBlock(
  g: GraphBuilder,
  t: string,
  name: string,
  dims: { b: number; n: number; c: number; heads: number; ctxLen: number; ctxDim: number },
  context: string,
  io: { self?: ReturnType<typeof attnIo>; cross?: ReturnType<typeof attnIo> } = {},
): string {
  const { b, n, c, heads, ctxLen, ctxDim } = dims;
  let h = layerNorm(g, t, `${name}.norm1`, c);
  let a = attention(
    g,
    linear(g, h, `${name}.attn1.to_q`, c, c, false),
    linear(g, h, `${name}.attn1.to_k`, c, c, false),
    linear(g, h, `${name}.attn1.to_v`, c, c, false),
    { b, nq: n, nk: n, c, heads },
    io.self,
  );
  t = g.op('Add', [linear(g, a, `${name}.attn1.to_out.0`, c, c), t]);
  h = layerNorm(g, t, `${name}.norm2`, c);
  const q = linear(g, h, `${name}.attn2.to_q`, c, c, false);
  const r = io.cross?.regional;
  a = r
    ? regionalAttention(g, q, r.k, r.v, r.w, { b, nq: n, nk: ctxLen, c, heads, regions: r.regions }, io.cross?.probsOutput, r.outputs)
    : attention(g, q, linear(g, context, `${name}.attn2.to_k`, ctxDim, c, false), linear(g, context, `${name}.attn2.to_v`, ctxDim, c, false), { b, nq: n, nk: ctxLen, c, heads }, io.cross);
  // with per-region output projections the regional attention has applied them already
  t = g.op('Add', [r?.outputs ? a : linear(g, a, `${name}.attn2.to_out.0`, c, c), t]);
  h = layerNorm(g, t, `${name}.norm3`, c);
  const inner = 4 * c;
  const proj = linear(g, h, `${name}.ff.net.0.proj`, c, 2 * inner);
  const [hidden, gate] = g.opMulti('Split', [proj, g.ints([inner, inner])], 2, { axis: 1 });
  const ff = linear(g, g.op('Mul', [hidden, gelu(g, gate)]), `${name}.ff.net.2`, inner, c);
  return g.op('Add', [ff, t]);
}

/** Transformer2DModel with conv projections (SD 1.5: use_linear_projection = false). */
export function spatialTransformer(g: GraphBuilder, x: Feat, name: string, cfg: UNetConfig, context: string | ((layer: string) => string), ctx?: Ctx): Feat {
  let h = groupNorm(g, x, `${name}.norm`, cfg.normGroups, 1e-6);
  h = conv2d(g, h, `${name}.proj_in`, x.c, 1);
  let t = toTokens(g, h);
  const n = x.h * x.w;
  for (let i = 0; i < cfg.transformerDepth; i++) {
    const block = `${name}.transformer_blocks.${i}`;
    const io = ctx
      ? { self: attnIo(ctx, `${block}.attn1`, n, n, x), cross: attnIo(ctx, `${block}.attn2`, n, ctx.opt.textLen, x) }
      : {};
    const textLen = ctx?.opt.textLen ?? 77;
    const layerContext = typeof context === 'string' ? context : context(`${block}.attn2`);
    t = transformerBlock(g, t, block, { b: x.b, n, c: x.c, heads: cfg.heads, ctxLen: textLen, ctxDim: cfg.crossAttentionDim }, layerContext, io);
  }
  h = conv2d(g, fromTokens(g, t, x), `${name}.proj_out`, x.c, 1);
  return { ...x, v: g.op('Add', [h.v, x.v]) };
}

export function buildUNet(cfg: UNetConfig, opt: UNetGraphOptions): GraphBuilder {
  const g = new GraphBuilder(opt.dtype, opt);
  const b = opt.batch;
  const c0 = cfg.blockOutChannels[0];
  const tembDim = 4 * c0;
  const cast = (v: string) => (opt.dtype === 'float16' ? g.op('Cast', [v], { to: 10 }) : v);
  const sample = cast(g.input('sample', 'float32', [b, cfg.inChannels, opt.latentH, opt.latentW]));
  const tIn = cast(g.input('timestep_embedding', 'float32', [b, c0]));
  const L = opt.contextLayers ?? 0;
  const ctxIn = cast(g.input('encoder_hidden_states', 'float32', L ? [b, L, opt.textLen, cfg.crossAttentionDim] : [b, opt.textLen, cfg.crossAttentionDim]));
  let context: string | ((layer: string) => string);
  if (!L) context = g.op('Reshape', [ctxIn, g.ints([b * opt.textLen, cfg.crossAttentionDim])]);
  else {
    const order = unetAttentionLayers(cfg, opt.latentH, opt.latentW).filter((l) => l.kind === 'cross').map((l) => l.name);
    if (order.length !== L) throw new RangeError(`layer-wise context: ${L} layers given, the UNet has ${order.length} cross-attention layers`);
    context = (layer: string) => g.op('Reshape', [g.op('Gather', [ctxIn, g.ints([order.indexOf(layer)])], { axis: 1 }), g.ints([b * opt.textLen, cfg.crossAttentionDim])]);
  }

  const temb = linear(g, silu(g, linear(g, tIn, 'time_embedding.linear_1', c0, tembDim)), 'time_embedding.linear_2', tembDim, tembDim);
  const ctx: Ctx = { g, cfg, opt, temb, context: typeof context === 'string' ? context : '', shared: new Map() };
  // every resnet projects SiLU(temb): one node for all of them (as a Mul and a Sigmoid, onnxruntime
  // merged the copies; as QuickGelu nodes it runs each)
  const te = { v: silu(g, temb), dim: tembDim };
  const eps = 1e-5;
  const levels = cfg.blockOutChannels.length;

  const shallow = opt.deepCache === 'shallow';
  let h = conv2d(g, { v: sample, b, c: cfg.inChannels, h: opt.latentH, w: opt.latentW }, 'conv_in', c0, 3);
  const skips: Feat[] = [h];
  for (let l = 0; l < levels; l++) {
    const cout = cfg.blockOutChannels[l];
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      h = resnetBlock(g, h, `down_blocks.${l}.resnets.${j}`, cout, cfg.normGroups, eps, te);
      if (cfg.attention[l]) h = spatialTransformer(g, h, `down_blocks.${l}.attentions.${j}`, cfg, context, ctx);
      skips.push(h);
    }
    // the shallow part ends with the first down block's layers: exactly the skips the last up block takes
    if (shallow) break;
    if (l < levels - 1) {
      h = conv2d(g, h, `down_blocks.${l}.downsamplers.0.conv`, cout, 3, 2);
      skips.push(h);
    }
  }
  if (!shallow) {
    h = resnetBlock(g, h, 'mid_block.resnets.0', h.c, cfg.normGroups, eps, te);
    h = spatialTransformer(g, h, 'mid_block.attentions.0', cfg, context, ctx);
    h = resnetBlock(g, h, 'mid_block.resnets.1', h.c, cfg.normGroups, eps, te);
  }

  for (let l = shallow ? levels - 1 : 0; l < levels; l++) {
    if (l === levels - 1 && opt.deepCache) {
      const dims = deepFeatureDims(cfg, b, opt.latentH, opt.latentW);
      if (shallow) h = { v: cast(g.input(DEEP_FEATURE, 'float32', dims)), b, c: dims[1], h: opt.latentH, w: opt.latentW };
      else g.output(opt.dtype === 'float16' ? g.op('Cast', [h.v], { to: 1 }) : h.v, DEEP_FEATURE, 'float32', dims);
    }
    const cout = cfg.blockOutChannels[levels - 1 - l];
    const attn = cfg.attention[levels - 1 - l];
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      const skip = skips.pop()!;
      h = { ...h, v: g.op('Concat', [h.v, skip.v], { axis: 1 }), c: h.c + skip.c };
      h = resnetBlock(g, h, `up_blocks.${l}.resnets.${j}`, cout, cfg.normGroups, eps, te);
      if (attn) h = spatialTransformer(g, h, `up_blocks.${l}.attentions.${j}`, cfg, context, ctx);
    }
    if (l < levels - 1) h = conv2d(g, upsampleNearest2x(g, h), `up_blocks.${l}.upsamplers.0.conv`, cout, 3);
  }
  h = groupNorm(g, h, 'conv_norm_out', cfg.normGroups, eps);
  h = conv2d(g, { ...h, v: silu(g, h.v) }, 'conv_out', cfg.outChannels, 3);
  if (opt.noisePrediction === false) return g;
  const out = opt.dtype === 'float16' ? g.op('Cast', [h.v], { to: 1 }) : h.v;
  g.output(out, 'noise_pred', 'float32', [b, cfg.outChannels, opt.latentH, opt.latentW]);
  return g;
}

/** Names of every attention layer of the UNet, in graph order, with their query/key lengths. */
export function unetAttentionLayers(cfg: UNetConfig, latentH: number, latentW: number, textLen = 77) {
  const out: { name: string; kind: 'self' | 'cross'; nq: number; nk: number; h: number; w: number }[] = [];
  const levels = cfg.blockOutChannels.length;
  const add = (prefix: string, h: number, w: number) => {
    for (let i = 0; i < cfg.transformerDepth; i++) {
      out.push({ name: `${prefix}.transformer_blocks.${i}.attn1`, kind: 'self', nq: h * w, nk: h * w, h, w });
      out.push({ name: `${prefix}.transformer_blocks.${i}.attn2`, kind: 'cross', nq: h * w, nk: textLen, h, w });
    }
  };
  let h = latentH;
  let w = latentW;
  for (let l = 0; l < levels; l++) {
    if (cfg.attention[l]) for (let j = 0; j < cfg.layersPerBlock; j++) add(`down_blocks.${l}.attentions.${j}`, h, w);
    if (l < levels - 1) {
      h = Math.floor((h - 1) / 2) + 1;
      w = Math.floor((w - 1) / 2) + 1;
    }
  }
  add('mid_block.attentions.0', h, w);
  for (let l = 0; l < levels; l++) {
    if (cfg.attention[levels - 1 - l]) for (let j = 0; j <= cfg.layersPerBlock; j++) add(`up_blocks.${l}.attentions.${j}`, h, w);
    if (l < levels - 1) {
      h *= 2;
      w *= 2;
    }
  }
  return out;
}
