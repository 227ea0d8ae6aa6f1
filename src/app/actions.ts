// What the page does: the engine worker's life, the library (models, LoRAs, downloads), generating,
// the gallery, share links and dropped files. Components call these; state lives in the stores.
import type { GenerateJob, ImageData8, LayoutOptions, LoraUse, ModelRequest, ProgressEvent } from '../../workers/api/contract.ts';
import { bytesText, RESTART_ADVICE } from '../../workers/api/errors.ts';
import { loadScorer, scoreResult } from './scoring.ts';
import { paperSettings } from '../../workers/composition/presets.ts';
import { boxTrigger, layoutSwitches, type SceneLora, type SceneModel } from '../../workers/layout/scene.ts';
import type { StudioScene as Scene } from '../../workers/layout/scene-picture.ts';
import { jobJson, pictureJob, pictureStore, syncPicture, vaeRef } from './picture-actions.ts';
import { startEngine, withProgress, type EngineClient } from '../engine/client.ts';
import { isCheckpointFile, isEmbeddingFile, testModelRequest } from '../engine/model-files.ts';
import { dataUrlOf, drawScaled } from '../gallery/images.ts';
import { deleteResult, listResults, pngContents, resultPng, saveResult, type GalleryItem } from '../gallery/gallery.ts';
import { loraTagName, loraTags, schedulerOf, type A1111Parameters } from '../../workers/layout/a1111.ts';
import { DownloadError } from '../library/download.ts';
import {
  cancelDownload,
  deleteRecord,
  downloadedBytes,
  downloadLora,
  embeddingFile,
  importEmbedding,
  type EmbeddingRecord,
  downloadModel,
  guessCategory,
  importLora,
  importModel,
  listLibrary,
  loraFile,
  modelRequest,
  planDownload,
  updateRecord,
  type DownloadRecord,
  type LoraRecord,
  type ModelRecord,
} from '../library/library.ts';
import { storageUse } from '../library/opfs.ts';
import { registerOffline } from './offline.ts';
import { decodeShareLink, isShareLink, shareLinkOf } from '../share/link.ts';
import { createSceneStore, SCENE_KEY, type SettingKey } from '../store/scene.ts';
import { activeLoras, DEFAULT_JOB, MEMORY_LIMIT_KEY, PREVIEW_EVERY_KEY, useStudio, type EmbeddingEntry, type LoraEntry, type RunStatus } from '../store/studio.ts';

export const TEST_MODEL_ID = 'test-model';
/** How scenes name the embedded test model. */
const TEST_MODEL_NAME = 'built-in tiny test model';
const MODEL_KEY = 'lorastudio.model';

export const sceneStore = createSceneStore(typeof localStorage === 'undefined' ? undefined : localStorage);

let client: EngineClient | undefined;

/** The worker's API, starting the worker on first use (and again after it died or lost its device). */
export function engine() {
  if (!client) {
    const started = (client = startEngine());
    void started.failed.then((e) => recover(started, e));
  }
  return client.api;
}

let restarts: number[] = [];

/** How often the studio asks for a live preview: every `steps` steps, 0 for none (kept on this device). */
export function setPreviewEvery(steps: number) {
  localStorage.setItem(PREVIEW_EVERY_KEY, String(steps));
  studio().set({ previewEvery: steps });
}

/** The GPU memory limit jobs are planned under (bytes), or none. */
export function setMemoryLimit(bytes: number | undefined) {
  const limit = bytes && Number.isFinite(bytes) && bytes > 0 ? Math.round(bytes) : undefined;
  if (limit) localStorage.setItem(MEMORY_LIMIT_KEY, String(limit));
  else localStorage.removeItem(MEMORY_LIMIT_KEY);
  studio().set({ memoryLimit: limit });
}

/**
 * A job ran the GPU out of memory (the engine then refuses all further work: its worker is replaced).
 * Where the job's plan is known the studio sets a limit for the next ones, three quarters of the
 * lesser of what was in use when it failed and what the job planned, so that their plans (the
 * picture decoded in tiles, guidance's halves one after the other) stay under it. Returns the words
 * for the notice: what happened, and the limit.
 */
function learnMemoryLimit(err: Error & { data?: Record<string, number> }): string {
  const what = err.message.split(RESTART_ADVICE)[0];
  const planned = err.data?.plannedPeakBytes;
  const used = err.data?.liveBytes;
  if (!planned || !used) return what;
  const limit = Math.floor(Math.min(used, planned) * 0.75);
  setMemoryLimit(limit);
  return `${what} Jobs are now planned to stay under ${bytesText(limit)} of GPU memory (Diagnostics, GPU memory limit).`;
}

/** Failures the page answers by restarting the engine, not by showing an error. */
export const isEngineFailure = (e: unknown) => ['device-lost', 'worker-crashed'].includes((e as { code?: string })?.code ?? '');

/**
 * The worker died or lost its GPU device: a fresh worker with the model, its LoRAs and the scorer
 * loaded again. The scene, the library and the gallery live in the page and are untouched; the job
 * that was running can simply be run again.
 */
