// The installed studio with no network: after one visit the service worker holds the shell, the
// engine worker, onnxruntime's wasm and the embedded test model. With the server stopped and the
// browser offline, a reload opens the studio, loads the model and makes the same pixels as online.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { generateAndWait, studioForFile, ready, resultPixels } from './harness.ts';

const studio = studioForFile(5100);

test('visit once, go offline (server stopped), reload: the studio opens, loads its model and generates the same image', async () => {
  const { page } = studio;
  await page.getByTestId('offline').filter({ hasText: 'Works offline' }).waitFor({ timeout: 120_000 });
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '2'], ['seed', '11']]) await page.getByTestId(id).fill(v);
  await generateAndWait(page);
  const online = await resultPixels(page);

  studio.stopServer();
  await page.context().setOffline(true);
  assert.equal(await page.evaluate(() => fetch('./index.html?probe').then(() => 'reached', () => 'unreachable')), 'unreachable', 'nothing answers outside the service worker');
  await page.reload();
  await ready(page);
  assert.ok(await page.evaluate(() => !!navigator.serviceWorker.controller), 'the page is served by the service worker');
  assert.match(await page.getByTestId('model-name').innerText(), /tiny-sd15\.safetensors/);
  assert.equal(await page.getByTestId('seed').inputValue(), '11', 'the autosaved scene is back');
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0);
  const offline = await resultPixels(page);
  assert.equal(offline.length, 64 * 64 * 4);
  assert.deepEqual(offline, online, 'offline makes the same pixels');
  await page.screenshot({ path: 'e2e/screenshots/offline.png' });
});
