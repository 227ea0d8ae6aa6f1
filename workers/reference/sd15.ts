// Float64 reference forward passes of the SD 1.5 blocks and whole models, composed from nn.ts.
import type { TextEncoderConfig, UNetConfig, VaeConfig } from '../checkpoint/config.ts';
import { add, attention, concatChannels, conv2d, fromTokens, gelu, groupNorm, layerNorm, linear, map, quickGelu, silu, toTokens, upsample2x, type T, type Weights } from './nn.ts';

export function resnet(W: Weights, x: T, name: string, cout: number, groups: number, eps: number, temb?: T): T {
  let h = silu(groupNorm(x, groups, W(`${name}.norm1.weight`), W(`${name}.norm1.bias`), eps));
  h = conv2d(h, W(`${name}.conv1.weight`), W(`${name}.conv1.bias`), cout, 3);
  if (temb) {
    const e = linear(silu(temb), W(`${name}.time_emb_proj.weight`), W(`${name}.time_emb_proj.bias`), cout);
    const [, C, H, Wd] = h.shape;
    h = { data: h.data.map((v, i) => v + e.data[Math.floor(i / (C * H * Wd)) * C + (Math.floor(i / (H * Wd)) % C)]), shape: h.shape };
  }
  h = silu(groupNorm(h, groups, W(`${name}.norm2.weight`), W(`${name}.norm2.bias`), eps));
  h = conv2d(h, W(`${name}.conv2.weight`), W(`${name}.conv2.bias`), cout, 3);
  const skip = x.shape[1] === cout ? x : conv2d(x, W(`${name}.conv_shortcut.weight`), W(`${name}.conv_shortcut.bias`), cout, 1);
  return add(skip, h);
}

export interface AttnHooks {
  bias?: (layer: string) => ((n: number, i: number, j: number) => number) | undefined;
  onProbs?: (layer: string, probs: Float64Array) => void;
  /** Layer-wise conditioning: the context a cross-attention layer reads instead of the shared one. */
  context?: (layer: string) => T | undefined;
}

export function transformerBlock(W: Weights, t: T, name: string, b: number, heads: number, context: T, hooks: AttnHooks = {}): T {
  const C = t.shape[1];
  // attention `layer` of the block: queries from h, keys and values from kv, added to the residual
  const attend = (layer: string, h: T, kv: T, residual: T) => {
    const a = attention(
      linear(h, W(`${layer}.to_q.weight`), undefined, C),
      linear(kv, W(`${layer}.to_k.weight`), undefined, C),
      linear(kv, W(`${layer}.to_v.weight`), undefined, C),
      b,
      heads,
      hooks.bias?.(layer),
    );
    hooks.onProbs?.(layer, a.probs);
    return add(linear(a.out, W(`${layer}.to_out.0.weight`), W(`${layer}.to_out.0.bias`), C), residual);
  };
  let h = layerNorm(t, W(`${name}.norm1.weight`), W(`${name}.norm1.bias`));
  t = attend(`${name}.attn1`, h, h, t);
  h = layerNorm(t, W(`${name}.norm2.weight`), W(`${name}.norm2.bias`));
  t = attend(`${name}.attn2`, h, hooks.context?.(`${name}.attn2`) ?? context, t);
  h = layerNorm(t, W(`${name}.norm3.weight`), W(`${name}.norm3.bias`));
  const inner = 4 * C;
  const proj = linear(h, W(`${name}.ff.net.0.proj.weight`), W(`${name}.ff.net.0.proj.bias`), 2 * inner);
  const N = proj.shape[0];
  const geglu = new Float64Array(N * inner);
  for (let n = 0; n < N; n++) for (let i = 0; i < inner; i++) geglu[n * inner + i] = proj.data[n * 2 * inner + i] * gelu(proj.data[n * 2 * inner + inner + i]);
  const ff = linear({ data: geglu, shape: [N, inner] }, W(`${name}.ff.net.2.weight`), W(`${name}.ff.net.2.bias`), C);
  return add(ff, t);
}

export function spatialTransformer(W: Weights, x: T, name: string, cfg: UNetConfig, context: T, hooks: AttnHooks = {}): T {
  const C = x.shape[1];
  let h = groupNorm(x, cfg.normGroups, W(`${name}.norm.weight`), W(`${name}.norm.bias`), 1e-6);
  h = conv2d(h, W(`${name}.proj_in.weight`), W(`${name}.proj_in.bias`), C, 1);
  let t = toTokens(h);
  for (let i = 0; i < cfg.transformerDepth; i++) t = transformerBlock(W, t, `${name}.transformer_blocks.${i}`, x.shape[0], cfg.heads, context, hooks);
  h = conv2d(fromTokens(t, x.shape), W(`${name}.proj_out.weight`), W(`${name}.proj_out.bias`), C, 1);
  return add(h, x);
}

