// What a graph costs to run, counted from its static shapes: the multiply-adds of its Conv,
// ConvTranspose, MatMul and Gemm nodes (everything else is small next to them). The report's
// `unetMultiplyAdds` and the benchmarks' projections for SD 1.5 count with this.
import type { GraphBuilder } from './builder.ts';
import { elementCount } from './shapes.ts';

export function multiplyAdds(g: GraphBuilder, from = 0, to = g.records.length): number {
  let total = 0;
  for (const n of g.records.slice(from, to)) {
    const out = g.shapes.get(n.outputs[0]);
    if (!out) continue;
    const size = elementCount(out);
    if (n.type === 'Conv') {
      const w = g.shape(n.inputs[1]);
      total += size * w[1] * w[2] * w[3];
    } else if (n.type === 'ConvTranspose') {
      const w = g.shape(n.inputs[1]);
      total += elementCount(g.shape(n.inputs[0])) * w[1] * w[2] * w[3];
    } else if (n.type === 'MatMul' || n.type === 'Gemm') {
      const a = g.shape(n.inputs[0]);
      total += size * (n.type === 'Gemm' && n.attrs.transA ? a[0] : a[a.length - 1]);
    }
  }
  return total;
}
