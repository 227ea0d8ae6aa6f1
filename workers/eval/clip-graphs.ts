// CLIP's two towers with their projections, as self-contained ONNX files in the layout that
// transformers.js loads (onnx/text_model.onnx -> text_embeds, onnx/vision_model.onnx -> image_embeds).
// The tiny test scorer is written through these; real scorers come as ONNX exports from the hub.
// Shapes are static: one prompt padded to max_position_embeddings, one image at image_size.
import { GraphBuilder, type WeightSpec } from '../graph/builder.ts';
import { causalMask, clipLayer } from '../graph/clip.ts';
import { layerNorm, linear } from '../graph/layers.ts';
import type { ClipScorerConfig, ClipTowerConfig } from './clip-config.ts';

function towerSpecs(prefix: string, t: ClipTowerConfig): WeightSpec[] {
  const H = t.hidden;
  const out: WeightSpec[] = [];
  for (let i = 0; i < t.layers; i++) {
    const l = `${prefix}.encoder.layers.${i}`;
    for (const n of ['layer_norm1', 'layer_norm2']) out.push({ name: `${l}.${n}.weight`, dims: [H] }, { name: `${l}.${n}.bias`, dims: [H] });
    for (const p of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) out.push({ name: `${l}.self_attn.${p}.weight`, dims: [H, H] }, { name: `${l}.self_attn.${p}.bias`, dims: [H] });
    out.push({ name: `${l}.mlp.fc1.weight`, dims: [t.intermediate, H] }, { name: `${l}.mlp.fc1.bias`, dims: [t.intermediate] });
    out.push({ name: `${l}.mlp.fc2.weight`, dims: [H, t.intermediate] }, { name: `${l}.mlp.fc2.bias`, dims: [H] });
  }
  return out;
}

/** Every weight of a CLIP model with projections, under the names Hugging Face checkpoints use. */
export function clipScorerSpecs(c: ClipScorerConfig): WeightSpec[] {
  const { text: t, vision: v } = c;
  const patches = (v.imageSize / v.patchSize) ** 2;
  return [
    { name: 'text_model.embeddings.token_embedding.weight', dims: [t.vocabSize, t.hidden] },
    { name: 'text_model.embeddings.position_embedding.weight', dims: [t.maxPositions, t.hidden] },
    ...towerSpecs('text_model', t),
    { name: 'text_model.final_layer_norm.weight', dims: [t.hidden] },
    { name: 'text_model.final_layer_norm.bias', dims: [t.hidden] },
    { name: 'text_projection.weight', dims: [c.projectionDim, t.hidden] },
    { name: 'vision_model.embeddings.class_embedding', dims: [v.hidden] },
    { name: 'vision_model.embeddings.patch_embedding.weight', dims: [v.hidden, 3, v.patchSize, v.patchSize] },
    { name: 'vision_model.embeddings.position_embedding.weight', dims: [patches + 1, v.hidden] },
    { name: 'vision_model.pre_layrnorm.weight', dims: [v.hidden] },
    { name: 'vision_model.pre_layrnorm.bias', dims: [v.hidden] },
    ...towerSpecs('vision_model', v),
    { name: 'vision_model.post_layernorm.weight', dims: [v.hidden] },
    { name: 'vision_model.post_layernorm.bias', dims: [v.hidden] },
    { name: 'visual_projection.weight', dims: [c.projectionDim, v.hidden] },
  ];
}

/** input_ids [1, n] -> text_embeds [1, P]: the final-norm state at the end token, projected. */
export function buildClipTextModel(c: ClipScorerConfig): GraphBuilder {
  const g = new GraphBuilder('float32');
  const { hidden: H, maxPositions: n, vocabSize } = c.text;
  const ids = g.input('input_ids', 'int64', [1, n]);
  const tok = g.op('Gather', [g.weight('text_model.embeddings.token_embedding.weight', [vocabSize, H]), ids]);
  const pos = g.op('Gather', [g.weight('text_model.embeddings.position_embedding.weight', [n, H]), g.ints(Array.from({ length: n }, (_, i) => i))]);
  let x = g.op('Reshape', [g.op('Add', [tok, pos]), g.ints([n, H])]);
  const causal = causalMask(g, n);
  for (let i = 0; i < c.text.layers; i++) x = clipLayer(g, x, `text_model.encoder.layers.${i}`, c.text, 1, n, causal);
  x = layerNorm(g, x, 'text_model.final_layer_norm', H);
  // The end token has the largest id of the vocabulary, so its first position is the argmax.
  const at = g.op('ArgMax', [g.op('Cast', [ids], { to: 1 })], { axis: 1, keepdims: 0 });
  const pooled = g.op('Gather', [x, at]);
  g.output(linear(g, pooled, 'text_projection', H, c.projectionDim, false), 'text_embeds', 'float32', [1, c.projectionDim]);
  return g;
}

/** pixel_values [1, 3, S, S] -> image_embeds [1, P]: the class token after the encoder, projected. */
export function buildClipVisionModel(c: ClipScorerConfig): GraphBuilder {
  const g = new GraphBuilder('float32');
  const { hidden: H, imageSize: S, patchSize: p } = c.vision;
  const np = (S / p) ** 2;
  const pixels = g.input('pixel_values', 'float32', [1, 3, S, S]);
  const conv = g.op('Conv', [pixels, g.weight('vision_model.embeddings.patch_embedding.weight', [H, 3, p, p])], { kernel_shape: [p, p], strides: [p, p] });
  const patches = g.op('Transpose', [g.op('Reshape', [conv, g.ints([H, np])])], { perm: [1, 0] });
  const cls = g.op('Reshape', [g.weight('vision_model.embeddings.class_embedding', [H]), g.ints([1, H])]);
  let x = g.op('Add', [g.op('Concat', [cls, patches], { axis: 0 }), g.weight('vision_model.embeddings.position_embedding.weight', [np + 1, H])]);
  x = layerNorm(g, x, 'vision_model.pre_layrnorm', H);
  for (let i = 0; i < c.vision.layers; i++) x = clipLayer(g, x, `vision_model.encoder.layers.${i}`, c.vision, 1, np + 1);
  const pooled = layerNorm(g, g.op('Gather', [x, g.ints([0])]), 'vision_model.post_layernorm', H);
  g.output(linear(g, pooled, 'visual_projection', H, c.projectionDim, false), 'image_embeds', 'float32', [1, c.projectionDim]);
  return g;
}
