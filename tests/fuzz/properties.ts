// Property-based fuzzing of everything the studio reads from outside: safetensors files (generic and
// as a checkpoint), LoRA files, PNGs with scene chunks and share links. Each property starts from a
// valid input the project's own writers make, breaks it in one of the ways files and links break
// (random bytes, truncation, lying lengths and offsets, wrong dtypes and shapes, duplicate and
// non-UTF-8 names, NaN and Inf values, missing halves, other architectures, hostile text) and
// requires the reader to end in one of its named errors, or in a result that is itself sound.
// `npm test` runs these at a small size, `npm run fuzz` at a large one.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync, deflateSync } from 'node:zlib';
import fc from 'fast-check';
import { EngineError } from '../../workers/api/errors.ts';
import { concatBytes, encodeSafetensors, SafetensorsFile, type TensorToWrite } from '../../workers/checkpoint/safetensors.ts';
import { countNonFinite, DTYPE_BYTES, FLOAT_DTYPES, toFloat32, type StDtype } from '../../workers/checkpoint/dtype.ts';
import { ModelCheckpoint } from '../../workers/checkpoint/model.ts';
import { MemorySource, type ByteSource } from '../../workers/checkpoint/source.ts';
import { crossAttentionLayers } from '../../workers/graph/cross-kv.ts';
import { zipEntries } from '../../workers/checkpoint/torch-pickle.ts';
import { decodePng, encodePng, PngError, REPORT_CHUNK, SCENE_CHUNK } from '../../workers/engine/png.ts';
import { makeTinyModel, tinyModelFiles, type TinyModel } from '../../workers/engine/test-model.ts';
import { HOSTILE_TEXT, randomScene } from '../../workers/layout/random-scene.ts';
import { Rng } from '../../workers/engine/random.ts';
import { parseScene } from '../../workers/layout/scene.ts';
import { openLora } from '../../workers/lora/load.ts';
import { tinyLoras } from '../../workers/lora/test-loras.ts';
import { nodeInflate } from '../../workers/node/files.ts';
import { PngSceneError, sceneFromPng, MAX_PNG_BYTES } from '../../src/gallery/gallery.ts';
import { decodeShareLink, encodeShareLink, LINK_PREFIX, MAX_LINK, ShareLinkError, toBase64Url } from '../../src/share/link.ts';

export interface FuzzReport {
  target: string;
  cases: number;
  /** How the cases ended: "ok" or the name of the error. */
  outcomes: Record<string, number>;
  /** How many different refusals (messages with their numbers and quoted names taken out). */
  reasons: number;
  slowestMs: number;
  /** The largest single read a reader asked for, as a share of the input's size. */
  largestReadShare?: number;
}

/** A byte source that refuses reads larger than the file: a reader may never allocate past its input. */
class CheckedSource implements ByteSource {
  largest = 0;
  constructor(readonly name: string, private readonly bytes: Uint8Array) {}
  get size() {
    return this.bytes.byteLength;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (!(offset >= 0 && length >= 0) || length > Math.max(this.size, 8)) throw new Error(`unbounded read: ${length} bytes at ${offset} of a ${this.size}-byte file`);
    this.largest = Math.max(this.largest, length);
    return this.bytes.subarray(offset, Math.min(offset + length, this.size));
  }
}

/** Run a property, counting outcomes; a case that throws anything but `named` errors fails the run. */
async function run<T>(
  target: string,
  arb: fc.Arbitrary<T>,
  runs: number,
  seed: number,
  body: (input: T) => Promise<{ ok: boolean; largestRead?: number; size?: number }>,
  named: (e: unknown) => boolean,
): Promise<FuzzReport> {
  const report: FuzzReport = { target, cases: 0, outcomes: {}, reasons: 0, slowestMs: 0 };
  const count = (k: string) => (report.outcomes[k] = (report.outcomes[k] ?? 0) + 1);
  const reasons = new Set<string>();
  await fc.assert(
    fc.asyncProperty(arb, async (input) => {
      const t0 = performance.now();
      report.cases++;
      try {
        const r = await body(input);
        count('ok');
        if (r.largestRead !== undefined && r.size) report.largestReadShare = Math.max(report.largestReadShare ?? 0, r.largestRead / Math.max(r.size, 8));
      } catch (e) {
        if (!named(e)) throw e;
        count((e as Error).name);
        reasons.add(reasonOf(e as Error));
      } finally {
        report.slowestMs = Math.max(report.slowestMs, performance.now() - t0);
      }
    }),
    { numRuns: runs, seed, endOnFailure: true },
  );
  report.reasons = reasons.size;
  return report;
}

