// Working from a picture, in Chromium with the tiny test model: image to image from a gallery picture
// (the same image as the Node engine makes from the same job), a mask painted with the mouse and by
// touch, inpainting that gives back every pixel the blurred mask keeps exactly, the hires fix doubling
// a result's size, a share link that restores the mask byte for byte in a fresh browser, and the new
// controls at phone, tablet and laptop sizes (screenshots kept, nothing cut off or scrolling sideways).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import type { GenerateJob } from '../workers/api/contract.ts';
import { blurMask } from '../workers/engine/picture.ts';
import { decodeMask, type EncodedMask } from '../workers/layout/mask-codec.ts';
import { maxAbsDiff } from '../tests/helpers.ts';
import { dragOnCanvas, generateAndWait, generateWatchingStatus, nodeEngine, openDetails, ready, resultPixels, studioForFile, touchStroke } from './harness.ts';

const studio = studioForFile(6400, async (page) => {
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '3'], ['seed', '7'], ['cfg', '4']]) await page.getByTestId(id).fill(v);
});

/** The job the page last ran, its byte arrays back from base64. */
async function lastJob(page: Page): Promise<GenerateJob> {
  const text = await page.evaluate(() => localStorage.getItem('lorastudio.lastJob')!);
  return JSON.parse(text, (key, v) => {
    if (!v || typeof v !== 'object' || typeof v.base64 !== 'string') return v;
    const bytes = Buffer.from(v.base64, 'base64');
    return key === 'data' ? new Uint8ClampedArray(bytes) : new Uint8Array(bytes);
  });
}

/** The scene's mask, decoded, once the page has kept it (it is compressed after each stroke). */
async function sceneMask(page: Page, frame = { width: 64, height: 64 }): Promise<{ encoded: EncodedMask; mask: Uint8Array }> {
  const handle = await page.waitForFunction(() => JSON.parse(localStorage.getItem('lorastudio.scene') ?? '{}').picture?.mask ?? null, null, { timeout: 20_000 });
  const encoded = (await handle.jsonValue()) as EncodedMask;
  return { encoded, mask: await decodeMask(encoded, frame) };
}

/** Pixels of a canvas by test id. */
const canvasPixels = (page: Page, id: string) => page.getByTestId(id).evaluate((c: HTMLCanvasElement) => Array.from(c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data));

/** Drag with the mouse on the mask canvas between points in image pixels of a 64-wide frame. */
async function paintStroke(page: Page, points: [number, number][]) {
  const box = (await page.getByTestId('mask-canvas').boundingBox())!;
  const k = box.width / 64;
  await page.mouse.move(box.x + points[0][0] * k, box.y + points[0][1] * k);
  await page.mouse.down();
  for (const [x, y] of points.slice(1)) await page.mouse.move(box.x + x * k, box.y + y * k, { steps: 5 });
  await page.mouse.up();
}

let firstResult: number[] = [];

test('image to image from a gallery picture: the start picture is that picture exactly, and the page makes what Node makes', async () => {
  const { page } = studio;
  await page.setViewportSize({ width: 1280, height: 800 });
  await generateAndWait(page);
  firstResult = await resultPixels(page);
  await page.getByTestId('gallery-item-0').waitFor();
  // painting needs a start picture first, and says so
  assert.equal(await page.getByTestId('mode-mask').isDisabled(), true);
  await page.getByTestId('gallery-start-0').click();
  await page.getByTestId('start-note').filter({ hasText: 'Gallery picture 1 (seed 7): 64×64, as it is.' }).waitFor();
  await page.getByTestId('strength').fill('0.5');
  assert.equal(await page.getByTestId('strength-value').innerText(), '0.50');
  await page.getByTestId('seed').fill('8');
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0);
  const job = await lastJob(page);
  assert.equal(job.init?.strength, 0.5);
  assert.equal(job.init?.mask, undefined, 'no mask painted: image to image');
  assert.deepEqual(Array.from(job.init!.image.data), firstResult, 'the start picture is the gallery picture, byte for byte');
  assert.match(await page.getByTestId('result-line').innerText(), /^64×64 · from a start picture · 3 steps · seed 8/);
  await openDetails(page);
  assert.match(await page.getByTestId('result-init').innerText(), /^Started from a picture \(img2img\): change 0\.5, 1 of 3 steps run \(from step 2\)/);
  const pixels = await resultPixels(page);
  const { engine } = await nodeEngine();
  const node = await engine.generate(job);
  engine.unload();
  assert.equal(node.report.init?.mode, 'img2img');
  assert.ok(maxAbsDiff(pixels, node.image.data).diff <= 2, `browser and Node agree within 2/255 (${maxAbsDiff(pixels, node.image.data).diff})`);
  assert.ok(maxAbsDiff(pixels, firstResult).diff > 8, 'and the picture changed');
});

