// The CLIP scorer's files: the built-in tiny test scorer shipped with the app (test-model/clip/), or
// a hub ONNX CLIP repository fetched into this browser's storage once (resumable, like models).
import type { FileRef, ScorerRequest } from '../../workers/api/contract.ts';
import { downloadFile, type DownloadProgress } from './download.ts';
import { HUB } from './hub.ts';
import { checkName, readFile, sizeOf } from './opfs.ts';

/** CLIP ViT-B/32 exported to ONNX: the scorer a user fetches for real pictures. */
export const HUB_SCORER = 'Xenova/clip-vit-base-patch32';
export const BUILT_IN_SCORER = 'built-in test scorer';
const TEXT_FILES = ['config.json', 'preprocessor_config.json', 'tokenizer.json', 'tokenizer_config.json'];
const TEST_FILES = [...TEXT_FILES, 'onnx/text_model.onnx', 'onnx/vision_model.onnx'];

/** The hub files for a precision: half where the GPU has shader-f16, else full. */
export const hubScorerFiles = (f16: boolean) => [...TEXT_FILES, ...['text_model', 'vision_model'].map((m) => `onnx/${m}${f16 ? '_fp16' : ''}.onnx`)];

const scorerPath = (repo: string, file: string) => ['library', 'scorers', checkName(repo.replace('/', '--')), ...file.split('/').map(checkName)];

export function builtInScorerRequest(): ScorerRequest {
  const base = new URL('test-model/clip/', document.baseURI).href;
  return { name: BUILT_IN_SCORER, files: Object.fromEntries(TEST_FILES.map((f) => [f, { kind: 'url', url: base + f } as FileRef])) };
}

/** The stored hub scorer, if all its files are here. */
export async function storedScorerRequest(repo: string, f16: boolean): Promise<ScorerRequest | undefined> {
  const files: Record<string, FileRef> = {};
  for (const f of hubScorerFiles(f16)) {
    if (!(await sizeOf(scorerPath(repo, f)))) return undefined;
    files[f] = { kind: 'blob', name: f, blob: await readFile(scorerPath(repo, f)) };
  }
  return { name: repo, files };
}

/** Fetch the hub scorer's files not yet stored (a download that stopped resumes). */
export async function downloadScorer(repo: string, f16: boolean, onProgress: (p: DownloadProgress & { file: string }) => void, signal?: AbortSignal): Promise<ScorerRequest> {
  for (const f of hubScorerFiles(f16)) {
    if (await sizeOf(scorerPath(repo, f))) continue;
    await downloadFile({ url: `${HUB}/${repo}/resolve/main/${f}`, path: f }, scorerPath(repo, f), (p) => onProgress({ ...p, file: f }), signal);
  }
  return (await storedScorerRequest(repo, f16))!;
}