/** An error's message with the particulars (numbers, quoted names and values) taken out. */
const reasonOf = (e: Error) => e.message.replace(/"(?:[^"\\]|\\.)*"|\[[^\]]*\]|\{.*\}|-?\d[\d.e+-]*/g, '#');

// ------------------------------------------------------------------ byte mutations

type Mutation =
  | { kind: 'truncate'; at: number }
  | { kind: 'flip'; spots: [number, number][] }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'header-length'; value: number }
  | { kind: 'random'; bytes: Uint8Array };

const position = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true });

const byteMutation: fc.Arbitrary<Mutation> = fc.oneof(
  position.map((at) => ({ kind: 'truncate', at }) as Mutation),
  fc.array(fc.tuple(position, fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }).map((s) => ({ kind: 'flip', spots: s.map(([p, v]) => [p, v]) }) as Mutation),
  fc.tuple(position, fc.uint8Array({ minLength: 1, maxLength: 64 })).map(([at, bytes]) => ({ kind: 'insert', at, bytes }) as Mutation),
  fc.tuple(position, fc.integer({ min: 1, max: 256 })).map(([at, length]) => ({ kind: 'delete', at, length }) as Mutation),
  fc.oneof(fc.constantFrom(0, 1, 7, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 100 * 1024 * 1024 + 1), fc.integer({ min: 0, max: 1 << 20 })).map((value) => ({ kind: 'header-length', value }) as Mutation),
  fc.uint8Array({ maxLength: 512 }).map((bytes) => ({ kind: 'random', bytes }) as Mutation),
);

function mutate(bytes: Uint8Array, m: Mutation): Uint8Array {
  const at = (p: number) => Math.floor(p * bytes.length);
  switch (m.kind) {
    case 'truncate':
      return bytes.slice(0, at(m.at));
    case 'flip': {
      const out = bytes.slice();
      for (const [p, v] of m.spots) out[at(p)] = v;
      return out;
    }
    case 'insert':
      return concatBytes([bytes.subarray(0, at(m.at)), m.bytes, bytes.subarray(at(m.at))]);
    case 'delete':
      return concatBytes([bytes.subarray(0, at(m.at)), bytes.subarray(Math.min(bytes.length, at(m.at) + m.length))]);
    case 'header-length': {
      const out = bytes.slice();
      if (out.length >= 8) {
        const v = new DataView(out.buffer);
        v.setUint32(0, m.value % 2 ** 32, true);
        v.setUint32(4, Math.floor(m.value / 2 ** 32), true);
      }
      return out;
    }
    case 'random':
      return m.bytes;
  }
}

// ------------------------------------------------------------------ safetensors header mutations

interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  data_offsets: number[];
}

type HeaderEdit =
  | { kind: 'offsets'; which: number; offsets: number[] }
  | { kind: 'overlap'; which: number }
  | { kind: 'dtype'; which: number; dtype: string }
  | { kind: 'shape'; which: number; shape: number[] }
  | { kind: 'duplicate'; which: number }
  | { kind: 'bad-utf8-name'; which: number }
  | { kind: 'non-finite'; which: number; value: number; spot: number }
  | { kind: 'metadata'; value: unknown }
  | { kind: 'drop'; which: number };

