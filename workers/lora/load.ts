// Opening a LoRA for a loaded model: find each layer's target weight, check every shape, read the
// factors as float32 and bring every kind to the kernel's form up [rows, rank] @ down [rank, cols]
// (LoHa: two such products, multiplied elementwise). CP / Tucker cores are folded into `down` here,
// once, on the CPU: they are small, and the kernel then has one shape of work.
import { NonFiniteWeightsError, NotALoraError, LoraShapeMismatchError, UnsupportedArchitectureError } from '../api/errors.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import { countNonFinite, FLOAT_DTYPES, toFloat32 } from '../checkpoint/dtype.ts';
import type { SafetensorsFile, TensorInfo } from '../checkpoint/safetensors.ts';
import { openTensorFile } from '../checkpoint/tensor-file.ts';
import { readConceptEmbeddings, type TokenEmbedding } from '../text/embeddings.ts';
import type { ByteSource } from '../checkpoint/source.ts';
import { parseLoraTensors, readLoraMetadata, type LoraFormat, type LoraMetadata, type ModuleTensors } from './formats.ts';
import { architectureFromWidth, dottedModuleKey, foreignArchitecture, loraTargetTable, type LoraTarget } from './keys.ts';

export interface LowRank {
  up: Float32Array;
  down: Float32Array;
  rank: number;
}

export interface LoraModule {
  /** The layer name as written in the file. */
  key: string;
  target: LoraTarget;
  /** alpha / rank: the strength at multiplier 1. */
  alphaScale: number;
  factors: LowRank;
  /** LoHa: the second product. */
  hadamard?: LowRank;
}

export interface UnmatchedKey {
  key: string;
  reason: string;
}

export interface LoadedLora {
  name: string;
  format: LoraFormat;
  metadata: LoraMetadata;
  modules: LoraModule[];
  unmatched: UnmatchedKey[];
  /** The largest rank among its layers. */
  rank: number;
  factorFloats: number;
  /** ED-LoRA: its concept tokens with their layer-wise embeddings. */
  concepts: TokenEmbedding[];
}

const prod = (d: number[]) => d.reduce((a, b) => a * b, 1);
const shapeText = (t: TensorInfo | undefined) => (t ? `[${t.shape.join(', ')}]` : 'nothing');

/** `crossLayers`: the UNet's cross-attention layers, which an ED-LoRA's concept embeddings must match. */
export async function openLora(source: ByteSource, config: ModelConfig, table = loraTargetTable(config), crossLayers?: number): Promise<LoadedLora> {
  const file = await openTensorFile(source);
  const names = file.keys();
  const parsed = parseLoraTensors(names.map((n) => file.info(n)!));
  if (!parsed.modules.length) {
    const checkpoint = names.some((n) => n.startsWith('model.diffusion_model.') || /^(down_blocks|mid_block|up_blocks)\.\d.*\.weight$/.test(n));
    throw new NotALoraError(
      file.name,
      checkpoint
        ? 'it is a model checkpoint. Open it as the model instead.'
        : `none of its ${names.length} tensors is a LoRA factor (lora_down/lora_up, lora_A/lora_B, hada_w1_a ...).`,
    );
  }
  const foreign = foreignArchitecture(parsed.modules.map((m) => m.name));
  if (foreign) throw new UnsupportedArchitectureError(file.name, foreign.found, foreign.evidence, 'LoRA');

  const modules: LoraModule[] = [];
  const unmatched: UnmatchedKey[] = parsed.strays.map((key) => ({ key, reason: 'not part of any LoRA layer' }));
  for (const m of parsed.modules) {
    const target = table.get(m.naming === 'kohya' ? m.name : dottedModuleKey(m.name));
    if (m.unsupported.length) {
      unmatched.push({ key: m.name, reason: `${m.unsupported.join(' and ')} layers are not supported yet` });
      continue;
    }
    if (!target) {
      unmatched.push({ key: m.name, reason: 'no layer of that name in an SD 1.5 UNet or text encoder' });
      continue;
    }
    const mod = await readModule(file, m, target);
    if (typeof mod === 'string') unmatched.push({ key: m.name, reason: mod });
    else modules.push(mod);
  }
  if (!modules.length) {
    const first = unmatched[0];
    throw new UnsupportedArchitectureError(file.name, 'non-SD 1.5', `none of its ${parsed.modules.length} layers exists in SD 1.5; the first is "${first?.key}"`, 'LoRA');
  }
  const rank = Math.max(...modules.map((x) => Math.max(x.factors.rank, x.hadamard?.rank ?? 0)));
  const factorFloats = modules.reduce((a, x) => a + x.factors.up.length + x.factors.down.length + (x.hadamard ? x.hadamard.up.length + x.hadamard.down.length : 0), 0);
  const concepts = parsed.format === 'edlora' && crossLayers ? await readConceptEmbeddings(file, config.textEncoder.hidden, crossLayers) : [];
  return { name: file.name, format: parsed.format ?? 'kohya', metadata: readLoraMetadata(file.metadata), modules, unmatched, rank, factorFloats, concepts };
}

