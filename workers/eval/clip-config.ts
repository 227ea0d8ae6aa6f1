// The CLIP model that scores results: its shape as a Hugging Face `config.json` (model_type "clip")
// states it, read field by field so a wrong file gets a sentence rather than a failed session.
import { EngineError } from '../api/errors.ts';
import { isObj, parseJson, type Obj } from '../api/json.ts';

export interface ClipTowerConfig {
  hidden: number;
  heads: number;
  intermediate: number;
  layers: number;
}

export interface ClipScorerConfig {
  text: ClipTowerConfig & { vocabSize: number; maxPositions: number; eosTokenId: number };
  vision: ClipTowerConfig & { imageSize: number; patchSize: number };
  projectionDim: number;
}


function int(o: Obj, key: string, where: string, fallback?: number): number {
  const v = o[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 1 << 20) {
    throw new EngineError('scorer', `The CLIP scorer's config.json has no usable ${where}${key} (got ${JSON.stringify(v)}).`);
  }
  return v;
}

function tower(o: Obj, where: string): ClipTowerConfig {
  const t = { hidden: int(o, 'hidden_size', where), heads: int(o, 'num_attention_heads', where), intermediate: int(o, 'intermediate_size', where), layers: int(o, 'num_hidden_layers', where) };
  if (t.hidden % t.heads !== 0) throw new EngineError('scorer', `The CLIP scorer's ${where}hidden_size ${t.hidden} is not a multiple of its ${t.heads} heads.`);
  return t;
}

/** Reads a CLIP `config.json`; the defaults are those of OpenAI's CLIP configurations. */
export function parseClipConfig(json: string): ClipScorerConfig {
  const raw = parseJson(json, () => new EngineError('scorer', "The CLIP scorer's config.json is not JSON."));
  if (!isObj(raw) || raw.model_type !== 'clip') {
    throw new EngineError('scorer', `The scorer must be a CLIP model (config.json model_type "clip"); this one is ${JSON.stringify(isObj(raw) ? raw.model_type : raw)?.slice(0, 40)}.`);
  }
  if (!isObj(raw.text_config) || !isObj(raw.vision_config)) throw new EngineError('scorer', 'The CLIP scorer\'s config.json lacks text_config or vision_config.');
  const t = raw.text_config;
  const v = raw.vision_config;
  const vision = { ...tower(v, 'vision_config.'), imageSize: int(v, 'image_size', 'vision_config.'), patchSize: int(v, 'patch_size', 'vision_config.') };
  if (vision.imageSize % vision.patchSize !== 0) throw new EngineError('scorer', `The CLIP scorer's image_size ${vision.imageSize} is not a multiple of its patch_size ${vision.patchSize}.`);
  return {
    text: { ...tower(t, 'text_config.'), vocabSize: int(t, 'vocab_size', 'text_config.'), maxPositions: int(t, 'max_position_embeddings', 'text_config.'), eosTokenId: int(t, 'eos_token_id', 'text_config.', 2) },
    vision,
    projectionDim: int(raw, 'projection_dim', ''),
  };
}

/** The config.json of a scorer of this shape (what the tiny test scorer ships). */
export function clipConfigJson(c: ClipScorerConfig, eosTokenId: number, bosTokenId: number): Record<string, unknown> {
  const tower = (t: ClipTowerConfig) => ({ hidden_size: t.hidden, num_attention_heads: t.heads, intermediate_size: t.intermediate, num_hidden_layers: t.layers, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5 });
  return {
    model_type: 'clip',
    architectures: ['CLIPModel'],
    projection_dim: c.projectionDim,
    text_config: { model_type: 'clip_text_model', ...tower(c.text), vocab_size: c.text.vocabSize, max_position_embeddings: c.text.maxPositions, eos_token_id: eosTokenId, bos_token_id: bosTokenId, pad_token_id: eosTokenId },
    vision_config: { model_type: 'clip_vision_model', ...tower(c.vision), image_size: c.vision.imageSize, patch_size: c.vision.patchSize, num_channels: 3 },
  };
}
