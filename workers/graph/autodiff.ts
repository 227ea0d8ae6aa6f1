// Reverse-mode differentiation of a graph we built: the vector-Jacobian product of every node on the
// path from one input (the latent) to the values that carry a seed gradient (attention maps), added
// to the same graph as ordinary ONNX nodes. The forward activations are the graph's own values, so the
// backward nodes reuse them; nodes off the path get no backward node.
import type { GraphBuilder, NodeRecord } from './builder.ts';
import { elementCount } from './shapes.ts';

const ONNX_FLOAT = 1;
const ONNX_HALF = 10;

export interface GradientOptions {
  /** The value to differentiate with respect to (a graph input). */
  wrt: string;
  /** value -> the value holding dLoss/dvalue (same shape). */
  seeds: Map<string, string>;
  /**
   * Forward values with more elements than this are not kept for the backward nodes: those get a
   * recomputed copy (the nodes that made it, emitted again from the nearest smaller values), so the
   * large value can be freed after its forward use. Attention probabilities are the case in point.
   */
  recomputeAbove?: number;
}

/**
 * Emit the backward nodes; returns the value holding dLoss/d`wrt` (zeros, as a constant, when no seed
 * depends on it). Throws, naming the op, for an op on the path without a rule here.
 */
export function emitGradient(g: GraphBuilder, { wrt, seeds, recomputeAbove = Infinity }: GradientOptions): string {
  const nodes = [...g.records];
  const producer = new Map<string, NodeRecord>();
  for (const n of nodes) if (n.outputs.length === 1) producer.set(n.outputs[0], n);
  const copies = new Map<string, string>();
  /** The value a backward node should read for forward value v: v itself, or a recomputed copy. */
  const forward = (v: string): string => {
    const n = producer.get(v);
    const size = elementCount(g.shapes.get(v) ?? []);
    if (!n || size <= recomputeAbove) return v;
    let copy = copies.get(v);
    if (!copy) {
      const inputs = n.inputs.map((i) => (i && !g.intValues.has(i) && !g.f32Values.has(i) ? forward(i) : i));
      copy = g.opIn(n.domain, n.type, inputs, n.attrs);
      copies.set(v, copy);
    }
    return copy;
  };
  // values that depend on wrt ...
  const live = new Set([wrt]);
  for (const n of nodes) if (n.inputs.some((v) => live.has(v))) n.outputs.forEach((o) => live.add(o));
  // ... and that lead to a seed
  const useful = new Set([...seeds.keys()].filter((v) => live.has(v)));
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i];
    if (n.outputs.some((o) => useful.has(o))) n.inputs.forEach((v) => live.has(v) && useful.add(v));
  }
  const parts = new Map<string, string[]>();
  const push = (v: string, gv: string) => {
    if (!useful.has(v)) return;
    const list = parts.get(v) ?? [];
    list.push(gv);
    parts.set(v, list);
  };
  for (const [v, gv] of seeds) push(v, gv);
  const total = (v: string) => {
    const list = parts.get(v);
    if (!list?.length) return undefined;
    return list.reduce((a, b) => g.op('Add', [a, b]));
  };
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i];
    if (!n.inputs.some((v) => useful.has(v))) continue;
    const gys = n.outputs.map(total);
    if (gys.every((x) => x === undefined)) continue;
    vjp(g, n, gys, (k) => useful.has(n.inputs[k]), (k, gx) => push(n.inputs[k], gx), forward);
  }
  const grad = total(wrt);
  if (grad) return grad;
  return g.op('Expand', [g.scalar(0), g.ints(g.shape(wrt))]);
}

/** Sum `gy` down to `shape` over the axes that broadcasting added or stretched. */
function unbroadcast(g: GraphBuilder, gy: string, shape: number[]): string {
  const from = g.shape(gy);
  if (from.join(',') === shape.join(',')) return gy;
  const lead = from.length - shape.length;
  const axes = from.map((_, i) => i).filter((i) => i < lead || (shape[i - lead] === 1 && from[i] !== 1));
  const summed = axes.length ? g.op('ReduceSum', [gy, g.ints(axes)], { keepdims: 1 }) : gy;
  return g.op('Reshape', [summed, g.ints(shape)]);
}

const swapLast = (rank: number) => [...Array.from({ length: rank - 2 }, (_, i) => i), rank - 1, rank - 2];

/** The mean and 1/sigma of x over `axes` (keepdims), for the normalisation rules. */
function moments(g: GraphBuilder, x: string, axes: number[], eps: number) {
  const mean = g.op('ReduceMean', [x], { axes, keepdims: 1 });
  const centred = g.op('Sub', [x, mean]);
  const variance = g.op('ReduceMean', [g.op('Mul', [centred, centred])], { axes, keepdims: 1 });
  const inv = g.op('Div', [g.scalar(1), g.op('Sqrt', [g.op('Add', [variance, g.scalar(eps)])])]);
  return { xhat: g.op('Mul', [centred, inv]), inv };
}

