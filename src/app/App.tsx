// The minimal studio page: model picker, prompts, sampling settings, Generate/Cancel, progress with
// a live latent preview, and the result with a PNG download. The engine runs in a worker.
import { useEffect, useRef } from 'react';
import type { CompositionMethodId, GenerateJob, GenerationReport, ImageData8, ProgressEvent, SchedulerId } from '../../workers/api/contract.ts';
import { encodePng } from '../../workers/engine/png.ts';
import { startEngine, type EngineClient } from '../engine/client.ts';
import { requestFromFiles, testModelRequest } from '../engine/model-files.ts';
import { LoraPanel, type LoraActions } from '../panels/LoraPanel.tsx';
import { BoxPanel } from '../panels/BoxPanel.tsx';
import { LayoutCanvas } from '../canvas/LayoutCanvas.tsx';
import { createSceneStore } from '../store/scene.ts';
import type { LayoutOptions } from '../../workers/api/contract.ts';
import { activeLoras, useStudio, type LoraEntry } from '../store/studio.ts';
import type { ModelRequest } from '../../workers/api/contract.ts';
import * as Comlink from 'comlink';

const SCHEDULERS: [SchedulerId, string][] = [
  ['dpmpp-2m', 'DPM++ 2M'],
  ['dpmpp-2m-karras', 'DPM++ 2M Karras'],
  ['euler-a', 'Euler ancestral'],
  ['ddim', 'DDIM'],
];

const METHODS: [CompositionMethodId, string][] = [
  ['merge', 'LoRA merge'],
  ['switch', 'LoRA Switch'],
  ['composite', 'LoRA Composite'],
  ['cmlora', 'CMLoRA'],
  ['none', 'Prompt only'],
];

/** One line on how the LoRAs were composed: method, UNet runs, cmlora's order and cache hits. */
function compositionSummary(r: GenerationReport): string {
  const c = r.composition;
  const label = METHODS.find(([id]) => id === c.method)?.[1] ?? c.method;
  const parts = [`${label}: ${r.unetEvaluations} UNet runs${c.unetEvaluations.profile ? ` (${c.unetEvaluations.profile} profiling)` : ''}`];
  if (c.method === 'cmlora') {
    parts.push(`order ${c.order.map((i) => c.loras[i]).join(' > ')}`);
    parts.push(`cache hits ${c.cacheHitRate.map((h, i) => `${c.loras[i]} ${Math.round((h ?? 0) * 100)}%`).join(', ')}`);
  }
  return parts.join('; ');
}

function ImageCanvas({ image, label, testId }: { image?: ImageData8; label: string; testId: string }) {
  const ref = useRef<HTMLCanvasElement>(null);
  useEffect(() => {
    const c = ref.current;
    if (!c || !image) return;
    c.width = image.width;
    c.height = image.height;
    c.getContext('2d')!.putImageData(new ImageData(new Uint8ClampedArray(image.data), image.width, image.height), 0, 0);
  }, [image]);
  return <canvas ref={ref} className="image" aria-label={label} data-testid={testId} hidden={!image} />;
}

let client: EngineClient | undefined;

/** The worker's API, starting the worker on first use (and again after a lost device). */
function engine() {
  client ??= startEngine();
  return client.api;
}

async function loadModel(req: ModelRequest, label: string) {
  const { set } = useStudio.getState();
  set({ status: { kind: 'loading', done: 0, total: 1, label }, notice: undefined });
  try {
    const model = await engine().loadModel(req, Comlink.proxy((done: number, total: number) => set({ status: { kind: 'loading', done, total, label } })));
    set({ model, status: { kind: 'ready' } });
    // LoRAs belong to a model: load the artist's list again for this one.
    for (const l of useStudio.getState().loras) void loadLora(l);
  } catch (e) {
    set({ status: { kind: 'error', message: (e as Error).message } });
  }
}

let loraKey = 0;

