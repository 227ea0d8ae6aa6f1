// The studio as an artist meets it, in Chromium: at phone, tablet, laptop and desktop sizes nothing
// overlaps, is cut off or scrolls sideways (bounding boxes, with screenshots kept); a box drawn by
// touch; progress in named phases with the time left; the random seed and "reuse seed"; undo and redo
// buttons; enlarging a picture; the gallery's delete; and every control with a name of its own.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import { readFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';
import { encodePng, readPngText } from '../workers/engine/png.ts';
import { parseA1111 } from '../workers/layout/a1111.ts';
import { maxAbsDiff } from '../tests/helpers.ts';
import { generateAndWait, generateWatchingStatus, nodeEngine, resultPixels, studioForFile, touchStroke } from './harness.ts';

const studio = studioForFile(5900, async (page) => {
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '3'], ['seed', '7'], ['cfg', '1']]) await page.getByTestId(id).fill(v);
});

const VIEWPORTS = [
  [390, 844],
  [768, 1024],
  [1280, 800],
  [1920, 1080],
] as const;

type Rect = { x: number; y: number; width: number; height: number };
const overlap = (a: Rect, b: Rect) => Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x) > 1 && Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y) > 1;

/** The page's main parts: where each is, by test id. */
async function parts(page: Page, ids: string[]): Promise<Record<string, Rect>> {
  const out: Record<string, Rect> = {};
  for (const id of ids) out[id] = (await page.getByTestId(id).first().boundingBox())!;
  return out;
}

test('at 390x844, 768x1024, 1280x800 and 1920x1080 nothing overlaps, is cut off or scrolls sideways; the picture comes first', async () => {
  const { page } = studio;
  for (const [width, height] of VIEWPORTS) {
    await page.setViewportSize({ width, height });
    // the layout settles (the canvas follows its frame's new size a frame or two later, longer under load)
    await page.waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth, undefined, { timeout: 5_000 }).catch(() => undefined);
    await page.waitForTimeout(300);
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), `${width}x${height}: no sideways scrolling`);
    const p = await parts(page, ['picture', 'prompt', 'generate', 'status', 'library', 'seed', 'method', 'model-name']);
    for (const [id, r] of Object.entries(p)) {
      assert.ok(r && r.width > 0 && r.height > 0, `${width}: ${id} is shown`);
      assert.ok(r.x >= 0 && r.x + r.width <= width + 0.5, `${width}: ${id} is inside the page's width (${JSON.stringify(r)})`);
    }
    const ids = Object.keys(p);
    for (let i = 0; i < ids.length; i++) for (let j = i + 1; j < ids.length; j++) assert.ok(!overlap(p[ids[i]], p[ids[j]]), `${width}: ${ids[i]} and ${ids[j]} overlap`);
    // the picture takes the room it has: most of the column on a phone, a large frame elsewhere
    assert.ok(p.picture.width >= Math.min(width - 24, 360), `${width}: the picture is ${p.picture.width} px wide`);
    if (width <= 900) {
      assert.ok(p.picture.y < p.prompt.y && p.prompt.y < p.library.y, `${width}: one column, the picture first, then the prompt, then the library`);
      assert.ok(p.generate.y + p.generate.height <= height * 1.25, `${width}: Generate is close to the first screen`);
    } else assert.ok(p.library.x + p.library.width <= p.picture.x && p.picture.x + p.picture.width <= p.prompt.x, `${width}: library, picture and prompt side by side`);
    await page.screenshot({ path: `e2e/screenshots/ui-${width}x${height}.png` });
  }
});

