// The studio page: the picture in the middle with the concept boxes drawn over it, the prompt, the
// settings and Generate beside it, the model and LoRA library on the other side, the gallery strip
// below. Research detail (UNet runs, caches, attention shares, memory, plots, test scores) sits in a
// Details drawer under the picture. Files dropped anywhere are imported or opened (studio PNGs).
import { useEffect, useState } from 'react';
import { useStore } from 'zustand';
import type { CompositionMethodId, GenerateJob, GenerationReport, InitReport, SchedulerId } from '../../workers/api/contract.ts';
import { PictureStage } from '../canvas/PictureStage.tsx';
import { BoxPanel } from '../panels/BoxPanel.tsx';
import { GalleryPanel } from '../panels/GalleryPanel.tsx';
import { ImageCanvas } from '../panels/ImageCanvas.tsx';
import { Lightbox } from '../panels/Lightbox.tsx';
import { LibraryPanel } from '../panels/LibraryPanel.tsx';
import { LoraPanel } from '../panels/LoraPanel.tsx';
import { MissingPanel } from '../panels/MissingPanel.tsx';
import { GuidancePlot, StepPlots } from '../panels/Plots.tsx';
import { CompareControls, ComparisonGrid, METHODS, ScoreLine, ScorerPanel } from '../panels/ScorePanel.tsx';
import { CompositionSettings } from '../panels/CompositionSettings.tsx';
import { HiresPanel, StartPicturePanel } from '../panels/PicturePanel.tsx';
import { pictureStore, startFromResult, startPictureProblem } from './picture-actions.ts';
import { PREVIEW_RATES, useStudio, type RunStatus } from '../store/studio.ts';
import { cancel, downloadPng, dropFiles, engine, generate, sceneStore, setMemoryLimit, setPreviewEvery, shareLink, startStudio } from './actions.ts';
import { isBuiltInScorer } from './scoring.ts';
import { duration, METHOD_WORDS, phaseWords, timeLeft } from './words.ts';

const SCHEDULERS: [SchedulerId, string][] = [
  ['dpmpp-2m', 'DPM++ 2M'],
  ['dpmpp-2m-karras', 'DPM++ 2M Karras'],
  ['euler', 'Euler'],
  ['lcm', 'LCM (for LCM LoRAs, 4 to 8 steps)'],
  ['tcd', 'TCD (for TCD LoRAs, 4 to 8 steps)'],
  ['heun', 'Heun (two model runs a step)'],
  ['euler-a', 'Euler ancestral'],
  ['ddim', 'DDIM'],
];

/** One line on how the LoRAs were composed: method, UNet runs, cmlora's order and cache hits. */
function compositionSummary(r: GenerationReport): string {
  const c = r.composition;
  const label = METHODS.find(([id]) => id === c.method)?.[1] ?? c.method;
  const shallow = c.steps.reduce((a, s) => a + (s.shallow?.length ?? 0), 0);
  const notes = [c.unetEvaluations.profile ? `${c.unetEvaluations.profile} measuring LoRAs` : '', shallow ? `${shallow} on reused deep features` : ''].filter(Boolean);
  const parts = [`${label}: ${r.unetEvaluations} UNet runs${notes.length ? ` (${notes.join(', ')})` : ''}`];
  if (c.method === 'cmlora') {
    parts.push(`lead order ${c.order.map((i) => c.loras[i]).join(' > ')}`);
    parts.push(`reused work ${c.cacheHitRate.map((h, i) => `${c.loras[i]} ${Math.round((h ?? 0) * 100)}%`).join(', ')}`);
  }
  return parts.join('; ');
}

function NumberField({ label, value, onChange, min, max, step = 1, testId, title }: { label: string; value: number; onChange: (v: number) => void; min: number; max: number; step?: number; testId: string; title?: string }) {
  return (
    <label title={title}>
      {label}
      <input type="number" value={value} min={min} max={max} step={step} data-testid={testId} onChange={(e) => onChange(Number(e.target.value))} />
    </label>
  );
}

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

