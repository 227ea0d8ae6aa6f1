// The artist's library: models and LoRAs kept in the OPFS (files) with a record each in IndexedDB
// (what the file is, where it came from, its category and thumbnail). Imports copy the file in;
// downloads go through download.ts and become a model only once every file checked out.
import type { ModelRequest } from '../../workers/api/contract.ts';
import { get, getAll, put, remove } from '../storage/idb.ts';
import { requestFromEntries } from '../engine/model-files.ts';
import { downloadFile, partialSize, type DownloadProgress } from './download.ts';
import { HUB, hubTreeUrl, parseModelSource, planHubDownload, planHubLora, type DownloadPlan, type HubTreeEntry } from './hub.ts';
import { checkName, readFile, removeEntry, writeStream } from './opfs.ts';

export { LORA_CATEGORIES, guessCategory, type LoraCategory } from '../../workers/lora/category.ts';
import { guessCategory, type LoraCategory } from '../../workers/lora/category.ts';

export interface LoraRecord {
  id: string;
  kind: 'lora';
  name: string;
  size: number;
  addedAt: number;
  category: LoraCategory;
  /** The artist chose the category (it is no longer guessed). */
  categorySet?: boolean;
  /** A small JPEG data URL of the first image made with it. */
  thumbnail?: string;
  source?: string;
  /** Words in prompts that call up its concept; scoring replaces them by `classWord`. */
  trigger?: string;
  classWord?: string;
  /** Pictures of its concept (scaled down, as data URLs), for image-image similarity. */
  references?: { id: string; dataUrl: string }[];
}

export interface ModelRecord {
  id: string;
  kind: 'model';
  name: string;
  size: number;
  addedAt: number;
  /** Paths inside the model's folder: one .safetensors, or a diffusers folder's parts. */
  files: string[];
  source?: string;
}

/** A textual-inversion embedding: prompts use it by its file name without the extension. */
export interface EmbeddingRecord {
  id: string;
  kind: 'embedding';
  name: string;
  size: number;
  addedAt: number;
  source?: string;
}

/** A download in progress (or paused): enough to resume it after a reload. */
export interface DownloadRecord {
  id: string;
  plan: DownloadPlan;
}

export type LibraryRecord = LoraRecord | ModelRecord | EmbeddingRecord;

const ROOT = ['library'];
const loraPath = (name: string) => [...ROOT, 'loras', checkName(name)];
const embeddingPath = (name: string) => [...ROOT, 'embeddings', checkName(name)];
const modelDir = (id: string) => [...ROOT, 'models', checkName(id.replace(/^model:/, '').replace(/[^\w.-]+/g, '_'))];
const modelFilePath = (id: string, path: string) => [...modelDir(id), ...path.split('/').map(checkName)];

export async function listLibrary(): Promise<{ models: ModelRecord[]; loras: LoraRecord[]; embeddings: EmbeddingRecord[]; downloads: DownloadRecord[] }> {
  const all = await getAll<LibraryRecord>('library');
  const byDate = <T extends { addedAt: number }>(a: T, b: T) => a.addedAt - b.addedAt;
  return {
    models: all.filter((r): r is ModelRecord => r.kind === 'model').sort(byDate),
    loras: all.filter((r): r is LoraRecord => r.kind === 'lora').sort(byDate),
    embeddings: all.filter((r): r is EmbeddingRecord => r.kind === 'embedding').sort(byDate),
    downloads: await getAll<DownloadRecord>('downloads'),
  };
}

export async function importLora(file: File, source?: string): Promise<LoraRecord> {
  if (!/\.(safetensors|pth|pt)$/.test(file.name)) throw new Error(`"${file.name}" is not a .safetensors or .pth file; LoRAs are read from those only.`);
  await writeStream(loraPath(file.name), file.stream());
  return saveLoraRecord(file.name, file.size, source);
}

async function saveLoraRecord(name: string, size: number, source?: string): Promise<LoraRecord> {
  const old = await get<LoraRecord>('library', `lora:${name}`);
  const record: LoraRecord = { id: `lora:${name}`, kind: 'lora', name, size, addedAt: old?.addedAt ?? Date.now(), category: old?.category ?? guessCategory(name), ...(source ? { source } : {}) };
  await put('library', record, `the LoRA "${name}"`);
  return record;
}

/**
 * Download a LoRA by what the artist pasted: a hub repository, a hub file address, a Civitai download
 * link or any .safetensors address. Checked like a model download (size and the hub's sha256); an
 * interrupted one keeps its part and resumes when the same address is given again.
 */
export async function downloadLora(input: string, onProgress: (p: DownloadProgress & { name: string }) => void, signal?: AbortSignal): Promise<LoraRecord> {
  const src = parseModelSource(input);
  const file = src.kind === 'url' ? { url: src.url, path: src.name } : planHubLora(src.repo, src.revision, await hubTree(src.repo, src.revision));
  // a hub repository's generic file name is replaced by the repository's
  const name = checkName(src.kind === 'hub' ? `${src.repo.replace('/', '--')}.safetensors` : src.name);
  await downloadFile(file, loraPath(name), (p) => onProgress({ ...p, name }), signal);
  return saveLoraRecord(name, (await readFile(loraPath(name))).size, src.kind === 'url' ? src.url : `${HUB}/${src.repo}`);
}