test('a box drawn by touch on a phone; undo and redo buttons; progress in named phases with the time left; random and reused seeds', async () => {
  const { page } = studio;
  await page.setViewportSize({ width: 390, height: 844 });
  await touchStroke(page, page.getByTestId('layout-canvas').locator('canvas').first(), [[8.5, 8.5], [16, 20], [30, 40], [40, 56.5]]);
  await page.getByTestId('box-select-0').waitFor();
  const scene = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.scene')!));
  assert.deepEqual(scene.boxes.map((b: Rect) => [b.x, b.y, b.width, b.height]), [[8, 8, 32, 48]], 'the touch-drawn box, on the 8 px grid');
  await page.getByTestId('undo').click();
  assert.equal(await page.locator('[data-testid^="box-select-"]').count(), 0, 'undo removes it');
  await page.getByTestId('redo').click();
  assert.equal(await page.locator('[data-testid^="box-select-"]').count(), 1, 'redo brings it back');
  await page.getByTestId('box-delete-0').click();

  await page.setViewportSize({ width: 1280, height: 800 });
  const seen = await generateWatchingStatus(page);
  assert.match(seen, /(Preparing the GPU \(first run only\)|Starting|Reading the prompt) · \d+ s/, seen);
  assert.match(seen, /Step [12] of 3 · \d+ s/, seen);
  assert.match(seen, /Step [23] of 3 · \d+ s · about \d+ s left/, `the time left, from the measured steps: ${seen}`);
  assert.match(await page.getByTestId('result-line').innerText(), /64×64 · 3 steps · seed 7/);

  // the fast preset for an LCM LoRA: its sampler, 4 steps and a low prompt strength
  const before = await Promise.all(['scheduler', 'steps', 'cfg'].map((id) => page.getByTestId(id).inputValue()));
  await page.getByTestId('preset-fast').click();
  assert.deepEqual(await Promise.all(['scheduler', 'steps', 'cfg'].map((id) => page.getByTestId(id).inputValue())), ['lcm', '4', '1.5']);
  await page.getByTestId('scheduler').selectOption(before[0]);
  await page.getByTestId('steps').fill(before[1]);
  await page.getByTestId('cfg').fill(before[2]);

  await page.getByTestId('seed-random').click();
  const random = await page.getByTestId('seed').inputValue();
  assert.notEqual(random, '7', 'the dice give a new seed');
  await page.getByTestId('seed-random').click();
  assert.notEqual(await page.getByTestId('seed').inputValue(), random, 'and another');
  await page.getByTestId('reuse-seed').click();
  assert.equal(await page.getByTestId('seed').inputValue(), '7', "reuse seed takes the picture's seed");
});

test('enlarge the picture and a gallery picture; the gallery deletes the picture whose button was pressed', async () => {
  const { page } = studio;
  await page.getByTestId('enlarge').click();
  await page.getByTestId('lightbox').waitFor();
  const big = (await page.getByTestId('lightbox').locator('canvas').boundingBox())!;
  assert.ok(big.width >= 500, `the enlarged picture is ${big.width} px wide`);
  await page.keyboard.press('Escape');
  await page.getByTestId('lightbox').waitFor({ state: 'detached' });
  // Enter on the picture enlarges it too
  await page.getByTestId('layout-canvas').focus();
  await page.keyboard.press('Enter');
  await page.getByTestId('lightbox').waitFor();
  await page.getByTestId('lightbox-close').click();

  await generateAndWait(page);
  // the picture joins the gallery once it is scored and stored, just after Generate comes back
  await page.getByTestId('gallery-item-1').waitFor();
  const count = await page.locator('[data-testid^="gallery-item-"]').count();
  await page.getByTestId('gallery-open-1').click();
  await page.getByTestId('lightbox').locator('img').waitFor();
  await page.getByTestId('lightbox').click({ position: { x: 5, y: 5 } });
  await page.getByTestId('lightbox').waitFor({ state: 'detached' });
  const seeds = async () => (await page.locator('.gallery .caption').allInnerTexts()).map((t) => /seed (\d+)/.exec(t)![1]);
  const before = await seeds();
  // a plain click: Playwright refuses it when another element covers the button
  await page.getByTestId('gallery-delete-0').click();
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid^="gallery-item-"]').length === n, count - 1);
  assert.deepEqual(await seeds(), before.slice(1));
  await page.screenshot({ path: 'e2e/screenshots/ui-gallery.png', fullPage: true });
});