async function recover(failed: EngineClient, why: Error) {
  if (client !== failed) return;
  failed.terminate();
  client = undefined;
  const { set } = studio();
  // an engine that fails again as soon as it starts is not restarted for ever
  const now = Date.now();
  restarts = restarts.filter((t) => now - t < 60_000).concat(now);
  if (restarts.length > 3) return set({ model: undefined, status: { kind: 'error', message: `${why.message} The engine failed ${restarts.length} times in a minute, so it was not restarted again. Reload the page to try once more; your scene is kept.` } });
  set({ model: undefined, loras: studio().loras.map((l) => ({ ...l, info: undefined })), notice: undefined });
  await useModel(studio().modelId ?? TEST_MODEL_ID);
  void loadScorer();
  if (studio().status.kind === 'ready') set({ notice: `${why.message} The engine was restarted and the model reloaded; your scene is kept. Generate again to run the job.` });
}

const studio = () => useStudio.getState();
const fail = (e: unknown) => studio().set({ status: { kind: 'error', message: (e as Error).message } });

// ---------------------------------------------------------------- scene <-> settings

const settingsOf = (job: GenerateJob): Partial<Pick<Scene, SettingKey>> => ({
  prompt: job.prompt,
  negative: job.negative,
  seed: job.seed,
  steps: job.steps,
  cfg: job.cfg,
  scheduler: job.scheduler,
  composition: job.composition ?? { method: 'merge' },
});

const sceneLoras = (entries: LoraEntry[]): SceneLora[] =>
  entries
    .filter((l) => l.enabled)
    .map((l) => ({
      name: l.file.name,
      scale: l.scale,
      ...(l.info ? { fingerprint: l.info.fingerprint } : {}),
      ...(l.record.source?.startsWith('https://') ? { url: l.record.source } : {}),
      ...(l.record.trigger?.trim() ? { trigger: l.record.trigger.trim() } : {}),
    }));

let lorasRestored = false;

/** Keep the scene store (the autosaved, shareable scene) in step with the settings the page edits. */
function syncScene() {
  const saved = typeof localStorage !== 'undefined' && localStorage.getItem(SCENE_KEY);
  const { scene } = sceneStore.getState();
  if (saved) studio().setJob({ prompt: scene.prompt, negative: scene.negative, seed: scene.seed, steps: scene.steps, cfg: scene.cfg, scheduler: scene.scheduler, composition: scene.composition, width: scene.width, height: scene.height });
  else sceneStore.getState().setSettings({ ...settingsOf(DEFAULT_JOB), loras: [] });
  useStudio.subscribe((s, prev) => {
    if (s.job !== prev.job) sceneStore.getState().setSettings(settingsOf(s.job));
    if (s.modelId !== prev.modelId && s.modelId) sceneStore.getState().setSettings({ model: sceneModelOf(s.modelId) });
    if (s.library !== prev.library && s.missingModel && libraryModelFor(s.missingModel)) studio().set({ missingModel: undefined });
    if (lorasRestored && s.loras !== prev.loras) {
      // LoRAs the scene names but the library lacks stay in it (they are listed as missing)
      const absent = currentScene().loras.filter((l) => !s.loras.some((e) => e.file.name === l.name));
      sceneStore.getState().setSettings({ loras: [...sceneLoras(s.loras), ...absent] });
    }
  });
}

/** How a scene names a library model: its name and, for a download, where it came from. */
function sceneModelOf(id: string): SceneModel {
  if (id === TEST_MODEL_ID) return { name: TEST_MODEL_NAME };
  const r = studio().library.models.find((m) => m.id === id);
  return { name: r?.name ?? id.replace(/^model:/, ''), ...(r?.source?.startsWith('https://') ? { url: r.source } : {}) };
}

/** The library id of the model a scene names, if the library has it. */
function libraryModelFor(m: SceneModel): string | undefined {
  if (m.name === TEST_MODEL_NAME) return TEST_MODEL_ID;
  return studio().library.models.find((r) => r.name === m.name)?.id;
}

/** The scene as it stands: layout, settings and frame LoRAs. */
export const currentScene = (): Scene => sceneStore.getState().scene;

/** Every LoRA a scene names that the library lacks, with what the scene says about where to get it. */
export function missingLoras(scene: Scene): SceneLora[] {
  const have = studio().loras;
  const all = [...scene.loras, ...scene.boxes.flatMap((b) => b.loras)];
  const seen = new Set<string>();
  return all.filter((l) => {
    if (seen.has(l.name)) return false;
    seen.add(l.name);
    return !have.some((e) => e.file.name === l.name || (l.fingerprint && e.info?.fingerprint === l.fingerprint));
  });
}

/** Open a scene (from a link, a PNG or the gallery): an undoable edit, with its LoRAs switched to match. */
export function applyScene(scene: Scene, from: string) {
  sceneStore.getState().replace(scene);
  studio().setJob({ prompt: scene.prompt, negative: scene.negative, seed: scene.seed, steps: scene.steps, cfg: scene.cfg, scheduler: scene.scheduler, composition: scene.composition, width: scene.width, height: scene.height });
  const { loras, set } = studio();
  set({
    loras: loras.map((l) => {
      const use = scene.loras.find((s) => s.name === l.file.name || (s.fingerprint && s.fingerprint === l.info?.fingerprint));
      return { ...l, enabled: !!use, scale: use?.scale ?? l.scale };
    }),
  });
  const missing = missingLoras(scene);
  // the scene's model: loaded when the library has it, listed as missing when it has not
  const modelId = scene.model && libraryModelFor(scene.model);
  const missingModel = scene.model && !modelId ? scene.model : undefined;
  const lacking = [missingModel && 'its model', missing.length && `${missing.length} LoRA${missing.length > 1 ? 's' : ''} it uses`].filter(Boolean);
  set({ missing, missingModel, notice: `Opened the scene from ${from}.${lacking.length ? ` ${lacking.join(' and ')} ${lacking.length > 1 || missing.length > 1 ? 'are' : 'is'} not in your library.` : ''}`, status: studio().status.kind === 'error' ? { kind: 'ready' } : studio().status });
  if (modelId && modelId !== studio().modelId && studio().status.kind !== 'running') void useModel(modelId);
}

