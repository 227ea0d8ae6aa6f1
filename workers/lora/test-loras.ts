// Small LoRAs for the tiny test model, one per file format artists meet, with seeded random factors
// and the key names and tensor layouts each trainer writes. Each file comes with the weight deltas
// it means (at multiplier 1), computed in float64 straight from its raw factors by the reference
// formulas, so tests can check the loader and the merge against them.
import { floatsToHalf, halvesToFloat, type StDtype } from '../checkpoint/dtype.ts';
import { encodeSafetensors, type TensorToWrite } from '../checkpoint/safetensors.ts';
import type { WeightSpec } from '../graph/builder.ts';
import { Rng } from '../engine/random.ts';
import type { TinyModel } from '../engine/test-model.ts';
import { cpDeltaReference, doraReference, kronReference, mergeReference, tuckerReference } from '../reference/lora.ts';
import { crossAttentionLayers } from '../graph/cross-kv.ts';

export interface TestLora {
  file: string;
  parts: Uint8Array[];
  /** "component:weight" -> delta at multiplier 1, float64. */
  deltas: Map<string, Float64Array>;
}

type Naming = 'kohya' | 'peft' | 'diffusers-old' | 'edlora';

interface Plan {
  file: string;
  seed: number;
  dtype: StDtype;
  naming: Naming;
  rank: number;
  alpha?: number;
  /** Which weights it trains. */
  select: (component: 'unet' | 'te', name: string, dims: number[]) => boolean;
  kind?: (name: string, dims: number[]) => Kind;
  /** DoRA: each layer's magnitude axis (a dora_scale per output or per input channel). */
  dora?: (name: string) => 'out' | 'in';
  metadata?: Record<string, string>;
}

/** lokr: w1 whole, w2 = w2_a @ w2_b; lokr-both: w1 = w1_a @ w1_b too; lokr-full: both whole (scale 1
 * whatever the alpha); lokr-tucker: w2 from the Tucker core lokr_t2. */
type Kind = 'lora' | 'cp' | 'loha' | 'loha-tucker' | 'lokr' | 'lokr-both' | 'lokr-full' | 'lokr-tucker';

const isAttention = (n: string) => /\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out)\.weight$/.test(n);
const isClip = (n: string) => /\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$/.test(n);
const isConv = (dims: number[]) => dims.length === 4;
// the modules latent-consistency's LCM-LoRA trainers target (diffusers' train_lcm_distill_lora_sd*.py)
const isLcmTarget = (n: string) => isAttention(n) || /\.(resnets\.\d\.(conv[12]|conv_shortcut|time_emb_proj)|downsamplers\.0\.conv|upsamplers\.0\.conv)\.weight$/.test(n);

function kohyaMeta(dim: number, alpha: number, tags: Record<string, number>): Record<string, string> {
  return {
    ss_base_model_version: 'sd_v1',
    ss_network_module: 'networks.lora',
    ss_network_dim: String(dim),
    ss_network_alpha: String(alpha),
    ss_output_name: 'tiny-test-lora',
    ss_tag_frequency: JSON.stringify({ '10_concept': tags }),
  };
}

