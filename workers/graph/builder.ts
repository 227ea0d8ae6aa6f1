// A small ONNX graph builder. Weights are graph *inputs*, not initializers: the engine uploads them
// itself (straight from the checkpoint's byte ranges) into GPU buffers and binds them at run time,
// so a LoRA kernel can rewrite any of them between two steps without touching the session.
import onnxProto from 'onnx-proto';
import { floatsToHalf } from '../checkpoint/dtype.ts';

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

export class GraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly initializers: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly constCache = new Map<string, string>();
  readonly inputs: ValueSpec[] = [];
  readonly outputs: ValueSpec[] = [];
  readonly weights = new Map<string, WeightSpec>();
  private counter = 0;

  /** `dtype` is the type of weights and activations inside the graph. */
  constructor(readonly dtype: 'float32' | 'float16' = 'float32') {}

  private fresh(hint: string): string {
    return `${hint}_${this.counter++}`;
  }

  input(name: string, type: ElemType, dims: number[]): string {
    this.inputs.push({ name, type, dims });
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
    return name;
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
    return name;
  }

  /** A constant tensor in the graph's activation type. */
  floats(values: ArrayLike<number>, dims: number[]): string {
    const name = this.fresh('const_f');
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
    this.nodes.push(this.node(type, inputs, [out], attrs));
    return out;
  }

  opMulti(type: string, inputs: string[], nOut: number, attrs: Record<string, AttrValue> = {}): string[] {
    const outs = Array.from({ length: nOut }, () => this.fresh(type.toLowerCase()));
    this.nodes.push(this.node(type, inputs, outs, attrs));
    return outs;
  }

  private node(type: string, inputs: string[], outputs: string[], attrs: Record<string, AttrValue>) {
    const attribute = Object.entries(attrs).map(([name, v]) => {
      if (typeof v === 'string') return onnx.AttributeProto.create({ name, type: 3, s: new TextEncoder().encode(v) });
      if (Array.isArray(v)) return onnx.AttributeProto.create({ name, type: 7, ints: v });
      if (typeof v === 'object') return onnx.AttributeProto.create({ name, type: 1, f: v.float });
      return onnx.AttributeProto.create({ name, type: 2, i: v });
    });
    return onnx.NodeProto.create({ opType: type, input: inputs, output: outputs, attribute, name: this.fresh(`n_${type}`) });
  }

  /** Every weight becomes a graph input of the activation type. */
  encode(): Uint8Array {
    const valueInfo = (v: ValueSpec) =>
      onnx.ValueInfoProto.create({
        name: v.name,
        type: { tensorType: { elemType: ONNX_TYPE[v.type], shape: { dim: v.dims.map((d) => ({ dimValue: d })) } } },
      });
    const weightInputs = [...this.weights.values()].map((w) => valueInfo({ name: w.name, type: this.dtype, dims: w.dims }));
    const graph = onnx.GraphProto.create({
      name: 'g',
      node: this.nodes,
      initializer: this.initializers,
      input: [...this.inputs.map(valueInfo), ...weightInputs],
      output: this.outputs.map(valueInfo),
    });
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'lora-studio',
      opsetImport: [{ domain: '', version: 17 }],
      graph,
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
