// Architecture configuration of the SD 1.5 family. The same numbers describe the real model and the
// tiny test model; every graph and every key name is derived from them.

export interface UNetConfig {
  inChannels: number;
  outChannels: number;
  /** Channels per resolution level, e.g. [320, 640, 1280, 1280]. */
  blockOutChannels: number[];
  /** Whether each level has cross-attention transformers (SD 1.5: [true, true, true, false]). */
  attention: boolean[];
  layersPerBlock: number;
  heads: number;
  transformerDepth: number;
  crossAttentionDim: number;
  normGroups: number;
}

export interface TextEncoderConfig {
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  intermediate: number;
  maxPositions: number;
}

export interface VaeConfig {
  latentChannels: number;
  /** Decoder channels per level, lowest resolution last as in diffusers' block_out_channels. */
  blockOutChannels: number[];
  layersPerBlock: number;
  normGroups: number;
  scalingFactor: number;
}

export interface ModelConfig {
  unet: UNetConfig;
  textEncoder: TextEncoderConfig;
  vae: VaeConfig;
}

export const SD15_CONFIG: ModelConfig = {
  unet: {
    inChannels: 4,
    outChannels: 4,
    blockOutChannels: [320, 640, 1280, 1280],
    attention: [true, true, true, false],
    layersPerBlock: 2,
    heads: 8,
    transformerDepth: 1,
    crossAttentionDim: 768,
    normGroups: 32,
  },
  textEncoder: { vocabSize: 49408, hidden: 768, layers: 12, heads: 12, intermediate: 3072, maxPositions: 77 },
  vae: { latentChannels: 4, blockOutChannels: [128, 256, 512, 512], layersPerBlock: 2, normGroups: 32, scalingFactor: 0.18215 },
};

/**
 * The tiny test model: the SD 1.5 topology (four UNet levels, attention on the first three, a
 * four-level VAE so the latent is 1/8 of the image) with very few channels.
 */
export const TINY_CONFIG: ModelConfig = {
  unet: {
    inChannels: 4,
    outChannels: 4,
    blockOutChannels: [16, 32, 32, 32],
    attention: [true, true, true, false],
    layersPerBlock: 1,
    heads: 2,
    transformerDepth: 1,
    crossAttentionDim: 32,
    normGroups: 8,
  },
  textEncoder: { vocabSize: 0 /* set from the generated vocabulary */, hidden: 32, layers: 2, heads: 2, intermediate: 64, maxPositions: 77 },
  vae: { latentChannels: 4, blockOutChannels: [8, 8, 16, 16], layersPerBlock: 1, normGroups: 4, scalingFactor: 0.18215 },
};

/** Metadata key under which our generated checkpoints store their config. */
export const CONFIG_METADATA_KEY = 'lorastudio.config';

export function latentSize(width: number, height: number): { h: number; w: number } {
  return { h: height / 8, w: width / 8 };
}