const PLANS: Plan[] = [
  {
    file: 'kohya', seed: 11, dtype: 'F16', naming: 'kohya', rank: 4, alpha: 2,
    select: (c, n) => (c === 'unet' ? isAttention(n) : isClip(n)),
    metadata: kohyaMeta(4, 2, { 'red fox': 12, 'forest': 7, 'portrait': 3 }),
  },
  {
    file: 'locon', seed: 12, dtype: 'F32', naming: 'kohya', rank: 4, alpha: 4,
    select: (c, n, d) => c === 'unet' && (isAttention(n) || (isConv(d) && /(resnets\.\d\.conv[12]|conv_shortcut|downsamplers\.0\.conv)\.weight$/.test(n))),
    kind: (n, d) => (isConv(d) && d[2] === 3 && /up_blocks\.\d\.resnets\.0\.conv1/.test(n) ? 'cp' : 'lora'),
    metadata: { ...kohyaMeta(4, 4, { 'stone tower': 5 }), ss_network_module: 'lycoris.kohya', ss_network_args: '{"algo": "locon", "use_tucker": true}' },
  },
  {
    file: 'loha', seed: 13, dtype: 'F32', naming: 'kohya', rank: 3, alpha: 1.5,
    select: (c, n, d) => c === 'unet' && (isAttention(n) || (isConv(d) && /resnets\.\d\.conv[12]\.weight$/.test(n))),
    kind: (n, d) => (isConv(d) && d[2] === 3 ? (/down_blocks\.0\.resnets\.0\.conv1/.test(n) ? 'loha-tucker' : 'loha') : 'loha'),
    metadata: { ...kohyaMeta(3, 1.5, { 'watercolor': 9 }), ss_network_module: 'lycoris.kohya', ss_network_args: '{"algo": "loha"}' },
  },
  { file: 'peft', seed: 14, dtype: 'F32', naming: 'peft', rank: 4, select: (c, n) => (c === 'unet' ? isAttention(n) : isClip(n)) },
  { file: 'diffusers-old', seed: 15, dtype: 'F16', naming: 'diffusers-old', rank: 4, select: (c, n) => (c === 'unet' ? isAttention(n) : isClip(n)) },
  {
    file: 'kohya-2', seed: 21, dtype: 'BF16', naming: 'kohya', rank: 2, alpha: 1,
    select: (c, n) => c === 'unet' && isAttention(n) && /^up_blocks/.test(n),
    metadata: kohyaMeta(2, 1, { 'blue sky': 4 }),
  },
  {
    file: 'kohya-3', seed: 22, dtype: 'F16', naming: 'kohya', rank: 8, alpha: 8,
    select: (c, n) => (c === 'unet' ? isAttention(n) && /^(down_blocks|mid_block)/.test(n) : isClip(n)),
    metadata: kohyaMeta(8, 8, { 'green field': 6 }),
  },
  {
    file: 'kohya-4', seed: 23, dtype: 'F32', naming: 'kohya', rank: 4,
    select: (c, n) => c === 'unet' && /attn2\.(to_k|to_v)\.weight$/.test(n),
    metadata: kohyaMeta(4, 4, { 'old castle': 2 }),
  },
  // LyCORIS LoKr (kohya naming): every form of both Kronecker factors, on linear layers and convolutions
  {
    file: 'lokr', seed: 16, dtype: 'F32', naming: 'kohya', rank: 2, alpha: 1,
    select: (c, n, d) => c === 'unet' && (isAttention(n) || (isConv(d) && /resnets\.0\.conv[12]\.weight$/.test(n))),
    kind: (n) =>
      /attn1\.to_q\.|up_blocks\.0\.resnets\.0\.conv2/.test(n) ? 'lokr-full'
      : /attn1\.to_k\.|down_blocks\.1\.resnets\.0\.conv1/.test(n) ? 'lokr-both'
      : /down_blocks\.0\.resnets\.0\.conv1/.test(n) ? 'lokr-tucker'
      : 'lokr',
    metadata: { ...kohyaMeta(2, 1, { 'glass bottle': 3 }), ss_network_module: 'lycoris.kohya', ss_network_args: '{"algo": "lokr", "factor": -1, "use_tucker": true}' },
  },
  // DoRA (LyCORIS LoCon with weight decomposition): a dora_scale per output channel, and per input
  // channel (older LyCORIS files) on the cross-attention layers
  {
    file: 'dora', seed: 17, dtype: 'F16', naming: 'kohya', rank: 4, alpha: 2,
    select: (c, n, d) => (c === 'unet' ? isAttention(n) || (isConv(d) && /resnets\.0\.conv1\.weight$/.test(n)) : isClip(n)),
    dora: (n) => (/attn2\.|up_blocks\.0\.resnets\.0\.conv1/.test(n) ? 'in' : 'out'),
    metadata: { ...kohyaMeta(4, 2, { 'paper lantern': 4 }), ss_network_module: 'lycoris.kohya', ss_network_args: '{"algo": "locon", "dora_wd": true}' },
  },
  // an LCM-LoRA as latent-consistency/lcm-lora-sdv1-5 comes: kohya names over diffusers module paths,
  // the UNet's attention, feed-forward, projection, resnet (convolutions, time embedding) and
  // resampler layers, no text encoder, no metadata
  { file: 'lcm-lora', seed: 18, dtype: 'F16', naming: 'kohya', rank: 4, alpha: 8, select: (c, n) => c === 'unet' && isLcmTarget(n) },
  // Mix-of-Show's ED-LoRA (LoRA-Composer's concepts): the LoRA of every attention, feed-forward and
  // projection layer and of the text encoder, no alpha (scale 1), and the concept tokens <tiny1>
  // <tiny2> with one embedding per cross-attention layer; the .pth's tensors, keys joined with '.'
  { file: 'edlora', seed: 31, dtype: 'F32', naming: 'edlora', rank: 4, select: (c, n) => (c === 'unet' ? isAttention(n) : isClip(n)) },
];

