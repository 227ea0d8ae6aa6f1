// A small ONNX graph builder. Weights are graph *inputs*, not initializers: the engine uploads them
// itself (straight from the checkpoint's byte ranges) into GPU buffers and binds them at run time,
// so a LoRA kernel can rewrite any of them between two steps without touching the session.
import onnxProto from 'onnx-proto';
import { floatsToHalf } from '../checkpoint/dtype.ts';
import { inferShapes } from './shapes.ts';

const { onnx } = onnxProto;

export type ElemType = 'float32' | 'float16' | 'int64';

const ONNX_TYPE: Record<ElemType, number> = { float32: 1, float16: 10, int64: 7 };

export type AttrValue = number | number[] | string | { float: number };

export interface WeightSpec {
  name: string;
  dims: number[];
}

export interface ValueSpec {
  name: string;
  type: ElemType;
  dims: number[];
}

/** One node as the builder recorded it (what autodiff walks). */
export interface NodeRecord {
  type: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, AttrValue>;
  /** The operator set domain; absent for the default ONNX domain. */
  domain?: string;
}

/**
 * How the graphs compute attention (`workers/graph/layers.ts`):
 * - `fused`: `com.microsoft.MultiHeadAttention` (FlashAttention on the WebGPU EP), the score matrix is
 *   never a tensor; layers whose maps a job reads, and heads wider than the EP's FlashAttention
 *   program takes (`fusesHead` in layers.ts), are built `chunked`;
 * - `chunked`: MatMul, Softmax, MatMul over query chunks, so no score tensor exceeds `bufferLimit`;
 * - `explicit`: the same in one piece (the form every numeric reference was first checked against).
 */
export type AttentionForm = 'fused' | 'chunked' | 'explicit';

/**
 * How a group norm is built (the same function either way):
 * - `instance`: one InstanceNormalization over [B, groups, rest] (two GPU programs: the statistics,
 *   one 256-wide workgroup per group, and the normalisation), then the per-channel affine;
 * - `reductions`: the mean and variance as ReduceMean ops (two passes, variance of the centred values).
 *   More dispatches, but on a CPU adapter (SwiftShader), whose workgroup barriers are expensive, the
 *   statistics program alone was 41 % of a tiny UNet run; there this form made a generation 40 % faster.
 */
export type NormForm = 'instance' | 'reductions';

/**
 * How a k x k convolution (k > 1) is built. Its weight is a graph input, so the WebGPU EP transposes it
 * into the layout its kernel reads on every run (it keeps a transposed copy only of constants):
 * - `direct`: the Conv node (the weight transposed each run);
 * - `unfold`: the input unfolded into [B, Ci*k*k, Ho*Wo] by a Conv with a constant one-hot kernel (one
 *   output channel per input channel and tap), then MatMul with the weight read as [Co, Ci*k*k], its
 *   layout as stored, so nothing is transposed and a LoRA rewrite of the weight is read as it is;
 * - `auto`: `unfold` where it moves fewer bytes than the transpose, i.e. where the unfolded input
 *   (B*Ho*Wo x Ci*k*k) is smaller than the weight (Co x Ci*k*k): the low-resolution layers, which
 *   hold most of a UNet's convolution weights.
 * Unfold only for sessions in NCHW (as the engine compiles): in NHWC the WebGPU EP's grouped
 * convolution with k*k outputs per group gave wrong numbers on SwiftShader.
 */
export type ConvForm = 'direct' | 'unfold' | 'auto';

export interface GraphOptions {
  attention?: AttentionForm;
  /** How k x k convolutions are built (default `direct`). */
  conv?: ConvForm;
  /** The largest single intermediate buffer an attention layer or an unfolded convolution may make, in bytes (default 128 MiB). */
  bufferLimit?: number;
  /** How group norms are built (default `instance`). */
  norm?: NormForm;
}

export const DEFAULT_BUFFER_LIMIT = 128 * 2 ** 20;