async function loadLora(entry: LoraEntry) {
  const { updateLora } = useStudio.getState();
  updateLora(entry.key, { info: undefined, error: undefined });
  try {
    updateLora(entry.key, { info: await engine().loadLora(entry.file) });
  } catch (e) {
    updateLora(entry.key, { error: (e as Error).message, enabled: false });
  }
}

const loraActions: LoraActions = {
  add(files) {
    const { loras, set } = useStudio.getState();
    const added: LoraEntry[] = files.map((f) => ({ key: ++loraKey, file: { kind: 'blob', name: f.name, blob: f }, scale: 1, enabled: true }));
    set({ loras: [...loras, ...added] });
    // one after another: the worker loads one file at a time anyway
    void added.reduce((p, l) => p.then(() => loadLora(l)), Promise.resolve());
  },
  remove(entry) {
    const { loras, set } = useStudio.getState();
    set({ loras: loras.filter((l) => l.key !== entry.key) });
    if (entry.info) void client?.api.unloadLora(entry.info.id);
  },
  addTag(tag) {
    const { job, setJob } = useStudio.getState();
    if (!job.prompt.includes(tag)) setJob({ prompt: job.prompt ? `${job.prompt}, ${tag}` : tag });
  },
};

async function runSelfTest() {
  const { set } = useStudio.getState();
  set({ selfTest: 'running…' });
  try {
    const results = await engine().selfTest();
    set({ selfTest: results.map((r) => `${r.storage}/${r.mode}: ${r.ok ? 'ok' : 'FAILED'} (max error ${r.maxError.toExponential(2)}, limit ${r.tolerance.toExponential(2)})`).join('; ') });
  } catch (e) {
    set({ selfTest: `failed: ${(e as Error).message}` });
  }
}

/** The layout the canvas holds, as the engine's job part; its LoRAs found among the loaded ones by name. */
export const sceneStore = createSceneStore(typeof localStorage === 'undefined' ? undefined : localStorage);

function jobLayout(): LayoutOptions | undefined {
  const { scene } = sceneStore.getState();
  if (!scene.boxes.length) return undefined;
  const loaded = useStudio.getState().loras.filter((l) => l.info);
  return {
    boxes: scene.boxes.map((b) => ({
      name: b.name,
      x: b.x,
      y: b.y,
      width: b.width,
      height: b.height,
      prompt: b.prompt,
      loras: b.loras.map((l) => {
        const entry = loaded.find((x) => x.info!.name === l.name);
        if (!entry) throw new Error(`Box "${b.name}" uses the LoRA "${l.name}", which is not loaded; add it or remove it from the box.`);
        return { lora: entry.info!.id, scale: l.scale };
      }),
    })),
    ...scene.ablation,
  };
}

async function generate() {
  const { job: settings, loras, set } = useStudio.getState();
  let layout: LayoutOptions | undefined;
  try {
    layout = jobLayout();
  } catch (e) {
    set({ status: { kind: 'error', message: (e as Error).message } });
    return;
  }
  const job = { ...settings, loras: activeLoras(loras), ...(layout ? { layout } : {}) };
  if (!client) return;
  set({ status: { kind: 'running', step: 0, total: job.steps, phase: 'text' }, preview: undefined, notice: undefined });
  localStorage.setItem('lorastudio.lastJob', JSON.stringify(job));
  try {
    const result = await client.api.generate(
      job,
      Comlink.proxy((p: ProgressEvent) => {
        const cur = useStudio.getState().status;
        if (cur.kind === 'cancelling') return;
        set({ status: { kind: 'running', step: p.step, total: p.total, phase: p.phase }, ...(p.preview ? { preview: p.preview } : {}) });
      }),
    );
    set({ result, status: { kind: 'ready' }, notice: result.report.warnings.join(' ') || undefined });
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code === 'cancelled') set({ status: { kind: 'ready' }, notice: 'Cancelled.' });
    else if (err.code === 'device-lost') {
      client?.terminate();
      client = undefined;
      set({ status: { kind: 'error', message: `${err.message} Reload the model to continue.` } });
    } else set({ status: { kind: 'error', message: err.message } });
  }
}