export async function importEmbedding(file: File): Promise<EmbeddingRecord> {
  if (!/\.(safetensors|pt|bin)$/.test(file.name)) throw new Error(`"${file.name}" is not a .safetensors, .pt or .bin file; embeddings are read from those only.`);
  await writeStream(embeddingPath(file.name), file.stream());
  const old = await get<EmbeddingRecord>('library', `embedding:${file.name}`);
  const record: EmbeddingRecord = { id: `embedding:${file.name}`, kind: 'embedding', name: file.name, size: file.size, addedAt: old?.addedAt ?? Date.now() };
  await put('library', record, `the embedding "${file.name}"`);
  return record;
}

export async function embeddingFile(record: EmbeddingRecord): Promise<File> {
  return readFile(embeddingPath(record.name));
}

export async function loraFile(record: LoraRecord): Promise<File> {
  return readFile(loraPath(record.name));
}

export const updateRecord = (record: LibraryRecord) => put('library', record, `the library entry for "${record.name}"`);

/** Import a checkpoint: one .safetensors, or a diffusers folder's files (with their relative paths). */
export async function importModel(entries: { path: string; file: File }[], name: string): Promise<ModelRecord> {
  // check it reads as a model before copying gigabytes
  await requestFromEntries(entries.map((e) => ({ path: e.path, blob: e.file })));
  const id = `model:${name}`;
  // a diffusers folder keeps its part folders; a single checkpoint is stored by its file name
  const normal = (p: string) => {
    const s = p.split('/');
    return s.length >= 2 && /^(unet|text_encoder|vae|tokenizer)$/.test(s[s.length - 2]) ? s.slice(-2).join('/') : s[s.length - 1];
  };
  const wanted = /^(unet|text_encoder|vae)\/[^/]+\.safetensors$|^tokenizer\/(vocab\.json|merges\.txt|tokenizer\.json)$|^[^/]+\.safetensors$/;
  const keep = entries.map((e) => ({ path: normal(e.path), file: e.file })).filter((e) => wanted.test(e.path));
  const files: string[] = [];
  let size = 0;
  for (const e of keep) {
    await writeStream(modelFilePath(id, e.path), e.file.stream());
    files.push(e.path);
    size += e.file.size;
  }
  const record: ModelRecord = { id, kind: 'model', name, size, addedAt: Date.now(), files };
  await put('library', record, `the model "${name}"`);
  return record;
}

/** The engine's request for a stored model. */
export async function modelRequest(record: ModelRecord): Promise<ModelRequest> {
  const entries = [];
  for (const path of record.files) entries.push({ path, blob: await readFile(modelFilePath(record.id, path)) });
  return requestFromEntries(entries);
}

export async function deleteRecord(record: LibraryRecord): Promise<void> {
  await removeEntry(record.kind === 'lora' ? loraPath(record.name) : record.kind === 'embedding' ? embeddingPath(record.name) : modelDir(record.id));
  await remove('library', record.id);
}

/** What to fetch for the artist's text: a hub repository's files (asking the hub), or one address. */
export async function planDownload(input: string): Promise<DownloadPlan> {
  const src = parseModelSource(input);
  if (src.kind === 'url') return { name: src.name, source: src.url, files: [{ url: src.url, path: checkName(src.name) }] };
  return planHubDownload(src.repo, src.revision, await hubTree(src.repo, src.revision));
}

/** A hub repository's file list. */
async function hubTree(repo: string, revision: string): Promise<HubTreeEntry[]> {
  let res: Response;
  try {
    res = await fetch(hubTreeUrl(repo, revision));
  } catch (e) {
    throw new Error(`The Hugging Face hub could not be reached (${(e as Error).message}); check the connection.`);
  }
  if (res.status === 404 || res.status === 401) throw new Error(`The hub has no public repository "${repo}" (revision ${revision}).`);
  if (!res.ok) throw new Error(`The hub answered ${res.status} for ${repo}.`);
  return (await res.json()) as HubTreeEntry[];
}

export interface ModelDownloadProgress extends DownloadProgress {
  file: string;
  fileIndex: number;
  files: number;
}

/**
 * Download (or resume) every file of a plan into a new model's folder. The download's record is kept
 * until all files are checked, so a reload can resume it; then the model joins the library.
 */
export async function downloadModel(plan: DownloadPlan, onProgress: (p: ModelDownloadProgress) => void, signal?: AbortSignal): Promise<ModelRecord> {
  const id = `model:${plan.name}`;
  await put<DownloadRecord>('downloads', { id, plan }, `the download of "${plan.name}"`);
  let size = 0;
  for (const [i, f] of plan.files.entries()) {
    const path = modelFilePath(id, f.path);
    const have = await readFile(path).catch(() => undefined);
    if (have && (f.size === undefined || have.size === f.size)) {
      size += have.size;
      continue;
    }
    await downloadFile(f, path, (p) => onProgress({ ...p, file: f.path, fileIndex: i, files: plan.files.length }), signal);
    size += (await readFile(path)).size;
  }
  const record: ModelRecord = { id, kind: 'model', name: plan.name, size, addedAt: Date.now(), files: plan.files.map((f) => f.path), source: plan.source };
  await put('library', record, `the model "${plan.name}"`);
  await remove('downloads', id);
  return record;
}

/** Bytes already on disk for a download's files (finished ones and the current partial one). */
export async function downloadedBytes(plan: DownloadPlan): Promise<number> {
  let sum = 0;
  const id = `model:${plan.name}`;
  for (const f of plan.files) {
    const path = modelFilePath(id, f.path);
    const have = await readFile(path).catch(() => undefined);
    sum += have ? have.size : await partialSize(path);
  }
  return sum;
}

export async function cancelDownload(plan: DownloadPlan): Promise<void> {
  await removeEntry(modelDir(`model:${plan.name}`));
  await remove('downloads', `model:${plan.name}`);
}
