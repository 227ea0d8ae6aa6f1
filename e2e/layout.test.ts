// The layout canvas in Chromium: draw two boxes with the mouse, give them prompts and LoRAs, generate
// (the same image as the Node engine makes from the same job), undo/redo, and a reload restores the scene.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { maxAbsDiff } from '../tests/helpers.ts';
import { dragOnCanvas, generateAndWait, nodeEngine, openDetails, resultPixels, studioForFile } from './harness.ts';

const LORAS = ['dist/test-model/loras/kohya.safetensors', 'dist/test-model/loras/loha.safetensors'];

const studio = studioForFile(5400, async (page) => {
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '2'], ['seed', '5'], ['cfg', '4']]) await page.getByTestId(id).fill(v);
});

const boxNames = () => studio.page.locator('[data-testid^="box-select-"]').allInnerTexts();

test('draw two boxes, give them prompts and LoRAs, generate as Node does; undo, redo; reload restores the scene', async () => {
  const { page } = studio;
  await page.getByTestId('lora-file').setInputFiles(LORAS);
  await page.getByTestId('lora-info-1').waitFor({ timeout: 60_000 });
  // the frame LoRAs stay off: the box LoRAs act through their boxes only
  await page.getByTestId('lora-enabled-0').uncheck();
  await page.getByTestId('lora-enabled-1').uncheck();

  await dragOnCanvas(page, [0.5, 8.5], [31, 55]);
  await page.getByTestId('box-name').fill('fox');
  await page.getByTestId('box-prompt').fill('a red fox');
  await page.getByTestId('box-lora-add').selectOption('kohya.safetensors');
  await dragOnCanvas(page, [34, 9], [63.8, 56.5]);
  await page.getByTestId('box-name').fill('owl');
  await page.getByTestId('box-prompt').fill('a grey owl');
  await page.getByTestId('box-lora-add').selectOption('loha.safetensors');
  assert.deepEqual(await boxNames(), ['fox', 'owl']);
  const scene = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.scene')!));
  assert.deepEqual(scene.boxes.map((b: { x: number; y: number; width: number; height: number }) => [b.x, b.y, b.width, b.height]), [[0, 8, 32, 48], [32, 8, 32, 48]]);

  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0, 'no error shown');
  await openDetails(page);
  assert.match(await page.getByTestId('result-boxes').innerText(), /^Attention in box \(used \/ unmasked\): fox 100% \/ \d+%, owl 100% \/ \d+%$/);
  const pixels = await resultPixels(page);
  await page.screenshot({ path: 'e2e/screenshots/layout.png' });

  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  assert.deepEqual(job.layout.boxes.map((b: { name: string; prompt: string }) => [b.name, b.prompt]), [['fox', 'a red fox'], ['owl', 'a grey owl']]);
  const { engine } = await nodeEngine(['kohya', 'loha']);
  const node = await engine.generate(job);
  assert.ok(maxAbsDiff(pixels, node.image.data).diff <= 2, 'browser and Node agree within 2/255');
  engine.unload();

  // keyboard: delete the selected box, undo brings it back, redo removes it again
  await page.getByTestId('box-select-1').click();
  await page.getByTestId('layout-canvas').focus();
  await page.keyboard.press('Delete');
  assert.deepEqual(await boxNames(), ['fox']);
  await page.keyboard.press('Control+z');
  assert.deepEqual(await boxNames(), ['fox', 'owl']);
  await page.keyboard.press('Control+Shift+z');
  assert.deepEqual(await boxNames(), ['fox']);
  await page.keyboard.press('Control+z');

  await page.reload();
  await page.getByTestId('status').filter({ hasText: 'Ready' }).waitFor({ timeout: 120_000 });
  assert.deepEqual(await boxNames(), ['fox', 'owl']);
  assert.equal(await page.getByTestId('width').inputValue(), '64', 'the frame size comes back with the scene');
});

test('gradient guidance in Chromium: the switches, a guided run, its loss plot per step as Node computes it', async () => {
  const { page } = studio;
  // after the reload above: the two boxes and their LoRAs are back
  await page.getByTestId('lora-info-1').waitFor({ timeout: 60_000 });
  for (const k of ['ce', 'fill', 'region']) await page.getByTestId(`guidance-${k}`).check();
  await page.getByTestId('guidance-scale').fill('80');
  await page.getByTestId('guidance-share').fill('1');
  await page.getByTestId('guidance-early-stop').uncheck();
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0, 'no error shown');
  const points = page.getByTestId('guidance-plot').locator('circle');
  assert.equal(await points.count(), 2, 'one loss point per guided step');
  const losses = (await points.locator('title').allTextContents()).map((t) => Number(/L (\d+\.\d+)/.exec(t)![1]));
  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  assert.deepEqual(job.layout.guidance, { ce: true, fill: true, region: true, scale: 80, share: 1, earlyStop: false, lastStep: 25 });
  await page.screenshot({ path: 'e2e/screenshots/guidance.png', fullPage: true });
  const { engine } = await nodeEngine(['kohya', 'loha']);
  const node = (await engine.generate(job)).report.guidance!;
  engine.unload();
  node.steps.forEach((s, i) => assert.ok(Math.abs(s.loss - losses[i]) < 2e-3 + 1e-4 * Math.abs(s.loss), `step ${i}: browser L ${losses[i]}, Node L ${s.loss}`));
});