/** A module's factors in kernel form, or why it cannot be used. Shape errors about width throw. */
async function readModule(file: SafetensorsFile, m: ModuleTensors, target: LoraTarget): Promise<LoraModule | string> {
  const r = m.roles;
  const read = async (t: TensorInfo) => {
    if (!FLOAT_DTYPES.has(t.dtype)) throw new LoraShapeMismatchError(file.name, t.name, target.weight, target.dims, `dtype ${t.dtype}`);
    const values = toFloat32(await file.bytes(t.name), t.dtype);
    const bad = countNonFinite(values);
    if (bad) throw new NonFiniteWeightsError(file.name, t.name, bad);
    return values;
  };
  const mismatch = (got: string, inFeatures?: number): never => {
    const arch = inFeatures === undefined ? undefined : architectureFromWidth(target, inFeatures);
    if (arch) throw new UnsupportedArchitectureError(file.name, arch, `layer "${m.name}" takes ${inFeatures} input features, SD 1.5 ${target.dims[1]}`, 'LoRA');
    throw new LoraShapeMismatchError(file.name, m.name, target.weight, target.dims, got);
  };
  // kohya's trainers read an alpha of 0 as "no scaling" (alpha = rank), and so do we
  const alphaValue = r.alpha ? (await read(r.alpha))[0] : undefined;
  const alpha = alphaValue === 0 ? undefined : alphaValue;

  if (r.w1a || r.w1b || r.w2a || r.w2b) {
    if (!r.w1a || !r.w1b || !r.w2a || !r.w2b) return 'LoHa layer without all four of hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b';
    const one = await lowRankOf(read, r.w1a, r.w1b, r.t1, target, () => mismatch(`hada_w1_a ${shapeText(r.w1a)}, hada_w1_b ${shapeText(r.w1b)}`, r.w1b!.shape[1]));
    const two = await lowRankOf(read, r.w2a, r.w2b, r.t2, target, () => mismatch(`hada_w2_a ${shapeText(r.w2a)}, hada_w2_b ${shapeText(r.w2b)}`, r.w2b!.shape[1]));
    const dim = r.w1b.shape[0];
    return { key: m.name, target, alphaScale: alpha === undefined ? 1 : alpha / dim, factors: one, hadamard: two };
  }
  if (!r.up || !r.down) return `LoRA layer without its ${r.up ? 'down' : 'up'} factor`;
  const up = r.up;
  const down = r.down;
  const rank = down.shape[0];
  const got = `up ${shapeText(up)}, down ${shapeText(down)}${r.mid ? `, mid ${shapeText(r.mid)}` : ''}`;
  if (up.shape[0] !== target.rows || prod(up.shape.slice(1)) !== rank) mismatch(got, down.shape[1]);
  let downValues = await read(down);
  if (r.mid) {
    const [r0, r1, kh, kw] = r.mid.shape;
    if (r.mid.shape.length !== 4 || r0 !== rank || r1 !== rank || prod(down.shape.slice(1)) * kh * kw !== target.cols) mismatch(got, down.shape[1]);
    downValues = foldCore(await read(r.mid), downValues, rank, rank, prod(down.shape.slice(1)), kh, kw);
  } else if (prod(down.shape.slice(1)) !== target.cols) mismatch(got, down.shape[1]);
  return { key: m.name, target, alphaScale: alpha === undefined ? 1 : alpha / rank, factors: { up: await read(up), down: downValues, rank } };
}

/** hada_wX_a @ hada_wX_b, or with a Tucker core: a is [rank, out], b is [rank, in], t is [rank, rank, kh, kw]. */
async function lowRankOf(read: (t: TensorInfo) => Promise<Float32Array>, a: TensorInfo, b: TensorInfo, t: TensorInfo | undefined, target: LoraTarget, bad: () => never): Promise<LowRank> {
  if (t) {
    const [r0, r1, kh, kw] = t.shape;
    const rank = a.shape[0];
    if (t.shape.length !== 4 || r0 !== rank || r1 !== b.shape[0] || a.shape[1] !== target.rows || prod(b.shape.slice(1)) * kh * kw !== target.cols) bad();
    const up = transpose(await read(a), rank, target.rows);
    return { up, down: foldCore(await read(t), await read(b), rank, r1, prod(b.shape.slice(1)), kh, kw), rank };
  }
  const rank = b.shape[0];
  if (a.shape[0] !== target.rows || prod(a.shape.slice(1)) !== rank || prod(b.shape.slice(1)) !== target.cols) bad();
  return { up: await read(a), down: await read(b), rank };
}

/** down'[i, (q, y, x)] = sum_j core[i, j, y, x] * down[j, q]: a [r0, r1, kh, kw] core and a [r1, inC] factor. */
export function foldCore(core: Float32Array, down: Float32Array, r0: number, r1: number, inC: number, kh: number, kw: number): Float32Array {
  const out = new Float32Array(r0 * inC * kh * kw);
  const k = kh * kw;
  for (let i = 0; i < r0; i++)
    for (let j = 0; j < r1; j++)
      for (let q = 0; q < inC; q++) {
        const d = down[j * inC + q];
        for (let s = 0; s < k; s++) out[(i * inC + q) * k + s] += core[(i * r1 + j) * k + s] * d;
      }
  return out;
}

function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

/**
 * A fingerprint of what a LoRA does to the model (targets, strengths, factor values), for caches
 * keyed by LoRA sets: two 32-bit FNV-1a lanes over the float bits, as 16 hex digits.
 */
export function loraFingerprint(lora: LoadedLora): string {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  const word = (w: number) => {
    a = Math.imul(a ^ w, 0x01000193);
    b = Math.imul(b ^ w, 0x27d4eb2f) ^ (b >>> 15);
  };
  const floats = (f: Float32Array) => {
    const words = new Uint32Array(f.buffer, f.byteOffset, f.length);
    for (let i = 0; i < words.length; i++) word(words[i]);
  };
  for (const m of lora.modules) {
    for (let i = 0; i < m.key.length; i++) word(m.key.charCodeAt(i));
    floats(new Float32Array([m.alphaScale, m.factors.rank]));
    floats(m.factors.up);
    floats(m.factors.down);
    if (m.hadamard) {
      floats(m.hadamard.up);
      floats(m.hadamard.down);
    }
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}