/** The ED-LoRA test file's concept tokens. */
export const TEST_CONCEPT_TOKENS = ['<tiny1>', '<tiny2>'];

/** Values as stored: rounded through the file's dtype. */
function stored(v: Float32Array, dtype: StDtype): Float32Array {
  if (dtype === 'F32') return v;
  if (dtype === 'F16') return halvesToFloat(floatsToHalf(v));
  const f = new Float32Array(v);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < u.length; i++) u[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) & 0xffff0000; // round to nearest even
  return f;
}

function bytesOf(v: Float32Array, dtype: StDtype): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (dtype === 'F16') return new Uint8Array(floatsToHalf(v).buffer);
  // BF16: the top half of each float32, already rounded by stored()
  const out = Uint16Array.from(new Uint32Array(Float32Array.from(v).buffer), (u) => u >>> 16);
  return new Uint8Array(out.buffer);
}

function moduleName(naming: Naming, component: 'unet' | 'te', path: string): string {
  if (naming === 'kohya') return `lora_${component}_${path.replace(/\./g, '_')}`;
  const prefix = component === 'unet' ? 'unet' : 'text_encoder';
  return naming === 'edlora' ? `params.${prefix}.${path}` : `${prefix}.${path}`;
}

function makeLora(plan: Plan, model: TinyModel): TestLora {
  const rng = new Rng(plan.seed);
  const tensors: TensorToWrite[] = [];
  const deltas = new Map<string, Float64Array>();
  const factor = (shape: number[], s: number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return stored(rng.normal(n).map((x) => x * s), plan.dtype);
  };
  const put = (name: string, shape: number[], v: Float32Array) => tensors.push({ name, dtype: plan.dtype, shape, data: bytesOf(v, plan.dtype) });
  const weights: [('unet' | 'te'), WeightSpec][] = [
    ...model.specs.unet.map((s) => ['unet', s] as ['unet', WeightSpec]),
    ...model.specs.textEncoder.map((s) => ['te', s] as ['te', WeightSpec]),
  ];
  for (const [component, spec] of weights) {
    const d = spec.dims;
    if (d.length < 2 || !plan.select(component, spec.name, d)) continue;
    const path = spec.name.slice(0, -'.weight'.length);
    const rows = d[0];
    const inC = d[1];
    const k = d.length === 4 ? d[2] * d[3] : 1;
    const cols = inC * k;
    const r = plan.rank;
    const scale = plan.alpha === undefined ? 1 : plan.alpha / r;
    const kind = plan.kind?.(spec.name, d) ?? 'lora';
    const mod = moduleName(plan.naming, component, path);
    const key = `${component === 'unet' ? 'unet' : 'textEncoder'}:${spec.name}`;
    const conv4 = (a: number, b: number) => (d.length === 4 ? [a, b, 1, 1] : [a, b]);
    let delta: Float64Array;
    if (kind === 'lora') {
      const up = factor([rows, r], 1 / Math.sqrt(r));
      const down = factor([r, cols], 1 / Math.sqrt(cols));
      delta = mergeReference(new Float64Array(rows * cols), rows, cols, [{ up, down, rank: r, scale }]);
      const downShape = d.length === 4 ? [r, inC, d[2], d[3]] : [r, cols];
      if (plan.naming === 'kohya' || plan.naming === 'edlora') {
        put(`${mod}.lora_down.weight`, downShape, down);
        put(`${mod}.lora_up.weight`, conv4(rows, r), up);
      } else if (plan.naming === 'peft') {
        put(`${mod}.lora_A.weight`, downShape, down);
        put(`${mod}.lora_B.weight`, conv4(rows, r), up);
      } else {
        const m = path.match(/^(.*\.attn[12])\.(to_q|to_k|to_v|to_out\.0)$/);
        if (m && /attn1/.test(m[1])) {
          const proc = `unet.${m[1]}.processor.${m[2] === 'to_out.0' ? 'to_out' : m[2]}_lora`;
          put(`${proc}.down.weight`, downShape, down);
          put(`${proc}.up.weight`, conv4(rows, r), up);
        } else {
          const mid = component === 'te' ? 'lora_linear_layer' : 'lora';
          put(`${mod}.${mid}.down.weight`, downShape, down);
          put(`${mod}.${mid}.up.weight`, conv4(rows, r), up);
        }
      }
    } else if (kind.startsWith('lokr')) {
      delta = lokrLayer(kind, mod, d, r, plan.alpha, factor, put);
    } else if (kind === 'cp') {
      const up = factor([rows, r], 1 / Math.sqrt(r));
      const mid = factor([r, r, d[2], d[3]], 1 / Math.sqrt(r * k));
      const down = factor([r, inC], 1 / Math.sqrt(inC));
      const cp = cpDeltaReference(up, mid, down, rows, inC, r, d[2], d[3]);
      delta = cp.map((x) => x * scale);
      put(`${mod}.lora_down.weight`, [r, inC, 1, 1], down);
      put(`${mod}.lora_mid.weight`, [r, r, d[2], d[3]], mid);
      put(`${mod}.lora_up.weight`, [rows, r, 1, 1], up);
    } else {
      const pair = (i: 1 | 2) => {
        if (kind === 'loha-tucker') {
          const t = factor([r, r, d[2], d[3]], 1 / Math.sqrt(r * k));
          const a = factor([r, rows], 1 / Math.sqrt(r));
          const b = factor([r, inC], 1 / Math.sqrt(inC));
          put(`${mod}.hada_t${i}`, [r, r, d[2], d[3]], t);
          put(`${mod}.hada_w${i}_a`, [r, rows], a);
          put(`${mod}.hada_w${i}_b`, [r, inC], b);
          return tuckerReference(t, a, b, rows, inC, r, d[2], d[3]);
        }
        const a = factor([rows, r], 1 / Math.sqrt(r));
        const b = factor([r, cols], 1 / Math.sqrt(cols));
        put(`${mod}.hada_w${i}_a`, [rows, r], a);
        put(`${mod}.hada_w${i}_b`, [r, cols], b);
        return mergeReference(new Float64Array(rows * cols), rows, cols, [{ up: a, down: b, rank: r, scale: 1 }]);
      };
      const w1 = pair(1);
      const w2 = pair(2);
      delta = w1.map((x, i) => x * w2[i] * scale);
    }
    if (plan.dora) delta = doraLayer(plan.dora(spec.name), mod, d, (component === 'unet' ? model.weights.unet : model.weights.textEncoder).get(spec.name)!, delta, rng, plan.dtype, put);
    if (plan.alpha !== undefined && plan.naming === 'kohya') tensors.push({ name: `${mod}.alpha`, dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([plan.alpha]).buffer) });
    deltas.set(key, delta);
  }
  if (plan.naming === 'edlora') {
    const layers = crossAttentionLayers(model.config.unet).length;
    const hidden = model.config.textEncoder.hidden;
    for (const name of TEST_CONCEPT_TOKENS) put(`params.new_concept_embedding.${name}`, [layers, hidden], factor([layers, hidden], 0.5));
  }
  return { file: `loras/${plan.file}.safetensors`, parts: encodeSafetensors(tensors, plan.metadata), deltas };
}

