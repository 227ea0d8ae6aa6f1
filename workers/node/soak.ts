// Node only: `soak` runs many generations of random scenes and composition methods in one engine, a
// share of them cancelled at a random moment, and watches for leaks: the GPU bytes allocated after
// each run (which must come back to the level of the last run with the same compiled graphs) and the
// JavaScript heap and resident memory after a garbage collection.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { GenerateJob, LoraInfo } from '../api/contract.ts';
import { EngineError } from '../api/errors.ts';
import type { Engine } from '../engine/engine.ts';
import { Rng } from '../engine/random.ts';
import { randomScene } from '../layout/random-scene.ts';
import { sceneJob } from '../layout/scene.ts';
import { attachSceneLoras } from './scene-loras.ts';

export interface SoakOptions {
  engine: Engine;
  /** The LoRAs scenes may use, loaded. */
  loras: LoraInfo[];
  runs: number;
  seed: number;
  /** Share of runs cancelled at a random progress event. */
  cancelShare: number;
  /** Frame sizes to pick from. */
  sizes: number[];
  steps: [number, number];
  onRun?: (n: number, run: SoakRun) => void;
}

export interface SoakRun {
  method: string;
  boxes: number;
  size: string;
  outcome: 'done' | 'cancelled' | string;
  gpuBytes: number;
  /** Compiled graphs after the run. */
  graphs: number;
  ms: number;
}

export interface SoakReport {
  runs: number;
  done: number;
  cancelled: number;
  failed: number;
  methods: Record<string, number>;
  /** GPU bytes allocated after the model and LoRAs were loaded, before the first run. */
  gpuBytesLoaded: number;
  /** After the first run and after the last, and the most seen after any run. */
  gpuBytesFirst: number;
  gpuBytesLast: number;
  gpuBytesMax: number;
  /** Runs whose GPU bytes differed from the last run with the same compiled graphs: leaks. */
  gpuLevelChanges: number;
  graphs: number;
  /** Heap used and resident set (MB) after a collection: after the first tenth of the runs, and at the end. */
  heapMB: { early: number; end: number };
  rssMB: { early: number; end: number };
  msPerRun: number;
  failures: string[];
}

let collect: (() => void) | undefined;
/** A full garbage collection, when V8 allows one to be asked for. */
function gc(): void {
  if (!collect) {
    setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as () => void;
  }
  collect();
}

const mb = (b: number) => Math.round((b / 2 ** 20) * 10) / 10;

function memory() {
  gc();
  const m = process.memoryUsage();
  return { heap: mb(m.heapUsed), rss: mb(m.rss) };
}

export async function soak(o: SoakOptions): Promise<SoakReport> {
  const { engine } = o;
  const gpu = engine.rt.gpu;
  const rng = new Rng(o.seed);
  // every LoRA is loaded already: scenes name them by file name, which is also the key they are found by
  const byName = new Map(o.loras.map((l) => [l.name, l]));
  const live = () => gpu?.memory.live ?? 0;
  const report: SoakReport = {
    runs: 0, done: 0, cancelled: 0, failed: 0, methods: {},
    gpuBytesLoaded: live(), gpuBytesFirst: 0, gpuBytesLast: 0, gpuBytesMax: 0, gpuLevelChanges: 0, graphs: 0,
    heapMB: { early: 0, end: 0 }, rssMB: { early: 0, end: 0 }, msPerRun: 0, failures: [],
  };
  const levels = new Map<number, number>();
  const start = performance.now();
  for (let n = 0; n < o.runs; n++) {
    const scene = randomScene(rng, { sizes: o.sizes, steps: o.steps, loraNames: [...byName.keys()], hostile: true });
    const job: GenerateJob = sceneJob(scene);
    await attachSceneLoras(engine, job, scene, (l) => l.name, byName);
    const cancelAt = rng.uniform() < o.cancelShare ? Math.floor(rng.uniform() * (job.steps + 3)) : -1;
    let events = 0;
    const t0 = performance.now();
    let outcome = 'done';
    try {
      await engine.generate(job, () => {
        if (events++ === cancelAt) engine.cancel();
      });
      report.done++;
    } catch (e) {
      if (e instanceof EngineError && e.code === 'cancelled') {
        outcome = 'cancelled';
        report.cancelled++;
      } else {
        outcome = `${(e as Error).name}: ${(e as Error).message}`;
        report.failed++;
        report.failures.push(`run ${n}: ${outcome}`);
      }
    }
    const bytes = live();
    const graphs = engine.compiledGraphs;
    const before = levels.get(graphs);
    if (before !== undefined && before !== bytes) report.gpuLevelChanges++;
    levels.set(graphs, bytes);
    if (n === 0) report.gpuBytesFirst = bytes;
    report.gpuBytesLast = bytes;
    report.gpuBytesMax = Math.max(report.gpuBytesMax, bytes);
    report.graphs = graphs;
    report.runs++;
    const method = job.composition?.method ?? 'merge';
    report.methods[method] = (report.methods[method] ?? 0) + 1;
    o.onRun?.(n, { method, boxes: scene.boxes.length, size: `${scene.width}x${scene.height}`, outcome, gpuBytes: bytes, graphs, ms: Math.round(performance.now() - t0) });
    if (n === Math.floor(o.runs / 10)) {
      const m = memory();
      report.heapMB.early = m.heap;
      report.rssMB.early = m.rss;
    }
  }
  const m = memory();
  report.heapMB.end = m.heap;
  report.rssMB.end = m.rss;
  report.msPerRun = Math.round((performance.now() - start) / Math.max(1, report.runs));
  return report;
}
