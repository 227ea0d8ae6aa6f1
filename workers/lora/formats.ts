// Reading the layer structure of a LoRA file: each tensor name is split into the layer (module) it
// belongs to and its role there. The trainers' naming schemes, in the order they are tried:
//   kohya-ss sd-scripts and LyCORIS LoCon: <module>.lora_down.weight / .lora_up.weight / .lora_mid.weight / .alpha
//   LyCORIS LoHa:                         <module>.hada_w1_a / hada_w1_b / hada_w2_a / hada_w2_b (/ hada_t1 / hada_t2)
//   LyCORIS LoKr:                         <module>.lokr_w1 or lokr_w1_a / lokr_w1_b, and lokr_w2 or lokr_w2_a / lokr_w2_b (/ lokr_t2)
//   DoRA magnitudes, beside any of these: <module>.dora_scale (LyCORIS), <module>.lora_magnitude_vector (PEFT)
//   PEFT and current diffusers:           <module>.lora_A.weight / .lora_B.weight (optionally .lora_A.<adapter>.weight)
//   older diffusers:                      <module>.lora.down.weight / .lora.up.weight, <module>.lora_linear_layer.down.weight,
//                                         <attn>.processor.to_q_lora.down.weight (attention processors)
//   Mix-of-Show ED-LoRA:                  params.unet.<module>.lora_down.weight (older files: <module>_lora.down.weight),
//                                         params.text_encoder.<module>..., plus params.new_concept_embedding.<token>
// Module names are kept as written; keys.ts maps them to model weights.
import type { TensorInfo } from '../checkpoint/safetensors.ts';

export type LoraFormat = 'kohya' | 'locon' | 'loha' | 'lokr' | 'dora' | 'peft' | 'diffusers-old' | 'edlora';

export type Role =
  | 'down' | 'up' | 'mid' | 'alpha'
  | 'w1a' | 'w1b' | 'w2a' | 'w2b' | 't1' | 't2'
  | 'k1' | 'k1a' | 'k1b' | 'k2' | 'k2a' | 'k2b' | 'kt2'
  | 'magnitude';

export interface ModuleTensors {
  /** The module name as written in the file, e.g. lora_unet_down_blocks_0_resnets_0_conv1. */
  name: string;
  naming: 'kohya' | 'dotted';
  roles: Partial<Record<Role, TensorInfo>>;
  /** Tensors of kinds the studio does not apply (full differences, norms ...), by role name. */
  unsupported: string[];
}

export interface ParsedLora {
  modules: ModuleTensors[];
  /** Tensors that belong to no LoRA layer. */
  strays: string[];
  format: LoraFormat | undefined;
}

interface Rule {
  re: RegExp;
  role: (m: RegExpMatchArray) => Role | string;
  module: (m: RegExpMatchArray) => string;
  supported: boolean;
}

const rule = (re: RegExp, role: (m: RegExpMatchArray) => Role | string, supported = true, module = (m: RegExpMatchArray) => m[1]): Rule => ({ re, role, module, supported });

