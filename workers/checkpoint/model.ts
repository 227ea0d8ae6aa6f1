// Opening an artist's checkpoint: detect what the file is, infer the SD 1.5 config from the tensor
// shapes, and give the engine each weight by its diffusers name, read from the right byte range.
import { MissingTensorError, NonFiniteWeightsError, NotAModelError, ShapeMismatchError, UnsupportedArchitectureError } from '../api/errors.ts';
import { countNonFinite, FLOAT_DTYPES, toFloat32 } from './dtype.ts';
import { CONFIG_METADATA_KEY, SD15_CONFIG, type ModelConfig, type TextEncoderConfig, type UNetConfig, type VaeConfig } from './config.ts';
import {
  clipNameToLdm,
  isVaeAttentionBias,
  isVaeAttentionProjection,
  LDM_CLIP_PREFIX,
  LDM_UNET_PREFIX,
  LDM_VAE_PREFIX,
  unetNameToLdm,
  vaeLegacyDiffusersName,
  vaeNameToLdm,
} from './layout.ts';
import { isLoraTensorName } from '../lora/formats.ts';
import { SafetensorsFile, type TensorInfo } from './safetensors.ts';
import type { ByteSource } from './source.ts';

export type Component = 'unet' | 'textEncoder' | 'vae';
export type KeyLayout = 'single-file' | 'diffusers';

export interface ModelFiles {
  /** One single-file checkpoint ... */
  single?: ByteSource;
  /** ... or the three diffusers folder files. */
  unet?: ByteSource;
  textEncoder?: ByteSource;
  vae?: ByteSource;
}

interface Located {
  file: SafetensorsFile;
  info: TensorInfo;
}

export class ModelCheckpoint {
  private constructor(
    readonly layout: KeyLayout,
    readonly config: ModelConfig,
    private readonly files: Record<Component, SafetensorsFile>,
  ) {}

  static async open(src: ModelFiles): Promise<ModelCheckpoint> {
    if (src.single) {
      const file = await SafetensorsFile.open(src.single);
      classifySingleFile(file);
      const config = inferConfig(file, 'single-file');
      return new ModelCheckpoint('single-file', config, { unet: file, textEncoder: file, vae: file });
    }
    if (!src.unet || !src.textEncoder || !src.vae) {
      throw new NotAModelError('The diffusers folder', 'incomplete', 'It needs unet/, text_encoder/ and vae/ with their .safetensors files.');
    }
    const [unet, textEncoder, vae] = await Promise.all([src.unet, src.textEncoder, src.vae].map((s) => SafetensorsFile.open(s)));
    classifyDiffusers(unet, textEncoder, vae);
    const config = inferConfig({ unet, textEncoder, vae }, 'diffusers');
    return new ModelCheckpoint('diffusers', config, { unet, textEncoder, vae });
  }

  fileOf(component: Component): SafetensorsFile {
    return this.files[component];
  }

  /** Where the weight with this diffusers name lives, or undefined. */
  locate(component: Component, name: string): Located | undefined {
    const file = this.files[component];
    for (const key of this.candidates(component, name)) {
      const info = file.info(key);
      if (info) return { file, info };
    }
    return undefined;
  }

  private candidates(component: Component, name: string): string[] {
    if (this.layout === 'diffusers') {
      const legacy = component === 'vae' ? vaeLegacyDiffusersName(name) : undefined;
      return legacy ? [name, legacy] : [name];
    }
    if (component === 'unet') return [LDM_UNET_PREFIX + unetNameToLdm(name, this.config.unet)];
    if (component === 'vae') return [LDM_VAE_PREFIX + vaeNameToLdm(name, this.config.vae)];
    return clipNameToLdm(name);
  }

  /** Float32 values of a weight, checked against the shape the graph expects. */
  async readFloat32(component: Component, name: string, dims: number[]): Promise<Float32Array> {
    const at = this.locate(component, name);
    if (!at) throw new MissingTensorError(componentLabel(component), name);
    return readChecked(at, name, dims);
  }
}

/** A VAE on its own (sd-vae-ft-mse and the like), in diffusers' layout or the original one, with or without `first_stage_model.`. */
export class VaeFile {
  private constructor(
    private readonly file: SafetensorsFile,
    private readonly keyOf: (name: string) => string[],
    readonly config: VaeConfig,
  ) {}

  get name(): string {
    return this.file.name;
  }

