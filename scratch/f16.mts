import { createRuntime, sessionOptions } from '../workers/engine/runtime.ts';
import { makeTinyModel } from '../workers/engine/test-model.ts';
import { buildVaeDecoder } from '../workers/graph/vae.ts';
import { buildUNet } from '../workers/graph/unet.ts';
import { WeightSet } from '../workers/engine/weights.ts';
import { Rng } from '../workers/engine/random.ts';
const rt = await createRuntime('wasm');
const m = makeTinyModel();
for (const dtype of ['float32', 'float16'] as const) {
  const g = buildUNet(m.config.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype, attention: 'fused', conv: 'auto' } as any);
  const ws = new WeightSet(rt, dtype);
  for (const spec of g.weights.values()) ws.add(spec, m.weights.unet.get(spec.name)!);
  const feeds: any = { ...ws.feeds(g.weights.keys()) };
  const rng = new Rng(1);
  for (const i of g.inputs) if (!(i.name in feeds)) feeds[i.name] = new rt.ort.Tensor(i.type as any, rng.normal(i.dims.reduce((a, b) => a * b, 1)), i.dims);
  try {
    const s = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
    const out = await s.run(feeds);
    const y = Object.values(out)[0].data as Float32Array;
    console.log(dtype, 'ok', y.slice(0, 4));
  } catch (e) { console.log(dtype, 'failed', (e as Error).message.slice(0, 300)); }
}
process.exit(0);