/** d/dx of a normalisation y = (x - mean) / sigma over `axes`, given gxhat = dL/dy scaled by the affine. */
function normBackward(g: GraphBuilder, gxhat: string, xhat: string, inv: string, axes: number[]): string {
  const m1 = g.op('ReduceMean', [gxhat], { axes, keepdims: 1 });
  const m2 = g.op('ReduceMean', [g.op('Mul', [gxhat, xhat])], { axes, keepdims: 1 });
  return g.op('Mul', [g.op('Sub', [g.op('Sub', [gxhat, m1]), g.op('Mul', [xhat, m2])]), inv]);
}

function vjp(g: GraphBuilder, n: NodeRecord, gys: (string | undefined)[], wants: (k: number) => boolean, give: (k: number, gx: string) => void, forward: (v: string) => string): void {
  // forward values read through `forward` (a recomputed copy where the original is too large to keep);
  // shapes are the same either way
  const [x, y] = n.inputs.map((v) => (v ? forward(v) : v));
  const gy = gys[0]!;
  const shape = (v: string) => g.shape(v);
  const out = forward(n.outputs[0]);
  switch (n.type) {
    case 'Identity':
      return give(0, gy);
    case 'Cast': {
      const inputType = g.inputs.find((i) => i.name === x)?.type ?? g.dtype;
      return give(0, g.op('Cast', [gy], { to: inputType === 'float16' ? ONNX_HALF : ONNX_FLOAT }));
    }
    case 'Add':
      if (wants(0)) give(0, unbroadcast(g, gy, shape(x)));
      if (wants(1)) give(1, unbroadcast(g, gy, shape(y)));
      return;
    case 'Sub':
      if (wants(0)) give(0, unbroadcast(g, gy, shape(x)));
      if (wants(1)) give(1, unbroadcast(g, g.op('Neg', [gy]), shape(y)));
      return;
    case 'Mul':
      if (wants(0)) give(0, unbroadcast(g, g.op('Mul', [gy, y]), shape(x)));
      if (wants(1)) give(1, unbroadcast(g, g.op('Mul', [gy, x]), shape(y)));
      return;
    case 'Div':
      if (wants(0)) give(0, unbroadcast(g, g.op('Div', [gy, y]), shape(x)));
      if (wants(1)) give(1, unbroadcast(g, g.op('Neg', [g.op('Div', [g.op('Mul', [gy, out]), y])]), shape(y)));
      return;
    case 'Neg':
      return give(0, g.op('Neg', [gy]));
    case 'Exp':
      return give(0, g.op('Mul', [gy, out]));
    case 'Sqrt':
      return give(0, g.op('Div', [gy, g.op('Mul', [out, g.scalar(2)])]));
    case 'Sigmoid':
      return give(0, g.op('Mul', [gy, g.op('Mul', [out, g.op('Sub', [g.scalar(1), out])])]));
    case 'QuickGelu': {
      // y = x s with s = sigmoid(a x): dy/dx = s + a x s (1 - s) = s (1 + a x (1 - s))
      const a = (n.attrs.alpha as { float: number } | undefined)?.float ?? 1.702;
      const ax = a === 1 ? x : g.op('Mul', [x, g.scalar(a)]);
      const s = g.op('Sigmoid', [ax]);
      const slope = g.op('Mul', [s, g.op('Add', [g.scalar(1), g.op('Mul', [ax, g.op('Sub', [g.scalar(1), s])])])]);
      return give(0, g.op('Mul', [gy, slope]));
    }
    case 'Erf': {
      const bell = g.op('Exp', [g.op('Neg', [g.op('Mul', [x, x])])]);
      return give(0, g.op('Mul', [gy, g.op('Mul', [bell, g.scalar(2 / Math.sqrt(Math.PI))])]));
    }
    case 'Softmax': {
      const rank = shape(out).length;
      const axis = ((n.attrs.axis as number | undefined) ?? -1) < 0 ? rank + ((n.attrs.axis as number | undefined) ?? -1) : (n.attrs.axis as number);
      const dot = g.op('ReduceSum', [g.op('Mul', [gy, out]), g.ints([axis])], { keepdims: 1 });
      return give(0, g.op('Mul', [out, g.op('Sub', [gy, dot])]));
    }
    case 'Reshape':
      return give(0, g.op('Reshape', [gy, g.ints(shape(x))]));
    case 'Transpose': {
      const perm = n.attrs.perm as number[];
      const inverse = perm.map((_, i) => perm.indexOf(i));
      return give(0, g.op('Transpose', [gy], { perm: inverse }));
    }
    case 'MatMul': {
      const [sa, sb] = [shape(x), shape(y)];
      if (wants(0)) give(0, unbroadcast(g, g.op('MatMul', [gy, g.op('Transpose', [y], { perm: swapLast(sb.length) })]), sa));
      if (wants(1)) give(1, unbroadcast(g, g.op('MatMul', [g.op('Transpose', [x], { perm: swapLast(sa.length) }), gy]), sb));
      return;
    }
    case 'Gemm': {
      if (n.attrs.transA || (n.attrs.alpha !== undefined && (n.attrs.alpha as { float: number }).float !== 1)) throw new Error('Gemm with transA or alpha has no gradient rule here');
      if (wants(0)) give(0, n.attrs.transB ? g.op('MatMul', [gy, y]) : g.op('MatMul', [gy, g.op('Transpose', [y], { perm: [1, 0] })]));
      if (wants(1)) {
        const gw = g.op('MatMul', [g.op('Transpose', [x], { perm: [1, 0] }), gy]);
        give(1, n.attrs.transB ? g.op('Transpose', [gw], { perm: [1, 0] }) : gw);
      }
      if (n.inputs[2] && wants(2)) give(2, unbroadcast(g, gy, shape(n.inputs[2])));
      return;
    }
    case 'Conv': {
      if (wants(1) || (n.inputs[2] && wants(2))) throw new Error('Conv weight gradients are not built here (only the input path)');
      if (n.attrs.group !== undefined && n.attrs.group !== 1) throw new Error('grouped Conv has no gradient rule here');
      const sx = shape(x);
      const k = n.attrs.kernel_shape as number[];
      const pads = (n.attrs.pads as number[] | undefined) ?? [0, 0, 0, 0];
      const strides = (n.attrs.strides as number[] | undefined) ?? [1, 1];
      const so = shape(out);
      const outPad = [0, 1].map((i) => sx[2 + i] - ((so[2 + i] - 1) * strides[i] - pads[i] - pads[i + 2] + k[i]));
      return give(0, g.op('ConvTranspose', [gy, y], { kernel_shape: k, pads, strides, output_padding: outPad }));
    }
    case 'InstanceNormalization': {
      const rank = shape(x).length;
      const axes = Array.from({ length: rank - 2 }, (_, i) => i + 2);
      const eps = (n.attrs.epsilon as { float: number } | undefined)?.float ?? 1e-5;
      const { xhat, inv } = moments(g, x, axes, eps);
      const scale = g.op('Reshape', [y, g.ints([shape(y)[0], ...axes.map(() => 1)])]);
      return give(0, normBackward(g, g.op('Mul', [gy, scale]), xhat, inv, axes));
    }
    case 'LayerNormalization': {
      const rank = shape(x).length;
      const axis = (n.attrs.axis as number | undefined) ?? -1;
      const from = axis < 0 ? rank + axis : axis;
      const axes = Array.from({ length: rank - from }, (_, i) => i + from);
      const eps = (n.attrs.epsilon as { float: number } | undefined)?.float ?? 1e-5;
      const { xhat, inv } = moments(g, x, axes, eps);
      return give(0, normBackward(g, g.op('Mul', [gy, y]), xhat, inv, axes));
    }
    case 'Resize': {
      const sx = shape(x);
      const so = shape(out);
      const f = [so[2] / sx[2], so[3] / sx[3]];
      if (n.attrs.mode !== 'nearest' || !f.every((v) => Number.isInteger(v))) throw new Error('only integer nearest Resize has a gradient rule here');
      const blocks = g.op('Reshape', [gy, g.ints([sx[0], sx[1], sx[2], f[0], sx[3], f[1]])]);
      return give(0, g.op('ReduceSum', [blocks, g.ints([3, 5])], { keepdims: 0 }));
    }
    case 'Concat': {
      const rank = shape(out).length;
      const axis = (n.attrs.axis as number) < 0 ? rank + (n.attrs.axis as number) : (n.attrs.axis as number);
      const sizes = n.inputs.map((v) => shape(v)[axis]);
      const pieces = g.opMulti('Split', [gy, g.ints(sizes)], sizes.length, { axis });
      pieces.forEach((p, k) => wants(k) && give(k, p));
      return;
    }
    case 'Split': {
      const rank = shape(x).length;
      const axis = ((n.attrs.axis as number | undefined) ?? 0) < 0 ? rank + (n.attrs.axis as number) : ((n.attrs.axis as number | undefined) ?? 0);
      const pieces = n.outputs.map((o, k) => gys[k] ?? g.op('Expand', [g.scalar(0), g.ints(shape(o))]));
      return give(0, g.op('Concat', pieces, { axis }));
    }
    case 'ReduceMean':
    case 'ReduceSum': {
      const sx = shape(x);
      const axes = ((n.attrs.axes as number[] | undefined) ?? g.intValues.get(n.inputs[1]) ?? sx.map((_, i) => i)).map((a) => (a < 0 ? a + sx.length : a));
      const kept = sx.map((d, i) => (axes.includes(i) ? 1 : d));
      const spread = g.op('Expand', [g.op('Reshape', [gy, g.ints(kept)]), g.ints(sx)]);
      const count = axes.reduce((p, a) => p * sx[a], 1);
      return give(0, n.type === 'ReduceMean' ? g.op('Mul', [spread, g.scalar(1 / count)]) : spread);
    }
    default:
      throw new Error(`no gradient rule for ${n.type} (on the path from the latent to the attention maps)`);
  }
}