test('every control has a name of its own: buttons, fields, sliders, the progress bar and the canvas', async () => {
  const { page } = studio;
  // a fresh library with the test model offers the test model's own LoRAs
  assert.match(await page.getByTestId('test-loras').innerText(), /kohya\.safetensors, loha\.safetensors, locon\.safetensors/);
  await page.getByTestId('test-loras-add').click();
  await page.getByTestId('lora-info-2').waitFor({ timeout: 60_000 });
  assert.equal(await page.getByTestId('test-loras').count(), 0, 'offered only while the library has none');
  // a plain script: the test runner's transform would wrap named functions in a helper the page lacks
  const problems = (await page.evaluate(`(() => {
    // every panel open, so what folds is checked too
    for (const d of document.querySelectorAll('details')) d.open = true;
    const nameOf = (el) => {
      const label = el.getAttribute('aria-label');
      if (label) return label.trim();
      const by = el.getAttribute('aria-labelledby');
      if (by) return by.split(/\\s+/).map((id) => document.getElementById(id)?.textContent ?? '').join(' ').trim();
      if (el.labels && el.labels.length) return [...el.labels].map((l) => l.textContent ?? '').join(' ').trim();
      if (el.tagName === 'BUTTON' || el.tagName === 'SUMMARY') return (el.textContent ?? '').trim();
      return (el.getAttribute('title') ?? '').trim();
    };
    const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    const controls = [...document.querySelectorAll('button, input, select, textarea, progress, summary, [role="application"], [role="dialog"]')].filter(visible);
    const missing = controls.filter((el) => !nameOf(el)).map((el) => el.outerHTML.slice(0, 120));
    const sliders = controls.filter((el) => el.tagName === 'INPUT' && (el.type === 'range' || el.type === 'number')).map(nameOf);
    const repeated = sliders.filter((n, i) => sliders.indexOf(n) !== i);
    const roleless = [...document.querySelectorAll('[aria-label]')].filter((el) => visible(el) && el.tagName === 'DIV' && !el.getAttribute('role')).map((el) => el.outerHTML.slice(0, 120));
    const squeezed = controls.filter((el) => el.tagName === 'INPUT' && (el.type === 'checkbox' || el.type === 'number' || el.type === 'text') && el.getBoundingClientRect().width < (el.type === 'checkbox' ? 8 : 40)).map(nameOf);
    return { count: controls.length, missing, repeated, roleless, squeezed };
  })()`)) as { count: number; missing: string[]; repeated: string[]; roleless: string[]; squeezed: string[] };
  assert.ok(problems.count >= 40, `${problems.count} controls checked`);
  assert.deepEqual(problems.missing, [], 'controls without a name');
  assert.deepEqual(problems.repeated, [], 'number fields and sliders that share a name');
  assert.deepEqual(problems.roleless, [], 'labelled elements without a role');
  assert.deepEqual(problems.squeezed, [], 'checkboxes and fields squeezed too small to use');
  await page.evaluate(() => document.querySelectorAll('details').forEach((d) => (d.open = false)));
});

