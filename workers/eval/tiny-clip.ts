// The tiny test scorer: CLIP's architecture with few channels and seeded random weights, written as
// the files of a Hugging Face ONNX CLIP repository (config.json, the preprocessor and tokenizer
// files, onnx/text_model.onnx, onnx/vision_model.onnx), so tests load it the way the studio loads a
// real scorer. Its scores are numbers to check, not judgements of pictures.
import type { GeneratedFile } from '../engine/test-model.ts';
import { randomWeight } from '../engine/test-model.ts';
import { Rng } from '../engine/random.ts';
import { CLIP_TOKENIZER_CONFIG, clipTokenizerJson, EOS, BOS, makeTinyVocabulary, TINY_WORDS, type BpeFiles } from '../text/bpe-files.ts';
import { clipConfigJson, type ClipScorerConfig } from './clip-config.ts';
import { buildClipTextModel, buildClipVisionModel, clipScorerSpecs } from './clip-graphs.ts';
import { CLIP_MEAN, CLIP_STD } from './preprocess.ts';

export interface TinyClip {
  config: ClipScorerConfig;
  vocab: BpeFiles;
  weights: Map<string, Float32Array>;
}

/** Words the test scenes use, so their prompts are whole tokens. */
const SCORER_WORDS = [...TINY_WORDS, 'owl', 'fox', 'bird', 'animal', 'sks', 'zxc'];

export function makeTinyClip(seed = 4321): TinyClip {
  const vocab = makeTinyVocabulary(SCORER_WORDS);
  const vocabSize = Math.max(...Object.values(vocab.vocab)) + 1;
  const tower = { hidden: 32, heads: 2, intermediate: 64, layers: 2 };
  const config: ClipScorerConfig = {
    text: { ...tower, vocabSize, maxPositions: 24, eosTokenId: vocab.vocab[EOS] },
    vision: { ...tower, imageSize: 32, patchSize: 8 },
    projectionDim: 16,
  };
  const rng = new Rng(seed);
  const weights = new Map(clipScorerSpecs(config).map((s) => [s.name, randomWeight(s, rng)]));
  return { config, vocab, weights };
}

/** The scorer's files, relative to its folder. */
export function tinyClipFiles(clip: TinyClip): GeneratedFile[] {
  const text = (path: string, v: unknown): GeneratedFile => ({ path, parts: [new TextEncoder().encode(JSON.stringify(v, null, 2))] });
  const w = (name: string) => clip.weights.get(name)!;
  const size = clip.config.vision.imageSize;
  return [
    text('config.json', clipConfigJson(clip.config, clip.vocab.vocab[EOS], clip.vocab.vocab[BOS])),
    text('preprocessor_config.json', {
      image_processor_type: 'CLIPImageProcessor',
      do_resize: true,
      size: { shortest_edge: size },
      resample: 3,
      do_center_crop: true,
      crop_size: { height: size, width: size },
      do_rescale: true,
      rescale_factor: 1 / 255,
      do_normalize: true,
      image_mean: CLIP_MEAN,
      image_std: CLIP_STD,
    }),
    text('tokenizer.json', clipTokenizerJson(clip.vocab)),
    text('tokenizer_config.json', { ...CLIP_TOKENIZER_CONFIG, model_max_length: clip.config.text.maxPositions }),
    { path: 'onnx/text_model.onnx', parts: [buildClipTextModel(clip.config).encode(w)] },
    { path: 'onnx/vision_model.onnx', parts: [buildClipVisionModel(clip.config).encode(w)] },
    text('lorastudio.json', { note: 'tiny test scorer: random weights; its scores check arithmetic, not pictures' }),
  ];
}