// ---------------------------------------------------------------- models

async function loadModelRequest(req: ModelRequest, label: string, id: string) {
  const { set } = studio();
  set({ status: { kind: 'loading', done: 0, total: 1, label }, notice: undefined });
  try {
    const model = await withProgress((done: number, total: number) => studio().status.kind !== 'cancelling' && set({ status: { kind: 'loading', done, total, label } }), (p) => engine().loadModel(req, p));
    set({ model, modelId: id, status: { kind: 'loading', done: 0, total: 1, label: `the LoRAs for ${label}` } });
    localStorage.setItem(MODEL_KEY, id);
    // the VAE chosen in place of the model's own goes with every model, as A1111's setting does
    const vae = studio().vae;
    if (vae) {
      try {
        set({ model: await engine().loadVae(vaeRef(vae)) });
      } catch (e) {
        set({ vae: undefined, alert: `The VAE ${vae.name} does not fit ${label}, so its own is in use: ${(e as Error).message}` });
      }
    }
    // LoRAs and embeddings belong to a model: load the library's again for this one
    for (const l of studio().loras) await loadLora(l);
    for (const e of studio().embeddings) await loadEmbedding(e);
    set({ status: { kind: 'ready' } });
  } catch (e) {
    // a cancelled load leaves no model in the worker (the old one was let go for the new one's room)
    if ((e as { code?: string }).code === 'cancelled') set({ model: undefined, status: { kind: 'ready' }, notice: `Loading ${label} was cancelled; choose a model to continue.` });
    else fail(e);
  }
}

let engineQueue: Promise<unknown> = Promise.resolve();

/**
 * Model and LoRA loads one after another: a model load drops the worker's LoRAs, so a LoRA load (or a
 * second model load) running beside it would fail or land on the wrong model.
 */
function serial<T>(task: () => Promise<T>): Promise<T> {
  const run = engineQueue.then(task);
  engineQueue = run.catch(() => {});
  return run;
}

/** Counts the models asked for, so a download that finishes later does not undo a choice made meanwhile. */
let modelChoices = 0;

export const useModel = (id: string) => {
  modelChoices++;
  return serial(() => useModelNow(id));
};

async function useModelNow(id: string) {
  try {
    if (id === TEST_MODEL_ID) return await loadModelRequest(await testModelRequest(), 'tiny test model', id);
    const record = studio().library.models.find((m) => m.id === id);
    if (!record) throw new Error('That model is no longer in the library.');
    await loadModelRequest(await modelRequest(record), record.name, id);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code !== 'gpu-out-of-memory') return fail(e);
    // a fresh worker for the next load; loading this one again would fail the same way
    client?.terminate();
    client = undefined;
    fail(new Error(err.message.replace(RESTART_ADVICE, ' The engine was restarted. Next, ')));
  }
}

/** Files picked or dropped: a checkpoint (or diffusers folder) is copied into the library and loaded. */
export async function importModelFiles(files: File[]) {
  if (!files.length) return;
  try {
    const root = files[0].webkitRelativePath?.split('/')[0];
    const name = files.length > 1 && root ? root : files[0].name;
    studio().set({ status: { kind: 'loading', done: 0, total: 1, label: `${name} into the library` } });
    const record = await importModel(files.map((f) => ({ path: f.webkitRelativePath || f.name, file: f })), name);
    await refreshLibrary();
    await useModel(record.id);
  } catch (e) {
    fail(e);
  }
}

export async function deleteModel(record: ModelRecord) {
  try {
    await deleteRecord(record);
    if (localStorage.getItem(MODEL_KEY) === record.id) localStorage.removeItem(MODEL_KEY);
    await refreshLibrary();
    // the model in use is gone from the library: the built-in one takes its place
    if (studio().modelId === record.id) await useModel(TEST_MODEL_ID);
  } catch (e) {
    fail(e);
  }
}

// ---------------------------------------------------------------- downloads

const controllers = new Map<string, AbortController>();

export async function startDownload(input: string) {
  try {
    studio().set({ notice: `Looking up ${input}…` });
    const plan = await planDownload(input);
    await runDownload({ id: `model:${plan.name}`, plan });
  } catch (e) {
    fail(e);
  }
}

