// The gallery: every result kept in IndexedDB as its PNG (which carries the scene in a text chunk)
// with the scene and report beside it; a PNG dropped back onto the studio gives its scene back.
import type { GenerationReport, ImageData8, ScoreReport } from '../../workers/api/contract.ts';
import { formatA1111, parseA1111, type A1111Parameters } from '../../workers/layout/a1111.ts';
import { encodePng, PngError, readPngText, REPORT_CHUNK, SCENE_CHUNK } from '../../workers/engine/png.ts';
import { parseJson } from '../../workers/api/json.ts';
import { SceneError } from '../../workers/layout/scene.ts';
import { parseStudioSceneLenient, type StudioScene as Scene } from '../../workers/layout/scene-picture.ts';
import { getAll, put, remove } from '../storage/idb.ts';

export { SCENE_CHUNK, REPORT_CHUNK };
/** A PNG larger than this is not read for a scene (a 2048x2048 result is far smaller). */
export const MAX_PNG_BYTES = 64 << 20;

export interface GalleryItem {
  id?: number;
  createdAt: number;
  scene: Scene;
  report: GenerationReport;
  png: Blob;
  width: number;
  height: number;
  /** CLIP scores, when a scorer was loaded. */
  score?: ScoreReport;
}

/**
 * The PNG of a result, with its scene and report as text chunks, and the settings as A1111 writes
 * them (`parameters`), so A1111, ComfyUI, Civitai and the rest read our pictures too.
 */
export async function resultPng(image: ImageData8, scene: Scene, report: GenerationReport): Promise<Blob> {
  const parameters = formatA1111({ ...report, model: scene.model?.name, loras: report.loras });
  const png = await encodePng(image.data, image.width, image.height, { parameters, [SCENE_CHUNK]: JSON.stringify(scene), [REPORT_CHUNK]: JSON.stringify(report) });
  return new Blob([png as BlobPart], { type: 'image/png' });
}

export async function saveResult(image: ImageData8, scene: Scene, report: GenerationReport, score?: ScoreReport): Promise<GalleryItem> {
  const item: GalleryItem = { createdAt: Date.now(), scene, report, png: await resultPng(image, scene, report), width: image.width, height: image.height, ...(score ? { score } : {}) };
  item.id = (await put('results', item, 'the new image')) as number;
  return item;
}

export async function listResults(): Promise<GalleryItem[]> {
  return (await getAll<GalleryItem>('results')).sort((a, b) => b.createdAt - a.createdAt);
}

export const deleteResult = (id: number) => remove('results', id);

export class PngSceneError extends Error {
  constructor(problem: string) {
    super(`No scene could be taken from this image: ${problem}`);
    this.name = 'PngSceneError';
  }
}

/** What a dropped PNG carries: a studio scene, or another tool's settings (A1111's `parameters`). */
export async function pngContents(file: Blob): Promise<{ scene: Scene } | { parameters: A1111Parameters }> {
  try {
    return { scene: await sceneFromPng(file) };
  } catch (e) {
    if (!(e instanceof PngSceneError) || !/no scene chunk/.test(e.message)) throw e;
    const text = readPngText(new Uint8Array(await file.arrayBuffer()), 1 << 20);
    if (text.parameters === undefined) throw new PngSceneError('it was not made by LoRA Studio, and it carries none of the settings other tools (A1111, ComfyUI, Forge) write into their pictures.');
    try {
      return { parameters: parseA1111(text.parameters) };
    } catch (err) {
      throw new PngSceneError(`its settings text cannot be read: ${(err as Error).message}.`);
    }
  }
}

/** The scene a dropped PNG carries, checked like a share link. */
export async function sceneFromPng(file: Blob): Promise<Scene> {
  if (file.size > MAX_PNG_BYTES) throw new PngSceneError(`it is ${(file.size / 2 ** 20).toFixed(0)} MB; studio images are far smaller.`);
  let text: Record<string, string>;
  try {
    text = readPngText(new Uint8Array(await file.arrayBuffer()), 1 << 20);
  } catch (e) {
    if (e instanceof PngError) throw new PngSceneError(`${e.problem}.`);
    throw e;
  }
  const json = text[SCENE_CHUNK];
  if (json === undefined) throw new PngSceneError('it was not made by LoRA Studio (it has no scene chunk).');
  try {
    // its picture settings and mask come along where they check; a damaged mask alone is left out
    return parseStudioSceneLenient(parseJson(json, (problem) => new SceneError(problem))).scene;
  } catch (e) {
    if (e instanceof SceneError) throw new PngSceneError(`its scene chunk: ${e.problem}.`);
    throw e;
  }
}