/** A random seed, as every image tool's dice. */
const randomSeed = () => crypto.getRandomValues(new Uint32Array(1))[0];

/** The running job in words: its phase, the time it has taken and, from its measured steps, the time left. */
function RunLine({ run }: { run: RunStatus }) {
  const [, tick] = useState(0);
  useEffect(() => {
    const t = setInterval(() => tick((n) => n + 1), 1000);
    return () => clearInterval(t);
  }, []);
  const left = run.phase === 'denoise' || run.phase === 'hires' ? timeLeft(run.stepTimes, run.step, run.total) : undefined;
  return (
    <>
      {run.label ? `${run.label}: ` : ''}
      {phaseWords(run.phase, run.step, run.total, run.firstRun)} · {duration(performance.now() - run.startedAt)}
      {left !== undefined ? ` · about ${duration(left)} left` : ''}
    </>
  );
}

/** A problem the artist can read and dismiss (a refused link, a damaged file). */
function DismissableAlert({ text, className, testId, onDismiss }: { text: string; className?: string; testId: string; onDismiss: () => void }) {
  return (
    <p className={className ? `error ${className}` : 'error'} role="alert" data-testid={testId}>
      {text}{' '}
      <button className="small" aria-label="Dismiss this message" onClick={onDismiss}>
        ✕
      </button>
    </p>
  );
}