type Put = (name: string, shape: number[], v: Float32Array) => void;
type Factor = (shape: number[], s: number) => Float32Array;

/** Splits n into (m, n / m), m the largest divisor not above the square root (LyCORIS's
 * factorization with factor -1 picks such a pair); the smaller side goes to w1. */
function split(n: number): [number, number] {
  let m = Math.floor(Math.sqrt(n));
  while (n % m) m--;
  return [m, n / m];
}

/** A LoKr layer's tensors and its delta at multiplier 1: kron(w1, w2) x (alpha / rank when a factor
 * is factorised, else 1), from the raw factors in float64. */
function lokrLayer(kind: Kind, mod: string, d: number[], r: number, alpha: number | undefined, factor: Factor, put: Put): Float64Array {
  const [a, b] = split(d[0]);
  const [c, dd] = split(d[1]);
  const spatial = d.slice(2);
  const k = spatial.reduce((x, y) => x * y, 1);
  let w1: ArrayLike<number>;
  if (kind === 'lokr-both') {
    const w1a = factor([a, r], 1 / Math.sqrt(r));
    const w1b = factor([r, c], 1 / Math.sqrt(c));
    put(`${mod}.lokr_w1_a`, [a, r], w1a);
    put(`${mod}.lokr_w1_b`, [r, c], w1b);
    w1 = mergeReference(new Float64Array(a * c), a, c, [{ up: w1a, down: w1b, rank: r, scale: 1 }]);
  } else {
    w1 = factor([a, c], 1 / Math.sqrt(c));
    put(`${mod}.lokr_w1`, [a, c], w1 as Float32Array);
  }
  let w2: ArrayLike<number>;
  if (kind === 'lokr-full') {
    w2 = factor([b, dd * k], 1 / Math.sqrt(dd * k));
    put(`${mod}.lokr_w2`, [b, dd, ...spatial], w2 as Float32Array);
  } else if (kind === 'lokr-tucker') {
    const t = factor([r, r, ...spatial], 1 / Math.sqrt(r * k));
    const wa = factor([r, b], 1 / Math.sqrt(r));
    const wb = factor([r, dd], 1 / Math.sqrt(dd));
    put(`${mod}.lokr_t2`, [r, r, ...spatial], t);
    put(`${mod}.lokr_w2_a`, [r, b], wa);
    put(`${mod}.lokr_w2_b`, [r, dd], wb);
    w2 = tuckerReference(t, wa, wb, b, dd, r, spatial[0], spatial[1]);
  } else {
    // the LyCORIS module's layout: w2_b [rank, d * kh * kw] for a convolution too
    const wa = factor([b, r], 1 / Math.sqrt(r));
    const wb = factor([r, dd * k], 1 / Math.sqrt(dd * k));
    put(`${mod}.lokr_w2_a`, [b, r], wa);
    put(`${mod}.lokr_w2_b`, [r, dd * k], wb);
    w2 = mergeReference(new Float64Array(b * dd * k), b, dd * k, [{ up: wa, down: wb, rank: r, scale: 1 }]);
  }
  const scale = kind === 'lokr-full' || alpha === undefined ? 1 : alpha / r;
  return kronReference(w1, a, c, w2, b, dd * k, k).map((x) => x * scale);
}