const headerEdit: fc.Arbitrary<HeaderEdit> = fc.oneof(
  fc.record({ kind: fc.constant('offsets' as const), which: fc.nat(), offsets: fc.array(fc.oneof(fc.nat(), fc.constantFrom(-1, 2 ** 53, 1.5, 2 ** 40)), { maxLength: 3 }) }),
  fc.record({ kind: fc.constant('overlap' as const), which: fc.nat() }),
  fc.record({ kind: fc.constant('dtype' as const), which: fc.nat(), dtype: fc.constantFrom('F32', 'F16', 'BF16', 'F64', 'I64', 'U8', 'BOOL', 'F8_E4M3', 'float32', 'Q4_0', '') }),
  fc.record({ kind: fc.constant('shape' as const), which: fc.nat(), shape: fc.array(fc.oneof(fc.nat(64), fc.constantFrom(-1, 0, 2 ** 31, 2 ** 53)), { maxLength: 9 }) }),
  fc.record({ kind: fc.constant('duplicate' as const), which: fc.nat() }),
  fc.record({ kind: fc.constant('bad-utf8-name' as const), which: fc.nat() }),
  fc.record({ kind: fc.constant('non-finite' as const), which: fc.nat(), value: fc.constantFrom(NaN, Infinity, -Infinity), spot: position }),
  fc.record({ kind: fc.constant('metadata' as const), value: fc.oneof(fc.jsonValue(), fc.dictionary(fc.string(), fc.string())) }),
  fc.record({ kind: fc.constant('drop' as const), which: fc.nat() }),
);

/** Split a valid file into its header entries and body, edit, and put it back together. */
function editHeader(bytes: Uint8Array, edit: HeaderEdit): Uint8Array {
  const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, unknown>;
  let body = bytes.slice(8 + n);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  if (!names.length) return bytes;
  const which = 'which' in edit ? names[edit.which % names.length] : names[0];
  const entry = header[which] as Entry;
  let text: string | undefined;
  switch (edit.kind) {
    case 'offsets':
      entry.data_offsets = edit.offsets;
      break;
    case 'overlap': {
      const other = header[names[(names.indexOf(which) + 1) % names.length]] as Entry;
      if (other !== entry) entry.data_offsets = [other.data_offsets[0], other.data_offsets[0] + (entry.data_offsets[1] - entry.data_offsets[0])];
      break;
    }
    case 'dtype':
      entry.dtype = edit.dtype;
      break;
    case 'shape':
      entry.shape = edit.shape;
      break;
    case 'duplicate': {
      const json = JSON.stringify(header);
      text = `${json.slice(0, -1)},${JSON.stringify(which)}:${JSON.stringify(entry)}}`;
      break;
    }
    case 'bad-utf8-name':
      text = JSON.stringify(header).replace(JSON.stringify(which), `"\u0001BAD${which}"`);
      break;
    case 'non-finite': {
      if (FLOAT_DTYPES.has(entry.dtype as StDtype)) {
        const [a, b] = entry.data_offsets;
        const size = DTYPE_BYTES[entry.dtype as StDtype];
        const count = (b - a) / size;
        if (count > 0) {
          body = body.slice();
          const at = a + Math.floor(edit.spot * count) * size;
          const v = new DataView(body.buffer);
          if (entry.dtype === 'F32') v.setFloat32(at, edit.value, true);
          // a 16-bit float's NaN / +Inf / -Inf bit patterns
          else if (entry.dtype === 'F16') v.setUint16(at, Number.isNaN(edit.value) ? 0x7e00 : edit.value > 0 ? 0x7c00 : 0xfc00, true);
          else v.setUint16(at, Number.isNaN(edit.value) ? 0x7fc0 : edit.value > 0 ? 0x7f80 : 0xff80, true);
        }
      }
      break;
    }
    case 'metadata':
      header.__metadata__ = edit.value;
      break;
    case 'drop':
      delete header[which];
      break;
  }
  let json = new TextEncoder().encode(text ?? JSON.stringify(header));
  if (edit.kind === 'bad-utf8-name') {
    // a lone continuation byte where the marker is: the name is no longer UTF-8
    const marker = json.indexOf(1);
    json = json.slice();
    json[marker] = 0x80;
  }
  const head = new Uint8Array(8);
  new DataView(head.buffer).setUint32(0, json.length, true);
  return concatBytes([head, json, body]);
}

const tensorArb: fc.Arbitrary<TensorToWrite> = fc
  .tuple(fc.string({ minLength: 1, maxLength: 24 }), fc.constantFrom<StDtype>('F32', 'F16', 'BF16', 'I64', 'U8', 'F64'), fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }), fc.nat())
  .map(([name, dtype, shape, seed]) => {
    const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    const data = new Uint8Array(bytes);
    const r = new Rng(seed);
    for (let i = 0; i < bytes; i++) data[i] = r.nextUint32() & 255;
    return { name: name === '__metadata__' ? 'meta' : name, dtype, shape, data };
  });

