import { createRuntime, sessionOptions } from '../workers/engine/runtime.ts';
import { makeTinyModel } from '../workers/engine/test-model.ts';
import { buildVaeDecoder } from '../workers/graph/vae.ts';
import { buildUNet } from '../workers/graph/unet.ts';
import { buildTextEncoder } from '../workers/graph/clip.ts';
import { WeightSet } from '../workers/engine/weights.ts';
import { Rng } from '../workers/engine/random.ts';
const rt = await createRuntime('wasm');
const m = makeTinyModel();
const builds: Record<string, [any, (dtype: any, attention: any) => any]> = {
  unet: [m.weights.unet, (dtype, attention) => buildUNet(m.config.unet, { batch: 2, latentH: 8, latentW: 8, textLen: 77, dtype, attention, conv: 'auto' } as any)],
  vae: [m.weights.vae, (dtype, attention) => buildVaeDecoder(m.config.vae, { batch: 1, latentH: 8, latentW: 8, dtype, attention } as any)],
  te: [m.weights.textEncoder, (dtype, attention) => buildTextEncoder(m.config.textEncoder, { batch: 1, seqLen: 77, dtype, clipSkip: 1, attention } as any)],
};
for (const [name, [weights, build]] of Object.entries(builds)) for (const attention of ['fused', 'chunked']) {
  const outs: Float32Array[] = [];
  for (const dtype of ['float32', 'float16'] as const) {
    const g = build(dtype, attention);
    const ws = new WeightSet(rt, dtype);
    for (const spec of g.weights.values()) ws.add(spec, weights.get(spec.name)!);
    const feeds: any = { ...ws.feeds(g.weights.keys()) };
    const rng = new Rng(1);
    for (const i of g.inputs) if (!(i.name in feeds)) feeds[i.name] = i.type === 'int64' ? new rt.ort.Tensor('int64', BigInt64Array.from({ length: i.dims.reduce((a: number, b: number) => a * b, 1) }, (_, k) => BigInt(k % 10)), i.dims) : new rt.ort.Tensor('float32', rng.normal(i.dims.reduce((a: number, b: number) => a * b, 1)), i.dims);
    const s = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
    const out = await s.run(feeds);
    outs.push(out[g.outputs[0].name].data as Float32Array);
  }
  let d = 0, sc = 0;
  for (let i = 0; i < outs[0].length; i++) { d = Math.max(d, Math.abs(outs[0][i] - outs[1][i])); sc = Math.max(sc, Math.abs(outs[0][i])); }
  console.log(name, attention, 'maxdiff', d.toExponential(2), 'scale', sc.toFixed(3), 'inputs', '');
}
process.exit(0);
