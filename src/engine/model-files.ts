// Turning what the user picked into a model request: the embedded test model, one .safetensors
// file, or a diffusers folder; and the CLIP tokenizer for single files (fetched once, then cached).
import type { ModelRequest } from '../../workers/api/contract.ts';
import { CONFIG_METADATA_KEY } from '../../workers/checkpoint/config.ts';
import { ModelCheckpoint } from '../../workers/checkpoint/model.ts';
import { SafetensorsFile } from '../../workers/checkpoint/safetensors.ts';
import { BlobSource } from '../../workers/checkpoint/source.ts';

const TOKENIZER_CACHE = 'lora-studio-tokenizer-v1';
const CLIP_L14 = 'https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/';

export async function testModelRequest(): Promise<ModelRequest> {
  const base = new URL('test-model/', document.baseURI).href;
  const tokenizerJson = await (await fetch(`${base}tokenizer/tokenizer.json`)).text();
  return { single: { kind: 'url', url: `${base}tiny-sd15.safetensors` }, tokenizer: { tokenizerJson } };
}

async function clipTokenizer(): Promise<ModelRequest['tokenizer']> {
  const cache = await caches.open(TOKENIZER_CACHE);
  const get = async (name: string) => {
    const hit = await cache.match(CLIP_L14 + name);
    if (hit) return hit.text();
    const res = await fetch(CLIP_L14 + name);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    await cache.put(CLIP_L14 + name, res.clone());
    return res.text();
  };
  try {
    const [vocabJson, mergesTxt] = await Promise.all([get('vocab.json'), get('merges.txt')]);
    return { vocabJson, mergesTxt };
  } catch (e) {
    throw new Error(`A single-file checkpoint needs the CLIP ViT-L/14 tokenizer, fetched once from the Hugging Face hub; that failed (${(e as Error).message}). Connect once, or open a diffusers folder that includes tokenizer/.`);
  }
}

/** Whether a .safetensors file reads as a whole SD checkpoint (its header only; a LoRA does not). */
export function isCheckpointFile(file: File): Promise<boolean> {
  return ModelCheckpoint.open({ single: new BlobSource(file.name, file) }).then(
    () => true,
    () => false,
  );
}

/** Whether a .safetensors file is a textual-inversion embedding (its tensors as trainers name them). */
export async function isEmbeddingFile(file: File): Promise<boolean> {
  try {
    const f = await SafetensorsFile.open(new BlobSource(file.name, file));
    const keys = f.keys();
    return keys.some((k) => /^(emb_params|clip_l|string_to_param\..+)$/.test(k)) || (keys.length === 1 && (f.info(keys[0])?.shape.length ?? 0) <= 2 && !/\.(weight|alpha)$/.test(keys[0]));
  } catch {
    return false;
  }
}

/** From files with their paths (a picked folder, or a model stored in the library). */
export async function requestFromEntries(files: { path: string; blob: Blob }[]): Promise<ModelRequest> {
  const byPath = (suffix: string) => files.find((f) => f.path === suffix || f.path.endsWith(`/${suffix}`));
  const part = (...names: string[]) => names.map(byPath).find(Boolean);
  const unet = part('unet/diffusion_pytorch_model.safetensors', 'unet/diffusion_pytorch_model.fp16.safetensors');
  if (unet) {
    const te = part('text_encoder/model.safetensors', 'text_encoder/model.fp16.safetensors');
    const vae = part('vae/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.fp16.safetensors');
    const vocab = byPath('tokenizer/vocab.json');
    const merges = byPath('tokenizer/merges.txt');
    if (!te || !vae) throw new Error('This diffusers folder is incomplete: it needs text_encoder/model.safetensors and vae/diffusion_pytorch_model.safetensors.');
    const blob = (f: { path: string; blob: Blob }) => ({ kind: 'blob' as const, name: f.path, blob: f.blob });
    const tokenizer = vocab && merges ? { vocabJson: await vocab.blob.text(), mergesTxt: await merges.blob.text() } : await clipTokenizer();
    return { unet: blob(unet), textEncoder: blob(te), vae: blob(vae), tokenizer };
  }
  const single = files.find((f) => f.path.endsWith('.safetensors'));
  if (!single) throw new Error('Choose a .safetensors checkpoint (or a diffusers folder). Other formats such as .ckpt are not read, because they can run code.');
  const name = single.path.split('/').pop()!;
  // Read the header here first (a few KB): a wrong or broken file is reported before any download,
  // and our generated test model is recognised by its metadata and gets its own small vocabulary.
  const ckpt = await ModelCheckpoint.open({ single: new BlobSource(name, single.blob) });
  const isTest = CONFIG_METADATA_KEY in ckpt.fileOf('unet').metadata;
  const tokenizer = isTest ? (await testModelRequest()).tokenizer : await clipTokenizer();
  return { single: { kind: 'blob', name, blob: single.blob }, tokenizer };
}
