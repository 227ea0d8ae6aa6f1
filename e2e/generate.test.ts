// The page in Chromium on its real WebGPU adapter: the embedded test model loads, Generate makes
// an image, the same seed gives the same pixels, Cancel stops, a corrupt file gets its sentence.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import { maxAbsDiff } from '../tests/helpers.ts';
import { generateAndWait, nodeEngine, openDetails, resultPixels, studioForFile } from './harness.ts';

const studio = studioForFile(4300);

test('generate with the embedded test model on WebGPU; same seed gives identical pixels', async () => {
  const { page } = studio;
  assert.match(await page.getByTestId('model-name').innerText(), /^tiny-sd15.safetensors · test model/);
  assert.equal(await page.getByTestId('model-name').getAttribute('title'), 'single-file, fp32', 'the file layout and precision on demand');
  await page.getByTestId('width').fill('64');
  await page.getByTestId('height').fill('64');
  await page.getByTestId('steps').fill('3');
  await page.getByTestId('seed').fill('7');
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0, 'no error shown');
  const a = await resultPixels(page);
  assert.equal(a.length, 64 * 64 * 4);
  assert.ok(new Set(a.filter((_, i) => i % 4 === 0)).size > 20, 'pixels are not constant');
  await page.screenshot({ path: 'e2e/screenshots/generate.png' });
  // the same job in Node (Dawn) with the same engine code gives the same image
  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  assert.ok(job, 'the page records the job it ran');
  const { engine } = await nodeEngine();
  const node = await engine.generate(job);
  const { diff } = maxAbsDiff(a, node.image.data);
  assert.ok(diff <= 2, `browser and Node images differ by at most 2/255 (got ${diff})`);
  // the memory line: the measured peak, and the plan the job's graphs give (the same in Node)
  await openDetails(page);
  const memory = await page.getByTestId('result-memory').innerText();
  const plan = node.report.memoryPlan;
  const mb = (b: number) => (b < 2 ** 20 ? `${Math.round(b / 1024)} KB` : `${(b / 2 ** 20).toFixed(1)} MB`);
  assert.match(memory, new RegExp(`^GPU memory: [0-9.]+ [KM]B at peak \\(planned ${mb(plan.peakBytes)}\\), largest buffer [0-9.]+ [KM]B \\(planned ${mb(plan.largestBufferBytes)}\\); attention in chunks$`));
  assert.equal(plan.attention, 'chunked', 'SwiftShader fails the fused-attention check in Node as in Chromium');
  // a live preview every step by default: the loop's only reads
  assert.match(await page.getByTestId('result-engine').innerText(), /the latents stayed on the GPU \(1 read a step\)$/);
  engine.unload();
  await generateAndWait(page);
  assert.deepEqual(await resultPixels(page), a, 'same seed, same pixels');
  await page.getByTestId('seed').fill('8');
  await generateAndWait(page);
  const other = await resultPixels(page);
  assert.notDeepEqual(other, a, 'another seed, another image');
  // the live preview off (kept on this device): nothing comes back while the steps run, the same picture
  const diagnostics = page.getByTestId('diagnostics');
  if ((await diagnostics.getAttribute('open')) === null) await diagnostics.locator('summary').click();
  await page.getByTestId('preview-every').selectOption('0');
  await generateAndWait(page);
  await openDetails(page);
  assert.match(await page.getByTestId('result-engine').innerText(), /the latents stayed on the GPU \(nothing read back during the steps\)$/);
  assert.deepEqual(await resultPixels(page), other, 'the same picture without previews');
  assert.equal(await page.evaluate(() => [localStorage.getItem('lorastudio.previewEvery'), JSON.parse(localStorage.getItem('lorastudio.lastJob')!).previewEvery]).then(String), '0,0');
  await page.getByTestId('preview-every').selectOption('1');
  await diagnostics.locator('summary').click();
  await page.evaluate(() => window.scrollTo(0, 0));
});

/** Where every element with a test id sits on the page (only visible ones). */
const layoutOf = (p: Page) =>
  p.evaluate(() =>
    Object.fromEntries(
      [...document.querySelectorAll('[data-testid]')]
        .map((e) => [e.getAttribute('data-testid')!, e.getBoundingClientRect()] as const)
        .filter(([, r]) => r.width > 0)
        .map(([id, r]) => [id, [r.x, r.y, r.width, r.height].map(Math.round).join(' ')]),
    ),
  );

test('at 1280x720 nothing scrolls sideways, Generate is reached by keyboard, and nothing moves during a run', async () => {
  const { page } = studio;
  assert.deepEqual(page.viewportSize(), { width: 1280, height: 720 });
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling');
  const [lib, canvas, settings] = await Promise.all(['library', 'layout-canvas', 'prompt'].map(async (id) => (await page.getByTestId(id).boundingBox())!));
  assert.ok(lib.x + lib.width <= canvas.x && canvas.x + canvas.width <= settings.x, 'library, canvas and settings side by side');
  await page.getByTestId('steps').fill('30');
  // the page at its top, where focusing the prompt below leaves it (an earlier test may have scrolled)
  await page.evaluate(() => window.scrollTo(0, 0));
  const before = await layoutOf(page);
  // from the prompt, Tab reaches Generate and Enter starts the run
  await page.getByTestId('prompt').focus();
  for (let i = 0; i < 40 && (await page.evaluate(() => document.activeElement?.getAttribute('data-testid'))) !== 'generate'; i++) await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('data-testid')), 'generate');
  await page.keyboard.press('Enter');
  await page.getByTestId('status').filter({ hasText: /Step [1-9]/ }).waitFor({ timeout: 120_000 });
  const during = await layoutOf(page);
  await page.getByTestId('generate').and(page.locator(':enabled')).waitFor({ timeout: 240_000 });
  const moved = Object.keys(before).filter((id) => id in during && before[id] !== during[id]).map((id) => `${id}: ${before[id]} -> ${during[id]}`);
  assert.deepEqual(moved, [], 'elements that moved or resized during the run');
  assert.ok(Object.keys(during).length >= 30, `${Object.keys(during).length} elements compared`);
});

test('cancel stops the run and the next one works', async () => {
  const { page } = studio;
  await page.getByTestId('steps').fill('200');
  await page.getByTestId('generate').click();
  await page.getByTestId('status').filter({ hasText: /Step [1-9]/ }).waitFor({ timeout: 120_000 });
  await page.getByTestId('cancel').click();
  await page.getByTestId('status').filter({ hasText: 'Cancelled.' }).waitFor({ timeout: 60_000 });
  const shown = await page.getByTestId('status').innerText();
  assert.equal(shown, 'Cancelled.');
  await page.getByTestId('steps').fill('2');
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0);
});

test('a corrupt checkpoint gets a clear sentence and the page keeps working', async () => {
  const { page } = studio;
  const bytes = Buffer.alloc(64);
  bytes.writeUInt32LE(1000, 0);
  await page.getByTestId('model-file').setInputFiles({ name: 'broken.safetensors', mimeType: 'application/octet-stream', buffer: bytes });
  const err = page.getByTestId('error');
  await err.waitFor({ timeout: 30_000 });
  assert.match(await err.innerText(), /broken\.safetensors is not a valid \.safetensors file: the header length 1000 runs past the end of the 64-byte file\./);
  await page.screenshot({ path: 'e2e/screenshots/corrupt-file.png' });
  assert.equal(await page.getByTestId('prompt').isEnabled(), true);
});