async function downloadPng() {
  const r = useStudio.getState().result;
  if (!r) return;
  const png = await encodePng(r.image.data, r.image.width, r.image.height, { 'lorastudio.report': JSON.stringify(r.report) });
  const url = URL.createObjectURL(new Blob([png as BlobPart], { type: 'image/png' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = `lora-studio-${r.report.seed}.png`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function NumberField({ label, value, onChange, min, max, step = 1, testId }: { label: string; value: number; onChange: (v: number) => void; min: number; max: number; step?: number; testId: string }) {
  return (
    <label>
      {label}
      <input type="number" value={value} min={min} max={max} step={step} data-testid={testId} onChange={(e) => onChange(Number(e.target.value))} />
    </label>
  );
}

export function App() {
  const { job, setJob, status, model, preview, result, notice, selfTest } = useStudio();
  useEffect(() => {
    testModelRequest()
      .then((req) => loadModel(req, 'tiny test model'))
      .catch((e) => useStudio.getState().set({ status: { kind: 'error', message: `The embedded test model could not be read: ${(e as Error).message}` } }));
  }, []);
  const running = status.kind === 'running' || status.kind === 'cancelling';
  const set = (patch: Partial<GenerateJob>) => setJob(patch);
  // the layout's frame follows the image size once it is a size the engine takes
  const setSize = (width: number, height: number) => {
    set({ width, height });
    const ok = (v: number) => Number.isInteger(v) && v >= 64 && v <= 2048 && v % 64 === 0;
    if (ok(width) && ok(height)) sceneStore.getState().setFrame(width, height);
  };
  useEffect(() => {
    const { scene } = sceneStore.getState();
    if (scene.boxes.length) setJob({ width: scene.width, height: scene.height });
    else sceneStore.getState().setFrame(useStudio.getState().job.width, useStudio.getState().job.height);
  }, [setJob]);
  const onFiles = async (list: FileList | null) => {
    if (!list?.length) return;
    try {
      await loadModel(await requestFromFiles([...list]), list[0].name);
    } catch (e) {
      useStudio.getState().set({ status: { kind: 'error', message: (e as Error).message } });
    }
  };
  const progress = status.kind === 'running' ? status.step / status.total : status.kind === 'loading' ? status.done / Math.max(status.total, 1) : 0;
  return (
    <main>
      <header>
        <h1>LoRA Studio</h1>
        <span className="model" data-testid="model-name">
          {model ? `${model.name} (${model.layout}, ${model.precision}${model.isTestModel ? ', test model: random weights, images are noise patterns' : ''})` : 'no model'}
        </span>
      </header>
      <section className="controls">
        <label>
          Checkpoint (.safetensors)
          <input type="file" accept=".safetensors" data-testid="model-file" disabled={running} onChange={(e) => onFiles(e.target.files)} />
        </label>
        <label>
          or a diffusers folder
          <input type="file" data-testid="model-folder" disabled={running} {...{ webkitdirectory: '' }} onChange={(e) => onFiles(e.target.files)} />
        </label>
        <label>
          Prompt
          <textarea value={job.prompt} data-testid="prompt" onChange={(e) => set({ prompt: e.target.value })} rows={3} />
        </label>
        <label>
          Negative prompt
          <textarea value={job.negative} data-testid="negative" onChange={(e) => set({ negative: e.target.value })} rows={2} />
        </label>
        <div className="row">
          <NumberField label="Seed" value={job.seed} min={0} max={4294967295} onChange={(seed) => set({ seed })} testId="seed" />
          <NumberField label="Steps" value={job.steps} min={1} max={200} onChange={(steps) => set({ steps })} testId="steps" />
          <NumberField label="Guidance" value={job.cfg} min={1} max={30} step={0.5} onChange={(cfg) => set({ cfg })} testId="cfg" />
        </div>
        <div className="row">
          <NumberField label="Width" value={job.width} min={64} max={2048} step={64} onChange={(width) => setSize(width, job.height)} testId="width" />
          <NumberField label="Height" value={job.height} min={64} max={2048} step={64} onChange={(height) => setSize(job.width, height)} testId="height" />
          <label>
            Scheduler
            <select value={job.scheduler} data-testid="scheduler" onChange={(e) => set({ scheduler: e.target.value as SchedulerId })}>
              {SCHEDULERS.map(([id, label]) => (
                <option key={id} value={id}>
                  {label}
                </option>
              ))}
            </select>
          </label>
        </div>
        <div className="row">
          <label>
            LoRA method
            <select
              value={job.composition?.method ?? 'merge'}
              data-testid="method"
              onChange={(e) => set({ composition: { method: e.target.value as CompositionMethodId } })}
            >
              {METHODS.map(([id, label]) => (
                <option key={id} value={id}>
                  {label}
                </option>
              ))}
            </select>
          </label>
        </div>
        <div className="row">
          <button data-testid="generate" disabled={!model || running || status.kind === 'loading'} onClick={generate}>
            Generate
          </button>
          <button
            data-testid="cancel"
            disabled={!running}
            onClick={() => {
              useStudio.getState().set({ status: { kind: 'cancelling' } });
              void client?.api.cancel();
            }}
          >
            Cancel
          </button>
        </div>
        <LoraPanel actions={loraActions} disabled={running || !model} />
        <progress max={1} value={progress} data-testid="progress" />
        <p className="status" data-testid="status" role="status">
          {status.kind === 'loading' && `Loading ${status.label}: ${status.done}/${status.total} tensors`}
          {status.kind === 'running' && `${status.phase} ${status.step}/${status.total}`}
          {status.kind === 'cancelling' && 'Cancelling…'}
          {status.kind === 'ready' && (notice ?? 'Ready')}
          {status.kind === 'starting' && 'Starting the engine…'}
        </p>
        {status.kind === 'error' && (
          <p className="error" role="alert" data-testid="error">
            {status.message}
          </p>
        )}
        <details className="hint">
          <summary>Diagnostics</summary>
          <button data-testid="self-test" onClick={runSelfTest} disabled={running}>
            Check the GPU kernels
          </button>
          <p data-testid="self-test-result">{selfTest}</p>
        </details>
      </section>
      <section className="layout">
        <LayoutCanvas store={sceneStore} disabled={running} />
        <BoxPanel store={sceneStore} disabled={running} />
      </section>
      <section className="output">
        <ImageCanvas image={running ? preview : result?.image} label={running ? 'latent preview' : 'result'} testId={running ? 'preview' : 'result'} />
        {result && !running && (
          <p>
            {result.report.width}x{result.report.height}, {result.report.steps} steps, seed {result.report.seed}, {Math.round(result.report.timingsMs.totalMs)} ms on {result.report.adapter.vendor}/
            {result.report.adapter.architecture} <button onClick={downloadPng}>Download PNG</button>
          </p>
        )}
        {result && !running && result.report.loras.length > 0 && (
          <p className="hint" data-testid="result-loras">
            LoRAs: {result.report.loras.map((l) => `${l.name} × ${l.scale}`).join(', ')}; {result.report.loraKeysMatched} layers merged
            {result.report.mergeMs.length ? ` in ${result.report.mergeMs.reduce((a, b) => a + b, 0).toFixed(0)} ms` : ''}
            {result.report.loraKeysUnmatched.length ? `; ${result.report.loraKeysUnmatched.length} not applied` : ''}
          </p>
        )}
        {result && !running && result.report.boxes.length > 0 && (
          <p className="hint" data-testid="result-boxes">
            Attention in box (used / unmasked): {result.report.boxes.map((b) => `${b.name} ${Math.round(b.attentionInBox * 100)}% / ${Math.round(b.attentionInBoxUnmasked * 100)}%`).join(', ')}
          </p>
        )}
        {result && !running && result.report.loras.length > 0 && (
          <p className="hint" data-testid="result-composition">
            {compositionSummary(result.report)}
          </p>
        )}
      </section>
    </main>
  );
}