export function App() {
  const { job, setJob, status, model, preview, result, notice, alert, linkAlert, selfTest, runSteps, runGuidance, loras, shareUrl, adapterNote, batchCount, batch } = useStudio();
  const saveError = useStore(sceneStore, (s) => s.saveError);
  const hasBoxes = useStore(sceneStore, (s) => s.scene.boxes.length > 0);
  useEffect(() => {
    void startStudio();
  }, []);
  const running = status.kind === 'running' || status.kind === 'cancelling';
  const set = (patch: Partial<GenerateJob>) => setJob(patch);
  // the layout's frame follows the image size once it is a size the engine takes
  const setSize = (width: number, height: number) => {
    set({ width, height });
    const ok = (v: number) => Number.isInteger(v) && v >= 64 && v <= 2048 && v % 64 === 0;
    if (ok(width) && ok(height)) sceneStore.getState().setFrame(width, height);
  };
  const bar = status.kind === 'running' ? status.step / status.total : status.kind === 'loading' ? status.done / Math.max(status.total, 1) : 0;
  // the plots follow the running job step by step, then show the result's
  const liveSteps = running ? runSteps : (result?.report.composition.steps ?? []);
  const liveGuidance = running ? runGuidance : (result?.report.guidance?.steps ?? []);
  const liveLoras = running ? loras.filter((l) => l.enabled && l.info).map((l) => l.file.name) : (result?.report.composition.loras ?? []);
  const method = job.composition?.method ?? 'merge';
  const testScorer = result?.score && isBuiltInScorer(result.score.scorer);
  const hasStart = useStore(pictureStore, (s) => !!s.start);
  return (
    <main
      onDragOver={(e) => {
        if (e.dataTransfer.types.includes('Files')) e.preventDefault();
      }}
      onDrop={(e) => {
        if (!e.dataTransfer.files.length) return;
        e.preventDefault();
        void dropFiles([...e.dataTransfer.files]);
      }}
    >
      <header>
        <h1>LoRA Studio</h1>
        <span className="model" data-testid="model-name" title={model ? `${model.layout}, ${model.precision}` : undefined}>
          {model ? `${model.name}${model.isTestModel ? ' · test model: random weights, pictures are noise patterns' : ''}` : 'no model'}
        </span>
        <span className="spacer" />
        <label className="open-png">
          Open a picture's scene
          <input type="file" accept="image/png" data-testid="open-png" onChange={(e) => void dropFiles([...(e.target.files ?? [])])} />
        </label>
        <button data-testid="share" onClick={() => void shareLink()}>
          Share link
        </button>
        {shareUrl && <input className="share-url" readOnly value={shareUrl} aria-label="Share link" data-testid="share-url" onFocus={(e) => e.target.select()} />}
        {hasStart && (
          <span className="hint share-note" data-testid="share-note">
            Links carry the mask and settings, not the start picture.
          </span>
        )}
        {linkAlert && <DismissableAlert text={linkAlert} className="link-alert" testId="link-alert" onDismiss={() => useStudio.getState().set({ linkAlert: undefined })} />}
      </header>
      <aside className="left">
        <LibraryPanel disabled={running} />
        <LoraPanel disabled={running || !model} />
      </aside>
      <section className="center">
        <PictureStage store={sceneStore} image={running ? preview : result?.image} running={running} disabled={running} />
        {batch && batch.images.length > 0 && (
          <ul className="batch-grid" data-testid="batch-grid" aria-label="The pictures of the last batch">
            {batch.images.map((image, i) => (
              <li key={batch.seeds[i]}>
                <button className="thumb-button" data-testid={`batch-${i}`} aria-label={`Enlarge picture ${i + 1} of the batch (seed ${batch.seeds[i]})`} onClick={() => useStudio.getState().set({ lightbox: { src: image, caption: `Seed ${batch.seeds[i]}` } })}>
                  <ImageCanvas image={image} label={`Seed ${batch.seeds[i]}`} />
                </button>
              </li>
            ))}
          </ul>
        )}
        <MissingPanel />
        {/* the last result's lines stay in place (hidden) during a run: nothing below them moves */}
        <div className="result-info" style={{ visibility: running ? 'hidden' : 'visible' }}>
          {result && (
            <p className="hint" data-testid="result-line">
              {result.image.width}×{result.image.height}
              {result.report.hires ? ` (hires fix from ${result.report.width}×${result.report.height})` : ''}
              {result.report.init ? ` · ${INIT_WORDS[result.report.init.mode]}` : ''} · {result.report.steps} steps · seed {result.report.seed} · {duration(result.report.timingsMs.totalMs)}{' '}
              <button className="small" data-testid="reuse-seed" onClick={() => set({ seed: result.report.seed })} title="Use this picture's seed again">
                Reuse seed
              </button>{' '}
              <button className="small" data-testid="download-png" onClick={() => void downloadPng(result.scene, result.report)}>
                Download PNG
              </button>{' '}
              <button className="small" data-testid="use-as-start" disabled={!!startPictureProblem(model)} title={startPictureProblem(model) ?? 'Start the next picture from this one (image to image, inpainting)'} onClick={startFromResult}>
                Use as start picture
              </button>
            </p>
          )}
          {result?.score && !testScorer && <ScoreLine score={result.score} testId="result-score" />}
          {result && (
            <details className="details" data-testid="details">
              <summary>Details</summary>
              {result.report.loras.length > 0 && (
                <p className="hint" data-testid="result-loras">
                  LoRAs: {result.report.loras.map((l) => `${l.name} × ${l.scale}`).join(', ')}; {result.report.loraKeysMatched} layers merged
                  {result.report.mergeMs.length ? ` in ${result.report.mergeMs.reduce((a, b) => a + b, 0).toFixed(0)} ms` : ''}
                  {result.report.loraKeysUnmatched.length ? `; ${result.report.loraKeysUnmatched.length} not applied` : ''}
                </p>
              )}
              {result.report.boxes.length > 0 && (
                <p className="hint" data-testid="result-boxes">
                  Attention in box (used / unmasked): {result.report.boxes.map((b) => `${b.name} ${Math.round(b.attentionInBox * 100)}% / ${Math.round(b.attentionInBoxUnmasked * 100)}%`).join(', ')}
                </p>
              )}
              {result.report.loras.length > 0 && (
                <p className="hint" data-testid="result-composition">
                  {compositionSummary(result.report)}
                </p>
              )}
              {result.report.init && (
                <p className="hint" data-testid="result-init">
                  {initSummary(result.report.init, result.report.steps)}
                </p>
              )}
              {result.report.hires && (
                <p className="hint" data-testid="result-hires">
                  Hires fix: {result.report.hires.width}×{result.report.hires.height}, enlarged as {result.report.hires.upscaler === 'latent' ? 'latent' : 'picture'}, change {result.report.hires.strength}, {result.report.hires.stepsRun} of {result.report.hires.steps} steps
                  {result.report.hires.decodeTiles > 1 ? `, decoded in ${result.report.hires.decodeTiles} tiles` : ''}, {duration(result.report.hires.ms)}
                </p>
              )}
              {result.report.memoryPlan && (
                <p className="hint" data-testid="result-memory" title={`${result.report.memoryPlan.attentionReason}. ${result.report.memoryPlan.notes.join('; ')}.`}>
                  {memorySummary(result.report)}
                </p>
              )}
              <p className="hint" data-testid="result-engine">
                {model ? `${model.layout}, ${model.precision}; ` : ''}
                {result.report.adapter.vendor}/{result.report.adapter.architecture}; {result.report.latentsOnGpu ? `the latents stayed on the GPU (${gpuReads(result.report.readbacksPerStep)})` : `each step came back to the CPU (${result.report.latentsOnGpuReason})`}
              </p>
              {result.score && testScorer && (
                <>
                  <p className="hint">Test scorer (random weights): its numbers check the arithmetic, not the picture.</p>
                  <ScoreLine score={result.score} testId="result-score" />
                </>
              )}
            </details>
          )}
        </div>
        <ComparisonGrid />
      </section>
      <aside className="right controls">
        <label>
          Prompt
          <textarea value={job.prompt} data-testid="prompt" onChange={(e) => set({ prompt: e.target.value })} rows={3} />
        </label>
        <label>
          Negative prompt
          <textarea value={job.negative} data-testid="negative" onChange={(e) => set({ negative: e.target.value })} rows={2} />
        </label>
        <div className="row generate-row">
          <label className="batch" title="Pictures one Generate makes, each with the next seed">
            Pictures
            <input type="number" min={1} max={16} value={batchCount} data-testid="batch-count" onChange={(e) => useStudio.getState().set({ batchCount: Math.max(1, Math.min(16, Math.round(Number(e.target.value)) || 1)) })} />
          </label>
          <button className="primary" data-testid="generate" disabled={!model || running || status.kind === 'loading'} onClick={() => void generate()}>
            Generate
          </button>
          <button data-testid="cancel" disabled={!running && status.kind !== 'loading'} onClick={cancel}>
            Cancel
          </button>
        </div>
        <progress max={1} value={bar} data-testid="progress" aria-label="Progress" />
        <p className="status" data-testid="status" role="status">
          {status.kind === 'loading' && `Loading ${status.label}${status.total > 1 ? `: ${status.done} of ${status.total} parts` : '…'}`}
          {status.kind === 'running' && <RunLine run={status} />}
          {status.kind === 'cancelling' && 'Cancelling…'}
          {status.kind === 'ready' && (notice ?? 'Ready')}
          {status.kind === 'starting' && 'Starting the engine…'}
        </p>
        {status.kind === 'error' && (
          <p className="error" role="alert" data-testid="error">
            {status.message}
          </p>
        )}
        {adapterNote && (
          <p className="hint" data-testid="adapter-note">
            {adapterNote}
          </p>
        )}
        {alert && <DismissableAlert text={alert} testId="alert" onDismiss={() => useStudio.getState().set({ alert: undefined })} />}
        {saveError && (
          <p className="error" role="alert" data-testid="save-error">
            {saveError}
          </p>
        )}
        <div className="row">
          <div className="seed">
            <NumberField label="Seed" value={job.seed} min={0} max={4294967295} onChange={(seed) => set({ seed })} testId="seed" />
            <button className="small dice" data-testid="seed-random" aria-label="Random seed" title="A random seed" onClick={() => set({ seed: randomSeed() })}>
              Random
            </button>
          </div>
        </div>
        <div className="row">
          <NumberField label="Steps" value={job.steps} min={1} max={250} onChange={(steps) => set({ steps })} testId="steps" title="More steps: finer, slower" />
          <NumberField label="Prompt strength" value={job.cfg} min={1} max={30} step={0.5} onChange={(cfg) => set({ cfg })} testId="cfg" title="How closely the picture follows the prompt (classifier-free guidance); 7 is usual" />
        </div>
        <div className="row">
          <NumberField label="Width" value={job.width} min={64} max={2048} step={64} onChange={(width) => setSize(width, job.height)} testId="width" />
          <NumberField label="Height" value={job.height} min={64} max={2048} step={64} onChange={(height) => setSize(job.width, height)} testId="height" />
        </div>
        <StartPicturePanel disabled={running} />
        <HiresPanel disabled={running} />
        {/* the sampler gets a row of its own: its names are too long to share one */}
        <div className="row sampler-row">
          <label title="The sampler: how each step moves towards the picture">
            Sampler
            <select value={job.scheduler} data-testid="scheduler" onChange={(e) => set({ scheduler: e.target.value as SchedulerId })}>
              {SCHEDULERS.map(([id, label]) => (
                <option key={id} value={id}>
                  {label}
                </option>
              ))}
            </select>
          </label>
          <button className="small" data-testid="preset-fast" title="For an LCM LoRA: the LCM sampler, 4 steps, prompt strength 1.5" onClick={() => set({ scheduler: 'lcm', steps: 4, cfg: 1.5 })}>
            Fast (4 steps, LCM)
          </button>
        </div>
        <label>
          How LoRAs combine
          <select value={method} data-testid="method" onChange={(e) => set({ composition: { ...job.composition, method: e.target.value as CompositionMethodId } })}>
            {METHODS.map(([id, paper]) => (
              <option key={id} value={id} title={paper}>
                {METHOD_WORDS[id].name}
              </option>
            ))}
          </select>
          <span className="hint" data-testid="method-line">
            {METHOD_WORDS[method].line}
          </span>
        </label>
        <CompositionSettings />
        <details className="layout-settings" data-testid="layout-settings" open={hasBoxes || undefined}>
          <summary>Boxes</summary>
          <BoxPanel store={sceneStore} disabled={running} />
        </details>
        <CompareControls disabled={!model || running || status.kind === 'loading'} />
        <details className="plot-area" data-testid="plots-drawer">
          <summary>Per-step plots</summary>
          {liveSteps.length > 0 ? <StepPlots steps={liveSteps} loras={liveLoras} /> : <p className="hint">How each LoRA took part at each step, drawn during a run.</p>}
          <GuidancePlot steps={liveGuidance} total={job.steps} />
        </details>
        <ScorerPanel disabled={running} />
        <details className="hint" data-testid="diagnostics">
          <summary>Diagnostics</summary>
          <MemoryLimitField />
          <PreviewRateField disabled={running} />
          <button data-testid="self-test" onClick={runSelfTest} disabled={running}>
            Check the GPU kernels
          </button>
          <p data-testid="self-test-result">{selfTest}</p>
        </details>
      </aside>
      <section className="gallery-section">
        <h2>Gallery</h2>
        <GalleryPanel />
      </section>
      <Lightbox />
    </main>
  );
}

