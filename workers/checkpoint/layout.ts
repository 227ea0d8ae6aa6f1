// Key layouts. The engine names every weight as diffusers does (the names LoRA trainers use too); a
// single-file checkpoint in the original (LDM) layout is read through these plain rewrites.
import type { UNetConfig, VaeConfig } from './config.ts';

export const LDM_UNET_PREFIX = 'model.diffusion_model.';
export const LDM_VAE_PREFIX = 'first_stage_model.';
export const LDM_CLIP_PREFIX = 'cond_stage_model.transformer.';

// diffusers resnet part -> LDM ResBlock part (UNet)
const UNET_RESNET: Record<string, string> = {
  norm1: 'in_layers.0',
  conv1: 'in_layers.2',
  time_emb_proj: 'emb_layers.1',
  norm2: 'out_layers.0',
  conv2: 'out_layers.3',
  conv_shortcut: 'skip_connection',
};

/** diffusers UNet parameter name -> LDM name (without the model.diffusion_model. prefix). */
export function unetNameToLdm(name: string, cfg: UNetConfig): string {
  const per = cfg.layersPerBlock + 1;
  const levels = cfg.blockOutChannels.length;
  let m: RegExpMatchArray | null;
  if ((m = name.match(/^time_embedding\.linear_([12])\.(.+)$/))) return `time_embed.${m[1] === '1' ? 0 : 2}.${m[2]}`;
  if ((m = name.match(/^conv_in\.(.+)$/))) return `input_blocks.0.0.${m[1]}`;
  if ((m = name.match(/^conv_norm_out\.(.+)$/))) return `out.0.${m[1]}`;
  if ((m = name.match(/^conv_out\.(.+)$/))) return `out.2.${m[1]}`;
  if ((m = name.match(/^down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)$/))) {
    return `input_blocks.${1 + +m[1] * per + +m[2]}.0.${UNET_RESNET[m[3]] ?? m[3]}.${m[4]}`;
  }
  if ((m = name.match(/^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$/))) return `input_blocks.${1 + +m[1] * per + +m[2]}.1.${m[3]}`;
  if ((m = name.match(/^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$/))) return `input_blocks.${(+m[1] + 1) * per}.0.op.${m[2]}`;
  if ((m = name.match(/^mid_block\.resnets\.([01])\.(\w+)\.(.+)$/))) {
    return `middle_block.${m[1] === '0' ? 0 : 2}.${UNET_RESNET[m[2]] ?? m[2]}.${m[3]}`;
  }
  if ((m = name.match(/^mid_block\.attentions\.0\.(.+)$/))) return `middle_block.1.${m[1]}`;
  if ((m = name.match(/^up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)$/))) {
    return `output_blocks.${+m[1] * per + +m[2]}.0.${UNET_RESNET[m[3]] ?? m[3]}.${m[4]}`;
  }
  if ((m = name.match(/^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$/))) return `output_blocks.${+m[1] * per + +m[2]}.1.${m[3]}`;
  if ((m = name.match(/^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$/))) {
    const hasAttn = cfg.attention[levels - 1 - +m[1]];
    return `output_blocks.${+m[1] * per + cfg.layersPerBlock}.${hasAttn ? 2 : 1}.conv.${m[2]}`;
  }
  throw new Error(`no LDM name for UNet parameter ${name}`);
}

const VAE_RESNET: Record<string, string> = { conv_shortcut: 'nin_shortcut' };
const VAE_ATTN: Record<string, string> = { group_norm: 'norm', to_q: 'q', to_k: 'k', to_v: 'v', 'to_out.0': 'proj_out' };

/** diffusers VAE parameter name -> LDM name (without the first_stage_model. prefix). */
export function vaeNameToLdm(name: string, cfg: VaeConfig): string {
  const levels = cfg.blockOutChannels.length;
  let m: RegExpMatchArray | null;
  if ((m = name.match(/^decoder\.conv_norm_out\.(.+)$/))) return `decoder.norm_out.${m[1]}`;
  if ((m = name.match(/^decoder\.mid_block\.resnets\.([01])\.(\w+)\.(.+)$/))) {
    return `decoder.mid.block_${+m[1] + 1}.${VAE_RESNET[m[2]] ?? m[2]}.${m[3]}`;
  }
  if ((m = name.match(/^decoder\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)$/))) {
    return `decoder.mid.attn_1.${VAE_ATTN[m[1]]}.${m[2]}`;
  }
  if ((m = name.match(/^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)$/))) {
    return `decoder.up.${levels - 1 - +m[1]}.block.${m[2]}.${VAE_RESNET[m[3]] ?? m[3]}.${m[4]}`;
  }
  if ((m = name.match(/^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$/))) {
    return `decoder.up.${levels - 1 - +m[1]}.upsample.conv.${m[2]}`;
  }
  if ((m = name.match(/^encoder\.conv_norm_out\.(.+)$/))) return `encoder.norm_out.${m[1]}`;
  if ((m = name.match(/^encoder\.mid_block\.resnets\.([01])\.(\w+)\.(.+)$/))) {
    return `encoder.mid.block_${+m[1] + 1}.${VAE_RESNET[m[2]] ?? m[2]}.${m[3]}`;
  }
  if ((m = name.match(/^encoder\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)$/))) {
    return `encoder.mid.attn_1.${VAE_ATTN[m[1]]}.${m[2]}`;
  }
  // the encoder's levels run the same way in both layouts (level 0 at full resolution)
  if ((m = name.match(/^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)$/))) {
    return `encoder.down.${m[1]}.block.${m[2]}.${VAE_RESNET[m[3]] ?? m[3]}.${m[4]}`;
  }
  if ((m = name.match(/^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$/))) return `encoder.down.${m[1]}.downsample.conv.${m[2]}`;
  return name; // post_quant_conv, quant_conv, {en,de}coder.conv_in and conv_out keep their names
}

/** Older diffusers VAE folders name the attention projections query/key/value/proj_attn. */
export function vaeLegacyDiffusersName(name: string): string | undefined {
  const m = name.match(/^(.*\.attentions\.0\.)(to_q|to_k|to_v|to_out\.0)\.(.+)$/);
  if (!m) return undefined;
  const old = { to_q: 'query', to_k: 'key', to_v: 'value', 'to_out.0': 'proj_attn' }[m[2]];
  return `${m[1]}${old}.${m[3]}`;
}

/** LDM VAE attention projections are 1x1 convolutions; diffusers stores them as linear weights. */
export function isVaeAttentionProjection(name: string): boolean {
  return /\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(name);
}

/**
 * The same layers' biases: [C] in the original checkpoints, [C, 1, 1] in single files written by
 * diffusers' `convert_diffusers_to_original_stable_diffusion.py`; either holds the same numbers.
 */
export function isVaeAttentionBias(name: string): boolean {
  return /\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.bias$/.test(name);
}

/** diffusers text-encoder name -> LDM names to try (with and without the text_model level). */
export function clipNameToLdm(name: string): string[] {
  const inner = name.replace(/^text_model\./, '');
  return [`${LDM_CLIP_PREFIX}text_model.${inner}`, `${LDM_CLIP_PREFIX}${inner}`];
}
