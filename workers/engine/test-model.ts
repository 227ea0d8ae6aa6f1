// The tiny test model: the SD 1.5 architecture with few channels and seeded random weights, written
// through the same key layouts that real checkpoints use, so tests exercise the real loading paths.
import { testScene } from '../layout/scene.ts';
import { TINY_CONFIG, CONFIG_METADATA_KEY, type ModelConfig } from '../checkpoint/config.ts';
import { isVaeAttentionProjection, LDM_CLIP_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX, unetNameToLdm, vaeNameToLdm } from '../checkpoint/layout.ts';
import { encodeSafetensors, type TensorToWrite } from '../checkpoint/safetensors.ts';
import { MODEL_INDEX_JSON, SCHEDULER_CONFIG_JSON, textEncoderConfigJson, unetConfigJson, vaeConfigJson } from '../checkpoint/diffusers-config.ts';
import type { WeightSpec } from '../graph/builder.ts';
import { graphSpecs, textEncoderFileSpecs } from '../graph/specs.ts';
import { clipTokenizerJson, makeTinyVocabulary, mergesTxt, TINY_WORDS, CLIP_TOKENIZER_CONFIG, type BpeFiles } from '../text/bpe-files.ts';
import { tinyLoras, tinyTextualInversion } from '../lora/test-loras.ts';
import { Rng } from './random.ts';

export interface GeneratedFile {
  path: string;
  parts: Uint8Array[];
}

export function tinyConfig(): { config: ModelConfig; vocab: BpeFiles } {
  const vocab = makeTinyVocabulary(TINY_WORDS);
  const size = Math.max(...Object.values(vocab.vocab)) + 1;
  return { config: { ...TINY_CONFIG, textEncoder: { ...TINY_CONFIG.textEncoder, vocabSize: size } }, vocab };
}

/** Seeded values with a sane scale: norms near 1, biases small, weights ~ N(0, 1/fan_in). */
export function randomWeight(spec: WeightSpec, rng: Rng): Float32Array {
  const n = spec.dims.reduce((a, b) => a * b, 1);
  const z = rng.normal(n);
  const isNorm = /(norm|layer_norm)\d?\.weight$|group_norm\.weight$|norm_out\.weight$/.test(spec.name);
  if (isNorm) return z.map((v) => 1 + 0.1 * v);
  if (spec.name.endsWith('.bias')) return z.map((v) => 0.05 * v);
  if (/embedding\.weight$/.test(spec.name)) return z.map((v) => 0.5 * v);
  const fanIn = spec.dims.length > 1 ? n / spec.dims[0] : 1;
  const s = 1 / Math.sqrt(fanIn);
  return z.map((v) => v * s);
}

function f32Bytes(v: Float32Array): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

export interface TinyModel {
  config: ModelConfig;
  vocab: BpeFiles;
  /** `vae` holds the decoder's weights and the encoder's (`specs.vaeEncoder`). */
  weights: { unet: Map<string, Float32Array>; textEncoder: Map<string, Float32Array>; vae: Map<string, Float32Array> };
  specs: ReturnType<typeof graphSpecs>;
}

export function makeTinyModel(seed = 1234): TinyModel {
  const { config, vocab } = tinyConfig();
  const specs = graphSpecs(config);
  const rng = new Rng(seed);
  const gen = (list: WeightSpec[], r = rng) => new Map(list.map((s) => [s.name, randomWeight(s, r)]));
  const weights = { unet: gen(specs.unet), textEncoder: gen(textEncoderFileSpecs(specs)), vae: gen(specs.vae) };
  // the encoder from a stream of its own, so the weights above stay what they were before it existed
  for (const [name, w] of gen(specs.vaeEncoder, new Rng(seed + 7))) weights.vae.set(name, w);
  return { config, vocab, specs, weights };
}

/**
 * The inpainting variant (SD 1.5 inpainting's layout): conv_in takes 9 channels (latent, mask, the
 * masked picture's latent). Like the real one it is the base model fine-tuned: every weight is the
 * base's, conv_in's first 4 input channels too; the 5 new ones are seeded.
 */
export function makeTinyInpaintingModel(base: TinyModel, seed = 99): TinyModel {
  const config = { ...base.config, unet: { ...base.config.unet, inChannels: 9 } };
  const specs = graphSpecs(config);
  const unet = new Map(base.weights.unet);
  const spec = specs.unet.find((s) => s.name === 'conv_in.weight')!;
  const [cout, cin, kh, kw] = spec.dims;
  const fresh = randomWeight(spec, new Rng(seed));
  const old = base.weights.unet.get('conv_in.weight')!;
  const k = kh * kw;
  for (let o = 0; o < cout; o++) for (let c = 0; c < 4; c++) fresh.set(old.subarray((o * 4 + c) * k, (o * 4 + c + 1) * k), (o * cin + c) * k);
  unet.set('conv_in.weight', fresh);
  return { ...base, config, specs, weights: { ...base.weights, unet } };
}