test("an A1111 picture's settings fill the studio (its LoRA tags too, a missing one named); ours carry A1111's parameters, read back the same", async () => {
  const { page } = studio;
  await page.setViewportSize({ width: 1280, height: 800 });
  const parameters = 'a castle on a hill, <lora:kohya:0.7> evening light <lora:not_here:1>\nNegative prompt: fog, lowres\nSteps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 1234, Size: 64x64, Model: some-model, Version: v1.10.1';
  const png = await encodePng(new Uint8Array(4 * 4 * 4).fill(200), 4, 4, { parameters }, (d) => deflateSync(d));
  await page.getByTestId('open-png').setInputFiles({ name: 'a1111.png', mimeType: 'image/png', buffer: Buffer.from(png) });
  await page.getByTestId('status').filter({ hasText: 'Opened the settings of the image a1111.png (made with some-model). Not in your library: not_here.safetensors.' }).waitFor();
  const values = async () => Object.fromEntries(await Promise.all(['prompt', 'negative', 'steps', 'cfg', 'seed', 'width', 'height', 'scheduler'].map(async (id) => [id, await page.getByTestId(id).inputValue()])));
  assert.deepEqual(await values(), { prompt: 'a castle on a hill, evening light', negative: 'fog, lowres', steps: '3', cfg: '5', seed: '1234', width: '64', height: '64', scheduler: 'euler-a' });
  const names = await page.locator('[data-testid^="lora-enabled-"]').evaluateAll((els) => els.map((e) => [(e.parentElement?.textContent ?? '').trim(), (e as HTMLInputElement).checked]));
  assert.deepEqual(names, [['kohya.safetensors', true], ['loha.safetensors', false], ['locon.safetensors', false]]);
  assert.equal(await page.getByTestId('lora-scale-0').inputValue(), '0.7');
  await page.getByTestId('missing-loras').waitFor();

  // a tag in the prompt sets the LoRA's strengths for the job (text encoder 0.5, UNet 0.9)
  await page.getByTestId('prompt').fill('a castle on a hill <lora:loha:0.5:0.9>');
  const pictures = await page.locator('[data-testid^="gallery-item-"]').count();
  await generateAndWait(page);
  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  assert.equal(job.prompt, 'a castle on a hill');
  assert.deepEqual(job.loras.map((u: { scale: number; textEncoderScale?: number }) => [u.scale, u.textEncoderScale ?? u.scale]), [[0.7, 0.7], [0.9, 0.5]]);
  await page.getByTestId(`gallery-item-${pictures}`).waitFor();
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('gallery-download-0').click()]);
  const ours = parseA1111(readPngText(new Uint8Array(readFileSync((await download.path())!))).parameters);
  assert.deepEqual([ours.prompt, ours.negative, ours.steps, ours.sampler, ours.cfg, ours.seed, ours.width, ours.height], ['a castle on a hill', 'fog, lowres', 3, 'Euler a', 5, 1234, 64, 64]);
  assert.deepEqual(ours.loras, [{ name: 'kohya', te: 0.7, unet: 0.7 }, { name: 'loha', te: 0.5, unet: 0.9 }]);
  // and an unknown tag stops the job with a sentence
  await page.getByTestId('prompt').fill('a castle <lora:nowhere:1>');
  await page.getByTestId('generate').click();
  assert.match(await page.getByTestId('error').innerText(), /The prompt asks for <lora:nowhere>, but the library has no loaded LoRA of that name/);
});

test('a batch of three: the seeds one after another, a grid to enlarge from, three pictures in the gallery; a BREAK prompt as Node reads it', async () => {
  const { page } = studio;
  // BREAK: two 77-token chunks in the context, on the page's WebGPU as in Node
  await page.getByTestId('prompt').fill('a castle BREAK on a (hill:1.3)');
  for (const box of await page.locator('[data-testid^="lora-enabled-"]').all()) await box.uncheck();
  await page.getByTestId('steps').fill('2');
  await page.getByTestId('seed').fill('100');
  const before = await page.locator('[data-testid^="gallery-item-"]').count();
  await page.getByTestId('batch-count').fill('3');
  await generateAndWait(page);
  await page.getByTestId(`gallery-item-${before + 2}`).waitFor();
  assert.equal(await page.getByTestId('batch-grid').locator('canvas').count(), 3);
  const seeds = (await page.locator('.gallery .caption').allInnerTexts()).slice(0, 3).map((t) => /seed (\d+)/.exec(t)![1]);
  assert.deepEqual(seeds, ['102', '101', '100'], 'newest first');
  assert.match(await page.getByTestId('result-line').innerText(), /seed 102/);
  await page.getByTestId('batch-1').click();
  assert.equal(await page.getByTestId('lightbox').getAttribute('aria-label'), 'Seed 101');
  await page.keyboard.press('Escape');
  await page.getByTestId('batch-count').fill('1');
  await page.screenshot({ path: 'e2e/screenshots/ui-batch.png' });
  // the same studio with its pictures on a phone: nothing sideways, the picture first
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling on a phone with pictures');
  await page.screenshot({ path: 'e2e/screenshots/ui-390x844-pictures.png' });
  await page.setViewportSize({ width: 1280, height: 800 });
  assert.equal(await page.getByTestId('error').count(), 0);
  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  assert.equal(job.seed, 102);
  assert.deepEqual(job.loras, []);
  const { engine } = await nodeEngine();
  const node = await engine.generate(job);
  engine.unload();
  assert.deepEqual(node.report.warnings, []);
  assert.ok(maxAbsDiff(await resultPixels(page), node.image.data).diff <= 2, 'browser and Node agree within 2/255');
});