/** The whole UNet: sample [B,4,h,w], timestep embedding [B, C0], context [B*77, D] -> noise. */
export function unetForward(W: Weights, cfg: UNetConfig, sample: T, tEmb: T, context: T, hooks: AttnHooks = {}): T {
  const c0 = cfg.blockOutChannels[0];
  const temb = linear(silu(linear(tEmb, W('time_embedding.linear_1.weight'), W('time_embedding.linear_1.bias'), 4 * c0)), W('time_embedding.linear_2.weight'), W('time_embedding.linear_2.bias'), 4 * c0);
  const L = cfg.blockOutChannels.length;
  const g = cfg.normGroups;
  let h = conv2d(sample, W('conv_in.weight'), W('conv_in.bias'), c0, 3);
  const skips = [h];
  for (let l = 0; l < L; l++) {
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      h = resnet(W, h, `down_blocks.${l}.resnets.${j}`, cfg.blockOutChannels[l], g, 1e-5, temb);
      if (cfg.attention[l]) h = spatialTransformer(W, h, `down_blocks.${l}.attentions.${j}`, cfg, context, hooks);
      skips.push(h);
    }
    if (l < L - 1) {
      h = conv2d(h, W(`down_blocks.${l}.downsamplers.0.conv.weight`), W(`down_blocks.${l}.downsamplers.0.conv.bias`), cfg.blockOutChannels[l], 3, 2);
      skips.push(h);
    }
  }
  h = resnet(W, h, 'mid_block.resnets.0', h.shape[1], g, 1e-5, temb);
  h = spatialTransformer(W, h, 'mid_block.attentions.0', cfg, context, hooks);
  h = resnet(W, h, 'mid_block.resnets.1', h.shape[1], g, 1e-5, temb);
  for (let l = 0; l < L; l++) {
    const cout = cfg.blockOutChannels[L - 1 - l];
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      h = resnet(W, concatChannels(h, skips.pop()!), `up_blocks.${l}.resnets.${j}`, cout, g, 1e-5, temb);
      if (cfg.attention[L - 1 - l]) h = spatialTransformer(W, h, `up_blocks.${l}.attentions.${j}`, cfg, context, hooks);
    }
    if (l < L - 1) h = conv2d(upsample2x(h), W(`up_blocks.${l}.upsamplers.0.conv.weight`), W(`up_blocks.${l}.upsamplers.0.conv.bias`), cout, 3);
  }
  h = silu(groupNorm(h, g, W('conv_norm_out.weight'), W('conv_norm_out.bias'), 1e-5));
  return conv2d(h, W('conv_out.weight'), W('conv_out.bias'), cfg.outChannels, 3);
}

export function vaeAttention(W: Weights, x: T, name: string, groups: number): T {
  const C = x.shape[1];
  const t = toTokens(groupNorm(x, groups, W(`${name}.group_norm.weight`), W(`${name}.group_norm.bias`), 1e-6));
  const a = attention(
    linear(t, W(`${name}.to_q.weight`), W(`${name}.to_q.bias`), C),
    linear(t, W(`${name}.to_k.weight`), W(`${name}.to_k.bias`), C),
    linear(t, W(`${name}.to_v.weight`), W(`${name}.to_v.bias`), C),
    x.shape[0],
    1,
  );
  return add(fromTokens(linear(a.out, W(`${name}.to_out.0.weight`), W(`${name}.to_out.0.bias`), C), x.shape), x);
}

export function vaeDecode(W: Weights, cfg: VaeConfig, latent: T): T {
  const L = cfg.blockOutChannels.length;
  const g = cfg.normGroups;
  let h = map(latent, (v) => v / cfg.scalingFactor);
  h = conv2d(h, W('post_quant_conv.weight'), W('post_quant_conv.bias'), cfg.latentChannels, 1);
  h = conv2d(h, W('decoder.conv_in.weight'), W('decoder.conv_in.bias'), cfg.blockOutChannels[L - 1], 3);
  h = resnet(W, h, 'decoder.mid_block.resnets.0', h.shape[1], g, 1e-6);
  h = vaeAttention(W, h, 'decoder.mid_block.attentions.0', g);
  h = resnet(W, h, 'decoder.mid_block.resnets.1', h.shape[1], g, 1e-6);
  for (let i = 0; i < L; i++) {
    const cout = cfg.blockOutChannels[L - 1 - i];
    for (let j = 0; j <= cfg.layersPerBlock; j++) h = resnet(W, h, `decoder.up_blocks.${i}.resnets.${j}`, cout, g, 1e-6);
    if (i < L - 1) h = conv2d(upsample2x(h), W(`decoder.up_blocks.${i}.upsamplers.0.conv.weight`), W(`decoder.up_blocks.${i}.upsamplers.0.conv.bias`), cout, 3);
  }
  h = silu(groupNorm(h, g, W('decoder.conv_norm_out.weight'), W('decoder.conv_norm_out.bias'), 1e-6));
  return conv2d(h, W('decoder.conv_out.weight'), W('decoder.conv_out.bias'), 3, 3);
}

