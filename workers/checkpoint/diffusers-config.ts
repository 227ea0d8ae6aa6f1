// The JSON files diffusers writes beside a Stable Diffusion 1.x pipeline's weights (model_index.json,
// each component's config.json, the scheduler's config), from our model config: what makes a folder
// one that diffusers' `from_pretrained` reads. Values follow the SD 1.5 repository's files.
import type { ModelConfig } from './config.ts';

const DIFFUSERS_VERSION = '0.30.0';

export function unetConfigJson(c: ModelConfig['unet'], sampleSize: number): Record<string, unknown> {
  const levels = c.blockOutChannels.length;
  return {
    _class_name: 'UNet2DConditionModel',
    _diffusers_version: DIFFUSERS_VERSION,
    act_fn: 'silu',
    // diffusers names the head count of SD 1.x "attention_head_dim"
    attention_head_dim: c.heads,
    block_out_channels: c.blockOutChannels,
    center_input_sample: false,
    cross_attention_dim: c.crossAttentionDim,
    down_block_types: c.attention.map((a) => (a ? 'CrossAttnDownBlock2D' : 'DownBlock2D')),
    downsample_padding: 1,
    flip_sin_to_cos: true,
    freq_shift: 0,
    in_channels: c.inChannels,
    layers_per_block: c.layersPerBlock,
    mid_block_scale_factor: 1,
    norm_eps: 1e-5,
    norm_num_groups: c.normGroups,
    out_channels: c.outChannels,
    sample_size: sampleSize,
    transformer_layers_per_block: c.transformerDepth,
    up_block_types: Array.from({ length: levels }, (_, i) => (c.attention[levels - 1 - i] ? 'CrossAttnUpBlock2D' : 'UpBlock2D')),
  };
}

export function vaeConfigJson(c: ModelConfig['vae'], sampleSize: number): Record<string, unknown> {
  return {
    _class_name: 'AutoencoderKL',
    _diffusers_version: DIFFUSERS_VERSION,
    act_fn: 'silu',
    block_out_channels: c.blockOutChannels,
    down_block_types: c.blockOutChannels.map(() => 'DownEncoderBlock2D'),
    in_channels: 3,
    latent_channels: c.latentChannels,
    layers_per_block: c.layersPerBlock,
    norm_num_groups: c.normGroups,
    out_channels: 3,
    sample_size: sampleSize,
    scaling_factor: c.scalingFactor,
    up_block_types: c.blockOutChannels.map(() => 'UpDecoderBlock2D'),
  };
}

export function textEncoderConfigJson(c: ModelConfig['textEncoder'], bos: number, eos: number): Record<string, unknown> {
  return {
    architectures: ['CLIPTextModel'],
    attention_dropout: 0,
    bos_token_id: bos,
    eos_token_id: eos,
    hidden_act: 'quick_gelu',
    hidden_size: c.hidden,
    initializer_factor: 1,
    initializer_range: 0.02,
    intermediate_size: c.intermediate,
    layer_norm_eps: 1e-5,
    max_position_embeddings: c.maxPositions,
    model_type: 'clip_text_model',
    num_attention_heads: c.heads,
    num_hidden_layers: c.layers,
    pad_token_id: 1,
    projection_dim: c.hidden,
    torch_dtype: 'float32',
    vocab_size: c.vocabSize,
  };
}

/** SD 1.5's scheduler as its repository ships it (PNDM, scaled-linear betas, steps offset 1). */
export const SCHEDULER_CONFIG_JSON = {
  _class_name: 'PNDMScheduler',
  _diffusers_version: DIFFUSERS_VERSION,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  beta_start: 0.00085,
  clip_sample: false,
  num_train_timesteps: 1000,
  prediction_type: 'epsilon',
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  timestep_spacing: 'leading',
  trained_betas: null,
};

export const MODEL_INDEX_JSON = {
  _class_name: 'StableDiffusionPipeline',
  _diffusers_version: DIFFUSERS_VERSION,
  feature_extractor: [null, null],
  image_encoder: [null, null],
  requires_safety_checker: false,
  safety_checker: [null, null],
  scheduler: ['diffusers', 'PNDMScheduler'],
  text_encoder: ['transformers', 'CLIPTextModel'],
  tokenizer: ['transformers', 'CLIPTokenizer'],
  unet: ['diffusers', 'UNet2DConditionModel'],
  vae: ['diffusers', 'AutoencoderKL'],
};