const RULES: Rule[] = [
  rule(/^(.+)\.lora_(down|up|mid)\.weight$/, (m) => m[2] as Role),
  rule(/^(.+)\.hada_(w1_a|w1_b|w2_a|w2_b|t1|t2)$/, (m) => ({ w1_a: 'w1a', w1_b: 'w1b', w2_a: 'w2a', w2_b: 'w2b', t1: 't1', t2: 't2' })[m[2]] as Role),
  rule(/^(.+)\.lokr_(w1|w1_a|w1_b|w2|w2_a|w2_b|t2)$/, (m) => ({ w1: 'k1', w1_a: 'k1a', w1_b: 'k1b', w2: 'k2', w2_a: 'k2a', w2_b: 'k2b', t2: 'kt2' })[m[2]] as Role),
  rule(/^(.+)\.(?:dora_scale|lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?)$/, () => 'magnitude'),
  rule(/^(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight$/, (m) => (m[2] === 'A' ? 'down' : 'up')),
  rule(/^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/, (m) => m[3] as Role, true, (m) => `${m[1]}.processor.${m[2]}_lora`),
  rule(/^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$/, (m) => m[2] as Role),
  rule(/^(.+)_lora\.(down|up)\.weight$/, (m) => m[2] as Role),
  rule(/^(.+)\.alpha$/, () => 'alpha'),
  rule(/^(.+)\.lokr_t1$/, () => 'LoKr first-factor Tucker core', false),
  rule(/^(.+)\.(diff|diff_b)$/, () => 'full weight difference', false),
  rule(/^(.+)\.(w_norm|b_norm)$/, () => 'norm weights', false),
  rule(/^(.+)\.(lora_embedding_[AB])$/, () => 'embedding LoRA', false),
];

/** Whether a tensor name is a LoRA part in any scheme above (checkpoint detection asks this too). */
export function isLoraTensorName(name: string): boolean {
  return RULES.some((r) => r.re.test(name));
}

export function parseLoraTensors(tensors: Iterable<TensorInfo>): ParsedLora {
  const modules = new Map<string, ModuleTensors>();
  const strays: string[] = [];
  let concepts = false;
  for (const t of tensors) {
    // ED-LoRA concept embeddings are token vectors, read by workers/text/embeddings.ts
    if (/^(?:params\.)?new_concept_embedding\./.test(t.name)) {
      concepts = true;
      continue;
    }
    let matched = false;
    for (const r of RULES) {
      const m = t.name.match(r.re);
      if (!m) continue;
      const name = r.module(m);
      let mod = modules.get(name);
      if (!mod) {
        mod = { name, naming: /^lora_(unet|te\d?)_/.test(name) ? 'kohya' : 'dotted', roles: {}, unsupported: [] };
        modules.set(name, mod);
      }
      const role = r.role(m);
      if (r.supported) mod.roles[role as Role] = t;
      else if (!mod.unsupported.includes(role)) mod.unsupported.push(role);
      matched = true;
      break;
    }
    if (!matched) strays.push(t.name);
  }
  const list = [...modules.values()].filter((m) => Object.keys(m.roles).some((r) => r !== 'alpha') || m.unsupported.length);
  // A module with only an alpha is not a layer: report its tensor.
  for (const m of modules.values()) if (!list.includes(m)) strays.push(m.roles.alpha!.name);
  return { modules: list, strays, format: concepts ? 'edlora' : detectFormat(list) };
}

function detectFormat(modules: ModuleTensors[]): LoraFormat | undefined {
  const has = (f: (m: ModuleTensors) => boolean) => modules.some(f);
  if (has((m) => !!m.roles.w1a)) return 'loha';
  if (has((m) => !!(m.roles.k1 || m.roles.k1a))) return 'lokr';
  if (has((m) => !!m.roles.magnitude)) return 'dora';
  const tensorNames = modules.flatMap((m) => Object.values(m.roles).map((t) => t!.name));
  if (tensorNames.some((n) => /\.lora_down\.weight$/.test(n))) {
    // LoCon: kohya naming plus convolution factors (4-d with a spatial kernel, or a mid tensor)
    const conv = has((m) => !!m.roles.mid || (m.roles.down?.shape.length === 4 && m.roles.down.shape[2] * m.roles.down.shape[3] > 1));
    return conv ? 'locon' : 'kohya';
  }
  if (tensorNames.some((n) => /\.lora_[AB](\.[\w-]+)?\.weight$/.test(n))) return 'peft';
  if (tensorNames.some((n) => /\.(lora|lora_linear_layer)\.(down|up)\.weight$|_lora\.(down|up)\.weight$/.test(n))) return 'diffusers-old';
  return undefined;
}

export interface LoraMetadata {
  baseModel?: string;
  networkModule?: string;
  networkDim?: number;
  networkAlpha?: number;
  outputName?: string;
  title?: string;
  /** Most frequent training tags (ss_tag_frequency summed over datasets), for trigger-word hints. */
  tags: { tag: string; count: number }[];
  /** ss_* and modelspec.* entries, long values cut. */
  raw: Record<string, string>;
}

export function readLoraMetadata(meta: Record<string, string>): LoraMetadata {
  const num = (v: string | undefined) => (v !== undefined && v !== 'None' && Number.isFinite(Number(v)) ? Number(v) : undefined);
  const tags = new Map<string, number>();
  try {
    const freq = meta.ss_tag_frequency ? (JSON.parse(meta.ss_tag_frequency) as Record<string, Record<string, number>>) : {};
    for (const set of Object.values(freq)) {
      if (!set || typeof set !== 'object') continue;
      for (const [tag, n] of Object.entries(set)) if (typeof n === 'number') tags.set(tag.trim(), (tags.get(tag.trim()) ?? 0) + n);
    }
  } catch {
    // a malformed tag table is only a missing hint
  }
  const raw: Record<string, string> = {};
  for (const [k, v] of Object.entries(meta)) {
    if (k.startsWith('ss_') || k.startsWith('modelspec.')) raw[k] = v.length > 300 ? `${v.slice(0, 300)}…` : v;
  }
  return {
    baseModel: meta.ss_base_model_version ?? meta['modelspec.architecture'] ?? meta.ss_sd_model_name,
    networkModule: meta.ss_network_module,
    networkDim: num(meta.ss_network_dim),
    networkAlpha: num(meta.ss_network_alpha),
    outputName: meta.ss_output_name,
    title: meta['modelspec.title'],
    tags: [...tags.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, 20).map(([tag, count]) => ({ tag, count })),
    raw,
  };
}