export async function runDownload(record: DownloadRecord) {
  const { set } = studio();
  const ctrl = new AbortController();
  controllers.set(record.id, ctrl);
  const patch = (p: Partial<DownloadView>) => set({ downloads: upsert(studio().downloads, { ...(studio().downloads.find((d) => d.record.id === record.id) ?? { record, done: 0 }), ...p }) });
  patch({ running: true, error: undefined });
  const choices = modelChoices;
  try {
    const model = await downloadModel(record.plan, (p) => patch({ done: p.done, total: p.total ?? undefined, bytesPerSecond: p.bytesPerSecond, secondsLeft: p.secondsLeft, file: p.file, resumedFrom: p.resumedFrom }), ctrl.signal);
    await refreshLibrary();
    // the downloaded model is used unless another was chosen while it downloaded
    const chosenMeanwhile = modelChoices !== choices;
    set({ downloads: studio().downloads.filter((d) => d.record.id !== record.id), notice: chosenMeanwhile ? `Downloaded ${model.name}; it is in the library, and the model you chose meanwhile stays.` : `Downloaded ${model.name}.` });
    if (!chosenMeanwhile) await useModel(model.id);
  } catch (e) {
    patch({ running: false, error: e instanceof DownloadError && e.message === 'Paused.' ? undefined : (e as Error).message, done: await downloadedBytes(record.plan) });
  } finally {
    controllers.delete(record.id);
  }
}

export const pauseDownload = (id: string) => controllers.get(id)?.abort();

export async function discardDownload(record: DownloadRecord) {
  controllers.get(record.id)?.abort();
  await cancelDownload(record.plan);
  studio().set({ downloads: studio().downloads.filter((d) => d.record.id !== record.id) });
  await refreshUsage();
}

export interface DownloadView {
  record: DownloadRecord;
  done: number;
  total?: number;
  bytesPerSecond?: number;
  secondsLeft?: number | null;
  file?: string;
  resumedFrom?: number;
  running?: boolean;
  error?: string;
}

const upsert = (list: DownloadView[], d: DownloadView) => (list.some((x) => x.record.id === d.record.id) ? list.map((x) => (x.record.id === d.record.id ? d : x)) : [...list, d]);

// ---------------------------------------------------------------- LoRAs

let loraKey = 0;

async function loadLora(entry: LoraEntry) {
  const { updateLora } = studio();
  updateLora(entry.key, { info: undefined, error: undefined });
  try {
    const info = await engine().loadLora(entry.file);
    const wasEnabled = studio().loras.find((l) => l.key === entry.key)?.enabled ?? entry.enabled;
    updateLora(entry.key, { info, enabled: wasEnabled });
    if (!entry.record.categorySet) {
      const category = guessCategory(entry.file.name, info.metadata.tags.map((t) => t.tag));
      if (category !== entry.record.category) {
        const record = { ...entry.record, category };
        await updateRecord(record);
        updateLora(entry.key, { record });
      }
    }
  } catch (e) {
    // it stays switched on in the scene: a failed LoRA is simply not used (activeLoras needs info)
    updateLora(entry.key, { error: (e as Error).message });
  }
}

const entryFor = async (record: LoraRecord, enabled: boolean, scale = 1): Promise<LoraEntry> => {
  const file = await loraFile(record);
  return { key: ++loraKey, record, file: { kind: 'blob', name: record.name, blob: file }, scale, enabled };
};

export async function addLoraFiles(files: File[]) {
  for (const f of files) {
    try {
      await addLoraRecord(await importLora(f));
    } catch (e) {
      fail(e);
    }
  }
  await loraAdded();
}

let loraDownload: AbortController | undefined;

/** A LoRA from an address (hub repository or file, Civitai download link, any .safetensors URL). */
export async function addLoraFromUrl(input: string) {
  const { set } = studio();
  loraDownload?.abort();
  const ctrl = (loraDownload = new AbortController());
  set({ loraDownload: { name: input.trim(), done: 0 } });
  try {
    const record = await downloadLora(input, (p) => set({ loraDownload: { name: p.name, done: p.done, total: p.total ?? undefined } }), ctrl.signal);
    set({ loraDownload: undefined });
    await addLoraRecord(record);
  } catch (e) {
    set({ loraDownload: undefined });
    if (!(e instanceof DownloadError && e.message === 'Paused.')) fail(e);
  } finally {
    if (loraDownload === ctrl) loraDownload = undefined;
  }
  await loraAdded();
}

export const stopLoraDownload = () => loraDownload?.abort();

/** A LoRA now in the library: shown (replacing one of the same name) and loaded for the model. */
async function addLoraRecord(record: LoraRecord) {
  const old = studio().loras.find((l) => l.file.name === record.name);
  const entry = await entryFor(record, true, old?.scale ?? 1);
  studio().set({ loras: [...studio().loras.filter((l) => l.file.name !== record.name), entry] });
  await serial(async () => {
    if (old?.info) await engine().unloadLora(old.info.id).catch(() => {});
    // a model load that ran meanwhile has loaded it already
    if (studio().model && !studio().loras.find((l) => l.key === entry.key)?.info) await loadLora(entry);
  });
}

async function loraAdded() {
  await refreshUsage();
  // a scene opened before may have been waiting for these
  studio().set({ missing: missingLoras(currentScene()) });
}

export async function removeLora(entry: LoraEntry) {
  studio().set({ loras: studio().loras.filter((l) => l.key !== entry.key) });
  if (entry.info) void client?.api.unloadLora(entry.info.id);
  try {
    await deleteRecord(entry.record);
  } catch (e) {
    fail(e);
  }
  await refreshUsage();
}

export async function setLoraCategory(entry: LoraEntry, category: LoraRecord['category']) {
  const record = { ...entry.record, category, categorySet: true };
  studio().updateLora(entry.key, { record });
  await updateRecord(record).catch(fail);
}

// ---------------------------------------------------------------- embeddings

