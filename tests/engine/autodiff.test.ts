// The backward graphs of workers/graph/autodiff.ts, run by onnxruntime (wasm EP and WebGPU EP), against
// central finite differences of the same forward graph run in float64 (workers/reference/graph-eval.ts):
// every op's vector-Jacobian product on small random inputs, then composite blocks.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import { sessionOptions, type Backend } from '../../workers/engine/runtime.ts';
import { Rng } from '../../workers/engine/random.ts';
import { emitGradient } from '../../workers/graph/autodiff.ts';
import { GraphBuilder } from '../../workers/graph/builder.ts';
import { elementCount as size } from '../../workers/graph/shapes.ts';
import { attention, groupNorm, quickGelu, silu, upsampleNearest2x } from '../../workers/graph/layers.ts';
import { evalGraph } from '../../workers/reference/graph-eval.ts';
import type { T } from '../../workers/reference/nn.ts';
import { runtime } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const BACKENDS: Backend[] = ['wasm', 'webgpu'];

interface Operand {
  dims: number[];
  /** Values are drawn from N(0,1) plus this offset (keeps Sqrt and Div away from 0). */
  offset?: number;
}

interface Case {
  name: string;
  operands: Record<string, Operand>;
  /** Builds the forward part from the operand values; returns the output the seed multiplies. */
  build: (g: GraphBuilder, v: Record<string, string>) => string;
  wrt: string[];
}


function values(c: Case, seed: number): Map<string, Float64Array> {
  const rng = new Rng(seed);
  return new Map(Object.entries(c.operands).map(([k, o]) => [k, Float64Array.from(rng.normal(size(o.dims)), (v) => v + (o.offset ?? 0))]));
}

/** F(x) = sum(seed * out(x)) in float64, its central differences at up to `samples` entries of `wrt`. */
function finiteDifferences(g: GraphBuilder, forwardNodes: number, out: string, seed: Float64Array, inputs: Map<string, T>, wrt: string, samples: number): { index: number; value: number }[] {
  const x = inputs.get(wrt)!;
  const F = (data: Float64Array) => {
    const r = evalGraph(g, new Map([...inputs, [wrt, { data, shape: x.shape }]]), forwardNodes).get(out)!;
    let s = 0;
    for (let i = 0; i < seed.length; i++) s += seed[i] * r.data[i];
    return s;
  };
  const h = 1e-5;
  const step = Math.max(1, Math.floor(x.data.length / samples));
  const out_: { index: number; value: number }[] = [];
  for (let i = 0; i < x.data.length; i += step) {
    const plus = Float64Array.from(x.data);
    const minus = Float64Array.from(x.data);
    plus[i] += h;
    minus[i] -= h;
    out_.push({ index: i, value: (F(plus) - F(minus)) / (2 * h) });
  }
  return out_;
}

async function check(c: Case, backend: Backend, samples = 40): Promise<void> {
  const rt = await runtime(backend);
  const vals = values(c, c.name.length * 7 + 3);
  for (const wrt of c.wrt) {
    const g = new GraphBuilder('float32');
    const names = Object.fromEntries(Object.entries(c.operands).map(([k, o]) => [k, g.input(k, 'float32', o.dims)]));
    const out = c.build(g, names);
    // weights a builder block declared are operands too (never differentiated here)
    const wrng = new Rng(5);
    for (const w of g.weights.values()) if (!vals.has(w.name)) vals.set(w.name, Float64Array.from(wrng.normal(size(w.dims))));
    const operands: Record<string, Operand> = { ...c.operands, ...Object.fromEntries([...g.weights.values()].map((w) => [w.name, { dims: w.dims }])) };
    const forwardNodes = g.records.length;
    const outDims = g.shape(out);
    const seedName = g.input('seed', 'float32', outDims);
    const grad = emitGradient(g, { wrt, seeds: new Map([[out, seedName]]) });
    g.output(grad, 'grad', 'float32', c.operands[wrt].dims);
    const seed = Float64Array.from(new Rng(99).normal(size(outDims)));
    const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
    const feeds: Record<string, OrtNs.Tensor> = { seed: new rt.ort.Tensor('float32', Float32Array.from(seed), outDims) };
    for (const [k, o] of Object.entries(operands)) feeds[k] = new rt.ort.Tensor('float32', Float32Array.from(vals.get(k)!), o.dims);
    const got = (await session.run(feeds)).grad.data as Float32Array;
    await session.release();
    const inputs = new Map(Object.entries(operands).map(([k, o]) => [k, { data: vals.get(k)!, shape: o.dims }]));
    const fd = finiteDifferences(g, forwardNodes, out, seed, inputs, wrt, samples);
    const scale = Math.max(1e-3, ...fd.map((p) => Math.abs(p.value)));
    const tol = (backend === 'wasm' ? 2e-4 : 1e-3) * scale;
    for (const p of fd) {
      assert.ok(Math.abs(got[p.index] - p.value) <= tol, `${c.name} d/d${wrt}[${p.index}] on ${backend}: graph ${got[p.index]}, finite differences ${p.value} (tolerance ${tol.toExponential(1)})`);
    }
  }
}

