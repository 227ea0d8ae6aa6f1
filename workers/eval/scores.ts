// How a result is scored, independent of the model that embeds it: which crop meets which text and
// which reference images, and how the similarities are summarised (LoRA-Composer, Sec. 4.1: text
// similarity over the concept crops and the whole image, image similarity over the concepts; CMLoRA
// and ComposLoRA: CLIPScore of the image and the prompt).
import type { ConceptScore, ImageData8, ScoreConcept, ScoreReport, ScoreRequest } from '../api/contract.ts';
import type { Scene, SceneLora } from '../layout/scene.ts';
import { cropImage } from './preprocess.ts';
import { mean } from './stats.ts';

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The prompt with each concept's trigger words replaced by its class word (or left out when it has none). */
export function classText(prompt: string, concepts: ScoreConcept[]): string {
  let out = prompt;
  for (const c of concepts) {
    const words = (c.trigger ?? '').split(',').map((w) => w.trim()).filter(Boolean).sort((a, b) => b.length - a.length);
    for (const w of words) out = out.replace(new RegExp(`(?<![\\p{L}\\p{N}_])${escape(w)}(?![\\p{L}\\p{N}_])`, 'giu'), c.classWord?.trim() ?? '');
  }
  return out.replace(/\s+/g, ' ').replace(/\s+([,.;:])/g, '$1').trim();
}

/** What to score for an image made from a scene; `concept` says what is known of each of its LoRAs. */
export async function sceneScoreRequest(image: ImageData8, scene: Pick<Scene, 'prompt' | 'loras' | 'boxes'>, concept: (l: SceneLora) => ScoreConcept | Promise<ScoreConcept>): Promise<ScoreRequest> {
  const all = (list: SceneLora[]) => Promise.all(list.map(concept));
  return {
    image,
    prompt: scene.prompt,
    loras: await all(scene.loras),
    boxes: await Promise.all(scene.boxes.map(async (b) => ({ name: b.name, x: b.x, y: b.y, width: b.width, height: b.height, prompt: b.prompt, loras: await all(b.loras) }))),
  };
}

export const clipScore = (cos: number) => 100 * Math.max(cos, 0);

export function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** What the scorer model provides: unit-length embeddings. */
export interface Embedder {
  readonly name: string;
  text(text: string): Promise<Float32Array>;
  image(image: ImageData8): Promise<Float32Array>;
  /** An image's embedding kept under `id` (reference images are embedded once). */
  reference(id: string, image: ImageData8): Promise<Float32Array>;
}

async function referenceSimilarity(e: Embedder, crop: Float32Array, concepts: ScoreConcept[]): Promise<{ sim: number | null; count: number }> {
  const sims: number[] = [];
  for (const c of concepts) for (const r of c.references ?? []) sims.push(dot(crop, await e.reference(r.id, r.image)));
  return { sim: sims.length ? mean(sims) : null, count: sims.length };
}

export async function scoreImage(e: Embedder, req: ScoreRequest): Promise<ScoreReport> {
  const t0 = performance.now();
  const whole = await e.image(req.image);
  const global = dot(whole, await e.text(req.prompt));
  const boxes: ConceptScore[] = [];
  for (const b of req.boxes) {
    const crop = await e.image(cropImage(req.image, b));
    const text = classText(b.prompt, b.loras);
    const refs = await referenceSimilarity(e, crop, b.loras);
    boxes.push({ name: b.name, text, textImage: dot(crop, await e.text(text)), imageImage: refs.sim, references: refs.count });
  }
  const loras: ConceptScore[] = [];
  for (const l of req.loras) {
    const refs = await referenceSimilarity(e, whole, [l]);
    loras.push({ name: l.name, text: null, textImage: null, imageImage: refs.sim, references: refs.count });
  }
  const withRefs = [...boxes, ...loras].filter((c) => c.imageImage !== null).map((c) => c.imageImage!);
  return {
    scorer: e.name,
    global,
    clipScore: clipScore(global),
    boxes,
    loras,
    textSimilarity: mean([...boxes.map((b) => b.textImage!), global]),
    imageSimilarity: withRefs.length ? mean(withRefs) : null,
    ms: performance.now() - t0,
  };
}
