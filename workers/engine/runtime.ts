// The onnxruntime-web instance of an engine, on the WebGPU EP (our shared device) or the wasm EP
// (the CPU reference backend used by tests and benchmarks).
import type * as OrtNs from 'onnxruntime-web';
import { adoptGpu, hasWebGpu, noWebGpuError, type GpuContext } from '../gpu/device.ts';
import { GraphBuilder, type ConvForm, type NormForm } from '../graph/builder.ts';

export type Ort = typeof OrtNs;
export type Backend = 'webgpu' | 'wasm';

export interface Runtime {
  ort: Ort;
  backend: Backend;
  gpu?: GpuContext;
  /** Keeps ORT's WebGPU device alive. */
  anchor?: OrtNs.InferenceSession;
  /** Hand out zero-filled GPU buffers that onnxruntime allocated (`ortGpuZeros`): one session per rank, made on first use, and the last run on it. */
  zeros?: Map<number, { session: Promise<OrtNs.InferenceSession>; last: Promise<unknown> }>;
  /** How this runtime's graphs build group norms: `reductions` on a CPU adapter, where it is much faster (see NormForm). */
  norm: NormForm;
  /**
   * How its graphs build k x k convolutions: on WebGPU unfolded where that moves fewer bytes than the
   * weight transpose the EP makes every run (`auto`, for NCHW sessions as the engine compiles; see
   * ConvForm); the wasm EP reads weights as they are.
   */
  conv: ConvForm;
}

let ortModule: Promise<Ort> | undefined;

export function loadOrt(): Promise<Ort> {
  ortModule ??= import('onnxruntime-web/webgpu').then((m) => ((m as { default?: Ort }).default ?? m) as Ort);
  return ortModule;
}

/** `norm` overrides the form the adapter would get (tests check both forms on one device). */
export async function createRuntime(backend: Backend, options: { wasmPaths?: string; threads?: number; norm?: NormForm } = {}): Promise<Runtime> {
  const ort = await loadOrt();
  ort.env.wasm.numThreads = options.threads ?? 1;
  // @huggingface/transformers points ORT at a CDN when it loads; the studio works offline, so ORT
  // must use the wasm file bundled with the app (found next to its module when no path is set).
  ort.env.wasm.wasmPaths = options.wasmPaths;
  ort.env.logLevel = 'error';
  if (backend === 'wasm') return { ort, backend, norm: options.norm ?? 'instance', conv: 'direct' };
  if (!hasWebGpu()) throw noWebGpuError();
  // A one-node session makes ORT create its WebGPU device, which we then share.
  const g = new GraphBuilder('float32');
  g.output(g.input('x', 'float32', [1]), 'y', 'float32', [1]);
  const boot = await ort.InferenceSession.create(g.encode(), { executionProviders: ['webgpu'] });
  // The session is kept for the runtime's life: ORT drops its device when its last session goes.
  const device = (await ort.env.webgpu.device) as GPUDevice;
  if (!device) throw noWebGpuError();
  const gpu = await adoptGpu(device);
  return { ort, backend, gpu, anchor: boot, norm: options.norm ?? (gpu.adapter.cpu ? 'reductions' : 'instance'), conv: 'auto' };
}

/**
 * A zero-filled float32 tensor in a GPU buffer that onnxruntime allocated: the output of a one-node
 * session (Expand of a zero), which its web binding registers once for the tensor's life. A session
 * compiled with graph capture must be bound to buffers like this. The binding registers a buffer of
 * ours at the start of each run and drops it at the end, while a captured session keeps the bindings
 * of its first run: its second run (the one it records) then looked up a handle that had been freed
 * meanwhile, and failed ("no overload matched for createBindGroup", or "Cannot set properties of
 * undefined" in webgpuRegisterBuffer) unless the freed handle happened to be given to the same buffer
 * again. Dispose the tensor after the sessions bound to it are released; the zeros are on the GPU
 * queue of onnxruntime, which submits them before it next reads anything back.
 */
export async function ortGpuZeros(rt: Runtime, dims: number[]): Promise<OrtNs.Tensor> {
  if (rt.backend !== 'webgpu') throw new Error('GPU buffers need the WebGPU EP');
  const made = (rt.zeros ??= new Map());
  let z = made.get(dims.length);
  if (!z) {
    const g = new GraphBuilder('float32');
    const shape = g.input('shape', 'int64', [dims.length]);
    g.output(g.op('Expand', [g.input('zero', 'float32', [1]), shape]), 'zeros', 'float32', dims.map(() => -1));
    z = { session: rt.ort.InferenceSession.create(g.encode(), { executionProviders: ['webgpu'], preferredOutputLocation: 'gpu-buffer' }), last: Promise.resolve() };
    made.set(dims.length, z);
  }
  // one run at a time on a session (two at once did not finish)
  const session = z.session;
  const run = z.last.then(async () => (await session).run({ zero: new rt.ort.Tensor('float32', new Float32Array(1), [1]), shape: new rt.ort.Tensor('int64', BigInt64Array.from(dims, BigInt), [dims.length]) }));
  z.last = run.catch(() => undefined);
  return (await run).zeros;
}

/** onnxruntime submits the GPU work it has queued before it reads a result back: a one-value run makes it. */
export async function flushOrt(rt: Runtime): Promise<void> {
  if (rt.anchor) await rt.anchor.run({ x: new rt.ort.Tensor('float32', new Float32Array(1), [1]) });
}

/** The WebGPU EP's tensor layout for convolutions: NHWC is its default; NCHW reads 1x1 weights as they are. */
export type ConvLayout = 'NHWC' | 'NCHW';

/** `outputsOnGpu`: the session's outputs stay in GPU buffers (the caller reads or disposes them). */
export function sessionOptions(rt: Runtime, options: { layout?: ConvLayout; profile?: boolean; outputsOnGpu?: boolean } = {}): OrtNs.InferenceSession.SessionOptions {
  const ep = rt.backend === 'webgpu' && options.layout ? ({ name: 'webgpu', preferredLayout: options.layout } as OrtNs.InferenceSession.ExecutionProviderConfig) : rt.backend;
  return {
    ...(options.profile ? { enableProfiling: true } : {}),
    ...(options.outputsOnGpu && rt.backend === 'webgpu' ? { preferredOutputLocation: 'gpu-buffer' as const } : {}),
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
  };
}
