// The CLIP ViT-L/14 text transformer (causal, quick-GELU) as an ONNX graph. Clip-skip is applied
// by building only the first `layers - (clipSkip - 1)` layers, then the final layer norm, as the
// common "clip skip 2" convention does.
import type { TextEncoderConfig } from '../checkpoint/config.ts';
import { GraphBuilder, type GraphOptions, type WeightSpec } from './builder.ts';
import { attention, layerNorm, linear, quickGelu } from './layers.ts';

export interface ClipGraphOptions extends GraphOptions {
  batch: number;
  seqLen: number;
  dtype: 'float32' | 'float16';
  /** 1 = the last layer (default); 2 = the penultimate one; ... */
  clipSkip: number;
}

export function clipLayer(g: GraphBuilder, x: string, name: string, cfg: Pick<TextEncoderConfig, 'hidden' | 'heads' | 'intermediate'>, b: number, n: number, causal?: string): string {
  const H = cfg.hidden;
  let h = layerNorm(g, x, `${name}.layer_norm1`, H);
  const a = attention(
    g,
    linear(g, h, `${name}.self_attn.q_proj`, H, H),
    linear(g, h, `${name}.self_attn.k_proj`, H, H),
    linear(g, h, `${name}.self_attn.v_proj`, H, H),
    { b, nq: n, nk: n, c: H, heads: cfg.heads },
    { bias: causal },
  );
  x = g.op('Add', [x, linear(g, a, `${name}.self_attn.out_proj`, H, H)]);
  h = layerNorm(g, x, `${name}.layer_norm2`, H);
  h = linear(g, quickGelu(g, linear(g, h, `${name}.mlp.fc1`, H, cfg.intermediate)), `${name}.mlp.fc2`, cfg.intermediate, H);
  return g.op('Add', [x, h]);
}

export function causalMask(g: GraphBuilder, n: number): string {
  const neg = g.dtype === 'float16' ? -6e4 : -1e9;
  const m = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) m[i * n + j] = neg;
  return g.floats(m, [n, n]);
}

/** The token embedding table: a weight of every text encoder, read by the engine, not by the graph. */
export const TOKEN_EMBEDDING = 'text_model.embeddings.token_embedding.weight';

export function tokenEmbeddingSpec(cfg: Pick<TextEncoderConfig, 'vocabSize' | 'hidden'>): WeightSpec {
  return { name: TOKEN_EMBEDDING, dims: [cfg.vocabSize, cfg.hidden] };
}

export function buildTextEncoder(cfg: TextEncoderConfig, opt: ClipGraphOptions): GraphBuilder {
  if (!(opt.clipSkip >= 1 && opt.clipSkip <= cfg.layers)) throw new RangeError(`clip skip must be 1..${cfg.layers}`);
  const g = new GraphBuilder(opt.dtype, opt);
  const { batch: b, seqLen: n } = opt;
  const H = cfg.hidden;
  // the token rows, looked up on the CPU (workers/text/token-table.ts), added tokens included
  let tok = g.input('inputs_embeds', 'float32', [b, n, H]);
  if (opt.dtype === 'float16') tok = g.op('Cast', [tok], { to: 10 });
  const positions = g.ints(Array.from({ length: n }, (_, i) => i));
  const pos = g.op('Gather', [g.weight('text_model.embeddings.position_embedding.weight', [cfg.maxPositions, H]), positions]);
  let x = g.op('Reshape', [g.op('Add', [tok, pos]), g.ints([b * n, H])]);
  const causal = causalMask(g, n);
  const layers = cfg.layers - (opt.clipSkip - 1);
  for (let i = 0; i < layers; i++) x = clipLayer(g, x, `text_model.encoder.layers.${i}`, cfg, b, n, causal);
  x = layerNorm(g, x, 'text_model.final_layer_norm', H);
  x = g.op('Reshape', [x, g.ints([b, n, H])]);
  if (opt.dtype === 'float16') x = g.op('Cast', [x], { to: 1 });
  g.output(x, 'last_hidden_state', 'float32', [b, n, H]);
  return g;
}
