// Float64 CLIP embeddings, loop by loop from the model's definition, to check the scorer's ONNX
// towers and the transformers.js path that runs them.
import type { ClipScorerConfig } from '../eval/clip-config.ts';
import { conv2d, layerNorm, linear, type T, type Weights } from './nn.ts';
import { clipLayer, textEncode } from './sd15.ts';

/** The projected embedding of one padded prompt: the final-norm state at the first end token. */
export function referenceTextEmbeds(W: Weights, c: ClipScorerConfig, ids: number[]): Float64Array {
  const h = textEncode(W, { ...c.text, vocabSize: c.text.vocabSize, maxPositions: c.text.maxPositions }, ids);
  const at = ids.indexOf(c.text.eosTokenId);
  const H = c.text.hidden;
  const pooled: T = { data: h.data.slice(at * H, (at + 1) * H), shape: [1, H] };
  return linear(pooled, W('text_projection.weight'), undefined, c.projectionDim).data;
}

/** The projected embedding of one preprocessed image [3, S, S]: the class token after the encoder. */
export function referenceImageEmbeds(W: Weights, c: ClipScorerConfig, pixels: ArrayLike<number>): Float64Array {
  const { hidden: H, imageSize: S, patchSize: p } = c.vision;
  const patches = conv2d({ data: Float64Array.from(pixels), shape: [1, 3, S, S] }, W('vision_model.embeddings.patch_embedding.weight'), new Float64Array(H), H, p, p, 0);
  const np = patches.shape[2] * patches.shape[3];
  const cls = W('vision_model.embeddings.class_embedding');
  const pos = W('vision_model.embeddings.position_embedding.weight');
  const x = new Float64Array((np + 1) * H);
  for (let t = 0; t <= np; t++) for (let ch = 0; ch < H; ch++) x[t * H + ch] = (t === 0 ? cls[ch] : patches.data[ch * np + t - 1]) + pos[t * H + ch];
  let h = layerNorm({ data: x, shape: [np + 1, H] }, W('vision_model.pre_layrnorm.weight'), W('vision_model.pre_layrnorm.bias'));
  for (let i = 0; i < c.vision.layers; i++) h = clipLayer(W, h, `vision_model.encoder.layers.${i}`, c.vision, 1, false);
  const pooled = layerNorm({ data: h.data.slice(0, H), shape: [1, H] }, W('vision_model.post_layernorm.weight'), W('vision_model.post_layernorm.bias'));
  return linear(pooled, W('visual_projection.weight'), undefined, c.projectionDim).data;
}