let embeddingKey = 0;

const embeddingEntryFor = async (record: EmbeddingRecord): Promise<EmbeddingEntry> => ({ key: ++embeddingKey, record, file: { kind: 'blob', name: record.name, blob: await embeddingFile(record) } });

async function loadEmbedding(entry: EmbeddingEntry) {
  const { updateEmbedding } = studio();
  updateEmbedding(entry.key, { info: undefined, error: undefined });
  try {
    updateEmbedding(entry.key, { info: await engine().loadEmbedding(entry.file) });
  } catch (e) {
    updateEmbedding(entry.key, { error: (e as Error).message });
  }
  syncSceneEmbeddings();
}

/** The scene names the embeddings the prompts can use (so a share link or PNG lists them). */
function syncSceneEmbeddings() {
  const list = studio()
    .embeddings.filter((e) => e.info)
    .map((e) => ({ name: e.record.name, fingerprint: e.info!.fingerprint }));
  const scene = sceneStore.getState().scene;
  if (JSON.stringify(scene.embeddings ?? []) !== JSON.stringify(list)) sceneStore.setState({ scene: { ...scene, embeddings: list } });
}

/** Textual-inversion files into the library, loaded for the model; prompts use them by name. */
export async function addEmbeddingFiles(files: File[]) {
  for (const f of files) {
    try {
      const record = await importEmbedding(f);
      const old = studio().embeddings.find((e) => e.record.name === record.name);
      const entry = await embeddingEntryFor(record);
      studio().set({ embeddings: [...studio().embeddings.filter((e) => e.record.name !== record.name), entry] });
      await serial(async () => {
        if (old?.info) await engine().unloadEmbedding(old.info.id).catch(() => {});
        if (studio().model) await loadEmbedding(entry);
      });
    } catch (e) {
      fail(e);
    }
  }
  await refreshUsage();
}

export async function removeEmbedding(entry: EmbeddingEntry) {
  studio().set({ embeddings: studio().embeddings.filter((e) => e.key !== entry.key) });
  if (entry.info) void client?.api.unloadEmbedding(entry.info.id);
  syncSceneEmbeddings();
  try {
    await deleteRecord(entry.record);
  } catch (e) {
    fail(e);
  }
  await refreshUsage();
}

export function addTag(tag: string) {
  const { job, setJob } = studio();
  if (!job.prompt.includes(tag)) setJob({ prompt: job.prompt ? `${job.prompt}, ${tag}` : tag });
}

// ---------------------------------------------------------------- library

async function refreshUsage() {
  try {
    studio().set({ usage: await storageUse() });
  } catch {
    // no estimate in this browser
  }
}

export async function refreshLibrary() {
  const lib = await listLibrary();
  const downloads: DownloadView[] = [];
  for (const record of lib.downloads) {
    const existing = studio().downloads.find((d) => d.record.id === record.id);
    downloads.push(existing ?? { record, done: await downloadedBytes(record.plan), total: record.plan.files.reduce((a, f) => a + (f.size ?? 0), 0) || undefined });
  }
  studio().set({ library: { models: lib.models }, downloads });
  await refreshUsage();
  return lib;
}

// ---------------------------------------------------------------- generating

/** The layout the canvas holds, as the engine's job part; its LoRAs found among the loaded ones by name. */
function jobLayout(): LayoutOptions | undefined {
  const { scene } = sceneStore.getState();
  if (!scene.boxes.length) return undefined;
  const loaded = studio().loras.filter((l) => l.info);
  return {
    boxes: scene.boxes.map((b) => {
      const entries = b.loras.map((l) => {
        const entry = loaded.find((x) => x.info!.name === l.name || (l.fingerprint && x.info!.fingerprint === l.fingerprint));
        if (!entry) throw new Error(`Box "${b.name}" uses the LoRA "${l.name}", which is not loaded; add it or remove it from the box.`);
        return { entry, use: l };
      });
      // the concept's words: the library's trigger words for each LoRA (the scene's copy otherwise)
      const trigger = boxTrigger({ loras: entries.map(({ entry, use }) => ({ ...use, trigger: entry.record.trigger?.trim() || use.trigger })) });
      return {
        name: b.name,
        x: b.x,
        y: b.y,
        width: b.width,
        height: b.height,
        prompt: b.prompt,
        loras: entries.map(({ entry, use }) => ({ lora: entry.info!.id, scale: use.scale })),
        ...(trigger ? { trigger } : {}),
      };
    }),
    ...layoutSwitches(scene),
  };
}

/** The method's authors' settings (workers/composition/presets.ts) in the page: steps, guidance, scheduler, seed, size (without a layout) and every LoRA's strength. */
export function applyPaperSettings() {
  const { job, setJob, loras, updateLora } = studio();
  const layout = sceneStore.getState().scene.boxes.length > 0;
  const p = paperSettings(job.composition?.method ?? 'merge', layout);
  setJob({ steps: p.steps, cfg: p.cfg, scheduler: p.scheduler, ...(p.seed !== undefined ? { seed: p.seed } : {}), ...(!layout && p.width && p.height ? { width: p.width, height: p.height } : {}) });
  if (!layout && p.width && p.height) sceneStore.getState().setFrame(p.width, p.height);
  if (p.loraScale !== undefined) for (const l of loras) if (l.enabled) updateLora(l.key, { scale: p.loraScale });
}

