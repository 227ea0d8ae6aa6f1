// Node only: a CLIP scorer from a folder in the Hugging Face ONNX layout, or from a hub repository,
// fetched once into the cache (HF_ENDPOINT names another hub, as the hub's own tools read it).
import { openAsBlob } from 'node:fs';
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EngineError } from '../api/errors.ts';
import type { ScorerFiles } from '../eval/scorer.ts';
import { SCORER_DTYPES, scorerFileList, type ScorerDtype } from '../eval/scorer-layout.ts';


const exists = async (p: string) => stat(p).then((s) => s.isFile(), () => false);

/** The scorer files found in a folder (what is missing is named when the scorer opens). */
export async function openScorerDir(dir: string): Promise<ScorerFiles> {
  const files: ScorerFiles = new Map();
  for (const d of SCORER_DTYPES) {
    for (const f of scorerFileList(d)) if (!files.has(f) && (await exists(join(dir, f)))) files.set(f, await openAsBlob(join(dir, f)));
  }
  if (!files.has('config.json')) throw new EngineError('scorer', `${dir} holds no CLIP scorer (no config.json).`);
  return files;
}

export function scorerCacheDir(repo: string): string {
  return join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? '.', '.cache'), 'lora-studio', 'scorers', repo.replace('/', '--'));
}

/** A hub repository's scorer files in the cache, fetching those not there yet. */
export async function fetchScorer(repo: string, dtype: ScorerDtype, log: (line: string) => void = () => {}): Promise<string> {
  if (!/^[\w.-]{1,96}\/[\w.-]{1,96}$/.test(repo)) throw new EngineError('scorer', `"${repo.slice(0, 100)}" is neither a folder nor a hub repository (owner/name).`);
  const dir = scorerCacheDir(repo);
  const hub = (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  for (const f of scorerFileList(dtype)) {
    const path = join(dir, f);
    if (await exists(path)) continue;
    const url = `${hub}/${repo}/resolve/main/${f}`;
    log(`fetching ${url}`);
    let res: Response;
    try {
      res = await fetch(url);
    } catch (e) {
      throw new EngineError('scorer', `The scorer file ${f} of ${repo} could not be fetched (${(e as Error).message}); give a local folder with --clip.`);
    }
    if (!res.ok) throw new EngineError('scorer', `The scorer file ${f} of ${repo} could not be fetched (HTTP ${res.status}).`);
    await mkdir(join(path, '..'), { recursive: true });
    await writeFile(`${path}.part`, new Uint8Array(await res.arrayBuffer()));
    await rename(`${path}.part`, path);
  }
  return dir;
}
