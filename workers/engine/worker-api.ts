// The engine behind the worker's Comlink interface: files from the page become byte sources, and
// progress and images go back as transferable data.
import * as Comlink from 'comlink';
import type { EngineApi, FileRef, GenerateJob, ModelRequest, ProgressEvent } from '../api/contract.ts';
import { BlobSource, HttpSource, type ByteSource } from '../checkpoint/source.ts';
import { noWebGpuError } from '../gpu/device.ts';
import { mergeSelfTest } from '../lora/self-test.ts';
import { IdbProfileStore } from './profile-store.ts';
import { Engine } from './engine.ts';
import { createRuntime } from './runtime.ts';
import { ClipScorer, type ScorerFiles } from '../eval/scorer.ts';
import { EngineError } from '../api/errors.ts';

async function source(ref: FileRef): Promise<ByteSource> {
  return ref.kind === 'blob' ? new BlobSource(ref.name, ref.blob) : HttpSource.open(new URL(ref.url, self.location.href).href);
}

/** Where the worker keeps its GPU device on its global object. */
export const GPU_DEVICE_HANDLE = Symbol.for('lora-studio.gpu-device');

export function createWorkerApi(): EngineApi {
  let engine: Engine | undefined;
  let scorer: ClipScorer | undefined;
  // onnxruntime-web takes one call at a time (its asyncify build cannot interleave two): model loads,
  // generations and the scorer's loads and runs wait for each other here, in the order they came.
  let queue: Promise<unknown> = Promise.resolve();
  const exclusive = <T>(task: () => Promise<T>): Promise<T> => {
    const run = queue.then(task);
    queue = run.catch(() => {});
    return run;
  };
  // one engine, however many calls ask for it before its runtime is up
  let starting: Promise<Engine> | undefined;
  const ready = () =>
    (starting ??= createRuntime('webgpu').then((rt) => {
      engine = new Engine(rt);
      // cmlora's LoRA profiles, kept in this browser's IndexedDB: a LoRA is profiled once
      if (typeof indexedDB !== 'undefined') engine.profileStore = new IdbProfileStore();
      // the device, where the fault tests (and a developer in DevTools) can reach it: destroying it
      // is how a driver reset looks to the studio
      (globalThis as Record<symbol, unknown>)[GPU_DEVICE_HANDLE] = rt.gpu?.device;
      return engine;
    }));
  return {
    async init() {
      return (await ready()).adapter;
    },
    loadModel: (req: ModelRequest, onProgress) => exclusive(async () => {
      const e = await ready();
      const files = req.single
        ? { single: await source(req.single) }
        : { unet: await source(req.unet!), textEncoder: await source(req.textEncoder!), vae: await source(req.vae!) };
      return e.loadModel(files, req.tokenizer, req.precision ?? 'auto', onProgress);
    }),
    generate: (job: GenerateJob, onProgress?: (p: ProgressEvent) => void) => exclusive(async () => {
      const e = await ready();
      const result = await e.generate(job, (p) => {
        void onProgress?.(p.preview ? Comlink.transfer(p, [p.preview.data.buffer]) : p);
      });
      return Comlink.transfer(result, [result.image.data.buffer]);
    }),
    async cancel() {
      engine?.cancel();
    },
    async watch(onLost) {
      const e = await ready();
      void e.rt.gpu?.lost.then((reason) => onLost(reason));
    },
    async loadLora(file: FileRef) {
      return (await ready()).loadLora(await source(file));
    },
    async loadEmbedding(file: FileRef) {
      return (await ready()).loadEmbedding(await source(file));
    },
    async unloadEmbedding(id: string) {
      (await ready()).unloadEmbedding(id);
    },
    loadVae: (file) => exclusive(async () => (await ready()).loadVae(file ? await source(file) : null)),
    async unloadLora(id: string) {
      (await ready()).unloadLora(id);
    },
    async selfTest() {
      const e = await ready();
      if (!e.rt.gpu) throw noWebGpuError();
      return (await mergeSelfTest(e.rt.gpu.device)).map(({ storage, mode, maxError, tolerance, restoredExactly, ok }) => ({ storage, mode, maxError, tolerance, restoredExactly, ok }));
    },
    loadScorer: (req) => exclusive(async () => {
      const e = await ready();
      const files: ScorerFiles = new Map();
      for (const [path, ref] of Object.entries(req.files)) {
        if (ref.kind === 'blob') files.set(path, ref.blob);
        else {
          const res = await fetch(new URL(ref.url, self.location.href));
          if (!res.ok) throw new EngineError('scorer', `The CLIP scorer file ${path} could not be read (HTTP ${res.status}).`);
          files.set(path, await res.blob());
        }
      }
      const next = await e.scorerWork('while loading the CLIP scorer', () => ClipScorer.open(req.name, files, e.rt));
      await scorer?.dispose();
      scorer = next;
      return next.info;
    }),
    score: (req) => exclusive(async () => {
      if (!scorer) throw new EngineError('scorer', 'No CLIP scorer is loaded.');
      const s = scorer;
      return (await ready()).scorerWork('while scoring the picture', () => s.score(req));
    }),
  };
}