  /** Open it for a model whose VAE has `expected`'s shape; anything else is refused with what it is. */
  static async open(src: ByteSource, expected: VaeConfig): Promise<VaeFile> {
    const file = await SafetensorsFile.open(src);
    const keys = file.keys();
    const name = file.name;
    if (loraLike(keys)) throw new NotAModelError(name, 'a LoRA', 'Add it as a LoRA; a VAE file holds encoder.* and decoder.* weights.');
    if (keys.some((k) => k.startsWith(LDM_UNET_PREFIX) || k.startsWith('down_blocks.'))) {
      throw new NotAModelError(name, 'a whole checkpoint or a UNet, not a VAE', 'Open it as the model; a VAE file holds encoder.* and decoder.* weights only.');
    }
    const prefix = keys.some((k) => k.startsWith(`${LDM_VAE_PREFIX}decoder.`)) ? LDM_VAE_PREFIX : '';
    const diffusers = keys.some((k) => k.startsWith('decoder.up_blocks.'));
    const ldm = keys.some((k) => k.startsWith(`${prefix}decoder.up.`));
    if (!diffusers && !ldm) {
      throw new NotAModelError(name, `not a VAE (first keys: ${keys.slice(0, 3).join(', ') || 'none'})`, 'Choose a VAE .safetensors file such as sd-vae-ft-mse.');
    }
    const config = inferVae((k) => file.info(prefix + k)?.shape, file, !diffusers, expected, prefix);
    const same = config.latentChannels === expected.latentChannels && config.layersPerBlock === expected.layersPerBlock && config.blockOutChannels.join() === expected.blockOutChannels.join();
    if (!same) {
      throw new UnsupportedArchitectureError(name, 'VAE of another shape', `channels [${config.blockOutChannels}] and ${config.latentChannels} latent channels, where the model's VAE has [${expected.blockOutChannels}] and ${expected.latentChannels}`, 'checkpoint');
    }
    const keyOf = diffusers ? (n: string) => [n, vaeLegacyDiffusersName(n) ?? n] : (n: string) => [prefix + vaeNameToLdm(n, expected)];
    return new VaeFile(file, keyOf, { ...config, scalingFactor: expected.scalingFactor, normGroups: expected.normGroups });
  }

  has(name: string): boolean {
    return this.keyOf(name).some((k) => this.file.info(k));
  }

  async readFloat32(name: string, dims: number[]): Promise<Float32Array> {
    const key = this.keyOf(name).find((k) => this.file.info(k));
    if (!key) throw new MissingTensorError('VAE', name);
    return readChecked({ file: this.file, info: this.file.info(key)! }, name, dims);
  }
}

/** A located weight's float32 values, checked against the shape the graph expects and for NaN and infinity. */
async function readChecked(at: Located, name: string, dims: number[]): Promise<Float32Array> {
  const { info, file } = at;
  const want = dims.reduce((a, b) => a * b, 1);
  const got = info.shape.reduce((a, b) => a * b, 1);
  const sameShape = info.shape.join(',') === dims.join(',');
  // 1x1 convolutions and linear layers hold the same numbers; layouts differ only in the shape
  const reshapeOk = want === got && (isVaeAttentionProjection(name) || isVaeAttentionBias(name) || /\.proj_(in|out)\.weight$/.test(name));
  if (!sameShape && !reshapeOk) throw new ShapeMismatchError(info.name, dims, info.shape);
  if (!FLOAT_DTYPES.has(info.dtype)) throw new ShapeMismatchError(`${info.name} (dtype ${info.dtype})`, dims, info.shape);
  const values = toFloat32(await file.bytes(info.name), info.dtype);
  const bad = countNonFinite(values);
  if (bad) throw new NonFiniteWeightsError(file.name, info.name, bad);
  return values;
}

function componentLabel(c: Component): string {
  return c === 'unet' ? 'UNet' : c === 'textEncoder' ? 'text encoder' : 'VAE';
}

function loraLike(keys: string[]): boolean {
  return keys.length > 0 && keys.filter(isLoraTensorName).length >= keys.length / 2;
}

