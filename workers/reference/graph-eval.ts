// A float64 interpreter for the graphs our builder records, op by op from the ONNX definitions: the
// reference that finite differences run on when the gradient graphs are tested. Slow and plain.
import type { GraphBuilder, NodeRecord } from '../graph/builder.ts';
import { broadcastShapes, elementCount as size } from '../graph/shapes.ts';
import { conv2d, erf, type T } from './nn.ts';

const strides = (shape: number[]) => {
  const s = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
};

/** Index into `shape` (broadcast from `out`) of the flat position `i` of `out`. */
function broadcastIndex(i: number, out: number[], outStrides: number[], shape: number[], st: number[]): number {
  let idx = 0;
  const lead = out.length - shape.length;
  for (let d = 0; d < out.length; d++) {
    const coord = Math.floor(i / outStrides[d]) % out[d];
    if (d >= lead && shape[d - lead] !== 1) idx += coord * st[d - lead];
  }
  return idx;
}

function binary(a: T, b: T, f: (x: number, y: number) => number): T {
  const shape = broadcastShapes(a.shape, b.shape);
  const os = strides(shape);
  const [sa, sb] = [strides(a.shape), strides(b.shape)];
  const data = new Float64Array(size(shape));
  for (let i = 0; i < data.length; i++) data[i] = f(a.data[broadcastIndex(i, shape, os, a.shape, sa)], b.data[broadcastIndex(i, shape, os, b.shape, sb)]);
  return { data, shape };
}

function transpose(x: T, perm: number[]): T {
  const shape = perm.map((p) => x.shape[p]);
  const xs = strides(x.shape);
  const os = strides(shape);
  const data = new Float64Array(x.data.length);
  for (let i = 0; i < data.length; i++) {
    let src = 0;
    for (let d = 0; d < shape.length; d++) src += (Math.floor(i / os[d]) % shape[d]) * xs[perm[d]];
    data[i] = x.data[src];
  }
  return { data, shape };
}

function matmul(a: T, b: T): T {
  const [m, k] = a.shape.slice(-2);
  const n = b.shape[b.shape.length - 1];
  const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const shape = [...batch, m, n];
  const nb = size(batch);
  const bs = strides(batch);
  const [ab, bb] = [a.shape.slice(0, -2), b.shape.slice(0, -2)];
  const [as, bss] = [strides(ab), strides(bb)];
  const data = new Float64Array(size(shape));
  for (let t = 0; t < nb; t++) {
    const ao = broadcastIndex(t, batch, bs, ab, as) * m * k;
    const bo = broadcastIndex(t, batch, bs, bb, bss) * k * n;
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let q = 0; q < k; q++) s += a.data[ao + i * k + q] * b.data[bo + q * n + j];
        data[t * m * n + i * n + j] = s;
      }
  }
  return { data, shape };
}

/** Reduce over `axes` (keepdims shape returned). */
function reduce(x: T, axes: number[], f: 'sum' | 'mean' | 'max'): T {
  const shape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const data = new Float64Array(size(shape)).fill(f === 'max' ? -Infinity : 0);
  const xs = strides(x.shape);
  const os = strides(shape);
  for (let i = 0; i < x.data.length; i++) {
    let o = 0;
    for (let d = 0; d < shape.length; d++) if (shape[d] !== 1) o += (Math.floor(i / xs[d]) % x.shape[d]) * os[d];
    data[o] = f === 'max' ? Math.max(data[o], x.data[i]) : data[o] + x.data[i];
  }
  if (f === 'mean') {
    const count = axes.reduce((p, a) => p * x.shape[a], 1);
    for (let i = 0; i < data.length; i++) data[i] /= count;
  }
  return { data, shape };
}