export class GraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  /** The nodes in the order they were added. */
  readonly records: NodeRecord[] = [];
  /** The static shape of every value whose shape is known (all values of the graphs we build). */
  readonly shapes = new Map<string, number[]>();
  /** The values of int64 constants (Reshape targets, axes, split sizes). */
  readonly intValues = new Map<string, number[]>();
  /** The values of float constants (scalars, Resize scales, norm parameters). */
  readonly f32Values = new Map<string, number[]>();
  private readonly initializers: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly constCache = new Map<string, string>();
  private readonly sharedValues = new Map<string, string | string[]>();
  readonly inputs: ValueSpec[] = [];
  readonly outputs: ValueSpec[] = [];
  readonly weights = new Map<string, WeightSpec>();
  private counter = 0;

  readonly attention: AttentionForm;
  readonly bufferLimit: number;
  readonly norm: NormForm;
  readonly conv: ConvForm;
  private usesMicrosoftDomain = false;

  /** `dtype` is the type of weights and activations inside the graph. */
  constructor(
    readonly dtype: 'float32' | 'float16' = 'float32',
    options: GraphOptions = {},
  ) {
    this.attention = options.attention ?? 'explicit';
    this.bufferLimit = options.bufferLimit ?? DEFAULT_BUFFER_LIMIT;
    this.norm = options.norm ?? 'instance';
    this.conv = options.conv ?? 'direct';
  }

  /**
   * Values made once per graph for `key` and read by every layer that asks (e.g. a large one-hot
   * kernel several layers share, or one grid's isolation factors cut into query chunks).
   */
  shared<T extends string | string[]>(key: string, make: () => T): T {
    let made = this.sharedValues.get(key) as T | undefined;
    if (made === undefined) {
      made = make();
      this.sharedValues.set(key, made);
    }
    return made;
  }

  /** Bytes per element of the activation type. */
  get bytesPerElement(): number {
    return this.dtype === 'float16' ? 2 : 4;
  }

  private fresh(hint: string): string {
    return `${hint}_${this.counter++}`;
  }

  input(name: string, type: ElemType, dims: number[]): string {
    this.inputs.push({ name, type, dims });
    this.shapes.set(name, dims);
    return name;
  }

  output(value: string, name: string, type: ElemType, dims: number[]): void {
    this.op('Identity', [value], {}, name);
    this.outputs.push({ name, type, dims });
  }

  /** Declare (once) a weight input with its expected shape; returns its value name. */
  weight(name: string, dims: number[]): string {
    const prev = this.weights.get(name);
    if (prev) {
      if (prev.dims.join(',') !== dims.join(',')) throw new Error(`weight ${name} declared with two shapes`);
      return name;
    }
    this.weights.set(name, { name, dims });
    this.shapes.set(name, dims);
    return name;
  }

  /**
   * Move weights already declared to the end of the declaration order, which a model's weight list
   * follows (and with it the seeded test model's values): for a node emitted earlier than its
   * weights' place in that list.
   */
  declareLast(names: string[]): void {
    for (const n of names) {
      const spec = this.weights.get(n);
      if (!spec) throw new Error(`weight ${n} was not declared`);
      this.weights.delete(n);
      this.weights.set(n, spec);
    }
  }

  /** An int64 constant (shapes, axes, split sizes). */
  ints(values: number[]): string {
    const key = `i:${values.join(',')}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = this.fresh('const_i64');
    this.initializers.push(
      onnx.TensorProto.create({ name, dataType: ONNX_TYPE.int64, dims: [values.length], int64Data: values }),
    );
    this.constCache.set(key, name);
    this.shapes.set(name, [values.length]);
    this.intValues.set(name, values);
    return name;
  }

  /** A constant tensor in the graph's activation type. */
  floats(values: ArrayLike<number>, dims: number[]): string {
    const name = this.fresh('const_f');
    this.shapes.set(name, dims);
    this.f32Values.set(name, Array.from(values));
    if (this.dtype === 'float16') {
      const bits = floatsToHalf(values);
      this.initializers.push(
        onnx.TensorProto.create({ name, dataType: ONNX_TYPE.float16, dims, rawData: new Uint8Array(bits.buffer) }),
      );
    } else {
      const f = Float32Array.from(values);
      this.initializers.push(
        onnx.TensorProto.create({ name, dataType: ONNX_TYPE.float32, dims, rawData: new Uint8Array(f.buffer) }),
      );
    }
    return name;
  }

  /** A float32 constant whatever the activation type (e.g. Resize scales). */
  floatsF32(values: number[]): string {
    const name = this.fresh('const_f32');
    this.shapes.set(name, [values.length]);
    this.f32Values.set(name, values);
    const f = Float32Array.from(values);
    this.initializers.push(
      onnx.TensorProto.create({ name, dataType: ONNX_TYPE.float32, dims: [values.length], rawData: new Uint8Array(f.buffer) }),
    );
    return name;
  }

  scalar(v: number): string {
    const key = `s:${v}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = this.floats([v], []);
    this.constCache.set(key, name);
    return name;
  }

  op(type: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outName?: string): string {
    const out = outName ?? this.fresh(type.toLowerCase());
    this.add(type, inputs, [out], attrs);
    return out;
  }

  /** A node of onnxruntime's contrib domain (`com.microsoft`), e.g. MultiHeadAttention. */
  msOp(type: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    const out = this.fresh(type.toLowerCase());
    this.usesMicrosoftDomain = true;
    this.add(type, inputs, [out], attrs, 'com.microsoft');
    return out;
  }

  /** A node of the given domain (a record's, when a node is emitted again): ONNX's or `com.microsoft`. */
  opIn(domain: string | undefined, type: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    if (domain === undefined) return this.op(type, inputs, attrs);
    if (domain === 'com.microsoft') return this.msOp(type, inputs, attrs);
    throw new Error(`a ${type} node of the domain ${domain}: the builder writes only ONNX's and com.microsoft`);
  }

  opMulti(type: string, inputs: string[], nOut: number, attrs: Record<string, AttrValue> = {}): string[] {
    const outs = Array.from({ length: nOut }, () => this.fresh(type.toLowerCase()));
    this.add(type, inputs, outs, attrs);
    return outs;
  }

  private add(type: string, inputs: string[], outputs: string[], attrs: Record<string, AttrValue>, domain?: string): void {
    this.nodes.push(this.node(type, inputs, outputs, attrs, domain));
    const rec: NodeRecord = domain ? { type, inputs, outputs, attrs, domain } : { type, inputs, outputs, attrs };
    this.records.push(rec);
    const shapes = inferShapes(rec, (v) => this.shapes.get(v), (v) => this.intValues.get(v), (v) => this.f32Values.get(v));
    shapes?.forEach((s, i) => s && this.shapes.set(outputs[i], s));
  }

  /** The static shape of a value; an error for a value the builder could not infer. */
  shape(v: string): number[] {
    const s = this.shapes.get(v);
    if (!s) throw new Error(`the shape of ${v} is not known`);
    return s;
  }

  private node(type: string, inputs: string[], outputs: string[], attrs: Record<string, AttrValue>, domain?: string) {
    const attribute = Object.entries(attrs).map(([name, v]) => {
      if (typeof v === 'string') return onnx.AttributeProto.create({ name, type: 3, s: new TextEncoder().encode(v) });
      if (Array.isArray(v)) return onnx.AttributeProto.create({ name, type: 7, ints: v });
      if (typeof v === 'object') return onnx.AttributeProto.create({ name, type: 1, f: v.float });
      return onnx.AttributeProto.create({ name, type: 2, i: v });
    });
    return onnx.NodeProto.create({ opType: type, input: inputs, output: outputs, attribute, name: this.fresh(`n_${type}`), ...(domain ? { domain } : {}) });
  }

  /** Drop the nodes, constants, inputs and weights that no graph output needs. */
  prune(): void {
    const need = new Set(this.outputs.map((o) => o.name));
    const keep = new Array<boolean>(this.records.length).fill(false);
    for (let i = this.records.length - 1; i >= 0; i--) {
      const r = this.records[i];
      if (!r.outputs.some((o) => need.has(o))) continue;
      keep[i] = true;
      for (const v of r.inputs) need.add(v);
    }
    const kept = <T>(list: T[], ok: (x: T, i: number) => boolean) => list.splice(0, list.length, ...list.filter(ok));
    kept(this.nodes, (_, i) => keep[i]);
    kept(this.records, (_, i) => keep[i]);
    kept(this.initializers, (t) => need.has(t.name));
    kept(this.inputs, (v) => need.has(v.name));
    for (const w of [...this.weights.keys()]) if (!need.has(w)) this.weights.delete(w);
  }

  /**
   * Every weight becomes a graph input of the activation type; or, given their values, a stored
   * initializer (a self-contained model file, as other tools load them).
   */
  encode(weightValues?: (name: string) => Float32Array): Uint8Array {
    // a negative dim is one the graph leaves free (named per value and axis, so none is tied to another)
    const valueInfo = (v: ValueSpec) =>
      onnx.ValueInfoProto.create({
        name: v.name,
        type: { tensorType: { elemType: ONNX_TYPE[v.type], shape: { dim: v.dims.map((d, i) => (d < 0 ? { dimParam: `${v.name}.${i}` } : { dimValue: d })) } } },
      });
    const weights = [...this.weights.values()];
    const stored = weightValues
      ? weights.map((w) => {
          const values = weightValues(w.name);
          const expected = w.dims.reduce((a, b) => a * b, 1);
          if (values.length !== expected) throw new Error(`weight ${w.name} has ${values.length} values; its shape needs ${expected}`);
          const bytes = this.dtype === 'float16' ? new Uint8Array(floatsToHalf(values).buffer) : new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
          return onnx.TensorProto.create({ name: w.name, dataType: ONNX_TYPE[this.dtype], dims: w.dims, rawData: bytes });
        })
      : [];
    const weightInputs = weightValues ? [] : weights.map((w) => valueInfo({ name: w.name, type: this.dtype, dims: w.dims }));
    const graph = onnx.GraphProto.create({
      name: 'g',
      node: this.nodes,
      initializer: [...this.initializers, ...stored],
      input: [...this.inputs.map(valueInfo), ...weightInputs],
      output: this.outputs.map(valueInfo),
    });
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'lora-studio',
      opsetImport: [{ domain: '', version: 17 }, ...(this.usesMicrosoftDomain ? [{ domain: 'com.microsoft', version: 1 }] : [])],
      graph,
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
