// What to download for a model the artist names: a Hugging Face repository ("owner/name", or its
// page address), or a direct .safetensors address. For a repository, the hub's file list (the
// `api/models/<repo>/tree/<revision>?recursive=true` answer) says which files exist, their sizes and,
// for LFS files, their sha256; the plan picks the diffusers parts (fp16 variants first) or, failing
// that, one single-file checkpoint. Pure functions: the page fetches, these decide.

export const HUB = 'https://huggingface.co';
export const DEFAULT_REPO = 'stable-diffusion-v1-5/stable-diffusion-v1-5';

/** One file to fetch: where from, where it goes in the model's folder, and what the hub promises. */
export interface PlannedFile {
  url: string;
  /** Path inside the model's folder (the repository's own path). */
  path: string;
  size?: number;
  sha256?: string;
}

export interface DownloadPlan {
  /** A name for the library: the repository, or the file name of a direct address. */
  name: string;
  source: string;
  files: PlannedFile[];
}

export type ModelSource = { kind: 'hub'; repo: string; revision: string } | { kind: 'url'; url: string; name: string };

/** A hub tree entry, as the hub's API lists it. */
export interface HubTreeEntry {
  type: string;
  path: string;
  size?: number;
  lfs?: { oid?: string; size?: number };
}

const REPO = /^[A-Za-z0-9][\w.-]{0,95}\/[A-Za-z0-9][\w.-]{0,95}$/;

/** What the artist typed: a repository name, a hub page, a hub file address or any https address. */
export function parseModelSource(input: string): ModelSource {
  const text = input.trim();
  if (REPO.test(text)) return { kind: 'hub', repo: text, revision: 'main' };
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`"${text.slice(0, 80)}" is neither a Hugging Face repository (owner/name) nor a web address.`);
  }
  if (url.protocol !== 'https:' && url.hostname !== 'localhost' && url.hostname !== '127.0.0.1') throw new Error('Downloads need an https:// address.');
  const parts = url.pathname.split('/').filter(Boolean);
  if (url.hostname === 'huggingface.co' && parts.length >= 2) {
    const repo = `${parts[0]}/${parts[1]}`;
    // huggingface.co/owner/name/blob|resolve/<rev>/<path>: that one file
    if ((parts[2] === 'blob' || parts[2] === 'resolve') && parts.length >= 5) {
      const file = parts.slice(4).join('/');
      return { kind: 'url', url: `${HUB}/${repo}/resolve/${parts[3]}/${file}`, name: decodeURIComponent(parts[parts.length - 1]) };
    }
    if (REPO.test(repo)) return { kind: 'hub', repo, revision: parts[2] === 'tree' && parts[3] ? parts[3] : 'main' };
  }
  if (/(^|\.)civitai\.com$/.test(url.hostname)) {
    // civitai.com/api/download/models/<version id>: the file's name comes only with the answer
    const id = url.pathname.match(/^\/api\/download\/models\/(\d+)\/?$/)?.[1];
    if (!id) throw new Error('For Civitai, paste the download link (civitai.com/api/download/models/…, from the Download button), not the page address.');
    return { kind: 'url', url: url.href, name: `civitai-${id}.safetensors` };
  }
  const name = decodeURIComponent(parts[parts.length - 1] ?? '');
  if (!name.endsWith('.safetensors')) throw new Error(`"${name || url.href}" is not a .safetensors file. The studio reads .safetensors only: other formats such as .ckpt can run code.`);
  return { kind: 'url', url: url.href, name };
}

export const hubTreeUrl = (repo: string, revision: string) => `${HUB}/api/models/${repo}/tree/${encodeURIComponent(revision)}?recursive=true`;

const DIFFUSERS_PARTS = [
  ['unet/diffusion_pytorch_model.fp16.safetensors', 'unet/diffusion_pytorch_model.safetensors'],
  ['text_encoder/model.fp16.safetensors', 'text_encoder/model.safetensors'],
  ['vae/diffusion_pytorch_model.fp16.safetensors', 'vae/diffusion_pytorch_model.safetensors'],
  ['tokenizer/vocab.json'],
  ['tokenizer/merges.txt'],
];

/** The files to download from a repository's tree. */
export function planHubDownload(repo: string, revision: string, tree: HubTreeEntry[]): DownloadPlan {
  const files = new Map(tree.filter((e) => e.type === 'file').map((e) => [e.path, e]));
  const planned = (e: HubTreeEntry): PlannedFile => ({
    url: `${HUB}/${repo}/resolve/${encodeURIComponent(revision)}/${e.path.split('/').map(encodeURIComponent).join('/')}`,
    path: e.path,
    size: e.lfs?.size ?? e.size,
    ...(e.lfs?.oid ? { sha256: e.lfs.oid } : {}),
  });
  const picks = DIFFUSERS_PARTS.map((names) => names.map((n) => files.get(n)).find(Boolean));
  if (picks.slice(0, 3).every(Boolean)) {
    return { name: repo, source: `${HUB}/${repo}`, files: picks.filter((p): p is HubTreeEntry => !!p).map(planned) };
  }
  // no diffusers folders: one single-file checkpoint at the top, the smallest (pruned, fp16) first
  const singles = [...files.values()].filter((e) => !e.path.includes('/') && e.path.endsWith('.safetensors'));
  if (!singles.length) throw new Error(`${repo} has neither diffusers folders (unet/, text_encoder/, vae/) nor a .safetensors checkpoint at its top level.`);
  singles.sort((a, b) => (a.lfs?.size ?? a.size ?? 0) - (b.lfs?.size ?? b.size ?? 0));
  return { name: repo, source: `${HUB}/${repo}`, files: [planned(singles[0])] };
}

/** The LoRA file of a hub repository: diffusers' `pytorch_lora_weights.safetensors`, or its only top-level .safetensors. */
export function planHubLora(repo: string, revision: string, tree: HubTreeEntry[]): PlannedFile {
  const top = tree.filter((e) => e.type === 'file' && !e.path.includes('/') && e.path.endsWith('.safetensors'));
  const pick = top.find((e) => e.path === 'pytorch_lora_weights.safetensors') ?? (top.length === 1 ? top[0] : undefined);
  if (!pick) {
    throw new Error(
      top.length
        ? `${repo} holds ${top.length} .safetensors files (${top.slice(0, 4).map((e) => e.path).join(', ')}${top.length > 4 ? ', …' : ''}); paste the address of the one you want.`
        : `${repo} has no .safetensors file at its top level.`,
    );
  }
  return {
    url: `${HUB}/${repo}/resolve/${encodeURIComponent(revision)}/${encodeURIComponent(pick.path)}`,
    path: pick.path,
    size: pick.lfs?.size ?? pick.size,
    ...(pick.lfs?.oid ? { sha256: pick.lfs.oid } : {}),
  };
}