/** A valid file of random tensors (distinct names). */
const safetensorsArb = fc.uniqueArray(tensorArb, { minLength: 1, maxLength: 6, selector: (t) => t.name }).map((ts) => concatBytes(encodeSafetensors(ts)));

const anyEdit = fc.oneof({ weight: 3, arbitrary: headerEdit.map((e) => ({ header: e })) }, { weight: 2, arbitrary: byteMutation.map((b) => ({ bytes: b })) }, { weight: 1, arbitrary: fc.tuple(headerEdit, byteMutation).map(([h, b]) => ({ header: h, bytes: b })) });

function applyEdits(base: Uint8Array, e: { header?: HeaderEdit; bytes?: Mutation }): Uint8Array {
  let out = e.header ? editHeader(base, e.header) : base;
  if (e.bytes) out = mutate(out, e.bytes);
  return out;
}

const isEngineError = (e: unknown) => e instanceof EngineError;

/** Generic safetensors: open, then read and convert every tensor. */
export function fuzzSafetensors(runs: number, seed: number): Promise<FuzzReport> {
  return run('safetensors', fc.tuple(safetensorsArb, anyEdit), runs, seed, async ([base, edit]) => {
    const bytes = applyEdits(base, edit);
    const src = new CheckedSource('fuzz.safetensors', bytes);
    const file = await SafetensorsFile.open(src);
    for (const key of file.keys()) {
      const info = file.info(key)!;
      const data = await file.bytes(key);
      if (data.byteLength !== info.byteLength) throw new Error(`tensor ${key}: ${data.byteLength} bytes read, ${info.byteLength} described`);
      if (FLOAT_DTYPES.has(info.dtype)) toFloat32(data, info.dtype);
    }
    return { ok: true, largestRead: src.largest, size: bytes.length };
  }, isEngineError);
}

let tiny: { model: TinyModel; checkpoint: Uint8Array; loras: Uint8Array[] } | undefined;
function tinyFiles() {
  if (!tiny) {
    const model = makeTinyModel();
    const single = tinyModelFiles(model).find((f) => f.path.endsWith('.safetensors') && !f.path.includes('/'))!;
    tiny = { model, checkpoint: concatBytes(single.parts), loras: tinyLoras(model).map((l) => concatBytes(l.parts)) };
  }
  return tiny;
}

/** A checkpoint: open as a model and read every weight the graphs need. */
export function fuzzCheckpoint(runs: number, seed: number): Promise<FuzzReport> {
  const { model, checkpoint } = tinyFiles();
  return run('checkpoint', anyEdit, runs, seed, async (edit) => {
    const bytes = applyEdits(checkpoint, edit);
    const src = new CheckedSource('fuzz-model.safetensors', bytes);
    const ckpt = await ModelCheckpoint.open({ single: src });
    for (const c of ['textEncoder', 'unet', 'vae'] as const) {
      for (const s of model.specs[c]) {
        const values = await ckpt.readFloat32(c, s.name, s.dims);
        if (countNonFinite(values)) throw new Error(`${s.name}: non-finite values were let through`);
      }
    }
    return { ok: true, largestRead: src.largest, size: bytes.length };
  }, isEngineError);
}

type LoraEdit =
  | { kind: 'drop-half'; which: number; half: 'up' | 'down' }
  | { kind: 'rank'; which: number; rank: number }
  | { kind: 'width'; which: number; width: number }
  | { kind: 'sdxl-key'; which: number }
  | { kind: 'alpha'; value: number }
  | { kind: 'non-finite'; which: number; value: number };

const loraEdit: fc.Arbitrary<LoraEdit> = fc.oneof(
  fc.record({ kind: fc.constant('drop-half' as const), which: fc.nat(), half: fc.constantFrom('up' as const, 'down' as const) }),
  fc.record({ kind: fc.constant('rank' as const), which: fc.nat(), rank: fc.integer({ min: 0, max: 9 }) }),
  fc.record({ kind: fc.constant('width' as const), which: fc.nat(), width: fc.constantFrom(1, 1024, 1280, 2048) }),
  fc.record({ kind: fc.constant('sdxl-key' as const), which: fc.nat() }),
  fc.record({ kind: fc.constant('alpha' as const), value: fc.constantFrom(0, -1, 1e-30, NaN, Infinity) }),
  fc.record({ kind: fc.constant('non-finite' as const), which: fc.nat(), value: fc.constantFrom(NaN, Infinity, -Infinity) }),
);