function classifySingleFile(file: SafetensorsFile): void {
  const keys = file.keys();
  const name = file.name;
  if (loraLike(keys)) throw new NotAModelError(name, 'a LoRA', 'Add it to the generation as a LoRA, and choose a full checkpoint as the model.');
  if (keys.some((k) => k.startsWith('conditioner.embedders.')) || keys.some((k) => k.startsWith(`${LDM_UNET_PREFIX}label_emb.`))) {
    throw new UnsupportedArchitectureError(name, 'SDXL', 'it has conditioner.embedders / label_emb tensors');
  }
  if (keys.some((k) => k.startsWith('cond_stage_model.model.'))) {
    throw new UnsupportedArchitectureError(name, 'Stable Diffusion 2.x', 'its text encoder is OpenCLIP (cond_stage_model.model.*)');
  }
  const hasUnet = keys.some((k) => k.startsWith(LDM_UNET_PREFIX));
  if (!hasUnet) {
    if (keys.some((k) => k.startsWith('decoder.') || k.startsWith(LDM_VAE_PREFIX))) {
      throw new NotAModelError(name, 'a VAE alone', 'Choose a full Stable Diffusion 1.5 checkpoint.');
    }
    if (keys.some((k) => k.startsWith('down_blocks.')) && keys.some((k) => k.startsWith('conv_in.'))) {
      throw new NotAModelError(name, 'a diffusers UNet file alone', 'Open the whole diffusers folder (unet/, text_encoder/, vae/).');
    }
    const sample = keys.slice(0, 3).join(', ');
    throw new NotAModelError(name, `not recognised (first keys: ${sample || 'none'})`, 'Choose a Stable Diffusion 1.5 .safetensors checkpoint.');
  }
  if (!keys.some((k) => k.startsWith(LDM_CLIP_PREFIX))) {
    throw new NotAModelError(name, 'a UNet without its text encoder', 'Choose a full checkpoint that includes cond_stage_model.*.');
  }
  if (!keys.some((k) => k.startsWith(`${LDM_VAE_PREFIX}decoder.`))) {
    throw new NotAModelError(name, 'a checkpoint without its VAE', 'Choose a full checkpoint that includes first_stage_model.*.');
  }
}

function classifyDiffusers(unet: SafetensorsFile, te: SafetensorsFile, vae: SafetensorsFile): void {
  if (loraLike(unet.keys())) throw new NotAModelError(unet.name, 'a LoRA', 'Add it as a LoRA, not as the model.');
  if (unet.keys().some((k) => k.startsWith('add_embedding.'))) throw new UnsupportedArchitectureError(unet.name, 'SDXL', 'its UNet has add_embedding');
  if (!unet.info('conv_in.weight')) throw new NotAModelError(unet.name, 'not a diffusers UNet', 'unet/ must hold diffusion_pytorch_model.safetensors.');
  if (!te.keys().some((k) => k.startsWith('text_model.'))) throw new NotAModelError(te.name, 'not a CLIP text encoder', 'text_encoder/ must hold model.safetensors.');
  if (!vae.info('decoder.conv_in.weight')) throw new NotAModelError(vae.name, 'not a VAE', 'vae/ must hold diffusion_pytorch_model.safetensors.');
}

type ShapeOf = (key: string) => number[] | undefined;

function inferConfig(src: SafetensorsFile | Record<Component, SafetensorsFile>, layout: KeyLayout): ModelConfig {
  const files = src instanceof SafetensorsFile ? { unet: src, textEncoder: src, vae: src } : src;
  const meta = files.unet.metadata[CONFIG_METADATA_KEY];
  const declared: Partial<ModelConfig> = meta ? safeJson(meta) : {};
  const shapeIn = (f: SafetensorsFile, prefix: string): ShapeOf => (k) => f.info(prefix + k)?.shape;
  const single = layout === 'single-file';
  const unet = inferUnet(shapeIn(files.unet, single ? LDM_UNET_PREFIX : ''), files.unet, single, declared.unet);
  const te = inferTextEncoder(files.textEncoder, single, declared.textEncoder);
  const vae = inferVae(shapeIn(files.vae, single ? LDM_VAE_PREFIX : ''), files.vae, single, declared.vae);
  return { unet, textEncoder: te, vae };
}

function safeJson(s: string): Partial<ModelConfig> {
  try {
    const v = JSON.parse(s);
    return typeof v === 'object' && v ? v : {};
  } catch {
    return {};
  }
}

function countIndices(keys: string[], re: RegExp): number {
  const seen = new Set<number>();
  for (const k of keys) {
    const m = k.match(re);
    if (m) seen.add(+m[1]);
  }
  return seen.size;
}

