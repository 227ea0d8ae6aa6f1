// The CLIP scorer's files: the built-in tiny test scorer shipped with the app (test-model/clip/), or
// a hub ONNX CLIP repository fetched into this browser's storage once (resumable, like models).
import type { FileRef, ScorerRequest } from '../../workers/api/contract.ts';
import { DEFAULT_SCORER, scorerFileList } from '../../workers/eval/scorer-layout.ts';
import { downloadFile, type DownloadProgress } from './download.ts';
import { HUB } from './hub.ts';
import { checkName, readFile, sizeOf } from './opfs.ts';

/** The scorer a user fetches for real pictures. */
export const HUB_SCORER = DEFAULT_SCORER;
export const BUILT_IN_SCORER = 'built-in test scorer';

/** The hub files for a precision: half where the GPU has shader-f16, else full. */
const hubScorerFiles = (f16: boolean) => scorerFileList(f16 ? 'fp16' : 'fp32');

const scorerPath = (repo: string, file: string) => ['library', 'scorers', checkName(repo.replace('/', '--')), ...file.split('/').map(checkName)];

export function builtInScorerRequest(): ScorerRequest {
  const base = new URL('test-model/clip/', document.baseURI).href;
  return { name: BUILT_IN_SCORER, files: Object.fromEntries(scorerFileList('fp32').map((f) => [f, { kind: 'url', url: base + f } as FileRef])) };
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