/** A model as one single file in the original (LDM) layout, as Civitai checkpoints come. */
function singleFile(model: TinyModel): Uint8Array[] {
  const { config, specs, weights } = model;
  const metadata = { [CONFIG_METADATA_KEY]: JSON.stringify(config), format: 'pt', 'lorastudio.note': 'tiny test model: random weights, images are noise patterns' };
  const ldm: TensorToWrite[] = [];
  for (const s of specs.unet) ldm.push({ name: LDM_UNET_PREFIX + unetNameToLdm(s.name, config.unet), dtype: 'F32', shape: s.dims, data: f32Bytes(weights.unet.get(s.name)!) });
  for (const s of textEncoderFileSpecs(specs)) ldm.push({ name: `${LDM_CLIP_PREFIX}${s.name}`, dtype: 'F32', shape: s.dims, data: f32Bytes(weights.textEncoder.get(s.name)!) });
  for (const s of [...specs.vae, ...specs.vaeEncoder]) {
    const shape = isVaeAttentionProjection(s.name) ? [...s.dims, 1, 1] : s.dims;
    ldm.push({ name: LDM_VAE_PREFIX + vaeNameToLdm(s.name, config.vae), dtype: 'F32', shape, data: f32Bytes(weights.vae.get(s.name)!) });
  }
  return encodeSafetensors(ldm, metadata);
}

/** Every file of the test model, relative to its output folder. */
const json = (path: string, value: unknown): GeneratedFile => ({ path, parts: [new TextEncoder().encode(`${JSON.stringify(value, null, 2)}\n`)] });

export function tinyModelFiles(model: TinyModel): GeneratedFile[] {
  const { config, specs, weights, vocab } = model;
  const metadata = { [CONFIG_METADATA_KEY]: JSON.stringify(config), format: 'pt', 'lorastudio.note': 'tiny test model: random weights, images are noise patterns' };
  const vaeSpecs = [...specs.vae, ...specs.vaeEncoder];
  const diffusers = (list: WeightSpec[], w: Map<string, Float32Array>, meta?: Record<string, string>) =>
    encodeSafetensors(list.map((s) => ({ name: s.name, dtype: 'F32', shape: s.dims, data: f32Bytes(w.get(s.name)!) })), meta);
  const tokenizerFiles = (dir: string): GeneratedFile[] => {
    const text = (path: string, s: string) => ({ path, parts: [new TextEncoder().encode(s)] });
    return [
      text(`${dir}/vocab.json`, JSON.stringify(vocab.vocab)),
      text(`${dir}/merges.txt`, mergesTxt(vocab.merges)),
      text(`${dir}/tokenizer.json`, JSON.stringify(clipTokenizerJson(vocab))),
      text(`${dir}/tokenizer_config.json`, JSON.stringify(CLIP_TOKENIZER_CONFIG, null, 2)),
    ];
  };
  return [
    { path: 'tiny-sd15.safetensors', parts: singleFile(model) },
    { path: 'tiny-sd15-inpainting.safetensors', parts: singleFile(makeTinyInpaintingModel(model)) },
    // the VAE alone, as sd-vae-ft-mse comes in diffusers' layout: the same architecture, other weights
    { path: 'tiny-vae-ft.safetensors', parts: diffusers(vaeSpecs, tinyVaeVariant(model)) },
    ...tokenizerFiles('tokenizer'),
    { path: 'diffusers/unet/diffusion_pytorch_model.safetensors', parts: diffusers(specs.unet, weights.unet, metadata) },
    { path: 'diffusers/text_encoder/model.safetensors', parts: diffusers(textEncoderFileSpecs(specs), weights.textEncoder) },
    { path: 'diffusers/vae/diffusion_pytorch_model.safetensors', parts: diffusers(vaeSpecs, weights.vae) },
    ...tokenizerFiles('diffusers/tokenizer'),
    ...tinyLoras(model).map((l) => ({ path: l.file, parts: l.parts })),
    (({ file, parts }) => ({ path: file, parts }))(tinyTextualInversion(model)),
    { path: 'scene.json', parts: [new TextEncoder().encode(JSON.stringify(testScene(), null, 2))] },
    // the JSON diffusers writes beside the weights
    json('diffusers/model_index.json', MODEL_INDEX_JSON),
    json('diffusers/unet/config.json', unetConfigJson(config.unet, 64)),
    json('diffusers/vae/config.json', vaeConfigJson(config.vae, 512)),
    json('diffusers/text_encoder/config.json', textEncoderConfigJson(config.textEncoder, vocab.vocab['<|startoftext|>'], vocab.vocab['<|endoftext|>'])),
    json('diffusers/scheduler/scheduler_config.json', SCHEDULER_CONFIG_JSON),
  ];
}

/** Another VAE for the same model (what a fine-tuned VAE file is): every weight moved a little. */
export function tinyVaeVariant(model: TinyModel, seed = 4242): Map<string, Float32Array> {
  const rng = new Rng(seed);
  return new Map(
    [...model.weights.vae].map(([name, w]) => {
      const z = rng.normal(w.length);
      return [name, w.map((v, i) => v * (1 + 0.1 * z[i]))];
    }),
  );
}