function inferUnet(shape: ShapeOf, file: SafetensorsFile, single: boolean, declared?: Partial<UNetConfig>): UNetConfig {
  const keys = single ? file.keys().filter((k) => k.startsWith(LDM_UNET_PREFIX)).map((k) => k.slice(LDM_UNET_PREFIX.length)) : file.keys();
  const convIn = shape(single ? 'input_blocks.0.0.weight' : 'conv_in.weight');
  if (!convIn) throw new MissingTensorError('UNet', single ? 'input_blocks.0.0.weight' : 'conv_in.weight');
  const levels = countIndices(keys, single ? /^input_blocks\.(\d+)\.0\.op\.weight$/ : /^down_blocks\.(\d+)\.resnets\.0\./) + (single ? 1 : 0);
  const nInput = countIndices(keys, /^input_blocks\.(\d+)\./);
  const layersPerBlock = single ? (nInput - 1 - (levels - 1)) / levels : countIndices(keys, /^down_blocks\.0\.resnets\.(\d+)\./);
  const per = layersPerBlock + 1;
  const blockOutChannels: number[] = [];
  const attention: boolean[] = [];
  for (let l = 0; l < levels; l++) {
    const res = single ? `input_blocks.${1 + l * per}.0.out_layers.3.weight` : `down_blocks.${l}.resnets.0.conv2.weight`;
    const s = shape(res);
    if (!s) throw new MissingTensorError('UNet', res);
    blockOutChannels.push(s[0]);
    const attnKey = single ? `input_blocks.${1 + l * per}.1.proj_in.weight` : `down_blocks.${l}.attentions.0.proj_in.weight`;
    attention.push(!!shape(attnKey));
  }
  const firstAttn = attention.indexOf(true);
  const toK = single
    ? shape(`input_blocks.${1 + firstAttn * per}.1.transformer_blocks.0.attn2.to_k.weight`)
    : shape(`down_blocks.${firstAttn}.attentions.0.transformer_blocks.0.attn2.to_k.weight`);
  const crossAttentionDim = toK?.[1] ?? 768;
  if (crossAttentionDim !== 768 && !declared) {
    throw new UnsupportedArchitectureError(file.name, crossAttentionDim === 1024 ? 'Stable Diffusion 2.x' : 'non-SD 1.5', `its cross-attention width is ${crossAttentionDim}, not 768`);
  }
  const depthRe = single
    ? new RegExp(`^input_blocks\\.${1 + firstAttn * per}\\.1\\.transformer_blocks\\.(\\d+)\\.`)
    : new RegExp(`^down_blocks\\.${firstAttn}\\.attentions\\.0\\.transformer_blocks\\.(\\d+)\\.`);
  return {
    inChannels: convIn[1],
    outChannels: shape(single ? 'out.2.weight' : 'conv_out.weight')?.[0] ?? 4,
    blockOutChannels,
    attention,
    layersPerBlock,
    heads: declared?.heads ?? SD15_CONFIG.unet.heads,
    transformerDepth: countIndices(keys, depthRe),
    crossAttentionDim,
    normGroups: declared?.normGroups ?? SD15_CONFIG.unet.normGroups,
  };
}

function inferTextEncoder(file: SafetensorsFile, single: boolean, declared?: Partial<TextEncoderConfig>): TextEncoderConfig {
  const find = (inner: string) => {
    for (const k of single ? clipNameToLdm(`text_model.${inner}`) : [`text_model.${inner}`]) {
      const i = file.info(k);
      if (i) return i.shape;
    }
    return undefined;
  };
  const tok = find('embeddings.token_embedding.weight');
  const pos = find('embeddings.position_embedding.weight');
  const fc1 = find('encoder.layers.0.mlp.fc1.weight');
  if (!tok || !pos || !fc1) throw new MissingTensorError('text encoder', 'text_model.embeddings.token_embedding.weight');
  const layers = countIndices(file.keys(), /encoder\.layers\.(\d+)\./);
  const hidden = tok[1];
  if (hidden !== 768 && !declared) {
    throw new UnsupportedArchitectureError(file.name, 'non-SD 1.5', `its text encoder width is ${hidden}, not CLIP ViT-L/14's 768`);
  }
  return { vocabSize: tok[0], hidden, layers, heads: declared?.heads ?? hidden / 64, intermediate: fc1[0], maxPositions: pos[0] };
}

function inferVae(shape: ShapeOf, file: SafetensorsFile, single: boolean, declared?: Partial<VaeConfig>, prefix = LDM_VAE_PREFIX): VaeConfig {
  const keys = single ? file.keys().filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length)) : file.keys();
  const levels = countIndices(keys, single ? /^decoder\.up\.(\d+)\./ : /^decoder\.up_blocks\.(\d+)\./);
  const blockOutChannels: number[] = [];
  for (let i = 0; i < levels; i++) {
    // diffusers order: level 0 is the highest resolution = LDM up.0
    const key = single ? `decoder.up.${i}.block.0.conv2.weight` : `decoder.up_blocks.${levels - 1 - i}.resnets.0.conv2.weight`;
    const s = shape(key);
    if (!s) throw new MissingTensorError('VAE', key);
    blockOutChannels.push(s[0]);
  }
  const resnets = countIndices(keys, single ? /^decoder\.up\.0\.block\.(\d+)\./ : /^decoder\.up_blocks\.0\.resnets\.(\d+)\./);
  const latent = shape(single ? 'post_quant_conv.weight' : 'post_quant_conv.weight');
  return {
    latentChannels: latent?.[0] ?? 4,
    blockOutChannels,
    layersPerBlock: resnets - 1,
    normGroups: declared?.normGroups ?? SD15_CONFIG.vae.normGroups,
    scalingFactor: declared?.scalingFactor ?? SD15_CONFIG.vae.scalingFactor,
  };
}