const CASES: Case[] = [
  { name: 'Add with broadcasting', operands: { x: { dims: [2, 3, 4] }, y: { dims: [3, 1] } }, build: (g, v) => g.op('Add', [v.x, v.y]), wrt: ['x', 'y'] },
  { name: 'Sub', operands: { x: { dims: [2, 3] }, y: { dims: [3] } }, build: (g, v) => g.op('Sub', [v.x, v.y]), wrt: ['x', 'y'] },
  { name: 'Mul with broadcasting', operands: { x: { dims: [2, 3, 4] }, y: { dims: [1, 3, 4] } }, build: (g, v) => g.op('Mul', [v.x, v.y]), wrt: ['x', 'y'] },
  { name: 'Mul of a value by itself', operands: { x: { dims: [5] } }, build: (g, v) => g.op('Mul', [v.x, v.x]), wrt: ['x'] },
  { name: 'Div', operands: { x: { dims: [2, 4] }, y: { dims: [2, 4], offset: 3 } }, build: (g, v) => g.op('Div', [v.x, v.y]), wrt: ['x', 'y'] },
  { name: 'Neg, Exp, Sigmoid, Erf', operands: { x: { dims: [3, 4] } }, build: (g, v) => g.op('Erf', [g.op('Sigmoid', [g.op('Exp', [g.op('Neg', [v.x])])])]), wrt: ['x'] },
  { name: 'Sqrt', operands: { x: { dims: [6], offset: 4 } }, build: (g, v) => g.op('Sqrt', [v.x]), wrt: ['x'] },
  { name: 'SiLU (QuickGelu, alpha 1)', operands: { x: { dims: [2, 5] } }, build: (g, v) => silu(g, v.x), wrt: ['x'] },
  { name: 'QuickGelu (alpha 1.702)', operands: { x: { dims: [3, 4] } }, build: (g, v) => quickGelu(g, v.x), wrt: ['x'] },
  { name: 'batched MatMul', operands: { x: { dims: [2, 3, 4, 5] }, y: { dims: [5, 6] } }, build: (g, v) => g.op('MatMul', [v.x, v.y]), wrt: ['x', 'y'] },
  { name: 'MatMul broadcasting a batch', operands: { x: { dims: [1, 2, 3, 4] }, y: { dims: [2, 2, 4, 3] } }, build: (g, v) => g.op('MatMul', [v.x, v.y]), wrt: ['x', 'y'] },
  { name: 'Gemm (transB)', operands: { x: { dims: [4, 5] }, w: { dims: [6, 5] }, b: { dims: [6] } }, build: (g, v) => g.op('Gemm', [v.x, v.w, v.b], { transB: 1 }), wrt: ['x', 'b'] },
  { name: 'Conv 3x3', operands: { x: { dims: [1, 3, 5, 6] }, w: { dims: [4, 3, 3, 3] }, b: { dims: [4] } }, build: (g, v) => g.op('Conv', [v.x, v.w, v.b], { kernel_shape: [3, 3], pads: [1, 1, 1, 1], strides: [1, 1] }), wrt: ['x'] },
  { name: 'Conv 3x3 stride 2 (even)', operands: { x: { dims: [1, 2, 6, 6] }, w: { dims: [3, 2, 3, 3] }, b: { dims: [3] } }, build: (g, v) => g.op('Conv', [v.x, v.w, v.b], { kernel_shape: [3, 3], pads: [1, 1, 1, 1], strides: [2, 2] }), wrt: ['x'] },
  { name: 'Conv 3x3 stride 2 (odd)', operands: { x: { dims: [1, 2, 7, 5] }, w: { dims: [3, 2, 3, 3] }, b: { dims: [3] } }, build: (g, v) => g.op('Conv', [v.x, v.w, v.b], { kernel_shape: [3, 3], pads: [1, 1, 1, 1], strides: [2, 2] }), wrt: ['x'] },
  { name: 'Conv 1x1', operands: { x: { dims: [2, 3, 4, 4] }, w: { dims: [5, 3, 1, 1] }, b: { dims: [5] } }, build: (g, v) => g.op('Conv', [v.x, v.w, v.b], { kernel_shape: [1, 1], pads: [0, 0, 0, 0], strides: [1, 1] }), wrt: ['x'] },
  { name: 'Softmax', operands: { x: { dims: [2, 3, 5] } }, build: (g, v) => g.op('Softmax', [v.x], { axis: -1 }), wrt: ['x'] },
  { name: 'Reshape and Transpose', operands: { x: { dims: [2, 3, 4] } }, build: (g, v) => g.op('Transpose', [g.op('Reshape', [v.x, g.ints([6, -1])])], { perm: [1, 0] }), wrt: ['x'] },
  { name: 'InstanceNormalization', operands: { x: { dims: [2, 3, 8] }, s: { dims: [3] }, b: { dims: [3] } }, build: (g, v) => g.op('InstanceNormalization', [v.x, v.s, v.b], { epsilon: { float: 1e-5 } }), wrt: ['x'] },
  { name: 'GroupNorm (builder block)', operands: { x: { dims: [1, 4, 3, 3] } }, build: (g, v) => groupNorm(g, { v: v.x, b: 1, c: 4, h: 3, w: 3 }, 'gn', 2, 1e-5).v, wrt: ['x'] },
  { name: 'LayerNormalization', operands: { x: { dims: [4, 6] }, s: { dims: [6] }, b: { dims: [6] } }, build: (g, v) => g.op('LayerNormalization', [v.x, v.s, v.b], { axis: -1, epsilon: { float: 1e-5 } }), wrt: ['x'] },
  { name: 'nearest 2x Resize', operands: { x: { dims: [1, 2, 3, 3] } }, build: (g, v) => upsampleNearest2x(g, { v: v.x, b: 1, c: 2, h: 3, w: 3 }).v, wrt: ['x'] },
  { name: 'Concat', operands: { x: { dims: [1, 2, 3] }, y: { dims: [1, 4, 3] } }, build: (g, v) => g.op('Concat', [v.x, v.y], { axis: 1 }), wrt: ['x', 'y'] },
  { name: 'Split, both parts used', operands: { x: { dims: [2, 5, 3] } }, build: (g, v) => g.op('Concat', g.opMulti('Split', [v.x, g.ints([2, 3])], 2, { axis: 1 }).reverse(), { axis: 1 }), wrt: ['x'] },
  { name: 'Split, one part used', operands: { x: { dims: [2, 5] } }, build: (g, v) => g.opMulti('Split', [v.x, g.ints([1, 4])], 2, { axis: 1 })[1], wrt: ['x'] },
  { name: 'ReduceMean', operands: { x: { dims: [2, 3, 4] } }, build: (g, v) => g.op('ReduceMean', [v.x], { axes: [1], keepdims: 0 }), wrt: ['x'] },
  { name: 'ReduceSum', operands: { x: { dims: [2, 3, 4] } }, build: (g, v) => g.op('ReduceSum', [v.x, g.ints([0, 2])], { keepdims: 1 }), wrt: ['x'] },
  {
    name: 'attention with its map (builder block)',
    operands: { q: { dims: [6, 4] }, k: { dims: [5, 4] }, v: { dims: [5, 4] } },
    build: (g, v) => {
      // the seed reaches the queries through both the attention output and the head-averaged map
      const out = attention(g, v.q, v.k, v.v, { b: 1, nq: 6, nk: 5, c: 4, heads: 2 }, { probsOutput: 'map' });
      const map = g.op('Reshape', ['map', g.ints([6, 5])]);
      return g.op('Concat', [out, map], { axis: 1 });
    },
    wrt: ['q', 'k'],
  },
];

for (const c of CASES) {
  test(`VJP of ${c.name} matches finite differences (wasm and WebGPU)`, async () => {
    for (const backend of BACKENDS) await check(c, backend);
  });
}

test('an op with no rule on the path is named', () => {
  const g = new GraphBuilder('float32');
  const x = g.input('x', 'float32', [3]);
  const out = g.op('Tanh', [x]);
  assert.throws(() => emitGradient(g, { wrt: x, seeds: new Map([[out, g.input('s', 'float32', [3])]]) }), /no gradient rule for Tanh/);
});