/** A DoRA magnitude for a layer (its channels' norms after the LoRA, perturbed) and the layer's
 * change at multiplier 1 against the model's base weight, in float64. */
function doraLayer(axis: 'out' | 'in', mod: string, d: number[], base: Float32Array, delta: Float64Array, rng: Rng, dtype: StDtype, put: Put): Float64Array {
  const rows = d[0];
  const cols = delta.length / rows;
  const k = cols / d[1];
  const perInput = axis === 'in';
  const norms = new Float64Array(perInput ? d[1] : rows);
  for (let i = 0; i < delta.length; i++) norms[perInput ? Math.floor((i % cols) / k) : Math.floor(i / cols)] += (base[i] + delta[i]) ** 2;
  const noise = rng.normal(norms.length);
  const magnitude = stored(Float32Array.from(norms, (n, i) => Math.sqrt(n) * (1 + 0.2 * noise[i])), dtype);
  const unit = d.slice(2).map(() => 1);
  put(`${mod}.dora_scale`, perInput ? [1, d[1], ...unit] : [rows, 1, ...unit], magnitude);
  return doraReference(base, delta, rows, cols, 1, magnitude, perInput, k);
}

export const TEST_LORA_NAMES = PLANS.map((p) => p.file);

export function tinyLoras(model: TinyModel): TestLora[] {
  return PLANS.map((p) => makeLora(p, model));
}

/** The tiny model's textual inversion: two vectors, used in prompts as "tiny-ti". */
export function tinyTextualInversion(model: TinyModel): { file: string; parts: Uint8Array[]; vectors: Float32Array } {
  const vectors = new Rng(41).normal(2 * model.config.textEncoder.hidden).map((x) => 0.5 * x);
  const data = new Uint8Array(vectors.buffer.slice(0));
  return { file: 'embeddings/tiny-ti.safetensors', parts: encodeSafetensors([{ name: 'emb_params', dtype: 'F32', shape: [2, model.config.textEncoder.hidden], data }], { 'lorastudio.note': 'tiny test embedding' }), vectors };
}
