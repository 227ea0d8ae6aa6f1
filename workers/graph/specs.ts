// The weight specs (diffusers name + shape) of each model component, read from the graphs
// themselves so loading, test-model generation and the graphs never disagree.
import type { ModelConfig } from '../checkpoint/config.ts';
import type { WeightSpec } from './builder.ts';
import { buildTextEncoder, tokenEmbeddingSpec } from './clip.ts';
import { buildUNet } from './unet.ts';
import { buildVaeDecoder, buildVaeEncoder } from './vae.ts';

export function graphSpecs(config: ModelConfig) {
  const textLen = config.textEncoder.maxPositions;
  const unet = buildUNet(config.unet, { batch: 1, latentH: 8, latentW: 8, textLen, dtype: 'float32' });
  const te = buildTextEncoder(config.textEncoder, { batch: 1, seqLen: textLen, dtype: 'float32', clipSkip: 1 });
  const vae = buildVaeDecoder(config.vae, { batch: 1, latentH: 8, latentW: 8, dtype: 'float32' });
  const encoder = buildVaeEncoder(config.vae, { batch: 1, latentH: 1, latentW: 1, dtype: 'float32' });
  // `textEncoder` is what its graph binds; `tokenTable` is the checkpoint's other text-encoder
  // tensor, which the engine keeps in CPU memory (text/token-table.ts) and a file lists first.
  // `vae` is the decoder (what every checkpoint has); `vaeEncoder` lives in the same file when present
  return { unet: [...unet.weights.values()], tokenTable: tokenEmbeddingSpec(config.textEncoder), textEncoder: [...te.weights.values()], vae: [...vae.weights.values()], vaeEncoder: [...encoder.weights.values()] };
}

/** The text encoder's tensors as a checkpoint holds them: the token table, then the graph's weights. */
export function textEncoderFileSpecs(specs: ReturnType<typeof graphSpecs>): WeightSpec[] {
  return [specs.tokenTable, ...specs.textEncoder];
}

/**
 * The weights the engine puts on the GPU, component by component: every UNet weight, the text
 * encoder's graph weights (the token table stays in CPU memory), the VAE's decoder and, where the
 * file has it (`vaeEncoder`), its encoder. Loading and the memory plan both count from this.
 */
export function loadedSpecs(specs: ReturnType<typeof graphSpecs>, vaeEncoder: boolean): { unet: WeightSpec[]; textEncoder: WeightSpec[]; vae: WeightSpec[] } {
  return { unet: specs.unet, textEncoder: specs.textEncoder, vae: vaeEncoder ? [...specs.vae, ...specs.vaeEncoder] : specs.vae };
}