/** The job the page's settings, LoRAs and layout describe (an error names a box's missing LoRA). */
export function currentJob(): GenerateJob {
  const { job: settings, loras } = studio();
  const layout = jobLayout();
  // `<lora:name:w>` (or `<lora:name:te:unet>`) in the prompt adds that library LoRA, or sets its strengths
  const tagged = loraTags(settings.prompt);
  const uses = activeLoras(loras);
  for (const t of tagged.loras) {
    const entry = loras.find((l) => l.info && fileStem(l.file.name) === fileStem(t.name));
    if (!entry) throw new Error(`The prompt asks for <lora:${t.name}>, but the library has no loaded LoRA of that name; add its file, or remove the tag.`);
    const use = { lora: entry.info!.id, scale: t.unet, textEncoderScale: t.te, category: entry.record.category, ...(entry.record.trigger?.trim() ? { trigger: entry.record.trigger.trim() } : {}) };
    const at = uses.findIndex((u) => u.lora === use.lora);
    if (at >= 0) uses[at] = use;
    else uses.push(use);
  }
  const { init: _i, hires: _h, ...plain } = settings;
  const limit = studio().memoryLimit;
  return { ...plain, prompt: tagged.prompt, loras: uses, ...(layout ? { layout } : {}), ...pictureJob(settings, studio().model), ...(limit ? { memoryBudget: limit } : {}), previewEvery: studio().previewEvery };
}

/** Models the engine has run a job with since it started (their first job compiles the GPU programs). */
const warmedModels = new Set<string>();

/** The status of a job starting now. */
export function startRun(total: number, label?: string): RunStatus {
  return { kind: 'running', step: 0, total, phase: 'prepare', label, startedAt: performance.now(), stepTimes: [], firstRun: !warmedModels.has(studio().modelId ?? '') };
}

/** The running status after a progress event: its phase, and when its steps arrived. */
export function advanceRun(p: ProgressEvent, label?: string): RunStatus {
  const prev = studio().status;
  const run = prev.kind === 'running' ? prev : startRun(p.total, label);
  if (p.phase === 'done' || p.phase === 'decode') warmedModels.add(studio().modelId ?? '');
  // the hires fix's second pass times its own steps (larger, so slower): its time left starts afresh
  const stepping = p.phase === 'denoise' || p.phase === 'hires';
  const stepTimes = !stepping ? run.stepTimes : run.phase === p.phase ? [...run.stepTimes, performance.now()] : [performance.now()];
  return { ...run, step: p.step, total: p.total, phase: p.phase, label, stepTimes };
}

export async function generate() {
  const { loras, set, batchCount } = studio();
  let first: GenerateJob & { loras: LoraUse[] };
  try {
    first = currentJob() as typeof first;
  } catch (e) {
    return fail(e);
  }
  const count = Math.max(1, Math.min(16, Math.round(batchCount) || 1));
  const batch: { images: ImageData8[]; seeds: number[] } = { images: [], seeds: [] };
  set({ batch: count > 1 ? batch : undefined });
  // a batch: the same scene with the seeds that follow, one picture after another
  for (let i = 0; i < count; i++) {
    if (i > 0 && studio().status.kind === 'cancelling') return set({ status: { kind: 'ready' }, notice: `Cancelled after ${i} of ${count} pictures.` });
    const job = { ...first, seed: (first.seed + i) % 0x100000000 };
    const scene = { ...currentScene(), seed: job.seed };
    const label = count > 1 ? `Picture ${i + 1} of ${count}` : undefined;
    // the exact job, for a reviewer (and the e2e tests) to rerun it elsewhere
    try {
      localStorage.setItem('lorastudio.lastJob', jobJson(job));
    } catch {
      localStorage.removeItem('lorastudio.lastJob'); // too large for the quota: it is only a record
    }
    set({ status: startRun(job.steps, label), preview: undefined, notice: undefined, progress: undefined, runSteps: [], runGuidance: [] });
    // the worker this job runs on (a restart after an out-of-memory replaces this one, not a newer one)
    const api = engine();
    const jobClient = client;
    const onProgress = (p: ProgressEvent) => {
      if (studio().status.kind === 'cancelling') return;
      // a job that starts over: its steps so far, preview and plots go, and the page says why
      if (p.restart) set({ status: startRun(p.total, label), preview: undefined, runSteps: [], runGuidance: [], notice: p.restart });
      set({ status: advanceRun(p, label), progress: p, ...(p.preview ? { preview: p.preview } : {}), ...(p.composition ? { runSteps: [...studio().runSteps, p.composition] } : {}), ...(p.guidance ? { runGuidance: [...studio().runGuidance, p.guidance] } : {}) });
    };
    try {
      const result = await withProgress(onProgress, (p) => api.generate(job, p));
      const last = i === count - 1;
      if (count > 1) {
        batch.images.push(result.image);
        batch.seeds.push(job.seed);
        set({ batch: { ...batch } });
      }
      set({ result: { ...result, scene }, ...(last ? { status: { kind: 'ready' as const } } : {}), notice: result.report.warnings.join(' ') || undefined });
      // the result is what the frame shows now, not the start picture being painted on
      if (last) pictureStore.getState().set({ mode: 'boxes' });
      const score = await scoreResult(result.image, scene);
      if (score) set({ result: { ...result, scene, score } });
      try {
        const item = await saveResult(result.image, scene, result.report, score);
        set({ gallery: [item, ...studio().gallery] });
        await thumbnails(item, job.loras.map((u) => loras.find((l) => l.info?.id === u.lora)).filter((l): l is LoraEntry => !!l));
      } catch (e) {
        set({ notice: `The image is shown but was not kept in the gallery: ${(e as Error).message}` });
      }
      await refreshUsage();
    } catch (e) {
      const err = e as Error & { code?: string };
      if (err.code === 'cancelled') set({ status: { kind: 'ready' }, notice: count > 1 && i > 0 ? `Cancelled after ${i} of ${count} pictures.` : 'Cancelled.' });
      else if (err.code === 'gpu-out-of-memory') {
        const words = learnMemoryLimit(err);
        // (a worker another failure replaced meanwhile is being restarted already)
        if (jobClient && jobClient === client) await recover(jobClient, new Error(words));
        else fail(new Error(words));
      }
      // the engine is being restarted (see recover): its progress is the status now
      else if (!isEngineFailure(err)) fail(err);
      return;
    }
  }
}

