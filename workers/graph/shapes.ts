// Static shapes of the values of the graphs we build: NumPy broadcasting, and each op's output
// shapes from its input shapes and constant inputs (Reshape targets, axes, split sizes, scales).
import type { NodeRecord } from './builder.ts';

/** The number of elements of a shape. */
export const elementCount = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** NumPy-style broadcast of two shapes. */
export function broadcastShapes(a: number[], b: number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`shapes [${a}] and [${b}] do not broadcast`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

const ELEMENTWISE = new Set(['Identity', 'Cast', 'Sigmoid', 'QuickGelu', 'Erf', 'Softmax', 'Neg', 'Exp', 'Sqrt', 'Relu', 'Tanh', 'Sin', 'Cos', 'InstanceNormalization', 'LayerNormalization']);
const BROADCAST = new Set(['Add', 'Sub', 'Mul', 'Div', 'Pow']);

/** Output shapes of one node from its input shapes (undefined where this builder does not know the op). */
export function inferShapes(n: NodeRecord, shapeOf: (v: string) => number[] | undefined, ints: (v: string) => number[] | undefined, floats: (v: string) => number[] | undefined): (number[] | undefined)[] | undefined {
  const s = n.inputs.map((v) => (v ? shapeOf(v) : undefined));
  if (s[0] === undefined) return undefined;
  const x = s[0];
  const axis = (a: number, rank: number) => (a < 0 ? a + rank : a);
  switch (n.type) {
    case 'Reshape': {
      const target = ints(n.inputs[1]);
      if (!target) return undefined;
      const size = x.reduce((p, d) => p * d, 1);
      const dims = target.map((d, i) => (d === 0 ? x[i] : d));
      const known = dims.reduce((p, d) => (d === -1 ? p : p * d), 1);
      return [dims.map((d) => (d === -1 ? size / known : d))];
    }
    case 'MultiHeadAttention': {
      // query [B, S, hidden], value [B, L, v_hidden]: the output is [B, S, v_hidden]
      const v = s[2];
      return [v ? [x[0], x[1], v[2]] : x];
    }
    case 'Transpose': {
      const perm = (n.attrs.perm as number[] | undefined) ?? x.map((_, i) => x.length - 1 - i);
      return [perm.map((p) => x[p])];
    }
    case 'MatMul': {
      const y = s[1]!;
      const batch = broadcastShapes(x.slice(0, -2), y.slice(0, -2));
      return [[...batch, x[x.length - 2], y[y.length - 1]]];
    }
    case 'Gemm': {
      const y = s[1]!;
      const m = n.attrs.transA ? x[1] : x[0];
      const k = n.attrs.transB ? y[0] : y[1];
      return [[m, k]];
    }
    case 'Conv':
    case 'ConvTranspose': {
      const w = s[1]!;
      const k = n.attrs.kernel_shape as number[];
      const pads = (n.attrs.pads as number[] | undefined) ?? [0, 0, 0, 0];
      const strides = (n.attrs.strides as number[] | undefined) ?? [1, 1];
      if (n.type === 'Conv') return [[x[0], w[0], ...[0, 1].map((i) => Math.floor((x[2 + i] + pads[i] + pads[i + 2] - k[i]) / strides[i]) + 1)]];
      const outPad = (n.attrs.output_padding as number[] | undefined) ?? [0, 0];
      return [[x[0], w[1], ...[0, 1].map((i) => (x[2 + i] - 1) * strides[i] - pads[i] - pads[i + 2] + k[i] + outPad[i])]];
    }
    case 'ReduceMean':
    case 'ReduceSum':
    case 'ReduceMax': {
      const axes = ((n.attrs.axes as number[] | undefined) ?? (n.inputs[1] ? ints(n.inputs[1]) : undefined) ?? x.map((_, i) => i)).map((a) => axis(a, x.length));
      const keep = n.attrs.keepdims !== 0;
      return [x.flatMap((d, i) => (axes.includes(i) ? (keep ? [1] : []) : [d]))];
    }
    case 'Resize': {
      const scales = floats(n.inputs[2]);
      return scales ? [x.map((d, i) => Math.floor(d * scales[i]))] : undefined;
    }
    case 'Concat': {
      const a = axis(n.attrs.axis as number, x.length);
      if (s.some((v) => !v)) return undefined;
      return [x.map((d, i) => (i === a ? s.reduce((p, v) => p + v![i], 0) : d))];
    }
    case 'Split': {
      const a = axis((n.attrs.axis as number | undefined) ?? 0, x.length);
      const sizes = ints(n.inputs[1]);
      return sizes?.map((len) => x.map((d, i) => (i === a ? len : d)));
    }
    case 'Gather': {
      const a = axis((n.attrs.axis as number | undefined) ?? 0, x.length);
      const idx = s[1];
      return idx ? [[...x.slice(0, a), ...idx, ...x.slice(a + 1)]] : undefined;
    }
    case 'Expand': {
      const shape = ints(n.inputs[1]);
      return shape ? [broadcastShapes(x, shape)] : undefined;
    }
    case 'Slice': {
      const [starts, ends, axes] = [2, 3, 4].map((i) => (n.inputs[i - 1] ? ints(n.inputs[i - 1]) : undefined));
      if (!starts || !ends) return undefined;
      const out = [...x];
      (axes ?? starts.map((_, i) => i)).forEach((a, i) => {
        const ax = axis(a, x.length);
        const clamp = (v: number) => Math.max(0, Math.min(x[ax], v < 0 ? v + x[ax] : v));
        out[ax] = clamp(ends[i]) - clamp(starts[i]);
      });
      return [out];
    }
    default:
      if (ELEMENTWISE.has(n.type)) return [x];
      if (BROADCAST.has(n.type)) return s[1] ? [broadcastShapes(x, s[1])] : undefined;
      return undefined;
  }
}
