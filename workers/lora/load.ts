// Opening a LoRA for a loaded model: find each layer's target weight, check every shape, read the
// factors as float32 and bring every kind to the kernel's form up [rows, rank] @ down [rank, cols]
// (LoHa: two such products, multiplied elementwise; LoKr: kron(w1, product), w1 multiplied out when
// it comes factorised). CP / Tucker cores are folded into `down` here, once, on the CPU: they are
// small, and the kernel then has one shape of work. DoRA magnitudes are kept beside the factors.
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
  /** LoKr: the delta is kron(w1, up @ down), w1 [rows, cols]; a factors.rank of 0 means factors.up
   * is the second factor whole ([target.rows / rows, target.cols / cols]) and down is empty. */
  kron?: { w1: Float32Array; rows: number; cols: number };
  /** DoRA: the magnitude of every output channel (row), or with `perInput` of every input channel. */
  dora?: { magnitude: Float32Array; perInput: boolean };
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
  const factorFloats = modules.reduce((a, x) => a + moduleFloats(x), 0);
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

  const mod = await readDelta(m, target, read, mismatch, alpha);
  if (typeof mod === 'string' || !r.magnitude) return mod;
  return { ...mod, dora: await readMagnitude(r.magnitude, m.name, target, read, mismatch) };
}

type Reader = (t: TensorInfo) => Promise<Float32Array>;
type Mismatch = (got: string, inFeatures?: number) => never;