const UP = /(lora_up|lora_B|lora\.up|hada_w1_a|hada_w2_a|lokr_w1_a|lokr_w2_a)/
const DOWN = /(lora_down|lora_A|lora\.down|hada_w1_b|hada_w2_b|lokr_w1_b|lokr_w2_b)/

/** Re-write a LoRA with a structural fault: the tensors are decoded, changed and encoded again. */
async function editLora(bytes: Uint8Array, edit: LoraEdit): Promise<Uint8Array> {
  const file = await SafetensorsFile.open(new CheckedSource('x', bytes));
  const tensors: TensorToWrite[] = [];
  for (const k of file.keys()) {
    const i = file.info(k)!;
    tensors.push({ name: k, dtype: i.dtype, shape: i.shape.slice(), data: (await file.bytes(k)).slice() });
  }
  const factors = tensors.filter((t) => UP.test(t.name) || DOWN.test(t.name));
  const pickOf = (list: TensorToWrite[], n: number) => list[n % list.length];
  const f32 = (t: TensorToWrite, count: number, fill: (i: number) => number) => {
    const data = new Float32Array(count).map((_, i) => fill(i));
    Object.assign(t, { dtype: 'F32', data: new Uint8Array(data.buffer) });
  };
  switch (edit.kind) {
    case 'drop-half': {
      const list = factors.filter((t) => (edit.half === 'up' ? UP : DOWN).test(t.name));
      const gone = pickOf(list, edit.which);
      tensors.splice(tensors.indexOf(gone), 1);
      break;
    }
    case 'rank': {
      const t = pickOf(factors, edit.which);
      // the rank is the up factor's second and the down factor's first dimension
      if (UP.test(t.name)) t.shape = [t.shape[0], edit.rank, ...t.shape.slice(2)];
      else t.shape = [edit.rank, ...t.shape.slice(1)];
      f32(t, t.shape.reduce((a, b) => a * b, 1), (i) => Math.sin(i));
      break;
    }
    case 'width': {
      const t = pickOf(factors.filter((x) => DOWN.test(x.name)), edit.which);
      t.shape = [t.shape[0], edit.width];
      f32(t, t.shape[0] * edit.width, (i) => Math.cos(i) * 0.01);
      break;
    }
    case 'sdxl-key': {
      const t = pickOf(tensors, edit.which);
      t.name = t.name.replace(/^lora_te_/, 'lora_te2_').replace(/^text_encoder\./, 'text_encoder_2.').replace(/^unet\./, 'lora_te1_x.');
      if (tensors.filter((x) => x.name === t.name).length > 1) t.name += '.dup';
      break;
    }
    case 'alpha': {
      const alphas = tensors.filter((t) => t.name.endsWith('.alpha'));
      for (const a of alphas) f32(a, 1, () => edit.value);
      if (!alphas.length) tensors.push(...factors.filter((t) => DOWN.test(t.name)).map((t) => ({ name: t.name.replace(DOWN, 'x').replace(/\.x.*$/, '.alpha'), dtype: 'F32' as StDtype, shape: [], data: new Uint8Array(new Float32Array([edit.value]).buffer) })));
      break;
    }
    case 'non-finite': {
      const t = pickOf(factors, edit.which);
      const values = toFloat32(t.data, t.dtype);
      values[0] = edit.value;
      f32(t, values.length, (i) => values[i]);
      break;
    }
  }
  const names = new Set<string>();
  return concatBytes(encodeSafetensors(tensors.filter((t) => !names.has(t.name) && names.add(t.name)), file.metadata));
}

