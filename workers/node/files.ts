// Node only: files on disk as byte sources, and writing generated files.
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { inflateSync } from 'node:zlib';
import type { ByteSource } from '../checkpoint/source.ts';
import type { ModelFiles } from '../checkpoint/model.ts';
import type { TokenizerFiles } from '../text/tokenizer.ts';
import { EngineError } from '../api/errors.ts';

export class NodeFileSource implements ByteSource {
  private constructor(readonly name: string, readonly size: number, private readonly path: string) {}

  static async open(path: string): Promise<NodeFileSource> {
    let s;
    try {
      s = await stat(path);
    } catch {
      throw new EngineError('io', `Cannot open ${path}: no such file.`);
    }
    if (!s.isFile()) throw new EngineError('io', `${path} is not a file.`);
    return new NodeFileSource(basename(path), s.size, path);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const fh = await open(this.path, 'r');
    try {
      const n = Math.max(0, Math.min(length, this.size - offset));
      const buf = new Uint8Array(n);
      const { bytesRead } = await fh.read(buf, 0, n, offset);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  }
}

export async function writeParts(path: string, parts: Uint8Array[]): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const fh = await open(path, 'w');
  try {
    for (const p of parts) await fh.write(p);
  } finally {
    await fh.close();
  }
}

async function tryRead(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** A tokenizer folder: tokenizer.json, or vocab.json + merges.txt. */
export async function readTokenizerDir(dir: string): Promise<TokenizerFiles | undefined> {
  const tokenizerJson = await tryRead(join(dir, 'tokenizer.json'));
  if (tokenizerJson) return { tokenizerJson };
  const vocabJson = await tryRead(join(dir, 'vocab.json'));
  const mergesTxt = await tryRead(join(dir, 'merges.txt'));
  return vocabJson && mergesTxt ? { vocabJson, mergesTxt } : undefined;
}

/** Where the CLIP ViT-L/14 tokenizer is cached for single-file checkpoints. */
export function tokenizerCacheDir(): string {
  return join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? '.', '.cache'), 'lora-studio', 'clip-vit-large-patch14');
}

/** A path is either a single .safetensors file or a diffusers folder. */
export async function openModelPath(path: string): Promise<{ files: ModelFiles; tokenizer?: TokenizerFiles }> {
  let s;
  try {
    s = await stat(path);
  } catch {
    throw new EngineError('io', `Cannot open ${path}: no such file or folder.`);
  }
  if (s.isDirectory()) {
    const [unet, textEncoder, vae] = await Promise.all([
      NodeFileSource.open(join(path, 'unet', 'diffusion_pytorch_model.safetensors')),
      NodeFileSource.open(join(path, 'text_encoder', 'model.safetensors')),
      NodeFileSource.open(join(path, 'vae', 'diffusion_pytorch_model.safetensors')),
    ]);
    return { files: { unet, textEncoder, vae }, tokenizer: await readTokenizerDir(join(path, 'tokenizer')) };
  }
  const single = await NodeFileSource.open(path);
  const tokenizer = (await readTokenizerDir(join(dirname(path), 'tokenizer'))) ?? (await readTokenizerDir(tokenizerCacheDir()));
  return { files: { single }, tokenizer };
}

/** zlib's inflate for decodePng, refusing output beyond what the image header allows. */
export const nodeInflate = (data: Uint8Array, maxOutput: number): Uint8Array => inflateSync(data, { maxOutputLength: maxOutput + 1 });

export { writeFile };