export function cancel() {
  studio().set({ status: { kind: 'cancelling' } });
  void client?.api.cancel();
}

/** The first image made with a LoRA becomes its thumbnail in the library. */
async function thumbnails(item: GalleryItem, used: LoraEntry[]) {
  const need = used.filter((l) => !l.record.thumbnail);
  if (!need.length) return;
  const thumbnail = await dataUrlOf(await drawScaled(item.png, 64), 'image/jpeg', 0.8);
  for (const l of need) {
    const record = { ...l.record, thumbnail };
    studio().updateLora(l.key, { record });
    await updateRecord(record);
  }
}

// ---------------------------------------------------------------- gallery, links, drops

export async function downloadPng(scene: Scene, report: GalleryItem['report'], png?: Blob) {
  const r = studio().result;
  const blob = png ?? (r ? await resultPng(r.image, scene, report) : undefined);
  if (!blob) return;
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = `lora-studio-${report.seed}.png`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export async function removeFromGallery(item: GalleryItem) {
  await deleteResult(item.id!).catch(fail);
  studio().set({ gallery: studio().gallery.filter((g) => g.id !== item.id) });
}

/** The current scene as a link; copied to the clipboard where the browser allows. */
export async function shareLink(): Promise<string> {
  const { link, dropped } = await shareLinkOf(currentScene());
  const url = `${location.href.split('#')[0]}${link}`;
  studio().set({ shareUrl: url });
  const notes = [dropped, pictureStore.getState().start ? 'The start picture is not in the link (too large for one); send the picture itself alongside.' : ''].filter(Boolean).join(' ');
  try {
    await navigator.clipboard.writeText(url);
    studio().set({ notice: `Share link copied.${notes ? ` ${notes}` : ''}` });
  } catch {
    studio().set({ notice: `Share link ready: copy it from the field.${notes ? ` ${notes}` : ''}` });
  }
  return url;
}

/** A share link's scene; when the link cannot be opened, undefined, and the link's alert says why. */
async function readLink(hash: string): Promise<Scene | undefined> {
  if (!isShareLink(hash)) return undefined;
  return decodeShareLink(hash).catch((e: Error) => {
    studio().set({ linkAlert: e.message });
    return undefined;
  });
}

/** A link's scene applied; the scene, the model and the status stay as they are when it is refused. */
function openLinked(scene: Scene | undefined) {
  if (!scene) return;
  try {
    applyScene(scene, 'the link');
    studio().set({ linkAlert: undefined });
  } catch (e) {
    studio().set({ linkAlert: (e as Error).message });
  }
}

async function openLinkIn(hash: string) {
  openLinked(await readLink(hash));
}

/** A LoRA's name as prompts and other tools write it: its file name without the extension, any case. */
const fileStem = (name: string) => loraTagName(name).toLowerCase();

/**
 * Another tool's picture (A1111's `parameters`): its prompt, negative prompt, steps, sampler, CFG,
 * seed, size and clip skip fill the studio; its `<lora:name:w>` LoRAs are switched on at their
 * strengths where the library has them (by file name) and listed as missing where it has not.
 */
export function applyParameters(p: A1111Parameters, from: string) {
  const { job, setJob, loras, set } = studio();
  const notes: string[] = [];
  const scheduler = schedulerOf(p.sampler, p.scheduleType);
  if (p.sampler && !scheduler) notes.push(`its sampler "${p.sampler}" is not here, so ${job.scheduler} stays`);
  // sizes here are multiples of 64: the nearest one
  const snap = (v: number | undefined, keep: number) => (v === undefined ? keep : Math.min(2048, Math.max(64, Math.round(v / 64) * 64)));
  const width = snap(p.width, job.width);
  const height = snap(p.height, job.height);
  if ((p.width !== undefined && p.width !== width) || (p.height !== undefined && p.height !== height)) notes.push(`its size ${p.width}x${p.height} became ${width}x${height}`);
  setJob({
    prompt: p.prompt,
    negative: p.negative,
    ...(p.steps ? { steps: Math.min(250, Math.max(1, Math.round(p.steps))) } : {}),
    ...(scheduler ? { scheduler } : {}),
    ...(p.cfg ? { cfg: Math.min(30, Math.max(1, p.cfg)) } : {}),
    ...(p.seed !== undefined && Number.isInteger(p.seed) && p.seed >= 0 && p.seed <= 0xffffffff ? { seed: p.seed } : {}),
    ...(p.clipSkip ? { clipSkip: Math.max(1, Math.round(p.clipSkip)) } : {}),
    width,
    height,
  });
  sceneStore.getState().setFrame(width, height);
  set({
    loras: loras.map((l) => {
      const use = p.loras.find((t) => fileStem(t.name) === fileStem(l.file.name));
      return { ...l, enabled: !!use, scale: use?.unet ?? l.scale };
    }),
  });
  const missing = p.loras.filter((t) => !loras.some((l) => fileStem(l.file.name) === fileStem(t.name))).map((t) => ({ name: `${t.name}.safetensors`, scale: t.unet }));
  set({ missing, notice: `Opened the settings of ${from}${p.model ? ` (made with ${p.model})` : ''}.${missing.length ? ` Not in your library: ${missing.map((m) => m.name).join(', ')}.` : ''}${notes.length ? ` Note: ${notes.join('; ')}.` : ''}`, status: studio().status.kind === 'error' ? { kind: 'ready' } : studio().status });
}

/** Files dropped anywhere on the page: PNGs give their scene back, .safetensors join the library. */
export async function dropFiles(files: File[]) {
  for (const f of files) {
    if (f.type === 'image/png' || f.name.toLowerCase().endsWith('.png')) {
      try {
        const got = await pngContents(f);
        if ('scene' in got) applyScene(got.scene, `the image ${f.name}`);
        else applyParameters(got.parameters, `the image ${f.name}`);
      } catch (e) {
        fail(e);
      }
    } else if (f.name.endsWith('.safetensors')) {
      // a checkpoint has UNet weights, an embedding token vectors, a LoRA neither: its header decides
      if (await isCheckpointFile(f)) await importModelFiles([f]);
      else if (await isEmbeddingFile(f)) await addEmbeddingFiles([f]);
      else await addLoraFiles([f]);
    } else if (/\.(pt|bin)$/.test(f.name)) await addEmbeddingFiles([f]);
    else if (f.name.endsWith('.pth')) await addLoraFiles([f]);
    else fail(new Error(`"${f.name}" is neither a model, a LoRA (.safetensors, .pth), an embedding (.safetensors, .pt) nor a studio PNG.`));
  }
}

// ---------------------------------------------------------------- start

/** A software adapter (SwiftShader, or one the browser marks as a fallback): everything runs on the CPU. */
export const isSoftwareAdapter = (a: { vendor: string; architecture: string }) => /swiftshader|llvmpipe|software|fallback/i.test(`${a.vendor} ${a.architecture}`);

/** On a software adapter a fresh studio starts small, and says why pictures are slow. */
const SOFTWARE_DEFAULT = { width: 128, height: 128, steps: 12 };

export async function startStudio() {
  const fresh = typeof localStorage !== 'undefined' && !localStorage.getItem(SCENE_KEY) && !isShareLink(location.hash);
  syncScene();
  syncPicture();
  // the link is read at once: one that cannot be opened is said now, not after the model has loaded
  const linked = readLink(location.hash);
  void engine()
    .init()
    .then((adapter) => {
      if (!isSoftwareAdapter(adapter)) return;
      studio().set({ adapterNote: `This browser draws with a software GPU (${adapter.vendor} ${adapter.architecture}): the processor does the GPU's work, so pictures take minutes, not seconds.${fresh ? ` The studio starts small (${SOFTWARE_DEFAULT.width}×${SOFTWARE_DEFAULT.height}, ${SOFTWARE_DEFAULT.steps} steps); raise them when you like.` : ''}` });
      if (fresh && studio().status.kind !== 'running') {
        studio().setJob(SOFTWARE_DEFAULT);
        sceneStore.getState().setFrame(SOFTWARE_DEFAULT.width, SOFTWARE_DEFAULT.height);
      }
    })
    .catch(() => {});
  void navigator.storage?.persist?.().catch(() => false);
  let lib;
  try {
    lib = await refreshLibrary();
  } catch (e) {
    fail(e);
    lib = { models: [], loras: [], embeddings: [], downloads: [] };
  }
  const { scene } = sceneStore.getState();
  const entries: LoraEntry[] = [];
  for (const r of lib.loras) {
    const use = scene.loras.find((s) => s.name === r.name);
    try {
      entries.push(await entryFor(r, !!use, use?.scale ?? 1));
    } catch {
      // its file is gone (storage cleared by the browser): drop the record
      await deleteRecord(r).catch(() => {});
    }
  }
  const embeddings: EmbeddingEntry[] = [];
  for (const r of lib.embeddings) {
    try {
      embeddings.push(await embeddingEntryFor(r));
    } catch {
      await deleteRecord(r).catch(() => {});
    }
  }
  studio().set({ loras: entries, embeddings, gallery: await listResults().catch(() => []) });
  lorasRestored = true;
  const saved = localStorage.getItem(MODEL_KEY);
  await useModel(saved && lib.models.some((m) => m.id === saved) ? saved : TEST_MODEL_ID);
  registerOffline();
  void loadScorer();
  // a good link's scene is applied once the LoRAs and the model are there
  openLinked(await linked);
  window.addEventListener('hashchange', () => void openLinkIn(location.hash));
  studio().set({ missing: missingLoras(currentScene()) });
}
