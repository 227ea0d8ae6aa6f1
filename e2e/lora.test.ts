// LoRAs in the page, in Chromium on its real WebGPU: the merge kernel's self-test, adding LoRA files,
// strength 0 = the base image, a nonzero strength changes it the same way the Node engine does, and
// LoRA Composite and CMLoRA (deep-feature cache) as in Node, the authors' settings in one click, and
// a LoRA for another model gets its sentence on its own row.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { concatBytes, encodeSafetensors } from '../workers/checkpoint/safetensors.ts';
import { maxAbsDiff } from '../tests/helpers.ts';
import { generateAndWait as generate, nodeEngine, openDetails, resultPixels, studioForFile } from './harness.ts';

const LORAS = ['dist/test-model/loras/kohya.safetensors', 'dist/test-model/loras/loha.safetensors'];

const studio = studioForFile(4800, async (page) => {
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '3'], ['seed', '11'], ['cfg', '4']]) await page.getByTestId(id).fill(v);
});

async function generateAndWait(): Promise<number[]> {
  const { page } = studio;
  await generate(page);
  assert.equal(await page.getByTestId('error').count(), 0, 'no error shown');
  return resultPixels(page);
}

const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => maxAbsDiff(a, b).diff;

test('the GPU self-test passes in Chromium: merge kernel against float64, f32 and packed f16, both forms', async () => {
  const { page } = studio;
  await page.getByText('Diagnostics').click();
  await page.getByTestId('self-test').click();
  const out = page.getByTestId('self-test-result');
  await out.filter({ hasText: /ok|FAILED|failed/ }).waitFor({ timeout: 120_000 });
  const text = await out.innerText();
  assert.equal(text.match(/: ok/g)?.length, 4, text);
  assert.doesNotMatch(text, /FAILED|failed/);
});