/** Normalise over `axes` (mean 0, variance 1, biased variance). */
function normalise(x: T, axes: number[], eps: number): T {
  const mean = reduce(x, axes, 'mean');
  const centred = binary(x, mean, (a, b) => a - b);
  const variance = reduce(binary(centred, centred, (a, b) => a * b), axes, 'mean');
  return binary(centred, variance, (c, v) => c / Math.sqrt(v + eps));
}

function slice(x: T, axis: number, start: number, len: number): T {
  const shape = x.shape.map((d, i) => (i === axis ? len : d));
  const os = strides(shape);
  const xs = strides(x.shape);
  const data = new Float64Array(size(shape));
  for (let i = 0; i < data.length; i++) {
    let src = 0;
    for (let d = 0; d < shape.length; d++) src += ((Math.floor(i / os[d]) % shape[d]) + (d === axis ? start : 0)) * xs[d];
    data[i] = x.data[src];
  }
  return { data, shape };
}

function concat(parts: T[], axis: number): T {
  const shape = parts[0].shape.map((d, i) => (i === axis ? parts.reduce((a, p) => a + p.shape[i], 0) : d));
  const os = strides(shape);
  const data = new Float64Array(size(shape));
  for (let i = 0; i < data.length; i++) {
    let coord = Math.floor(i / os[axis]) % shape[axis];
    let k = 0;
    while (coord >= parts[k].shape[axis]) coord -= parts[k++].shape[axis];
    const p = parts[k];
    const ps = strides(p.shape);
    let src = 0;
    for (let d = 0; d < shape.length; d++) src += (d === axis ? coord : Math.floor(i / os[d]) % shape[d]) * ps[d];
    data[i] = p.data[src];
  }
  return { data, shape };
}

const unary = (x: T, f: (v: number) => number): T => ({ data: x.data.map(f), shape: x.shape });
const axisOf = (a: number, rank: number) => (a < 0 ? a + rank : a);

