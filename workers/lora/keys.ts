// Which model weight a LoRA layer changes. Every linear and convolution weight of the UNet and the
// text encoder is listed under each spelling trainers use for it; a LoRA layer's name is looked up
// as it is, so no guessing at underscores is needed.
import type { ModelConfig } from '../checkpoint/config.ts';
import { unetNameToLdm } from '../checkpoint/layout.ts';
import { graphSpecs } from '../graph/specs.ts';

export type LoraComponent = 'unet' | 'textEncoder';

export interface LoraTarget {
  component: LoraComponent;
  /** The weight's diffusers name, e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight */
  weight: string;
  dims: number[];
  /** The weight as a matrix: [out, in * kh * kw]. */
  rows: number;
  cols: number;
}

const underscored = (path: string) => path.replace(/\./g, '_');

/** Keys: `lora_unet_*` / `lora_te_*` (kohya, LyCORIS; diffusers and LDM module paths) and
 * `unet:<path>` / `te:<path>` (PEFT and diffusers files, after their prefix is removed). */
export function loraTargetTable(config: ModelConfig): Map<string, LoraTarget> {
  const specs = graphSpecs(config);
  const table = new Map<string, LoraTarget>();
  const add = (component: LoraComponent, weight: string, dims: number[]) => {
    if (dims.length < 2 || !weight.endsWith('.weight') || /embedding\.weight$/.test(weight)) return;
    const path = weight.slice(0, -'.weight'.length);
    const target = { component, weight, dims, rows: dims[0], cols: dims.slice(1).reduce((a, b) => a * b, 1) };
    if (component === 'unet') {
      table.set(`lora_unet_${underscored(path)}`, target);
      table.set(`lora_unet_${underscored(unetNameToLdm(weight, config.unet).slice(0, -'.weight'.length))}`, target);
      table.set(`unet:${path}`, target);
    } else {
      table.set(`lora_te_${underscored(path)}`, target);
      table.set(`te:${path}`, target);
    }
  };
  for (const s of specs.unet) add('unet', s.name, s.dims);
  for (const s of specs.textEncoder) add('textEncoder', s.name, s.dims);
  return table;
}

/** The table key of a dotted (PEFT / diffusers) module path such as `unet.down_blocks.0...to_q`. */
export function dottedModuleKey(module: string): string {
  let m = module.replace(/^base_model\.model\./, '').replace(/^params\./, '');
  // attention processors of older diffusers: ...attn1.processor.to_q_lora -> ...attn1.to_q
  m = m.replace(/\.processor\.(to_q|to_k|to_v)_lora$/, '.$1').replace(/\.processor\.to_out_lora$/, '.to_out.0');
  if (m.startsWith('unet.')) return `unet:${m.slice(5)}`;
  if (m.startsWith('text_encoder.')) return `te:${m.slice(13)}`;
  if (m.startsWith('text_model.')) return `te:${m}`;
  return `unet:${m}`;
}

/** Names only other architectures have; found in a LoRA they identify it before any shape check. */
export function foreignArchitecture(keys: string[]): { found: string; evidence: string } | undefined {
  const sdxl = keys.find((k) => /^lora_te[12]_|^text_encoder_2\.|^lora_unet_(input|output|middle)_blocks?_\d+_1_transformer_blocks_[1-9]_|^lora_unet_label_emb/.test(k));
  if (sdxl) return { found: 'SDXL', evidence: `it has the key "${sdxl}"` };
  return undefined;
}

/** Recognise another architecture from the width of a mismatching layer. */
export function architectureFromWidth(target: LoraTarget, inFeatures: number): string | undefined {
  if (/attn2\.to_[kv]\.weight$/.test(target.weight)) {
    if (inFeatures === 1024) return 'SD 2.x';
    if (inFeatures === 2048) return 'SDXL';
  }
  if (target.component === 'textEncoder') {
    if (inFeatures === 1024) return 'SD 2.x';
    if (inFeatures === 1280) return 'SDXL';
  }
  return undefined;
}
