// The merge kernel checked against the float64 reference on seeded random shapes (sizes that are
// not multiples of the tile, several terms, LoHa and LoKr products, DoRA terms on either axis, a
// restore), for both weight storages and
// both plan forms. The Node tests and the studio's GPU self-test (run in the browser) share it.
import { floatsToHalf, halvesToFloat } from '../checkpoint/dtype.ts';
import { Rng } from '../engine/random.ts';
import { LoraMergeKernel, type WeightStorage } from '../gpu/lora-merge.ts';
import { readBuffer, uploadBuffer } from '../gpu/buffers.ts';
import { mergeReference, type ReferenceTerm } from '../reference/lora.ts';
import { channelGains } from './dense.ts';
import { alignUp, PACK_ALIGN, planMerge, type MergeMode, type MergeSegmentSpec } from './merge-plan.ts';

export interface MergeCaseResult {
  storage: WeightStorage;
  mode: MergeMode;
  segments: number;
  dispatches: number;
  /** Largest |gpu - reference| / (|reference| + 1) over all elements. */
  maxError: number;
  tolerance: number;
  /** Weights with no active term must come back bit for bit. */
  restoredExactly: boolean;
  ok: boolean;
}

interface CaseSegment {
  rows: number;
  cols: number;
  terms: CaseTerm[];
}

interface CaseTerm {
  rank: number;
  scale: number;
  hadamardRank?: number;
  /** LoKr: w1's [rows, cols]; the product (rank 0: a whole matrix) is the second factor. */
  kron?: [number, number];
  /** DoRA: per row, or per input channel of `kernel` columns; alpha inside the norm. */
  dora?: { perInput: boolean; kernel: number; alpha: number };
}

// Shapes chosen to hit partial tiles in both directions, ranks above and below the 16-wide step,
// and a weight whose LoRA is switched off (no terms).
export const MERGE_CASES: CaseSegment[] = [
  { rows: 1, cols: 2, terms: [{ rank: 1, scale: 0.5 }] },
  { rows: 17, cols: 34, terms: [{ rank: 3, scale: 1.25 }] },
  { rows: 40, cols: 70, terms: [{ rank: 20, scale: 0.75 }, { rank: 4, scale: -0.5 }] },
  { rows: 64, cols: 64, terms: [{ rank: 16, scale: 1 }] },
  { rows: 16, cols: 144, terms: [{ rank: 4, scale: 0.8 }] },
  { rows: 33, cols: 18, terms: [{ rank: 5, scale: 0.6, hadamardRank: 7 }, { rank: 2, scale: 1 }] },
  { rows: 24, cols: 46, terms: [] },
  { rows: 3, cols: 100, terms: [{ rank: 33, scale: 0.3 }, { rank: 1, scale: 2 }, { rank: 8, scale: -1 }] },
  { rows: 24, cols: 36, terms: [{ rank: 3, scale: 0.7, kron: [4, 6] }] },
  // odd second-factor width: a thread's two columns fall in different w1 columns
  { rows: 20, cols: 50, terms: [{ rank: 0, scale: -0.9, kron: [5, 10] }, { rank: 2, scale: 0.5 }] },
  { rows: 18, cols: 40, terms: [{ rank: 4, scale: 0.8, dora: { perInput: false, kernel: 1, alpha: 0.5 } }, { rank: 2, scale: 0.3 }] },
  { rows: 8, cols: 36, terms: [{ rank: 3, scale: 1.1, dora: { perInput: true, kernel: 9, alpha: 2 } }] },
  { rows: 16, cols: 18, terms: [{ rank: 2, scale: 0.6, kron: [4, 3], dora: { perInput: false, kernel: 1, alpha: 1 } }] },
];

function toStorage(values: Float32Array, storage: WeightStorage): Float32Array | Uint16Array {
  return storage === 'f32' ? values : floatsToHalf(values);
}

function fromStorage(buf: ArrayBuffer, n: number, storage: WeightStorage): Float64Array {
  if (storage === 'f32') return Float64Array.from(new Float32Array(buf, 0, n));
  return Float64Array.from(halvesToFloat(new Uint16Array(buf, 0, n)));
}

