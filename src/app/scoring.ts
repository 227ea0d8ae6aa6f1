// Scoring in the studio: the CLIP scorer's life in the engine worker (the built-in test scorer, or
// CLIP ViT-B/16 fetched once from the hub), each result's scores, the LoRAs' trigger words, class
// words and reference pictures, and a comparison of the scene across methods.
import type { CompositionMethodId, ImageData8, ProgressEvent, ScoreConcept, ScoreReport, ScorerRequest } from '../../workers/api/contract.ts';
import type { Scene, SceneLora } from '../../workers/layout/scene.ts';
import { sceneScoreRequest } from '../../workers/eval/scores.ts';
import { withProgress } from '../engine/client.ts';
import { dataUrlOf, drawScaled, pixelsOf } from '../gallery/images.ts';
import { updateRecord, type LoraRecord } from '../library/library.ts';
import { BUILT_IN_SCORER, builtInScorerRequest, downloadScorer, HUB_SCORER, storedScorerRequest } from '../library/scorer.ts';
import { useStudio, type CompareEntry, type LoraEntry } from '../store/studio.ts';
import { saveResult } from '../gallery/gallery.ts';
import { advanceRun, currentJob, currentScene, engine, isEngineFailure, startRun } from './actions.ts';
import { METHOD_WORDS } from './words.ts';

const SCORER_KEY = 'lorastudio.scorer';
const studio = () => useStudio.getState();
const f16 = () => !!studio().model?.adapter.shaderF16;

async function load(req: ScorerRequest) {
  studio().set({ scorer: { name: req.name } });
  try {
    const info = await engine().loadScorer(req);
    studio().set({ scorer: { name: req.name, info } });
  } catch (e) {
    studio().set({ scorer: { name: req.name, error: (e as Error).message } });
  }
}

/** The hub scorer when it was fetched before, else the built-in one. */
export async function loadScorer() {
  const stored = localStorage.getItem(SCORER_KEY) === HUB_SCORER ? await storedScorerRequest(HUB_SCORER, f16()).catch(() => undefined) : undefined;
  await load(stored ?? builtInScorerRequest());
}

let fetching: AbortController | undefined;

/** Fetch CLIP ViT-B/16 into this browser's storage (resuming a stopped fetch), then score with it. */
export async function fetchHubScorer() {
  fetching = new AbortController();
  try {
    const req = await downloadScorer(HUB_SCORER, f16(), (p) => studio().set({ scorer: { ...studio().scorer!, download: { file: p.file, done: p.done, total: p.total } } }), fetching.signal);
    localStorage.setItem(SCORER_KEY, HUB_SCORER);
    await load(req);
  } catch (e) {
    studio().set({ scorer: { ...studio().scorer!, download: undefined, error: `${HUB_SCORER} could not be fetched: ${(e as Error).message}` } });
  } finally {
    fetching = undefined;
  }
}

export const stopScorerFetch = () => fetching?.abort();

export async function useBuiltInScorer() {
  localStorage.removeItem(SCORER_KEY);
  await load(builtInScorerRequest());
}

export const isBuiltInScorer = (name: string | undefined) => name === BUILT_IN_SCORER;

// ---------------------------------------------------------------- concepts

const references = new Map<string, ImageData8>();

async function referencePixels(r: { id: string; dataUrl: string }): Promise<ImageData8> {
  if (!references.has(r.id)) references.set(r.id, pixelsOf(await drawScaled(await (await fetch(r.dataUrl)).blob())));
  return references.get(r.id)!;
}

async function conceptOf(l: SceneLora): Promise<ScoreConcept> {
  const entry = studio().loras.find((e) => e.file.name === l.name || (l.fingerprint && e.info?.fingerprint === l.fingerprint));
  const r = entry?.record;
  if (!r) return { name: l.name, trigger: l.trigger };
  return { name: l.name, trigger: r.trigger || l.trigger, classWord: r.classWord, references: await Promise.all((r.references ?? []).map(async (x) => ({ id: x.id, image: await referencePixels(x) }))) };
}

