// A child program for attention-paths.test.ts: one com.microsoft.MultiHeadAttention node on the WebGPU
// EP (Dawn), run once with onnxruntime's profiling on. onnxruntime prints its profile on the process's
// own stdout, where the parent reads which programs ran and the shapes of their buffers.
// Usage: attention-profile.ts '{"b":2,"nq":64,"nk":77,"heads":2,"d":8}'
import { createRuntime, sessionOptions } from '../../workers/engine/runtime.ts';
import { Rng } from '../../workers/engine/random.ts';
import { GraphBuilder } from '../../workers/graph/builder.ts';
import { installNodeWebGpu } from '../../workers/node/webgpu.ts';

const { b, nq, nk, heads, d } = JSON.parse(process.argv[2]) as { b: number; nq: number; nk: number; heads: number; d: number };
const c = heads * d;
await installNodeWebGpu();
const rt = await createRuntime('webgpu');
// the node itself, built directly: what the EP does with it, whatever our builder would choose
const g = new GraphBuilder('float32');
const q = g.input('q', 'float32', [b, nq, c]);
const k = g.input('k', 'float32', [b, nk, c]);
const v = g.input('v', 'float32', [b, nk, c]);
g.output(g.msOp('MultiHeadAttention', [q, k, v], { num_heads: heads }), 'y', 'float32', [b, nq, c]);
const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, { profile: true }));
const rng = new Rng(nq * 31 + nk);
const tensor = (n: number) => new rt.ort.Tensor('float32', rng.normal(b * n * c), [b, n, c]);
await session.run({ q: tensor(nq), k: tensor(nk), v: tensor(nk) });
session.endProfiling();
await session.release();
process.exit(0);
