// What a graph needs in memory, counted from its static shapes before anything is allocated: every
// intermediate value lives from the node that makes it to the last node that reads it (outputs to the
// end), so the peak over the node order is the least any executor needs for this graph. onnxruntime
// rounds buffers up into size buckets and keeps freed ones for reuse, so the bytes it really holds
// are at or above this floor; the benchmarks put measured peaks beside the plan.
import type { GraphBuilder, NodeRecord } from './builder.ts';
import { elementCount } from './shapes.ts';

export interface GraphMemory {
  /** Bytes of the weights the graph binds (the engine's buffers, not the executor's). */
  weightBytes: number;
  /** The peak of live intermediate values and graph inputs other than weights, in bytes. */
  activationPeakBytes: number;
  /** The largest single value (or per-node temporary) and what it is. */
  largestBufferBytes: number;
  largestBuffer: string;
  /** The largest single weight and its name (a buffer of the engine's, bound as it is). */
  largestWeightBytes: number;
  largestWeight: string;
  /** Bytes moved per run by convolution weights transposed into the layout their kernel reads. */
  weightTransposeBytes: number;
  weightTransposes: number;
}

export interface GraphMemoryOptions {
  /**
   * The executor transposes a convolution weight that is a graph input into a temporary buffer on
   * every run (onnxruntime's WebGPU EP in its default NHWC layout does, except for initializers).
   */
  transposesConvWeights?: boolean;
  /** 1x1 convolutions read their weight as it is (onnxruntime's WebGPU EP in NCHW). */
  pointwiseAsIs?: boolean;
}

/** Ops whose output is a view of their input's buffer. */
const ALIASES = new Set(['Reshape', 'Squeeze', 'Unsqueeze', 'Flatten']);

const CAST_BYTES: Record<number, number> = { 1: 4, 10: 2, 7: 8 };

/**
 * Bytes per element of every value: casts say theirs, inputs theirs, int64 constants 8, Identity and
 * views their input's, the rest the graph's activation type.
 */
function elementBytes(g: GraphBuilder): (v: string, producer?: NodeRecord) => number {
  const known = new Map<string, number>(g.inputs.map((i) => [i.name, i.type === 'int64' ? 8 : i.type === 'float16' ? 2 : 4]));
  const of = (v: string, producer?: NodeRecord): number => {
    const hit = known.get(v);
    if (hit !== undefined) return hit;
    let b = g.bytesPerElement;
    if (g.intValues.has(v)) b = 8;
    else if (producer?.type === 'Cast') b = CAST_BYTES[producer.attrs.to as number] ?? b;
    else if (producer && (producer.type === 'Identity' || ALIASES.has(producer.type))) b = of(producer.inputs[0]);
    known.set(v, b);
    return b;
  };
  return of;
}

/** onnxruntime's WebGPU EP: fewer queries than this take the split-K path (flash_attention.cc). */
const SPLIT_K_BELOW_QUERIES = 32;
/** The split-K path's key tile. */
const SPLIT_K_TILE = 64;

/**
 * What onnxruntime's WebGPU EP allocates inside one MultiHeadAttention node (flash_attention.cc,
 * onnxruntime-web 1.30, its programs seen in a profile): the keys and values copied into
 * [B, heads, Nk, d] buffers for the FlashAttention program, and where the queries are fewer than 32,
 * the split-K path's partial outputs [B, heads, Nq, ceil(Nk / 64), d] and their float32 max and sum.
 * Our graphs fuse no head wider than that program takes (`fusesHead`), so the split-K path runs
 * only for short query sets.
 */
function attentionScratch(g: GraphBuilder, n: NodeRecord, size: (v: string) => number, bytesOf: (v: string) => number): { bytes: number; largest: number } {
  const [q, k, v] = n.inputs;
  const copies = size(k) + size(v);
  const [b, nq, c] = g.shape(q);
  if (nq >= SPLIT_K_BELOW_QUERIES) return { bytes: copies, largest: Math.max(size(k), size(v)) };
  const tiles = Math.ceil(g.shape(k)[1] / SPLIT_K_TILE);
  const heads = n.attrs.num_heads as number;
  const partials = b * nq * tiles * c * bytesOf(q);
  return { bytes: copies + partials + b * heads * nq * tiles * 2 * 4, largest: Math.max(size(k), size(v), partials) };
}

export function graphMemory(g: GraphBuilder, options: GraphMemoryOptions = {}): GraphMemory {
  const bytesOf = elementBytes(g);
  const size = (v: string, producer?: NodeRecord) => {
    const s = g.shapes.get(v);
    return s ? elementCount(s) * bytesOf(v, producer) : 0;
  };
  let weightBytes = 0;
  let largestWeight = { bytes: 0, what: '' };
  for (const w of g.weights.values()) {
    const b = elementCount(w.dims) * g.bytesPerElement;
    weightBytes += b;
    if (b > largestWeight.bytes) largestWeight = { bytes: b, what: `the weight ${w.name}` };
  }

  // Reshape and its kin give a view of their input's buffer (onnxruntime aliases them): a buffer is
  // its root value's, and lives to the last reader of any of its views
  const root = new Map<string, string>();
  const rootOf = (v: string) => root.get(v) ?? v;
  for (const n of g.records) if (ALIASES.has(n.type)) root.set(n.outputs[0], rootOf(n.inputs[0]));
  const lastUse = new Map<string, number>();
  g.records.forEach((n, i) => n.inputs.forEach((v) => v && lastUse.set(rootOf(v), i)));
  for (const o of g.outputs) lastUse.set(rootOf(o.name), g.records.length);

  let live = 0;
  let largest = { bytes: 0, what: '' };
  const consider = (bytes: number, what: string) => {
    if (bytes > largest.bytes) largest = { bytes, what };
  };
  const sizes = new Map<string, number>();
  for (const i of g.inputs) {
    const b = size(i.name);
    sizes.set(i.name, b);
    live += b;
    consider(b, `input ${i.name}`);
  }
  let peak = live;
  let transposeBytes = 0;
  let transposes = 0;
  g.records.forEach((n, idx) => {
    let made = 0;
    if (!ALIASES.has(n.type)) {
      for (const o of n.outputs) {
        const b = size(o, n);
        sizes.set(o, b);
        made += b;
        consider(b, `${n.type} ${o}`);
      }
    }
    let temp = 0;
    const pointwise = n.type === 'Conv' && g.shapes.get(n.inputs[1])?.slice(2).every((k) => k === 1);
    if (options.transposesConvWeights && (n.type === 'Conv' || n.type === 'ConvTranspose') && g.weights.has(n.inputs[1]) && !(pointwise && options.pointwiseAsIs)) {
      const w = elementCount(g.shape(n.inputs[1])) * g.bytesPerElement;
      temp = w;
      transposeBytes += 2 * w;
      transposes += 1;
      consider(w, `the transposed weight of ${n.inputs[1]}`);
    }
    if (n.type === 'MultiHeadAttention') {
      const scratch = attentionScratch(g, n, size, bytesOf);
      temp += scratch.bytes;
      consider(scratch.largest, `the attention scratch of ${n.outputs[0]}`);
    }
    live += made;
    peak = Math.max(peak, live + temp);
    for (const v of new Set(n.inputs.filter(Boolean).map(rootOf))) if (lastUse.get(v) === idx) live -= sizes.get(v) ?? 0;
  });
  return { weightBytes, activationPeakBytes: peak, largestBufferBytes: largest.bytes, largestBuffer: largest.what, largestWeightBytes: largestWeight.bytes, largestWeight: largestWeight.what, weightTransposeBytes: transposeBytes, weightTransposes: transposes };
}