/** diffusers' AutoencoderKL.encode, then latent_dist.mode() (the mean) times the scaling factor. */
export function vaeEncode(W: Weights, cfg: VaeConfig, image: T): T {
  const L = cfg.blockOutChannels.length;
  const g = cfg.normGroups;
  let h = conv2d(image, W('encoder.conv_in.weight'), W('encoder.conv_in.bias'), cfg.blockOutChannels[0], 3);
  for (let i = 0; i < L; i++) {
    const cout = cfg.blockOutChannels[i];
    for (let j = 0; j < cfg.layersPerBlock; j++) h = resnet(W, h, `encoder.down_blocks.${i}.resnets.${j}`, cout, g, 1e-6);
    if (i < L - 1) h = conv2d(padEnd(h), W(`encoder.down_blocks.${i}.downsamplers.0.conv.weight`), W(`encoder.down_blocks.${i}.downsamplers.0.conv.bias`), cout, 3, 2, 0);
  }
  h = resnet(W, h, 'encoder.mid_block.resnets.0', h.shape[1], g, 1e-6);
  h = vaeAttention(W, h, 'encoder.mid_block.attentions.0', g);
  h = resnet(W, h, 'encoder.mid_block.resnets.1', h.shape[1], g, 1e-6);
  h = silu(groupNorm(h, g, W('encoder.conv_norm_out.weight'), W('encoder.conv_norm_out.bias'), 1e-6));
  h = conv2d(h, W('encoder.conv_out.weight'), W('encoder.conv_out.bias'), 2 * cfg.latentChannels, 3);
  h = conv2d(h, W('quant_conv.weight'), W('quant_conv.bias'), 2 * cfg.latentChannels, 1);
  const [B, , H, Wd] = h.shape;
  const C = cfg.latentChannels;
  const out = new Float64Array(B * C * H * Wd);
  for (let n = 0; n < B; n++) for (let i = 0; i < C * H * Wd; i++) out[n * C * H * Wd + i] = h.data[n * 2 * C * H * Wd + i] * cfg.scalingFactor;
  return { data: out, shape: [B, C, H, Wd] };
}

/** One row of zeros below and one column on the right (torch.nn.functional.pad(x, (0, 1, 0, 1))). */
function padEnd(x: T): T {
  const [B, C, H, W] = x.shape;
  const out = new Float64Array(B * C * (H + 1) * (W + 1));
  for (let p = 0; p < B * C; p++) for (let y = 0; y < H; y++) for (let xx = 0; xx < W; xx++) out[(p * (H + 1) + y) * (W + 1) + xx] = x.data[(p * H + y) * W + xx];
  return { data: out, shape: [B, C, H + 1, W + 1] };
}

export function clipLayer(W: Weights, x: T, name: string, cfg: Pick<TextEncoderConfig, 'hidden' | 'heads' | 'intermediate'>, b: number, causal = true): T {
  const H = cfg.hidden;
  const n = x.shape[0] / b;
  let h = layerNorm(x, W(`${name}.layer_norm1.weight`), W(`${name}.layer_norm1.bias`));
  const a = attention(
    linear(h, W(`${name}.self_attn.q_proj.weight`), W(`${name}.self_attn.q_proj.bias`), H),
    linear(h, W(`${name}.self_attn.k_proj.weight`), W(`${name}.self_attn.k_proj.bias`), H),
    linear(h, W(`${name}.self_attn.v_proj.weight`), W(`${name}.self_attn.v_proj.bias`), H),
    b,
    cfg.heads,
    causal ? (_b, i, j) => (j > i ? -Infinity : 0) : undefined,
  );
  void n;
  x = add(x, linear(a.out, W(`${name}.self_attn.out_proj.weight`), W(`${name}.self_attn.out_proj.bias`), H));
  h = layerNorm(x, W(`${name}.layer_norm2.weight`), W(`${name}.layer_norm2.bias`));
  h = map(linear(h, W(`${name}.mlp.fc1.weight`), W(`${name}.mlp.fc1.bias`), cfg.intermediate), quickGelu);
  return add(x, linear(h, W(`${name}.mlp.fc2.weight`), W(`${name}.mlp.fc2.bias`), H));
}

export function textEncode(W: Weights, cfg: TextEncoderConfig, ids: number[], clipSkip = 1): T {
  const H = cfg.hidden;
  const tok = W('text_model.embeddings.token_embedding.weight');
  const pos = W('text_model.embeddings.position_embedding.weight');
  const x = new Float64Array(ids.length * H);
  ids.forEach((id, i) => {
    for (let c = 0; c < H; c++) x[i * H + c] = tok[id * H + c] + pos[i * H + c];
  });
  let h: T = { data: x, shape: [ids.length, H] };
  for (let i = 0; i < cfg.layers - (clipSkip - 1); i++) h = clipLayer(W, h, `text_model.encoder.layers.${i}`, cfg, 1);
  return layerNorm(h, W('text_model.final_layer_norm.weight'), W('text_model.final_layer_norm.bias'));
}
