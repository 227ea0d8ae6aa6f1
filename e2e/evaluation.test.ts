// Scoring in Chromium: the built-in scorer loads with the model; a LoRA's trigger word, class word and
// reference image are used for its scores; the result's scores, stored with it in the gallery, are
// those Node's scorer gives the same job; a comparison across methods shows each image and its scores.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { inflateSync } from 'node:zlib';
import type { ScoreReport } from '../workers/api/contract.ts';
import { decodePng } from '../workers/engine/png.ts';
import { ClipScorer } from '../workers/eval/scorer.ts';
import { openScorerDir } from '../workers/node/scorer-files.ts';
import { generateAndWait, nodeEngine, resultPixels, studioForFile } from './harness.ts';

const studio = studioForFile(6600, async (page) => {
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '3'], ['seed', '5'], ['cfg', '1']]) await page.getByTestId(id).fill(v);
  await page.getByTestId('prompt').fill('a zxc fox in a forest');
});

const close = (a: number, b: number, tol: number, what: string) => assert.ok(Math.abs(a - b) <= tol, `${what}: page ${a} vs Node ${b}`);

test("a result's CLIP scores use the LoRA's trigger, class word and reference, match Node's, and stay with it in the gallery", async () => {
  const { page } = studio;
  await page.getByTestId('scorer').filter({ hasText: 'built-in test scorer' }).waitFor({ timeout: 120_000 });
  await page.getByTestId('lora-file').setInputFiles(['dist/test-model/loras/kohya.safetensors']);
  await page.getByTestId('lora-info-0').waitFor({ timeout: 60_000 });
  await page.getByTestId('lora-scoring-0').locator('summary').click();
  await page.getByTestId('lora-trigger-0').fill('zxc');
  await page.getByTestId('lora-class-0').fill('fox');
  await page.getByTestId('lora-references-0').setInputFiles(['dist/test-model/references/fox-1.png']);
  await page.getByTestId('lora-scoring-0').filter({ hasText: '1 references' }).waitFor();
  await generateAndWait(page);
  // the built-in scorer's numbers are research detail: they sit in the Details drawer, not under the picture
  await page.getByTestId('details').locator('summary').first().click();
  await page.getByTestId('result-score').waitFor({ timeout: 60_000 });
  assert.equal(await page.getByTestId('error').count(), 0);

  const stored = await page.evaluate(
    () =>
      new Promise<ScoreReport>((resolve, reject) => {
        const open = indexedDB.open('lorastudio');
        open.onsuccess = () => {
          const req = open.result.transaction('results').objectStore('results').getAll();
          req.onsuccess = () => resolve((req.result as { createdAt: number; score: ScoreReport }[]).sort((a, b) => b.createdAt - a.createdAt)[0].score);
          req.onerror = () => reject(req.error);
        };
      }),
  );
  assert.equal(stored.scorer, 'built-in test scorer');
  assert.deepEqual(stored.loras.map((l) => [l.name, l.references]), [['kohya.safetensors', 1]]);
  assert.match(await page.getByTestId('result-score-clipscore').innerText(), new RegExp(`^${stored.clipScore.toFixed(1)}$`));
  assert.equal(await page.getByTestId('gallery-score-0').count(), 0, 'the gallery shows no score from a scorer with random weights');

  // Node: the same job, the same scorer files, the same concept.
  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  const { engine } = await nodeEngine(['kohya']);
  const node = await engine.generate(job);
  const pixels = await resultPixels(page);
  assert.ok(pixels.every((v, i) => Math.abs(v - node.image.data[i]) <= 2), 'the images agree within 2/255');
  const scorer = await ClipScorer.open('built-in test scorer', await openScorerDir('dist/test-model/clip'), engine.rt);
  const ref = decodePng(new Uint8Array(readFileSync('dist/test-model/references/fox-1.png')), (d, max) => inflateSync(d, { maxOutputLength: max + 1 }));
  const want = await scorer.score({ image: node.image, prompt: 'a zxc fox in a forest', loras: [{ name: 'kohya.safetensors', trigger: 'zxc', classWord: 'fox', references: [{ id: 'fox-1', image: ref }] }], boxes: [] });
  close(stored.global, want.global, 5e-3, 'global');
  close(stored.loras[0].imageImage!, want.loras[0].imageImage!, 5e-3, 'image similarity to the reference');
  close(stored.textSimilarity, want.textSimilarity, 5e-3, 'text similarity');
  // CMLoRA's CLIPScore is against the trigger words the artist gave; the prompt's is beside it
  assert.equal(stored.clipScoreText, 'zxc');
  close(stored.clipScore, want.clipScore, 0.5, 'CLIPScore (trigger words)');
  close(stored.clipScorePrompt, want.clipScorePrompt, 0.5, 'CLIPScore (prompt)');
  close(stored.imageSimilarityFirst!, want.imageSimilarityFirst!, 5e-3, 'image similarity (first reference)');
  await page.getByTestId('result-score-details').locator('summary').click();
  assert.equal(await page.getByTestId('result-score-clipscore-prompt').innerText(), stored.clipScorePrompt.toFixed(1));
  assert.match(await page.getByTestId('result-score-details').innerText(), /against “zxc”/);
  await page.getByTestId('result-score-details').locator('summary').click();
});

test('comparing two methods shows both images with their UNet runs and scores; merge repeats the result', async () => {
  const { page } = studio;
  const result = await resultPixels(page);
  const scoreLine = await page.getByTestId('result-score').innerText();
  await page.getByTestId('compare').locator('summary').click();
  for (const m of ['switch', 'cmlora']) await page.getByTestId(`compare-${m}`).uncheck();
  const kept = await page.locator('[data-testid^="gallery-item-"]').count();
  await page.getByTestId('compare-run').click();
  await page.getByTestId('comparison-1-score').waitFor({ timeout: 240_000 });
  await page.getByTestId('generate').and(page.locator(':enabled')).waitFor({ timeout: 60_000 });
  assert.equal(await page.getByTestId('comparison').locator('figure').count(), 2);
  assert.equal(await page.getByTestId('comparison-0-score').innerText(), scoreLine, 'merge again: the same image, the same scores');
  const first = await page.getByTestId('comparison-0').locator('canvas').evaluate((c: HTMLCanvasElement) => Array.from(c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data));
  assert.deepEqual(first, result);
  assert.match(await page.getByTestId('comparison-1').innerText(), /Each LoRA separately · \d+ UNet runs/);
  // merge against LoRA Composite, by CMLoRA's rule (a tenth apart or less ties)
  assert.match(await page.getByTestId('comparison-0-versus').innerText(), /^\s*· (beats|ties with|behind) Each LoRA separately\s*$/);
  assert.equal(await page.getByTestId('comparison-1-versus').count(), 0);
  // both pictures are kept in the gallery, newest first, each with its method
  await page.getByTestId(`gallery-item-${kept + 1}`).waitFor();
  assert.match(await page.getByTestId('gallery-item-0').innerText(), /Each LoRA separately/);
  assert.match(await page.getByTestId('gallery-item-1').innerText(), /Blend LoRAs/);
});
