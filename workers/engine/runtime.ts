// The onnxruntime-web instance of an engine, on the WebGPU EP (our shared device) or the wasm EP
// (the CPU reference backend used by tests and benchmarks).
import type * as OrtNs from 'onnxruntime-web';
import { adoptGpu, hasWebGpu, noWebGpuError, type GpuContext } from '../gpu/device.ts';
import { GraphBuilder, type NormForm } from '../graph/builder.ts';

export type Ort = typeof OrtNs;
export type Backend = 'webgpu' | 'wasm';

export interface Runtime {
  ort: Ort;
  backend: Backend;
  gpu?: GpuContext;
  /** Keeps ORT's WebGPU device alive. */
  anchor?: OrtNs.InferenceSession;
  /** How this runtime's graphs build group norms: `reductions` on a CPU adapter, where it is much faster (see NormForm). */
  norm: NormForm;
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
  if (backend === 'wasm') return { ort, backend, norm: options.norm ?? 'instance' };
  if (!hasWebGpu()) throw noWebGpuError();
  // A one-node session makes ORT create its WebGPU device, which we then share.
  const g = new GraphBuilder('float32');
  g.output(g.input('x', 'float32', [1]), 'y', 'float32', [1]);
  const boot = await ort.InferenceSession.create(g.encode(), { executionProviders: ['webgpu'] });
  // The session is kept for the runtime's life: ORT drops its device when its last session goes.
  const device = (await ort.env.webgpu.device) as GPUDevice;
  if (!device) throw noWebGpuError();
  const gpu = await adoptGpu(device);
  return { ort, backend, gpu, anchor: boot, norm: options.norm ?? (gpu.adapter.cpu ? 'reductions' : 'instance') };
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
