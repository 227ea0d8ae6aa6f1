// LoRA-Composer's own concept files and textual inversions in the page, on Chromium's WebGPU: a
// Mix-of-Show ED-LoRA as a .pth (written in torch.save's layout by Python's own pickler) and the tiny
// textual inversion, added through the file pickers; a prompt that uses both gives the Node engine's
// image within 2/255; after a reload both are back from the library.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { NodeFileSource } from '../workers/node/files.ts';
import { maxAbsDiff } from '../tests/helpers.ts';
import { generateAndWait, nodeEngine, ready, resultPixels, studioForFile } from './harness.ts';

const studio = studioForFile(7200, async (page) => {
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '2'], ['seed', '5'], ['cfg', '4']]) await page.getByTestId(id).fill(v);
});

test('an ED-LoRA .pth and a textual inversion from the pickers: a prompt with their tokens matches Node; both survive a reload', async () => {
  const { page } = studio;
  const dir = mkdtempSync(join(tmpdir(), 'edlora-'));
  const pth = join(dir, 'edlora.pth');
  const made = spawnSync('python3', ['tests/fixtures/save_like_torch.py', 'dist/test-model/loras/edlora.safetensors', pth], { encoding: 'utf8' });
  assert.equal(made.status, 0, made.stderr);
  await page.getByTestId('lora-file').setInputFiles([{ name: 'edlora.pth', mimeType: 'application/octet-stream', buffer: readFileSync(pth) }]);
  await page.getByTestId('lora-info-0').waitFor({ timeout: 60_000 });
  assert.match(await page.getByTestId('lora-info-0').innerText(), /edlora · rank 4 .* concept <tiny1> <tiny2>/);
  await page.getByTestId('embedding-file').setInputFiles('dist/test-model/embeddings/tiny-ti.safetensors');
  // the row shows the file's name at once and what the engine read once it is loaded: wait for that
  await page.getByTestId('embedding-0').filter({ hasText: /write tiny-ti in a prompt/ }).waitFor({ timeout: 60_000 });
  assert.match(await page.getByTestId('embedding-0').innerText(), /write tiny-ti in a prompt \(2 tokens\)/);
  await page.getByTestId('prompt').fill('a <tiny1> <tiny2> cat in a forest, tiny-ti');
  await generateAndWait(page);
  assert.equal(await page.getByTestId('error').count(), 0, 'no error shown');
  const pixels = await resultPixels(page);

  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  const { engine, loras } = await nodeEngine(['edlora']);
  await engine.loadEmbedding(await NodeFileSource.open('dist/test-model/embeddings/tiny-ti.safetensors'));
  const node = await engine.generate({ ...job, loras: job.loras.map((l: { scale: number }, i: number) => ({ ...l, lora: loras[i].id })) });
  assert.ok(maxAbsDiff(pixels, node.image.data).diff <= 2, `browser and Node agree within 2/255 (${maxAbsDiff(pixels, node.image.data).diff})`);
  engine.unload();

  await page.reload();
  await ready(page);
  await page.getByTestId('embedding-0').filter({ hasText: 'write tiny-ti' }).waitFor({ timeout: 60_000 });
  await page.getByTestId('lora-info-0').waitFor({ timeout: 60_000 });
  await page.screenshot({ path: 'e2e/screenshots/embeddings.png' });
});