test('paint a mask and inpaint: every pixel the blurred mask keeps comes back exactly; the mask is kept in the scene', async () => {
  const { page } = studio;
  await page.getByTestId('start-from-result').click();
  await page.getByTestId('start-note').filter({ hasText: 'The last picture: 64×64, as it is.' }).waitFor();
  const start = await canvasPixels(page, 'start-thumb');
  await page.getByTestId('mode-mask').check();
  await page.getByTestId('mask-tools').waitFor();
  // the frame now shows the start picture being painted on
  assert.deepEqual(await canvasPixels(page, 'start-picture'), start);
  await page.getByTestId('brush-size').fill('8');
  assert.equal(await page.getByTestId('brush-size-value').innerText(), '8 px');
  await paintStroke(page, [[12, 12], [30, 20], [40, 36]]);
  const { mask } = await sceneMask(page);
  const painted = mask.reduce((a, v) => a + (v ? 1 : 0), 0);
  assert.ok(painted > 150 && painted < 700, `a stroke 8 px wide and about 40 px long: ${painted} pixels`);
  assert.equal(mask[0], 0, 'the corner is not painted');
  assert.equal(mask[20 * 64 + 30], 255, 'the stroke passes through (30, 20)');
  // the overlay shows exactly the mask: tinted where it repaints, clear elsewhere
  const overlay = await canvasPixels(page, 'mask-canvas');
  assert.deepEqual(Array.from(mask, (v, i) => (overlay[i * 4 + 3] > 0 ? 255 : 0)), Array.from(mask, (v) => (v ? 255 : 0)));
  // undo removes the stroke, redo brings it back, byte for byte
  await page.getByTestId('undo').click();
  await page.waitForFunction(() => !JSON.parse(localStorage.getItem('lorastudio.scene')!).picture?.mask);
  await page.getByTestId('redo').click();
  assert.deepEqual((await sceneMask(page)).mask, mask);
  assert.match(await page.getByTestId('mask-line').innerText(), /^Mask: \d+% of the picture is repainted; the rest is kept\.$/);

  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0);
  const job = await lastJob(page);
  assert.deepEqual(job.init!.mask, mask, 'the job has the painted mask');
  assert.equal(job.init!.maskBlur, 4);
  assert.deepEqual(Array.from(job.init!.image.data), start);
  // the frame shows the result again (Boxes mode), inpainted
  assert.equal(await page.getByTestId('mode-boxes').isChecked(), true);
  await openDetails(page);
  assert.match(await page.getByTestId('result-init').innerText(), /^Started from a picture \(inpaint\): change 0\.5/);
  const result = await resultPixels(page);
  const alpha = blurMask(mask, 64, 64, 4);
  let kept = 0;
  let changed = 0;
  for (let p = 0; p < 64 * 64; p++) {
    if (alpha[p] === 0) {
      kept++;
      for (let c = 0; c < 3; c++) assert.equal(result[p * 4 + c], start[p * 4 + c], `pixel (${p % 64}, ${Math.floor(p / 64)}) is kept`);
    } else if (mask[p] && Math.abs(result[p * 4] - start[p * 4]) + Math.abs(result[p * 4 + 1] - start[p * 4 + 1]) > 6) changed++;
  }
  assert.ok(kept > 2000, `${kept} pixels kept exactly`);
  assert.ok(changed > painted / 4, `${changed} of the ${painted} painted pixels were repainted`);
});

test('a share link with a mask restores it byte for byte in a fresh browser; the page says the start picture is not in links', async () => {
  const { page, browser } = studio;
  const { encoded, mask } = await sceneMask(page);
  await page.getByTestId('share').click();
  const url = await page.getByTestId('share-url').inputValue();
  assert.match(await page.getByTestId('share-note').innerText(), /not the start picture/);
  // the notice comes with the page's next render, not with the click
  await page.getByTestId('status').filter({ hasText: 'The start picture is not in the link' }).waitFor({ timeout: 10_000 });
  const context = await browser.newContext();
  const fresh = await context.newPage();
  try {
    await fresh.goto(url);
    await ready(fresh);
    await fresh.getByTestId('status').filter({ hasText: 'Opened the scene from the link.' }).waitFor();
    const back = await sceneMask(fresh);
    assert.equal(back.encoded.data, encoded.data);
    assert.deepEqual(back.mask, mask, 'the mask, byte for byte');
    // and the fresh page draws it
    await fresh.waitForFunction(() => {
      const c = document.querySelector('[data-testid="mask-canvas"]') as HTMLCanvasElement;
      return c.width === 64 && c.getContext('2d')!.getImageData(0, 0, 64, 64).data.some((v, i) => i % 4 === 3 && v > 0);
    });
    const overlay = await canvasPixels(fresh, 'mask-canvas');
    assert.equal(overlay.filter((v, i) => i % 4 === 3 && v > 0).length, mask.reduce((a, v) => a + (v ? 1 : 0), 0));
    assert.equal(await fresh.getByTestId('strength').count(), 0, 'no start picture came with it');
  } finally {
    await context.close();
  }
});

