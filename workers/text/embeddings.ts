// Token embeddings that files add to the text encoder's vocabulary:
// - textual inversion (A1111, kohya, diffusers): one name, n vectors that replace it in a prompt,
//   the same for every layer. Tensor names: `emb_params` (kohya/A1111 .safetensors),
//   `string_to_param.*` (A1111 .pt), `clip_l` (embeddings made for several text encoders), or a single
//   tensor named by its token (diffusers' learned_embeds). The prompt uses the file's name.
// - ED-LoRA concepts (Mix-of-Show, used by LoRA-Composer): `new_concept_embedding.<name1>` [L, hidden]
//   per concept token, one vector for each of the UNet's L cross-attention layers, since the prompt is
//   encoded once per layer with that layer's vector (region_lora_sample.py ~65-113,
//   diffusers_sample_util.py `bind_concept_prompt`).
import { EngineError } from '../api/errors.ts';
import { toFloat32, FLOAT_DTYPES } from '../checkpoint/dtype.ts';
import type { SafetensorsFile } from '../checkpoint/safetensors.ts';

export interface TokenEmbedding {
  /** What the prompt writes: the TI file's name, or the concept token (`<ai1>`). */
  name: string;
  /** Vectors that replace the name in the prompt. */
  count: number;
  /** Per layer (1 for textual inversion, L for an ED-LoRA concept): count x hidden values. */
  layers: Float32Array[];
}

export const ED_LORA_PREFIX = /^(?:params\.)?new_concept_embedding\.(.+)$/;

const TI_KEYS = [/^emb_params$/, /^string_to_param\.(.+)$/, /^clip_l$/];

/** A prompt name for a file: its stem, as A1111 names embeddings. */
export function embeddingName(file: string): string {
  const base = file.split(/[\\/]/).pop() ?? file;
  return base.replace(/\.(safetensors|pt|pth|bin)$/i, '');
}

async function vectors(file: SafetensorsFile, key: string, hidden: number, what: string): Promise<{ values: Float32Array; rows: number }> {
  const t = file.info(key)!;
  if (!FLOAT_DTYPES.has(t.dtype)) throw new EngineError('bad-argument', `${file.name}: ${what} "${key}" has dtype ${t.dtype}, not a float.`);
  const rows = t.shape.length === 1 ? 1 : t.shape[0];
  const width = t.shape.at(-1)!;
  if (t.shape.length > 2 || width !== hidden) {
    const other = width === 1024 ? ' (SD 2.x)' : width === 1280 ? ' (SDXL)' : '';
    throw new EngineError('unsupported-architecture', `${file.name} is an embedding for a text encoder of width ${width}${other}; this model's is ${hidden} (SD 1.5).`);
  }
  const values = toFloat32(await file.bytes(key), t.dtype);
  if (values.some((v) => !Number.isFinite(v))) throw new EngineError('non-finite-weights', `${file.name}: ${what} "${key}" holds NaN or infinite values.`);
  return { values, rows };
}

/** The ED-LoRA concept tokens of a file (empty when it has none). `layers`: the UNet's cross-attention layers. */
export async function readConceptEmbeddings(file: SafetensorsFile, hidden: number, layers: number): Promise<TokenEmbedding[]> {
  const out: TokenEmbedding[] = [];
  for (const key of file.keys()) {
    const m = key.match(ED_LORA_PREFIX);
    if (!m) continue;
    const { values, rows } = await vectors(file, key, hidden, 'the concept embedding');
    if (rows !== layers) {
      throw new EngineError('unsupported-architecture', `${file.name}: the concept "${m[1]}" has ${rows} layer embeddings, but this model's UNet has ${layers} cross-attention layers.`);
    }
    out.push({ name: m[1], count: 1, layers: Array.from({ length: rows }, (_, l) => values.slice(l * hidden, (l + 1) * hidden)) });
  }
  return out;
}

/** A textual inversion: its vectors, named by the file (or by its single token for diffusers' format). */
export async function readTextualInversion(file: SafetensorsFile, hidden: number): Promise<TokenEmbedding> {
  const keys = file.keys();
  const key = keys.find((k) => TI_KEYS.some((re) => re.test(k))) ?? (keys.length === 1 ? keys[0] : undefined);
  if (!key) {
    throw new EngineError('bad-argument', `${file.name} is not a textual-inversion embedding: it has no emb_params, string_to_param or clip_l tensor (it has ${keys.slice(0, 3).map((k) => `"${k}"`).join(', ')}${keys.length > 3 ? ', ...' : ''}).`);
  }
  const { values, rows } = await vectors(file, key, hidden, 'the embedding');
  if (rows < 1 || rows > 75) throw new EngineError('bad-argument', `${file.name}: ${rows} vectors do not fit a 77-token prompt.`);
  const name = TI_KEYS.some((re) => re.test(key)) ? embeddingName(file.name) : key;
  return { name, count: rows, layers: [values] };
}

/** The added tokens of a job: their ids past the vocabulary, and the embedding table per layer. */
export interface Vocabulary {
  added: { name: string; ids: number[] }[];
  rows: number;
  /** The UNet's cross-attention layers: how many encodings a prompt with a layer-wise token needs. */
  layers: number;
  /** Ids whose vector differs per layer (ED-LoRA concept tokens). */
  layerwise: Set<number>;
  /** rows x hidden values for layer `layer`. */
  table(layer: number): Float32Array;
}

export function buildVocabulary(tokens: TokenEmbedding[], vocabSize: number, hidden: number, layers: number): Vocabulary | undefined {
  if (!tokens.length) return undefined;
  let next = vocabSize;
  const added = tokens.map((t) => ({ name: t.name, ids: Array.from({ length: t.count }, () => next++) }));
  const rows = next - vocabSize;
  const layerwise = new Set(tokens.flatMap((t, i) => (t.layers.length > 1 ? added[i].ids : [])));
  const tables = new Map<number, Float32Array>();
  return {
    added,
    rows,
    layers,
    layerwise,
    table(layer: number) {
      let t = tables.get(layer);
      if (!t) {
        t = new Float32Array(rows * hidden);
        let row = 0;
        for (const tok of tokens) {
          t.set(tok.layers.length > 1 ? tok.layers[layer] : tok.layers[0], row * hidden);
          row += tok.count;
        }
        tables.set(layer, t);
      }
      return t;
    },
  };
}

/** A fingerprint of an embedding's name and vectors (two FNV-1a lanes), for scenes and caches. */
export function embeddingFingerprint(t: TokenEmbedding): string {
  let a = 0x811c9dc5;
  let b = 0x9e3779b9;
  const word = (w: number) => {
    a = Math.imul(a ^ w, 0x01000193);
    b = Math.imul(b ^ w, 0x27d4eb2f) ^ (b >>> 15);
  };
  for (let i = 0; i < t.name.length; i++) word(t.name.charCodeAt(i));
  for (const l of t.layers) {
    const words = new Uint32Array(l.buffer, l.byteOffset, l.length);
    for (let i = 0; i < words.length; i++) word(words[i]);
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}