/** LoRA files in every format the studio reads, opened against the tiny model. */
export function fuzzLora(runs: number, seed: number): Promise<FuzzReport> {
  const { model, loras } = tinyFiles();
  const arb = fc.tuple(fc.nat(loras.length - 1), fc.oneof({ weight: 3, arbitrary: loraEdit.map((l) => ({ lora: l })) }, { weight: 2, arbitrary: anyEdit }));
  return run('lora', arb, runs, seed, async ([i, edit]) => {
    const bytes = 'lora' in edit ? await editLora(loras[i], edit.lora) : applyEdits(loras[i], edit);
    const src = new CheckedSource('fuzz-lora.safetensors', bytes);
    const lora = await openLora(src, model.config);
    for (const m of lora.modules) {
      const { up, down, rank } = m.factors;
      // LoKr: the product is the second Kronecker factor (rank 0: up holds it whole)
      const [rows, cols] = m.kron ? [m.target.rows / m.kron.rows, m.target.cols / m.kron.cols] : [m.target.rows, m.target.cols];
      const sizes = rank === 0 ? m.kron && up.length === rows * cols && down.length === 0 : up.length === rows * rank && down.length === rank * cols;
      const kronOk = !m.kron || (Number.isInteger(rows) && Number.isInteger(cols) && m.kron.w1.length === m.kron.rows * m.kron.cols && !countNonFinite(m.kron.w1));
      const doraOk = !m.dora || (m.dora.magnitude.length === (m.dora.perInput ? m.target.dims[1] : m.target.rows) && !countNonFinite(m.dora.magnitude));
      if (!sizes || !kronOk || !doraOk) throw new Error(`${m.key}: factors of the wrong size were let through`);
      if (countNonFinite(up) || countNonFinite(down) || !Number.isFinite(m.alphaScale) || m.alphaScale === 0) throw new Error(`${m.key}: a non-finite or zero strength was let through`);
    }
    return { ok: true, largestRead: src.largest, size: bytes.length };
  }, isEngineError);
}

// ------------------------------------------------------------------ PNG scene chunks

type PngEdit = { bytes?: Mutation; chunkLength?: { which: number; value: number }; sceneText?: string; oversize?: boolean };

const pngEdit: fc.Arbitrary<PngEdit> = fc.oneof(
  byteMutation.map((bytes) => ({ bytes })),
  fc.record({ which: fc.nat(), value: fc.oneof(fc.nat(), fc.constantFrom(2 ** 31, 2 ** 32 - 1)) }).map((chunkLength) => ({ chunkLength })),
  fc.oneof(fc.string(), fc.jsonValue().map((v) => JSON.stringify(v)), fc.constantFrom(...HOSTILE_TEXT)).map((sceneText) => ({ sceneText })),
  fc.constant({ oversize: true }),
);

async function studioPng(sceneSeed: number, sceneText?: string, oversize = false): Promise<Uint8Array> {
  const scene = randomScene(new Rng(sceneSeed), { hostile: true });
  const rgba = new Uint8ClampedArray(4 * 4 * 4).map((_, i) => (i * 37) & 255);
  const text = { [SCENE_CHUNK]: sceneText ?? JSON.stringify(scene), [REPORT_CHUNK]: oversize ? 'x'.repeat((1 << 20) + 1) : '{}' };
  return encodePng(rgba, 4, 4, text, (d) => new Uint8Array(deflateSync(d)));
}

/** The chunk offsets of a PNG (signature skipped), for length edits. */
function chunkStarts(bytes: Uint8Array): number[] {
  const out: number[] = [];
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  for (let at = 8; at + 12 <= bytes.length; at += 12 + v.getUint32(at)) out.push(at);
  return out;
}

/** A dropped PNG: its scene chunk, checked; and the image itself as a testbed reference. */
export function fuzzPng(runs: number, seed: number): Promise<FuzzReport> {
  return run('png', fc.tuple(fc.nat(), pngEdit), runs, seed, async ([sceneSeed, edit]) => {
    let bytes = await studioPng(sceneSeed, edit.sceneText, edit.oversize);
    if (edit.bytes) bytes = mutate(bytes, edit.bytes);
    if (edit.chunkLength) {
      const starts = chunkStarts(bytes);
      bytes = bytes.slice();
      new DataView(bytes.buffer).setUint32(starts[edit.chunkLength.which % starts.length], edit.chunkLength.value);
    }
    if (bytes.length > MAX_PNG_BYTES) throw new Error('a fuzz case grew past the PNG limit');
    let ok = true;
    try {
      const image = decodePng(bytes, nodeInflate, 64 * 64);
      if (image.data.length !== image.width * image.height * 4) throw new Error('decoded pixels of the wrong size');
    } catch (e) {
      if (!(e instanceof PngError)) throw e;
      ok = false;
    }
    const scene = await sceneFromPng(new Blob([bytes as Uint8Array<ArrayBuffer>]));
    if (JSON.stringify(parseScene(scene)) !== JSON.stringify(scene)) throw new Error('a scene from a PNG does not survive its own check');
    return { ok };
  }, (e) => e instanceof PngSceneError);
}