const PREVIEW_WORDS: Record<(typeof PREVIEW_RATES)[number], string> = { 1: 'every step', 4: 'every 4 steps', 0: 'off (the picture at the end)' };

/** How often a run shows its picture so far: each preview makes the GPU wait while the CPU reads it. */
function PreviewRateField({ disabled }: { disabled: boolean }) {
  const every = useStudio((s) => s.previewEvery);
  return (
    <label title="Each preview makes the GPU wait while the page reads it back; fewer previews finish a picture sooner on a fast GPU. The per-step plots then fill in at the end.">
      Live preview
      <select data-testid="preview-every" value={every} disabled={disabled} onChange={(e) => setPreviewEvery(Number(e.target.value))}>
        {PREVIEW_RATES.map((n) => (
          <option key={n} value={n}>
            {PREVIEW_WORDS[n]}
          </option>
        ))}
      </select>
    </label>
  );
}

/**
 * The GPU memory limit in GB: blank for none. Kept as typed while it is edited (a number input
 * holding "1." is not yet a number), set when it is a positive number or cleared.
 */
function MemoryLimitField() {
  const limit = useStudio((s) => s.memoryLimit);
  const shown = limit ? String(+(limit / 2 ** 30).toPrecision(3)) : '';
  const [text, setText] = useState(shown);
  // the studio set it (after an out-of-memory): show its value, unless it is what was typed
  useEffect(() => setText((t) => (t === '' ? !limit : Math.abs(Number(t) * 2 ** 30 - (limit ?? 0)) < 1) ? t : shown), [limit, shown]);
  return (
    <label title="Jobs are planned to stay under it: the picture is decoded in tiles and guidance's two halves run one after the other where that is needed. The studio sets it after the GPU runs out of memory.">
      GPU memory limit (GB)
      <input
        type="number"
        min={0}
        step="any"
        placeholder="none"
        value={text}
        data-testid="memory-limit"
        onChange={(e) => {
          setText(e.target.value);
          const gb = Number(e.target.value);
          // (text the input cannot read yet, like "1e", also reads as empty: it is not a clear)
          if (e.target.value === '' && !e.target.validity.badInput) setMemoryLimit(undefined);
          else if (Number.isFinite(gb) && gb > 0) setMemoryLimit(gb * 2 ** 30);
        }}
      />
    </label>
  );
}