/** The CLIP scores of an image made from `scene`; undefined (with a notice) when there is no scorer. */
export async function scoreResult(image: ImageData8, scene: Scene): Promise<ScoreReport | undefined> {
  if (!studio().scorer?.info) return undefined;
  try {
    return await engine().score(await sceneScoreRequest(image, scene, conceptOf));
  } catch (e) {
    studio().set({ notice: `The image could not be scored: ${(e as Error).message}` });
    return undefined;
  }
}

async function saveLora(entry: LoraEntry, patch: Partial<LoraRecord>) {
  const record = { ...entry.record, ...patch };
  studio().updateLora(entry.key, { record });
  await updateRecord(record).catch((e) => studio().set({ notice: (e as Error).message }));
}

export const setScoringWords = (entry: LoraEntry, patch: Pick<LoraRecord, 'trigger'> | Pick<LoraRecord, 'classWord'>) => saveLora(entry, patch);

/** Reference pictures, scaled to at most 256 pixels a side and kept losslessly with the LoRA's record. */
export async function addReferences(entry: LoraEntry, files: File[]) {
  const added: { id: string; dataUrl: string }[] = [];
  for (const f of files) {
    try {
      const dataUrl = await dataUrlOf(await drawScaled(f, 256), 'image/png');
      added.push({ id: `${entry.record.id}:${Date.now()}:${added.length}:${f.name}`, dataUrl });
    } catch {
      studio().set({ notice: `"${f.name}" is not an image this browser can read; it was not added as a reference.` });
    }
  }
  if (added.length) await saveLora(entry, { references: [...(entry.record.references ?? []), ...added].slice(0, 16) });
}

export const removeReference = (entry: LoraEntry, id: string) => saveLora(entry, { references: (entry.record.references ?? []).filter((r) => r.id !== id) });

// ---------------------------------------------------------------- comparison

/** The current scene once per method, one after another, each scored; Cancel stops the rest. */
export async function compareMethods(methods: CompositionMethodId[]) {
  const { set } = studio();
  let base;
  try {
    base = currentJob();
  } catch (e) {
    return set({ status: { kind: 'error', message: (e as Error).message } });
  }
  const scene = currentScene();
  const entries = methods.map((method) => ({ method }));
  set({ comparison: entries, notice: undefined });
  // each method once at one step first: its programs compile here, not inside the times compared
  for (const method of methods) {
    if (studio().status.kind === 'cancelling') break;
    set({ status: { ...startRun(1, METHOD_WORDS[method].name), phase: 'warmup' } });
    await engine()
      .generate({ ...base, steps: 1, previewEvery: 0, composition: { ...base.composition, method } })
      .catch(() => {});
  }
  for (const [i, method] of methods.entries()) {
    if (studio().status.kind === 'cancelling') break;
    const job = { ...base, composition: { ...base.composition, method } };
    const label = METHOD_WORDS[method].name;
    const onProgress = (p: ProgressEvent) => {
      if (studio().status.kind !== 'cancelling') set({ status: advanceRun(p, label), ...(p.preview ? { preview: p.preview } : {}) });
    };
    set({ status: startRun(job.steps, label) });
    let entry: CompareEntry;
    try {
      const r = await withProgress(onProgress, (p) => engine().generate(job, p));
      const methodScene = { ...scene, composition: job.composition };
      entry = { method, image: r.image, report: r.report, score: await scoreResult(r.image, methodScene) };
      // each method's picture is kept in the gallery, with its scene, like any other
      const item = await saveResult(r.image, methodScene, r.report, entry.score).catch(() => undefined);
      if (item) set({ gallery: [item, ...studio().gallery] });
    } catch (e) {
      const err = e as Error & { code?: string };
      if (err.code === 'cancelled') break;
      entry = { method, error: err.message };
      // the engine is being restarted: the rest of the comparison waits for the artist
      if (isEngineFailure(err)) {
        const done = studio().comparison!.map((c, j) => (j === i ? entry : c));
        return set({ comparison: done.filter((c) => 'image' in c || 'error' in c) });
      }
    }
    set({ comparison: studio().comparison!.map((c, j) => (j === i ? entry : c)) });
  }
  const cancelled = studio().status.kind === 'cancelling';
  set({ status: { kind: 'ready' }, notice: cancelled ? 'Comparison cancelled.' : undefined, comparison: studio().comparison!.filter((c) => 'image' in c || 'error' in c) });
}
