// The CLIP scorer: the tiny test scorer's files loaded through transformers.js (tokenizer, text and
// vision models with projections) on onnxruntime-web, wasm and WebGPU, against float64 embeddings
// computed loop by loop from the same weights; then the scoring of a layout image.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { ImageData8 } from '../../workers/api/contract.ts';
import { EngineError } from '../../workers/api/errors.ts';
import type { Backend } from '../../workers/engine/runtime.ts';
import { clipPixels } from '../../workers/eval/preprocess.ts';
import { ClipScorer, type ScorerFiles } from '../../workers/eval/scorer.ts';
import { classText, clipScore, composerTextScore, triggerText } from '../../workers/eval/scores.ts';
import { makeTinyClip, tinyClipFiles } from '../../workers/eval/tiny-clip.ts';
import { cosineSimilarity as cosine } from '../../workers/composition/frequency.ts';
import { referenceImageEmbeds, referenceTextEmbeds } from '../../workers/reference/clip.ts';
import { runtime, seeded } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const clip = makeTinyClip();
const W = (name: string) => Float64Array.from(clip.weights.get(name)!);
const files: ScorerFiles = new Map(tinyClipFiles(clip).map((f) => [f.path, new Blob(f.parts as BlobPart[])]));

function noiseImage(width: number, height: number, seed: number): ImageData8 {
  const r = seeded(seed);
  const data = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < data.length; i++) data[i] = i % 4 === 3 ? 255 : Math.round((r() + 0.5) * 255);
  return { width, height, data };
}

const scorers = new Map<Backend, Promise<ClipScorer>>();
const scorer = (b: Backend) => {
  if (!scorers.has(b)) scorers.set(b, runtime(b).then((rt) => ClipScorer.open('tiny', files, rt)));
  return scorers.get(b)!;
};

for (const backend of ['wasm', 'webgpu'] as Backend[]) {
  test(`${backend}: text and image embeddings through transformers.js match float64`, async () => {
    const s = await scorer(backend);
    const handed = (globalThis as Record<symbol, { InferenceSession: unknown }>)[Symbol.for('onnxruntime')];
    assert.equal(handed.InferenceSession, (await runtime(backend)).ort.InferenceSession, "transformers.js was given the engine's onnxruntime-web");
    for (const prompt of ['a photo of an owl', 'a red fox in the forest, watercolor style', '']) {
      const ids = s.tokens(prompt);
      assert.equal(ids.length, clip.config.text.maxPositions);
      const ref = referenceTextEmbeds(W, clip.config, ids);
      const got = await s.text(prompt);
      assert.ok(Math.abs(Math.hypot(...got) - 1) < 1e-6, 'unit length');
      const cos = cosine(got, ref);
      assert.ok(cos > 1 - 1e-6, `${prompt}: cosine to float64 ${cos}`);
    }
    for (const [w, h] of [[32, 32], [64, 48], [40, 96]]) {
      const img = noiseImage(w, h, w * h);
      const ref = referenceImageEmbeds(W, clip.config, clipPixels(img, s.preprocessing));
      const cos = cosine(await s.image(img), ref);
      assert.ok(cos > 1 - 1e-6, `${w}x${h}: cosine to float64 ${cos}`);
    }
  });
}