test('hires fix of a result: the picture comes back at twice the size', async () => {
  const { page } = studio;
  await page.getByTestId('start-clear').click();
  await page.getByTestId('hires-section').locator('summary').click();
  await page.getByTestId('hires').check();
  assert.equal(await page.getByTestId('hires-size').innerText(), 'Final size: 128×128');
  await page.getByTestId('hires-strength').fill('0.5');
  await page.getByTestId('hires-steps').fill('4');
  assert.match(await generateWatchingStatus(page), /Hires fix: step [12] of 2 · \d+ s/, 'the second pass in words');
  assert.equal(await page.getByTestId('error').count(), 0);
  const job = await lastJob(page);
  assert.equal(job.init, undefined);
  assert.deepEqual(job.hires, { scale: 2, strength: 0.5, upscaler: 'latent', steps: 4 });
  const size = await page.getByTestId('result').evaluate((c: HTMLCanvasElement) => [c.width, c.height]);
  assert.deepEqual(size, [128, 128]);
  assert.match(await page.getByTestId('result-line').innerText(), /^128×128 \(hires fix from 64×64\) · 3 steps/);
  await openDetails(page);
  assert.match(await page.getByTestId('result-hires').innerText(), /^Hires fix: 128×128, enlarged as latent, change 0\.5, 2 of 4 steps/);
  await page.getByTestId('hires').uncheck();
});

test('a mask painted by touch; the new controls at 390x844, 820x1180 and 1440x900: nothing cut off, covered or scrolling sideways', async () => {
  const { page } = studio;
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByTestId('use-as-start').click();
  await page.getByTestId('mode-mask').check();
  await page.getByTestId('mask-clear').click();
  await page.waitForFunction(() => !JSON.parse(localStorage.getItem('lorastudio.scene')!).picture?.mask);
  await touchStroke(page, page.getByTestId('mask-canvas'), [[40, 10], [44, 20], [48, 30], [52, 44]]);
  const { mask } = await sceneMask(page);
  assert.equal(mask[30 * 64 + 48], 255, 'the touch stroke passes through (48, 30)');
  assert.equal(mask[60 * 64 + 5], 0);

  await page.getByTestId('picture-section').evaluate((d) => ((d as HTMLDetailsElement).open = true));
  await page.getByTestId('only-masked').check();
  await page.getByTestId('hires-section').evaluate((d) => ((d as HTMLDetailsElement).open = true));
  // the engine runs the hires fix after text to image only: with a start picture it is off, and says why
  assert.equal(await page.getByTestId('hires').isDisabled(), true);
  assert.match(await page.getByTestId('hires-size').innerText(), /^Not with a start picture: the hires fix follows text to image\./);
  for (const [width, height] of [[390, 844], [820, 1180], [1440, 900]] as const) {
    await page.setViewportSize({ width, height });
    await page.waitForTimeout(300);
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), `${width}: no sideways scrolling`);
    for (const id of ['picture', 'mask-tools', 'mode-mask', 'brush-size', 'mask-invert', 'strength', 'mask-blur', 'only-masked-padding', 'hires-scale', 'hires-strength', 'hires-steps', 'vae-select', 'generate']) {
      const r = (await page.getByTestId(id).boundingBox())!;
      assert.ok(r && r.width > 0 && r.x >= 0 && r.x + r.width <= width + 0.5, `${width}: ${id} is inside the page (${JSON.stringify(r)})`);
    }
    const tools = (await page.getByTestId('mask-tools').boundingBox())!;
    const picture = (await page.getByTestId('picture').boundingBox())!;
    assert.ok(tools.y >= picture.y + picture.height - 1, `${width}: the brush tools sit below the picture, not on it`);
    await page.getByTestId('picture').scrollIntoViewIfNeeded();
    await page.screenshot({ path: `e2e/screenshots/picture-${width}x${height}.png` });
    await page.getByTestId('picture-section').scrollIntoViewIfNeeded();
    await page.screenshot({ path: `e2e/screenshots/picture-panel-${width}x${height}.png` });
  }
  await page.getByTestId('only-masked').uncheck();
});