async function readDelta(m: ModuleTensors, target: LoraTarget, read: Reader, mismatch: Mismatch, alpha: number | undefined): Promise<LoraModule | string> {
  const r = m.roles;
  if (r.k1 || r.k1a || r.k1b || r.k2 || r.k2a || r.k2b) return readLokr(m, target, read, mismatch, alpha);
  if (r.w1a || r.w1b || r.w2a || r.w2b) {
    if (!r.w1a || !r.w1b || !r.w2a || !r.w2b) return 'LoHa layer without all four of hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b';
    const one = await lowRankOf(read, r.w1a, r.w1b, r.t1, target, () => mismatch(`hada_w1_a ${shapeText(r.w1a)}, hada_w1_b ${shapeText(r.w1b)}`, r.w1b!.shape[1]));
    const two = await lowRankOf(read, r.w2a, r.w2b, r.t2, target, () => mismatch(`hada_w2_a ${shapeText(r.w2a)}, hada_w2_b ${shapeText(r.w2b)}`, r.w2b!.shape[1]));
    const dim = r.w1b.shape[0];
    return { key: m.name, target, alphaScale: alpha === undefined ? 1 : alpha / dim, factors: one, hadamard: two };
  }
  if (!r.up || !r.down) return r.magnitude && !r.up && !r.down ? 'DoRA magnitude without the factors of its layer' : `LoRA layer without its ${r.up ? 'down' : 'up'} factor`;
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

/**
 * LyCORIS LoKr: delta = kron(w1, w2) * scale. w1 is lokr_w1 [a, c] or lokr_w1_a @ lokr_w1_b; w2 is
 * lokr_w2 [b, d(, kh, kw)], lokr_w2_a [b, r] @ lokr_w2_b [r, d*kh*kw], or with lokr_t2 the Tucker
 * form (w2_a [r, b], w2_b [r, d]). The weight is [a*b, c*d(, kh, kw)]. The scale is alpha over the
 * rank of the factorised part (lokr_w2_b's first dimension, else lokr_w1_b's), and 1 when both
 * factors are whole or there is no alpha: A1111's network_lokr.py and network.py calc_scale.
 */
async function readLokr(m: ModuleTensors, target: LoraTarget, read: Reader, mismatch: Mismatch, alpha: number | undefined): Promise<LoraModule | string> {
  const r = m.roles;
  const hasW1 = !!r.k1 || (!!r.k1a && !!r.k1b);
  const hasW2 = !!r.k2 || (!!r.k2a && !!r.k2b);
  if (!hasW1 || !hasW2) return `LoKr layer without ${hasW1 ? 'lokr_w2 (or lokr_w2_a and lokr_w2_b)' : 'lokr_w1 (or lokr_w1_a and lokr_w1_b)'}`;
  const names = Object.entries(r).filter(([k]) => k.startsWith('k')).map(([, t]) => `${t!.name.slice(m.name.length + 1)} ${shapeText(t)}`);
  const bad = (): never => mismatch(names.join(', '));
  // the first factor, multiplied out: it is small (its sides are the factorisation's short ones)
  let w1: Float32Array;
  let a: number;
  let c: number;
  if (r.k1) {
    if (r.k1.shape.length !== 2) bad();
    [a, c] = r.k1.shape;
    w1 = await read(r.k1);
  } else {
    const [ra, rb] = [r.k1a!, r.k1b!];
    if (ra.shape.length !== 2 || rb.shape.length !== 2 || ra.shape[1] !== rb.shape[0]) bad();
    [a, c] = [ra.shape[0], rb.shape[1]];
    w1 = matmul(await read(ra), await read(rb), a, ra.shape[1], c);
  }
  if (!a || !c || target.rows % a || target.cols % c) bad();
  const b = target.rows / a;
  const w2Cols = target.cols / c;
  const kernel = prod(target.dims.slice(2));
  // w2's columns must be whole input channels of the kernel's positions each
  if (w2Cols % kernel) bad();
  let factors: LowRank;
  if (r.k2) {
    if (r.k2.shape[0] !== b || prod(r.k2.shape.slice(1)) !== w2Cols || (r.k2.shape.length > 2 && prod(r.k2.shape.slice(2)) !== kernel)) bad();
    factors = { up: await read(r.k2), down: new Float32Array(0), rank: 0 };
  } else {
    if (r.kt2 && r.kt2.shape.length === 4 && r.kt2.shape[2] * r.kt2.shape[3] !== kernel) bad();
    factors = await lowRankOf(read, r.k2a!, r.k2b!, r.kt2, { ...target, rows: b, cols: w2Cols }, bad);
  }
  const dim = r.k2b?.shape[0] ?? r.k1b?.shape[0];
  if (dim === 0 || (!r.k2 && factors.rank === 0)) bad();
  const alphaScale = alpha === undefined || dim === undefined ? 1 : alpha / dim;
  return { key: m.name, target, alphaScale, factors, kron: { w1, rows: a, cols: c } };
}

/**
 * The DoRA magnitude's axis, from its shape as ComfyUI's and Forge's weight_decompose tell it:
 * PEFT's lora_magnitude_vector is per output feature ([out], or [1, out, 1, 1] for a convolution);
 * a dora_scale whose first dimension is the output width is per output channel (LyCORIS's
 * wd_on_out, an option since 3.1.1 and the default since 3.2.0), one shaped [1, in, 1, 1] per input
 * channel (older LyCORIS, and the axis A1111 always takes).
 */
async function readMagnitude(t: TensorInfo, module: string, target: LoraTarget, read: Reader, mismatch: Mismatch): Promise<LoraModule['dora']> {
  const n = prod(t.shape);
  const inC = target.dims[1];
  const peft = /lora_magnitude_vector/.test(t.name);
  if (n === target.rows && (peft || t.shape[0] === target.rows)) return { magnitude: await read(t), perInput: false };
  if (!peft && n === inC && t.shape.length > 1 && t.shape[0] === 1) return { magnitude: await read(t), perInput: true };
  return mismatch(`${t.name.slice(module.length + 1)} ${shapeText(t)}`);
}

/** a [n, k] @ b [k, m], summed in float64. */
function matmul(a: Float32Array, b: Float32Array, n: number, k: number, m: number): Float32Array {
  const out = new Float32Array(n * m);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < m; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += a[i * k + t] * b[t * m + j];
      out[i * m + j] = s;
    }
  return out;
}

/** Floats a module keeps in the factor arena. */
export function moduleFloats(m: LoraModule): number {
  return m.factors.up.length + m.factors.down.length + (m.hadamard ? m.hadamard.up.length + m.hadamard.down.length : 0) + (m.kron?.w1.length ?? 0) + (m.dora?.magnitude.length ?? 0);
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
    if (m.kron) floats(new Float32Array([m.kron.rows, m.kron.cols, ...m.kron.w1]));
    if (m.dora) floats(new Float32Array([m.dora.perInput ? 1 : 0, ...m.dora.magnitude]));
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}