test('scoring a layout image: crops against class-word prompts, references, LoRA-Composer means', async () => {
  const s = await scorer('webgpu');
  const img = noiseImage(64, 64, 7);
  const owlRef = { id: 'owl-1', image: noiseImage(48, 48, 11) };
  const owl = { name: 'owl-lora', trigger: 'sks', classWord: 'owl', references: [owlRef] };
  const fox = { name: 'fox-lora', trigger: 'zxc', classWord: 'fox' };
  const style = { name: 'style', references: [{ id: 'self', image: img }] };
  const boxes = [
    { name: 'owl', x: 0, y: 8, width: 32, height: 40, prompt: 'a photo of sks bird', loras: [owl] },
    { name: 'fox', x: 32, y: 16, width: 32, height: 48, prompt: 'a zxc animal', loras: [fox] },
  ];
  const r = await s.score({ image: img, prompt: 'an owl and a fox in the forest', loras: [style], boxes });
  const emb = (pixels: ImageData8) => referenceImageEmbeds(W, clip.config, clipPixels(pixels, s.preprocessing));
  const txt = (t: string) => referenceTextEmbeds(W, clip.config, s.tokens(t));
  const crop = (b: (typeof boxes)[number]) => {
    const data = new Uint8ClampedArray(b.width * b.height * 4);
    for (let y = 0; y < b.height; y++) for (let x = 0; x < b.width; x++) for (let c = 0; c < 4; c++) data[(y * b.width + x) * 4 + c] = img.data[((b.y + y) * 64 + b.x + x) * 4 + c];
    return { width: b.width, height: b.height, data };
  };
  const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) < 1e-5, `${what}: ${a} vs ${b}`);
  close(r.global, cosine(emb(img), txt('an owl and a fox in the forest')), 'global');
  // CMLoRA's CLIPScore: against the trigger words joined by ", " (the style LoRA has none)
  assert.equal(r.clipScoreText, 'sks, zxc');
  close(r.clipScore, 100 * Math.max(0, cosine(emb(img), txt('sks, zxc'))), 'CLIPScore');
  close(r.clipScorePrompt, 100 * Math.max(0, r.global), 'CLIPScore (prompt)');
  assert.deepEqual(r.boxes.map((b) => b.text), ['a photo of owl bird', 'a fox animal']);
  close(r.boxes[0].textImage!, cosine(emb(crop(boxes[0])), txt('a photo of owl bird')), 'owl text');
  close(r.boxes[1].textImage!, cosine(emb(crop(boxes[1])), txt('a fox animal')), 'fox text');
  close(r.boxes[0].imageImage!, cosine(emb(crop(boxes[0])), emb(owlRef.image)), 'owl image');
  assert.equal(r.boxes[1].imageImage, null);
  assert.equal(r.boxes[1].references, 0);
  // The whole image against itself as a reference: cosine 1.
  close(r.loras[0].imageImage!, 1, 'self reference');
  // LoRA-Composer's clipscore.py: 2.5 max(0, cos) with "A photo depicts " + the class-word prompt, no global term
  // (the style LoRA has no class word, so no background concept)
  const composer = (b: (typeof boxes)[number], t: string) => 2.5 * Math.max(0, cosine(emb(crop(b)), txt(`A photo depicts ${t}`)));
  close(r.textSimilarity, (composer(boxes[0], 'a photo of owl bird') + composer(boxes[1], 'a fox animal')) / 2, 'text similarity');
  close(r.textSimilarityRaw, (r.boxes[0].textImage! + r.boxes[1].textImage! + r.global) / 3, 'text similarity (ours before)');
  close(r.imageSimilarity!, (r.boxes[0].imageImage! + 1) / 2, 'image similarity');
  close(r.boxes[0].imageImageFirst!, Math.max(0, r.boxes[0].imageImage!), 'first reference');
  close(r.imageSimilarityFirst!, (Math.max(0, cosine(emb(crop(boxes[0])), emb(owlRef.image))) + 1) / 2, 'image similarity (first reference)');
});

test('trigger words become class words; other words stay', () => {
  const c = [{ name: 'a', trigger: 'sks, sks dog', classWord: 'dog' }, { name: 'b', trigger: 'mychar', classWord: '' }];
  assert.equal(classText('a photo of sks dog in a sksy hat', c), 'a photo of dog in a sksy hat');
  assert.equal(classText('mychar, smiling', c), ', smiling');
  assert.equal(classText('SKS on a beach', c), 'dog on a beach');
});

test("the scripts' closed forms: CLIPScore, clipscore.py's weight, trigger words in order and once", () => {
  assert.deepEqual([clipScore(0.3125), clipScore(-0.2), composerTextScore(0.25), composerTextScore(-0.1)], [31.25, 0, 0.625, 0]);
  const lora = (name: string, trigger?: string) => ({ name, trigger });
  const req = { loras: [lora('style', 'watercolor'), lora('plain')], boxes: [{ name: 'a', x: 0, y: 0, width: 1, height: 1, prompt: '', loras: [lora('fox', ' zxc '), lora('again', 'watercolor')] }] };
  assert.equal(triggerText(req), 'watercolor, zxc');
  assert.equal(triggerText({ loras: [lora('plain')], boxes: [] }), '');
});

test('a scorer without its files or with the wrong config gets a sentence', async () => {
  const rt = await runtime('wasm');
  const without = new Map(files);
  without.delete('onnx/vision_model.onnx');
  await assert.rejects(ClipScorer.open('broken', without, rt), (e: unknown) => e instanceof EngineError && /vision_model/.test(e.message));
  const wrong = new Map(files);
  wrong.set('config.json', new Blob([JSON.stringify({ model_type: 'bert' })]));
  await assert.rejects(ClipScorer.open('bert', wrong, rt), (e: unknown) => e instanceof EngineError && /must be a CLIP model/.test(e.message));
});
