// The keys and values of every UNet cross-attention layer for a batch of text contexts, on their
// own. They do not depend on the latent, so for a layout each region's keys and values (its local
// prompt through its own LoRA-merged weights) are computed once per image and fed to the UNet.
import type { UNetConfig } from '../checkpoint/config.ts';
import { GraphBuilder } from './builder.ts';
import { linear } from './layers.ts';
import { unetAttentionLayers } from './unet.ts';

export const crossKeyOutputName = (layer: string) => `k.${layer}`;
export const crossValueOutputName = (layer: string) => `v.${layer}`;

/** Channels of an attention layer, from its block's place in the UNet. */
export function attentionChannels(cfg: UNetConfig, layer: string): number {
  const levels = cfg.blockOutChannels.length;
  const down = layer.match(/^down_blocks\.(\d+)\./);
  if (down) return cfg.blockOutChannels[Number(down[1])];
  const up = layer.match(/^up_blocks\.(\d+)\./);
  if (up) return cfg.blockOutChannels[levels - 1 - Number(up[1])];
  return cfg.blockOutChannels[levels - 1];
}

export function crossAttentionLayers(cfg: UNetConfig): { name: string; channels: number }[] {
  return unetAttentionLayers(cfg, 8, 8)
    .filter((l) => l.kind === 'cross')
    .map((l) => ({ name: l.name, channels: attentionChannels(cfg, l.name) }));
}

export function buildCrossKV(cfg: UNetConfig, opt: { batch: number; textLen: number; dtype: 'float32' | 'float16' }): GraphBuilder {
  const g = new GraphBuilder(opt.dtype);
  const input = g.input('encoder_hidden_states', 'float32', [opt.batch, opt.textLen, cfg.crossAttentionDim]);
  const ctx = g.op('Reshape', [opt.dtype === 'float16' ? g.op('Cast', [input], { to: 10 }) : input, g.ints([opt.batch * opt.textLen, cfg.crossAttentionDim])]);
  for (const { name, channels } of crossAttentionLayers(cfg)) {
    for (const [proj, out] of [['to_k', crossKeyOutputName(name)], ['to_v', crossValueOutputName(name)]] as const) {
      const y = g.op('Reshape', [linear(g, ctx, `${name}.${proj}`, cfg.crossAttentionDim, channels, false), g.ints([opt.batch, opt.textLen, channels])]);
      g.output(opt.dtype === 'float16' ? g.op('Cast', [y], { to: 1 }) : y, out, 'float32', [opt.batch, opt.textLen, channels]);
    }
  }
  return g;
}
