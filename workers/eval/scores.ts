// How a result is scored, independent of the model that embeds it, as the papers' scripts score it:
// CMLoRA and ComposLoRA: CLIPScore (torchmetrics: 100 max(cos, 0)) of the image and the LoRAs'
// trigger words; LoRA-Composer (clipscore.py, clipscore_image_alignment.py, eval_clip_score.py): text
// similarity 2.5 max(0, cos) of each concept crop and "A photo depicts " + its prompt with class
// words, image similarity max(0, cos) with the concept's first reference. Our own variants stay next
// to them under their names.
import type { ConceptScore, ImageData8, ScoreConcept, ScoreReport, ScoreRequest } from '../api/contract.ts';
import type { Scene, SceneLora } from '../layout/scene.ts';
import { cropImage } from './preprocess.ts';
import { mean } from './stats.ts';

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * The prompt with each concept's trigger words replaced by its class word ('' leaves them out; a
 * concept whose class word is not known at all keeps its words as written).
 */
export function classText(prompt: string, concepts: ScoreConcept[]): string {
  let out = prompt;
  for (const c of concepts) {
    if (c.classWord === undefined) continue;
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
/** LoRA-Composer's clipscore.py: w * max(0, cos) with w = 2.5. */
export const composerTextScore = (cos: number) => 2.5 * Math.max(cos, 0);
export const COMPOSER_CAPTION_PREFIX = 'A photo depicts ';

/** The trigger words of every LoRA of a request, joined as CMLoRA's scripts join them (', '). */
export function triggerText(req: Pick<ScoreRequest, 'loras' | 'boxes'>): string {
  const all = [...req.loras, ...req.boxes.flatMap((b) => b.loras)];
  const seen = new Set<string>();
  return all
    .map((c) => c.trigger?.trim() ?? '')
    .filter((t) => t && !seen.has(t) && seen.add(t))
    .join(', ');
}

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

/** Ours: the mean cosine with every reference; the code's: max(0, cosine) with the first one (its `zip` keeps only those). */
async function referenceSimilarity(e: Embedder, crop: Float32Array, concepts: ScoreConcept[]): Promise<{ sim: number | null; first: number | null; count: number }> {
  const sims: number[] = [];
  for (const c of concepts) for (const r of c.references ?? []) sims.push(dot(crop, await e.reference(r.id, r.image)));
  return { sim: sims.length ? mean(sims) : null, first: sims.length ? Math.max(0, sims[0]) : null, count: sims.length };
}

export async function scoreImage(e: Embedder, req: ScoreRequest): Promise<ScoreReport> {
  const t0 = performance.now();
  const whole = await e.image(req.image);
  const global = dot(whole, await e.text(req.prompt));
  const triggers = triggerText(req);
  const clipScoreText = triggers || req.prompt;
  const boxes: ConceptScore[] = [];
  const composer: number[] = [];
  for (const b of req.boxes) {
    const crop = await e.image(cropImage(req.image, b));
    const text = classText(b.prompt, b.loras);
    const refs = await referenceSimilarity(e, crop, b.loras);
    boxes.push({ name: b.name, text, textImage: dot(crop, await e.text(text)), imageImage: refs.sim, imageImageFirst: refs.first, references: refs.count });
    composer.push(composerTextScore(dot(crop, await e.text(COMPOSER_CAPTION_PREFIX + text))));
  }
  const loras: ConceptScore[] = [];
  for (const l of req.loras) {
    const refs = await referenceSimilarity(e, whole, [l]);
    loras.push({ name: l.name, text: null, textImage: null, imageImage: refs.sim, imageImageFirst: refs.first, references: refs.count });
  }
  // a background concept (a frame LoRA with a class word) is the whole image against the global prompt
  if (!composer.length || req.loras.some((l) => l.classWord?.trim())) composer.push(composerTextScore(dot(whole, await e.text(COMPOSER_CAPTION_PREFIX + classText(req.prompt, req.loras)))));
  const withRefs = [...boxes, ...loras].filter((c) => c.imageImage !== null);
  return {
    scorer: e.name,
    global,
    clipScore: clipScore(triggers ? dot(whole, await e.text(triggers)) : global),
    clipScoreText,
    clipScorePrompt: clipScore(global),
    boxes,
    loras,
    textSimilarity: mean(composer),
    textSimilarityRaw: mean([...boxes.map((b) => b.textImage!), global]),
    imageSimilarity: withRefs.length ? mean(withRefs.map((c) => c.imageImage!)) : null,
    imageSimilarityFirst: withRefs.length ? mean(withRefs.map((c) => c.imageImageFirst!)) : null,
    ms: performance.now() - t0,
  };
}