test('add LoRAs, strength 0 is the base image, strength 1 changes it as in Node', async () => {
  const { page } = studio;
  const base = await generateAndWait();
  await page.getByTestId('lora-file').setInputFiles(LORAS);
  await page.getByTestId('lora-info-1').waitFor({ timeout: 60_000 });
  assert.match(await page.getByTestId('lora-info-0').innerText(), /kohya · rank 4 · \d+ UNet \+ \d+ text layers · base sd_v1/);
  assert.match(await page.getByTestId('lora-info-1').innerText(), /loha · rank 3/);
  await page.getByTestId('lora-scale-0').fill('0');
  await page.getByTestId('lora-scale-1').fill('0');
  assert.deepEqual(await generateAndWait(), base, 'strength 0 leaves the image as it was, pixel for pixel');

  await page.getByTestId('lora-scale-0').fill('1');
  await page.getByTestId('lora-scale-1').fill('0.8');
  const withLoras = await generateAndWait();
  assert.ok(maxDiff(withLoras, base) > 20, 'the LoRAs change the image');
  await openDetails(page);
  assert.match(await page.getByTestId('result-loras').innerText(), /kohya\.safetensors × 1, loha\.safetensors × 0\.8; \d+ layers merged in \d+ ms/);

  // The same job in Node: same LoRA files, same ids in the same order.
  const job = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  assert.deepEqual(job.loras.map((l: { scale: number }) => l.scale), [1, 0.8]);
  const { engine } = await nodeEngine(['kohya', 'loha']);
  const node = await engine.generate(job);
  assert.ok(maxDiff(withLoras, node.image.data) <= 2, 'browser and Node agree within 2/255');

  // LoRA Composite in the page: each LoRA's own prediction at every step, as in Node
  await page.getByTestId('method').selectOption('composite');
  const composite = await generateAndWait();
  await openDetails(page);
  assert.match(await page.getByTestId('result-composition').innerText(), /^LoRA Composite: 6 UNet runs$/);
  const nodeComposite = await engine.generate({ ...job, composition: { method: 'composite' } });
  assert.ok(maxDiff(composite, nodeComposite.image.data) <= 2, 'browser and Node composite agree within 2/255');
  assert.ok(maxDiff(composite, withLoras) > 0, 'composite differs from merge');
  // the frequency plot's axis: the largest amplitude of any LoRA at any step, as Node measured it
  const largest = Math.max(...nodeComposite.report.composition.steps.flatMap((s) => s.amplitudes.filter((a): a is number => a !== null)));
  const shown = Number(await page.getByTestId('plot-max').textContent());
  assert.ok(Math.abs(shown - largest) <= 0.01 * largest, `plot axis ${shown} vs Node ${largest}`);

  // CMLoRA as its code runs it: the background LoRA last, deep features reused between refreshes
  await page.getByTestId('lora-category-0').selectOption('character');
  await page.getByTestId('lora-category-1').selectOption('background');
  await page.getByTestId('method').selectOption('cmlora');
  const cmlora = await generateAndWait();
  // 3 steps, 2 LoRAs: both whole at step 0; one refreshed per step after, the other shallow
  await openDetails(page);
  assert.match(await page.getByTestId('result-composition').innerText(), /^CMLoRA: 6 UNet runs \(2 on reused deep features\); lead order kohya\.safetensors > loha\.safetensors; reused work kohya\.safetensors 33%, loha\.safetensors 33%$/);
  const cmloraJob = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.lastJob') ?? 'null'));
  assert.deepEqual(cmloraJob.loras.map((l: { category: string }) => l.category), ['character', 'background']);
  const nodeCmlora = await engine.generate(cmloraJob);
  assert.ok(maxDiff(cmlora, nodeCmlora.image.data) <= 2, 'browser and Node cmlora agree within 2/255');
  assert.deepEqual(nodeCmlora.report.composition.steps.map((s) => s.shallow), [[], [1], [0]]);

  // the authors' settings in one click, then ours back
  const before = Object.fromEntries(await Promise.all(['width', 'height', 'steps', 'seed', 'cfg', 'scheduler'].map(async (id) => [id, await page.getByTestId(id).inputValue()])));
  await page.getByTestId('composition-settings').locator('summary').click();
  await page.getByTestId('paper-settings').click();
  const after = Object.fromEntries(await Promise.all(['width', 'height', 'steps', 'seed', 'cfg', 'scheduler', 'lora-scale-0', 'lora-scale-1'].map(async (id) => [id, await page.getByTestId(id).inputValue()])));
  assert.deepEqual(after, { width: '512', height: '512', steps: '220', seed: '222', cfg: '8.5', scheduler: 'dpmpp-2m', 'lora-scale-0': '1', 'lora-scale-1': '1' });
  for (const id of ['width', 'height', 'steps', 'seed', 'cfg']) await page.getByTestId(id).fill(before[id]);
  await page.getByTestId('scheduler').selectOption(before.scheduler);
  await page.getByTestId('lora-scale-1').fill('0.8');
  await page.getByTestId('composition-settings').locator('summary').click();
  await page.getByTestId('method').selectOption('merge');
  engine.unload();

  await page.getByTestId('lora-enabled-0').uncheck();
  await page.getByTestId('lora-enabled-1').uncheck();
  assert.deepEqual(await generateAndWait(), base, 'switched off: the base image again');
  await page.screenshot({ path: 'e2e/screenshots/loras.png' });
});

test('a LoRA for another architecture and a truncated LoRA get their own sentences; the others stay', async () => {
  const { page } = studio;
  const sdxl = concatBytes(
    encodeSafetensors([
      { name: 'lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight', dtype: 'F32', shape: [1, 4], data: new Uint8Array(16) },
      { name: 'lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight', dtype: 'F32', shape: [4, 1], data: new Uint8Array(16) },
    ]),
  );
  const whole = readFileSync(LORAS[0]);
  await page.getByTestId('lora-file').setInputFiles([
    { name: 'xl-style.safetensors', mimeType: 'application/octet-stream', buffer: Buffer.from(sdxl) },
    { name: 'cut.safetensors', mimeType: 'application/octet-stream', buffer: whole.subarray(0, whole.length - 1000) },
  ]);
  await page.getByTestId('lora-error-3').waitFor({ timeout: 60_000 });
  assert.match(await page.getByTestId('lora-error-2').innerText(), /xl-style\.safetensors is a SDXL LoRA \(it has the key "lora_te2_/);
  assert.match(await page.getByTestId('lora-error-3').innerText(), /cut\.safetensors/);
  assert.match(await page.getByTestId('lora-info-0').innerText(), /kohya/);
  await page.getByTestId('lora-remove-2').click();
  assert.equal(await page.getByTestId('lora-error-2').count(), 1, 'the truncated one moved up');
  await generateAndWait();
});