const INIT_WORDS: Record<InitReport['mode'], string> = { img2img: 'from a start picture', inpaint: 'inpainted', 'inpaint-model': 'inpainted (inpainting model)' };

/** What a job that started from a picture did, for the Details drawer. */
function initSummary(init: InitReport, steps: number): string {
  const r = init.region;
  return `Started from a picture (${init.mode}): change ${init.strength}, ${init.stepsRun} of ${steps} steps run (from step ${init.startStep})${r ? `; the masked area ${r.width}×${r.height} at (${r.x}, ${r.y}) repainted at full size` : ''}; reading the picture took ${Math.round(init.encodeMs)} ms`;
}

/** What a loop on the GPU read back while it ran (live previews; a mix's measures where they are shown as it runs). */
const gpuReads = (perStep: number) => (perStep === 0 ? 'nothing read back during the steps' : `${+perStep.toFixed(2)} read${perStep === 1 ? '' : 's'} a step`);

const mb = (bytes: number) => (bytes < 2 ** 20 ? `${Math.round(bytes / 1024)} KB` : `${(bytes / 2 ** 20).toFixed(1)} MB`);

/** The memory line under a result: what the job held on the GPU against what its plan said, in plain words. */
export function memorySummary(report: GenerationReport): string {
  const p = report.memoryPlan;
  const attention = { fused: 'fused attention', chunked: 'attention in chunks', explicit: 'attention in one piece' }[p.attention];
  const extra = [p.vaeTile ? `picture decoded in ${p.vaeTile * 8} px tiles` : '', p.cfgHalves ? 'guidance halves one after the other' : ''].filter(Boolean);
  return `GPU memory: ${mb(report.gpuBytesAllocated)} at peak (planned ${mb(p.peakBytes)}), largest buffer ${mb(report.gpuLargestBufferBytes)} (planned ${mb(p.largestBufferBytes)}); ${[attention, ...extra].join(', ')}`;
}