test("a VAE file in place of the model's own: named in the library, used for the next picture, and the model's own again", async () => {
  const { page } = studio;
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.getByTestId('start-clear').click();
  await page.getByTestId('seed').fill('9');
  await generateAndWait(page);
  const own = await resultPixels(page);
  await page.getByTestId('vae-file').setInputFiles('dist/test-model/tiny-vae-ft.safetensors');
  await page.getByTestId('vae-line').filter({ hasText: 'In use: tiny-vae-ft.safetensors' }).waitFor({ timeout: 60_000 });
  assert.equal(await page.getByTestId('vae-select').inputValue(), 'file');
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0);
  const other = await resultPixels(page);
  assert.ok(maxAbsDiff(own, other).diff > 8, `another VAE decodes the same latent differently (${maxAbsDiff(own, other).diff})`);
  await page.getByTestId('vae-select').selectOption('own');
  await page.getByTestId('vae-line').filter({ hasText: "In use: the model's own VAE" }).waitFor({ timeout: 60_000 });
  await generateAndWait(page);
  assert.deepEqual(await resultPixels(page), own, "the model's own VAE again gives the first picture back exactly");
});

test('an inpainting checkpoint: named as such, and its 9-channel UNet repaints the mask while the kept pixels stay exact', async () => {
  const { page } = studio;
  await page.getByTestId('model-file').setInputFiles('dist/test-model/tiny-sd15-inpainting.safetensors');
  await page.waitForFunction(() => (document.querySelector('[data-testid="model-select"]') as HTMLSelectElement | null)?.value === 'model:tiny-sd15-inpainting.safetensors', null, { timeout: 120_000, polling: 250 });
  await ready(page);
  await page.getByTestId('vae-line').filter({ hasText: 'Inpainting model.' }).waitFor();
  await page.getByTestId('use-as-start').click();
  await page.getByTestId('inpainting-model').waitFor();
  assert.equal(await page.getByTestId('inpainting-model').innerText(), 'Inpainting model: it repaints the masked part knowing what is around it.');
  const start = await canvasPixels(page, 'start-thumb');
  await page.getByTestId('mode-mask').check();
  await page.getByTestId('mask-clear').click();
  await page.waitForFunction(() => !JSON.parse(localStorage.getItem('lorastudio.scene')!).picture?.mask);
  await page.getByTestId('brush-size').fill('12');
  await paintStroke(page, [[8, 40], [56, 44]]);
  const { mask } = await sceneMask(page);
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0);
  await openDetails(page);
  assert.match(await page.getByTestId('result-init').innerText(), /^Started from a picture \(inpaint-model\)/);
  const result = await resultPixels(page);
  const alpha = blurMask(mask, 64, 64, 4);
  let kept = 0;
  for (let p = 0; p < 64 * 64; p++) {
    if (alpha[p] !== 0) continue;
    kept++;
    for (let c = 0; c < 3; c++) assert.equal(result[p * 4 + c], start[p * 4 + c], `pixel (${p % 64}, ${Math.floor(p / 64)}) is kept`);
  }
  assert.ok(kept > 1500, `${kept} pixels kept exactly`);
  assert.ok(maxAbsDiff(result, start).diff > 8, 'and the masked band was repainted');
});

test('with a mask on the picture, Boxes mode still draws and selects boxes (handles on top); Paint mask mode paints and draws no box', async () => {
  const { page } = studio;
  const before = (await sceneMask(page)).mask;
  await page.getByTestId('mode-boxes').check();
  await dragOnCanvas(page, [8.5, 8.5], [40, 56.5]);
  await page.getByTestId('box-select-0').waitFor();
  const scene = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.scene')!));
  assert.deepEqual(scene.boxes.map((b: { x: number; y: number; width: number; height: number }) => [b.x, b.y, b.width, b.height]), [[8, 8, 32, 48]], 'the box drawn over the mask');
  assert.deepEqual((await sceneMask(page)).mask, before, 'and the mask untouched');
  // the selected box's handles are drawn above the mask: the layout canvas is the top layer
  const top = await page.evaluate(() => {
    const r = document.querySelector('[data-testid="layout-canvas"]')!.getBoundingClientRect();
    return (document.elementFromPoint(r.x + r.width * 0.5, r.y + r.height * 0.5) as HTMLElement).closest('[data-testid]')?.getAttribute('data-testid');
  });
  assert.equal(top, 'layout-canvas');
  await page.getByTestId('mode-mask').check();
  const kept = (await sceneMask(page)).encoded.data;
  await paintStroke(page, [[50, 10], [58, 12]]);
  await page.waitForFunction((n) => {
    const m = JSON.parse(localStorage.getItem('lorastudio.scene')!).picture?.mask?.data;
    return m && m !== n;
  }, kept);
  assert.equal(await page.locator('[data-testid^="box-select-"]').count(), 1, 'painting draws no box');
  const after = (await sceneMask(page)).mask;
  assert.equal(after[11 * 64 + 54], 255, 'the new stroke is in the mask');
  await page.getByTestId('box-delete-0').click();
});