// ------------------------------------------------------------------ share links

type LinkEdit =
  | { kind: 'replace'; at: number; char: string }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'insert'; at: number; text: string }
  | { kind: 'truncate'; at: number }
  | { kind: 'version'; version: string }
  | { kind: 'oversize'; times: number }
  | { kind: 'payload'; json: string }
  | { kind: 'bomb'; bytes: number };

const linkEdit: fc.Arbitrary<LinkEdit> = fc.oneof(
  fc.record({ kind: fc.constant('replace' as const), at: position, char: fc.oneof(fc.constantFrom(...'ABCXYZabcxyz0189-_+/=.%#<>"\' '), fc.string({ minLength: 1, maxLength: 1, unit: 'binary' })) }),
  fc.record({ kind: fc.constant('delete' as const), at: position, length: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: position, text: fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom(...HOSTILE_TEXT)) }),
  fc.record({ kind: fc.constant('truncate' as const), at: position }),
  fc.record({ kind: fc.constant('version' as const), version: fc.oneof(fc.constantFrom('0', '2', '999999', '1000000', '', '01', '1e0', '-1', ' 1'), fc.string({ maxLength: 8 })) }),
  fc.record({ kind: fc.constant('oversize' as const), times: fc.integer({ min: 2, max: 400 }) }),
  fc.record({ kind: fc.constant('payload' as const), json: fc.oneof(fc.jsonValue().map((v) => JSON.stringify(v)), fc.string(), fc.constantFrom('{"version":1,"__proto__":{"x":1}}', '{"version":1,"boxes":[]}')) }),
  fc.record({ kind: fc.constant('bomb' as const), bytes: fc.constantFrom(300_000, 4_000_000) }),
);