export async function runMergeCase(device: GPUDevice, kernel: LoraMergeKernel, mode: MergeMode, seed = 7): Promise<MergeCaseResult> {
  const storage = kernel.storage;
  const eb = storage === 'f16' ? 2 : 4;
  const rng = new Rng(seed);
  const factorParts: Float32Array[] = [];
  let factorAt = 0;
  const addFactor = (n: number, s: number) => {
    const v = rng.normal(n).map((x) => x * s);
    factorParts.push(v);
    const at = factorAt;
    factorAt += n;
    return { at, v };
  };
  const addGains = (v: Float32Array) => {
    factorParts.push(v);
    const at = factorAt;
    factorAt += v.length;
    return { at };
  };
  const specs: MergeSegmentSpec[] = [];
  const refs: { base: Float32Array; rows: number; cols: number; terms: ReferenceTerm[] }[] = [];
  let chunkAt = 0;
  MERGE_CASES.forEach((c, i) => {
    let base = rng.normal(c.rows * c.cols);
    // The reference starts from what the buffer really holds.
    if (storage === 'f16') base = halvesToFloat(floatsToHalf(base));
    const spec: MergeSegmentSpec = { target: `w${i}`, rows: c.rows, cols: c.cols, chunk: 0, baseOffset: chunkAt, terms: [] };
    const ref: ReferenceTerm[] = [];
    for (const t of c.terms) {
      // LoKr: up @ down is the second factor, [rows / w1Rows, cols / w1Cols]
      const [pr, pc] = t.kron ? [c.rows / t.kron[0], c.cols / t.kron[1]] : [c.rows, c.cols];
      const up = addFactor(pr * (t.rank || pc), 0.5);
      const down = addFactor(t.rank * pc, 0.5);
      const had = t.hadamardRank ? { up: addFactor(c.rows * t.hadamardRank, 0.5), down: addFactor(t.hadamardRank * c.cols, 0.5) } : undefined;
      const w1 = t.kron && addFactor(t.kron[0] * t.kron[1], 1);
      const kron = t.kron && { rows: t.kron[0], cols: t.kron[1] };
      const term: ReferenceTerm = { up: up.v, down: down.v, rank: t.rank, scale: t.scale, hadamard: had && { up: had.up.v, down: had.down.v, rank: t.hadamardRank! }, kron: kron && { ...kron, w1: w1!.v } };
      let gains: { at: number } | undefined;
      if (t.dora) {
        const channels = t.dora.perInput ? c.cols / t.dora.kernel : c.rows;
        const magnitude = rng.normal(channels).map((x) => Math.abs(x) + 0.5);
        term.dora = { ...t.dora, magnitude };
        const delta = mergeReference(new Float64Array(c.rows * c.cols), c.rows, c.cols, [{ ...term, scale: 1, dora: undefined }]);
        gains = addGains(channelGains(base, delta, c.cols, t.dora.alpha, magnitude, t.dora.perInput, t.dora.kernel));
      }
      spec.terms.push({
        up: up.at,
        down: down.at,
        rank: t.rank,
        scale: t.scale,
        hadamard: had && { up: had.up.at, down: had.down.at, rank: t.hadamardRank! },
        kron: kron && { ...kron, w1: w1!.at },
        dora: t.dora && { ...t.dora, gains: gains!.at },
      });
      ref.push(term);
    }
    specs.push(spec);
    refs.push({ base, rows: c.rows, cols: c.cols, terms: ref });
    chunkAt += alignUp(c.rows * c.cols, PACK_ALIGN);
  });

  const factors = new Float32Array(Math.max(4, factorAt));
  let at = 0;
  for (const p of factorParts) {
    factors.set(p, at);
    at += p.length;
  }
  const chunkValues = new Float32Array(chunkAt);
  specs.forEach((s, i) => chunkValues.set(refs[i].base, s.baseOffset));

  // A small scratch buffer forces the batched form to use several dispatches.
  const plan = planMerge(specs, { mode, elementBytes: eb, scratchElements: 4096 });
  const S = GPUBufferUsage.STORAGE;
  const owned: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (owned.push(b), b);
  try {
    const factorBuf = keep(uploadBuffer(device, factors, S));
    const chunk = keep(uploadBuffer(device, toStorage(chunkValues, storage), S));
    const targets = new Map(
      specs.map((s) => {
        const garbage = new Float32Array(s.rows * s.cols).fill(12345);
        return [s.target, keep(uploadBuffer(device, toStorage(garbage, storage), S))] as const;
      }),
    );
    const scratch = plan.scratchBytes ? keep(device.createBuffer({ size: alignUp(plan.scratchBytes, 4), usage: S | GPUBufferUsage.COPY_SRC })) : undefined;
    await kernel.run(plan, { factors: factorBuf, chunk: () => chunk, target: (k) => targets.get(k)!, scratch });

    let maxError = 0;
    let restoredExactly = true;
    for (let i = 0; i < specs.length; i++) {
      const s = specs[i];
      const n = s.rows * s.cols;
      const raw = await readBuffer(device, targets.get(s.target)!, 0, n * eb);
      if (s.terms.length === 0) {
        const want = new Uint8Array(toStorage(refs[i].base, storage).buffer, 0, n * eb);
        const got = new Uint8Array(raw);
        for (let j = 0; j < n * eb; j++) if (got[j] !== want[j]) restoredExactly = false;
        continue;
      }
      const got = fromStorage(raw, n, storage);
      const want = mergeReference(refs[i].base, s.rows, s.cols, refs[i].terms);
      for (let j = 0; j < n; j++) maxError = Math.max(maxError, Math.abs(got[j] - want[j]) / (Math.abs(want[j]) + 1));
    }
    // f32: accumulation error of a few ranks' worth of products; f16: one rounding of the result.
    const tolerance = storage === 'f32' ? 2e-6 : 2 ** -10;
    return { storage, mode, segments: specs.length, dispatches: plan.passes.length, maxError, tolerance, restoredExactly, ok: maxError <= tolerance && restoredExactly };
  } finally {
    for (const b of owned) b.destroy();
  }
}

/** Every storage x form combination. */
export async function mergeSelfTest(device: GPUDevice, seed = 7): Promise<MergeCaseResult[]> {
  const results: MergeCaseResult[] = [];
  for (const storage of ['f32', 'f16'] as WeightStorage[]) {
    const kernel = await LoraMergeKernel.create(device, storage);
    for (const mode of ['batched', 'direct'] as MergeMode[]) results.push(await runMergeCase(device, kernel, mode, seed));
    kernel.dispose();
  }
  return results;
}