function evalNode(g: GraphBuilder, n: NodeRecord, get: (v: string) => T): T[] {
  const x = get(n.inputs[0]);
  const ints = (k: number) => g.intValues.get(n.inputs[k])!;
  const eps = (n.attrs.epsilon as { float: number } | undefined)?.float ?? 1e-5;
  switch (n.type) {
    case 'Identity':
    case 'Cast':
      return [x];
    case 'Add':
      return [binary(x, get(n.inputs[1]), (a, b) => a + b)];
    case 'Sub':
      return [binary(x, get(n.inputs[1]), (a, b) => a - b)];
    case 'Mul':
      return [binary(x, get(n.inputs[1]), (a, b) => a * b)];
    case 'Div':
      return [binary(x, get(n.inputs[1]), (a, b) => a / b)];
    case 'Neg':
      return [unary(x, (v) => -v)];
    case 'Exp':
      return [unary(x, Math.exp)];
    case 'Sqrt':
      return [unary(x, Math.sqrt)];
    case 'Sigmoid':
      return [unary(x, (v) => 1 / (1 + Math.exp(-v)))];
    case 'QuickGelu': {
      const alpha = (n.attrs.alpha as { float: number } | undefined)?.float ?? 1.702;
      return [unary(x, (v) => v / (1 + Math.exp(-alpha * v)))];
    }
    case 'Relu':
      return [unary(x, (v) => Math.max(0, v))];
    case 'Erf':
      return [unary(x, erf)];
    case 'Reshape':
      return [{ data: x.data, shape: g.shape(n.outputs[0]) }];
    case 'Transpose':
      return [transpose(x, n.attrs.perm as number[])];
    case 'MatMul':
      return [matmul(x, get(n.inputs[1]))];
    case 'Gemm': {
      const w = get(n.inputs[1]);
      let y = matmul(x, n.attrs.transB ? transpose(w, [1, 0]) : w);
      if (n.inputs[2]) y = binary(y, get(n.inputs[2]), (a, b) => a + b);
      return [y];
    }
    case 'Conv': {
      const w = get(n.inputs[1]);
      const k = (n.attrs.kernel_shape as number[])[0];
      const stride = ((n.attrs.strides as number[] | undefined) ?? [1, 1])[0];
      const bias = n.inputs[2] ? get(n.inputs[2]).data : new Float64Array(w.shape[0]);
      return [conv2d(x, w.data, bias, w.shape[0], k, stride)];
    }
    case 'Softmax': {
      const axis = axisOf((n.attrs.axis as number | undefined) ?? -1, x.shape.length);
      const e = binary(x, reduce(x, [axis], 'max'), (a, b) => Math.exp(a - b));
      return [binary(e, reduce(e, [axis], 'sum'), (a, b) => a / b)];
    }
    case 'InstanceNormalization': {
      const axes = x.shape.slice(2).map((_, i) => i + 2);
      const shape = [x.shape[1], ...axes.map(() => 1)];
      const scale = { data: get(n.inputs[1]).data, shape };
      const bias = { data: get(n.inputs[2]).data, shape };
      return [binary(binary(normalise(x, axes, eps), scale, (a, b) => a * b), bias, (a, b) => a + b)];
    }
    case 'LayerNormalization': {
      const from = axisOf((n.attrs.axis as number | undefined) ?? -1, x.shape.length);
      const axes = x.shape.slice(from).map((_, i) => i + from);
      return [binary(binary(normalise(x, axes, eps), get(n.inputs[1]), (a, b) => a * b), get(n.inputs[2]), (a, b) => a + b)];
    }
    case 'Resize': {
      const shape = g.shape(n.outputs[0]);
      const os = strides(shape);
      const xs = strides(x.shape);
      const data = new Float64Array(size(shape));
      for (let i = 0; i < data.length; i++) {
        let src = 0;
        for (let d = 0; d < shape.length; d++) src += Math.floor(((Math.floor(i / os[d]) % shape[d]) * x.shape[d]) / shape[d]) * xs[d];
        data[i] = x.data[src];
      }
      return [{ data, shape }];
    }
    case 'Concat':
      return [concat(n.inputs.map(get), axisOf(n.attrs.axis as number, x.shape.length))];
    case 'Split': {
      const axis = axisOf((n.attrs.axis as number | undefined) ?? 0, x.shape.length);
      let at = 0;
      return ints(1).map((len) => {
        const part = slice(x, axis, at, len);
        at += len;
        return part;
      });
    }
    case 'ReduceMean':
    case 'ReduceSum': {
      const axes = ((n.attrs.axes as number[] | undefined) ?? (n.inputs[1] ? ints(1) : x.shape.map((_, i) => i))).map((a) => axisOf(a, x.shape.length));
      const r = reduce(x, axes, n.type === 'ReduceMean' ? 'mean' : 'sum');
      return [{ data: r.data, shape: g.shape(n.outputs[0]) }];
    }
    case 'Expand': {
      const shape = g.shape(n.outputs[0]);
      return [binary(x, { data: new Float64Array(size(shape)), shape }, (a) => a)];
    }
    default:
      throw new Error(`the float64 reference has no ${n.type}`);
  }
}

/**
 * Run the graph in float64 from `inputs` (graph inputs and weights by name); returns every value
 * computed, by name. Nodes whose inputs are missing are skipped (a part of the graph not asked for);
 * only the first `nodeCount` nodes run (the forward part of a graph that also holds its gradient).
 */
export function evalGraph(g: GraphBuilder, inputs: Map<string, T>, nodeCount = g.records.length): Map<string, T> {
  const values = new Map(inputs);
  for (const [name, v] of g.f32Values) values.set(name, { data: Float64Array.from(v), shape: g.shape(name) });
  for (const n of g.records.slice(0, nodeCount)) {
    if (!n.inputs.every((v) => !v || values.has(v) || g.intValues.has(v))) continue;
    const outs = evalNode(g, n, (v) => values.get(v)!);
    n.outputs.forEach((o, i) => values.set(o, outs[i]));
  }
  return values;
}