async function editLink(link: string, e: LinkEdit): Promise<string> {
  const at = (p: number) => Math.floor(p * link.length);
  switch (e.kind) {
    case 'replace':
      return link.slice(0, at(e.at)) + e.char + link.slice(at(e.at) + 1);
    case 'delete':
      return link.slice(0, at(e.at)) + link.slice(at(e.at) + e.length);
    case 'insert':
      return link.slice(0, at(e.at)) + e.text + link.slice(at(e.at));
    case 'truncate':
      return link.slice(0, at(e.at));
    case 'version':
      return link.replace(/^#scene=\d+\./, `${LINK_PREFIX}${e.version}.`);
    case 'oversize':
      // past the limit, but not so far that the test itself runs out of memory
      return (link + link.slice(LINK_PREFIX.length + 2).repeat(e.times)).slice(0, 4 * MAX_LINK);
    case 'payload':
      return `${LINK_PREFIX}1.${toBase64Url(deflateRawSync(e.json))}`;
    case 'bomb':
      return `${LINK_PREFIX}1.${toBase64Url(deflateRawSync(new Uint8Array(e.bytes).fill(32)))}`;
  }
}

/** Share links: every kind of damage to a valid (and hostile-texted) link. */
export function fuzzShareLinks(runs: number, seed: number): Promise<FuzzReport> {
  return run('share-link', fc.tuple(fc.nat(), fc.array(linkEdit, { minLength: 1, maxLength: 3 })), runs, seed, async ([sceneSeed, edits]) => {
    const scene = randomScene(new Rng(sceneSeed), { hostile: true });
    let link = await encodeShareLink(scene);
    for (const e of edits) link = await editLink(link, e);
    const decoded = await decodeShareLink(link);
    if (JSON.stringify(parseScene(decoded)) !== JSON.stringify(decoded)) throw new Error('a scene from a link does not survive its own check');
    return { ok: true };
  }, (e) => e instanceof ShareLinkError);
}

/** Every single-character deletion and truncation of one valid link: each must decode or be refused by name. */
export async function exhaustiveLinkDamage(sceneSeed: number, substitutions: boolean): Promise<FuzzReport> {
  const report: FuzzReport = { target: 'share-link-exhaustive', cases: 0, outcomes: {}, reasons: 0, slowestMs: 0 };
  const reasons = new Set<string>();
  const link = await encodeShareLink(randomScene(new Rng(sceneSeed), { hostile: true }));
  const variants: string[] = [];
  for (let i = 0; i < link.length; i++) {
    variants.push(link.slice(0, i) + link.slice(i + 1), link.slice(0, i));
    if (substitutions) for (const c of 'AZaz09-_.=+/') variants.push(link.slice(0, i) + c + link.slice(i + 1));
  }
  variants.push(link + 'A'.repeat(MAX_LINK));
  for (const v of variants) {
    const t0 = performance.now();
    report.cases++;
    let outcome = 'ok';
    try {
      const s = await decodeShareLink(v);
      if (JSON.stringify(parseScene(s)) !== JSON.stringify(s)) throw new Error('a damaged link gave a scene that fails its own check');
    } catch (e) {
      if (!(e instanceof ShareLinkError)) throw new Error(`link ${JSON.stringify(v.slice(0, 80))}...: ${(e as Error).name}: ${(e as Error).message}`);
      outcome = e.name;
      reasons.add(reasonOf(e));
    }
    report.outcomes[outcome] = (report.outcomes[outcome] ?? 0) + 1;
    report.slowestMs = Math.max(report.slowestMs, performance.now() - t0);
  }
  report.reasons = reasons.size;
  return report;
}

let pth: Uint8Array | undefined;
/** The tiny ED-LoRA as a .pth in torch.save's layout, written once by Python's own pickler. */
function tinyPth(): Uint8Array {
  if (!pth) {
    const dir = mkdtempSync(join(tmpdir(), 'fuzz-pth-'));
    const { model } = tinyFiles();
    writeFileSync(join(dir, 'e.safetensors'), concatBytes(tinyLoras(model).find((l) => l.file.endsWith('edlora.safetensors'))!.parts));
    const r = spawnSync('python3', ['tests/fixtures/save_like_torch.py', join(dir, 'e.safetensors'), join(dir, 'e.pth')], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`python3 could not write the .pth fixture: ${r.stderr}`);
    pth = new Uint8Array(readFileSync(join(dir, 'e.pth')));
  }
  return pth;
}

/** A PyTorch .pth (an ED-LoRA): converted without running it, then opened as a LoRA with its concepts. */
export function fuzzPth(runs: number, seed: number): Promise<FuzzReport> {
  const base = tinyPth();
  const { model } = tinyFiles();
  // half the cases damage the pickle itself (a few hundred bytes among the storages' many thousands)
  const pkl = zipEntries(base, 'base.pth').find((e) => e.name.endsWith('data.pkl'))!;
  const inPickle = fc.array(fc.tuple(fc.integer({ min: 0, max: pkl.size - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 });
  const arb = fc.oneof(byteMutation.map((m) => ({ m })), inPickle.map((spots) => ({ spots })));
  return run('pth', arb, runs, seed, async (c) => {
    // the zip signature kept (but for random bytes), so the damage reaches the archive and the pickle
    let bytes: Uint8Array;
    if ('spots' in c) {
      bytes = base.slice();
      for (const [p, v] of c.spots) bytes[pkl.dataOffset + p] = v;
    } else {
      bytes = mutate(base, c.m).slice();
      if (c.m.kind !== 'random' && bytes.length >= 4) bytes.set(base.subarray(0, 4), 0);
    }
    const lora = await openLora(new MemorySource('fuzz.pth', bytes), model.config, undefined, crossAttentionLayers(model.config.unet).length);
    for (const mod of lora.modules) if (countNonFinite(mod.factors.up) || countNonFinite(mod.factors.down)) throw new Error(`${mod.key}: non-finite values were let through`);
    return { ok: true };
  }, isEngineError);
}

export const FUZZ_TARGETS = { safetensors: fuzzSafetensors, checkpoint: fuzzCheckpoint, lora: fuzzLora, png: fuzzPng, 'share-link': fuzzShareLinks, pth: fuzzPth } as const;
