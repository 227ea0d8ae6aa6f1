import { installNodeWebGpu } from '../workers/node/webgpu.ts';
import { createRuntime, sessionOptions } from '../workers/engine/runtime.ts';
import { GraphBuilder } from '../workers/graph/builder.ts';
await installNodeWebGpu();
const rt = await createRuntime('webgpu');
const g = new GraphBuilder('float32');
g.output(g.op('Relu', [g.input('x', 'float32', [4, 4])]), 'y', 'float32', [4, 4]);
const m = rt.gpu!.memory;
for (const gpuOut of [false, true]) {
  const s = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { outputsOnGpu: gpuOut }));
  const a = m.readbacks;
  const out = await s.run({ x: new rt.ort.Tensor('float32', new Float32Array(16).fill(-1), [4, 4]) });
  const b = m.readbacks;
  await out.y.getData(true);
  console.log('gpuOut', gpuOut, 'run', b - a, 'getData', m.readbacks - b);
}
process.exit(0);
