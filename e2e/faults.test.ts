// Faults in Chromium, and what the studio lets out: the GPU device destroyed in the middle of a run
// and the engine worker dying (an uncaught error) are both reported, the worker is restarted, the
// model is loaded again, the scene is untouched and the job runs again to the same image; the GPU
// running out of memory mid-run is said in plain words, sets a memory limit the next run is planned
// under, and restarts the engine the same way; a model
// download that fills the storage quota keeps its bytes, lists nothing half-made and resumes once
// there is room. The built page carries its Content-Security-Policy, nothing it does trips it, and
// nothing leaves the page but what it asks of its own origin.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { Page, Worker } from 'playwright-core';
import { dragOnCanvas, generateAndWait, openDetails, ready, resultPixels, storedSha256, studioForFile } from './harness.ts';

const MODEL = 'dist/test-model/tiny-sd15.safetensors';
const requests: string[] = [];
const cspReports: string[] = [];

const studio = studioForFile(3700, async (page) => {
  page.context().on('request', (r) => requests.push(r.url()));
  page.on('console', (m) => {
    if (/Content[- ]Security[- ]Policy/i.test(m.text())) cspReports.push(m.text());
  });
  page.on('worker', (w) => w.on('console', (m) => /Content[- ]Security[- ]Policy/i.test(m.text()) && cspReports.push(m.text())));
});

const engineWorker = (page: Page): Worker => {
  const w = page.workers().find((x) => /engine\.worker/.test(x.url()));
  assert.ok(w, `no engine worker among ${page.workers().map((x) => x.url())}`);
  return w;
};

let reference: number[] | undefined;
let scene: unknown;

/** A small scene with a box, and its image made once: what every recovery must give back. */
async function setUp(page: Page) {
  if (reference) return;
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '4'], ['seed', '21'], ['cfg', '1'], ['prompt', 'a lantern on a pier']]) await page.getByTestId(id).fill(v);
  await dragOnCanvas(page, [8, 8], [40, 48]);
  await page.getByTestId('box-prompt').fill('a glowing lantern');
  await generateAndWait(page);
  reference = await resultPixels(page);
  scene = await page.evaluate(() => localStorage.getItem('lorastudio.scene'));
}

/** Start a run, and once its first step is done do `fault` to the engine worker. */
async function faultMidRun(page: Page, fault: (w: Worker) => Promise<unknown>) {
  const old = engineWorker(page);
  const closed = new Promise<void>((r) => old.once('close', () => r()));
  await page.getByTestId('generate').click();
  await page.getByTestId('status').filter({ hasText: /Step [1-3] of 4/ }).waitFor({ timeout: 120_000 });
  await fault(old);
  await closed;
}

async function recoveredAndSame(page: Page, notice: RegExp) {
  await page.getByTestId('status').filter({ hasText: notice }).waitFor({ timeout: 180_000 });
  await ready(page);
  assert.notEqual(engineWorker(page), undefined);
  assert.equal(await page.evaluate(() => localStorage.getItem('lorastudio.scene')), scene, 'the scene is untouched');
  assert.equal(await page.getByTestId('box-prompt').inputValue(), 'a glowing lantern');
  await generateAndWait(page);
  assert.deepEqual(await resultPixels(page), reference, 'the job runs again to the same image');
}

test('the GPU device destroyed mid-run: reported, the worker restarted, the model reloaded, the scene kept, the job re-runs', async () => {
  const { page } = studio;
  await setUp(page);
  await faultMidRun(page, (w) => w.evaluate(() => (globalThis as unknown as Record<symbol, GPUDevice>)[Symbol.for('lora-studio.gpu-device')].destroy()));
  await recoveredAndSame(page, /The GPU device was lost \(destroyed.*\)\. The engine was restarted and the model reloaded; your scene is kept/);
});

test('the engine worker dying mid-run (an uncaught error): reported, restarted, reloaded, the scene kept, the job re-runs', async () => {
  const { page } = studio;
  await setUp(page);
  await faultMidRun(page, (w) => w.evaluate(() => void setTimeout(() => {
    throw new Error('simulated crash');
  })));
  await recoveredAndSame(page, /The engine stopped unexpectedly \(.*simulated crash.*\)\. The engine was restarted and the model reloaded; your scene is kept/);
});

test('the GPU out of memory mid-run: said with the step and the plan, a memory limit set for the next jobs, the engine restarted, the scene kept, the job re-runs under the limit', async () => {
  const { page } = studio;
  await setUp(page);
  // the largest buffer the device allows, which SwiftShader cannot allocate in one piece: an
  // out-of-memory on the engine's device, as onnxruntime meets it when a job does not fit
  await faultMidRun(page, (w) =>
    w.evaluate(() => {
      const device = (globalThis as unknown as Record<symbol, GPUDevice>)[Symbol.for('lora-studio.gpu-device')];
      device.createBuffer({ size: Math.floor(device.limits.maxBufferSize / 4) * 4, usage: GPUBufferUsage.STORAGE });
    }),
  );
  const notice = /^The GPU ran out of memory after step [1-4] of 4 \(([\d.]+) MB were in use; the job planned ([\d.]+) MB at peak, largest buffer [\d.]+ MB\)\. Jobs are now planned to stay under ([\d.]+) MB of GPU memory \(Diagnostics, GPU memory limit\)\. The engine was restarted and the model reloaded; your scene is kept/;
  const status = page.getByTestId('status').filter({ hasText: notice });
  await status.waitFor({ timeout: 180_000 });
  const [, used, planned, kept] = notice.exec(await status.innerText())!.map(Number);
  await ready(page);
  const limit = Number(await page.evaluate(() => localStorage.getItem('lorastudio.memoryLimit')));
  assert.ok(Math.abs(limit / 2 ** 20 - kept) < 0.05, `${limit} bytes kept, ${kept} MB said`);
  assert.ok(Math.abs(limit / 2 ** 20 - 0.75 * Math.min(used, planned)) < 0.2, `${limit} bytes: three quarters of the least of ${used} MB in use and ${planned} MB planned`);
  await page.getByTestId('diagnostics').locator('summary').click();
  assert.equal(await page.getByTestId('memory-limit').inputValue(), String(+(limit / 2 ** 30).toPrecision(3)));
  assert.equal(await page.evaluate(() => localStorage.getItem('lorastudio.scene')), scene, 'the scene is untouched');
  // the job again, with the limit: the tiny model's weights and UNet alone are above three quarters
  // of its plan, so the plan cannot meet it and the notice says so (a job the plan can fit under a
  // budget, by tiles or CFG halves, is in tests/engine/memory.test.ts); the picture is the same
  await generateAndWait(page);
  const job = JSON.parse((await page.evaluate(() => localStorage.getItem('lorastudio.lastJob')))!) as { memoryBudget?: number };
  assert.equal(job.memoryBudget, limit);
  const pixels = await resultPixels(page);
  const worst = pixels.reduce((m, v, i) => Math.max(m, Math.abs(v - reference![i])), 0);
  assert.ok(worst <= 1, `within 1/255 of the image before (${worst})`);
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MB`;
  assert.match(await page.getByTestId('status').innerText(), new RegExp(`^The GPU memory limit is ${mb(limit).replace('.', '\\.')}, but this job needs at least [\\d.]+ MB \\(the model's weights and the UNet's work at this size\\); it ran anyway\\. A smaller picture or fewer LoRAs need less\\.`));
  await openDetails(page);
  const line = await page.getByTestId('result-memory').innerText();
  assert.ok(Number(/\(planned ([\d.]+) MB\)/.exec(line)![1]) * 2 ** 20 > limit, line);
  // cleared, the next job has none
  await page.getByTestId('memory-limit').fill('');
  assert.equal(await page.evaluate(() => localStorage.getItem('lorastudio.memoryLimit')), null);
});

test('a model download that fills the storage quota keeps its bytes, lists no half model, and resumes once there is room', async () => {
  const { page, url } = studio;
  const origin = new URL(url).origin;
  const cdp = await page.context().newCDPSession(page);
  const usage = await page.evaluate(async () => (await navigator.storage.estimate()).usage ?? 0);
  const size = readFileSync(MODEL).length;
  await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: usage + Math.floor(size / 2) });
  const before = await page.getByTestId('model-select').locator('option').allInnerTexts();
  const address = `${url}test-model/tiny-sd15.safetensors?quota=1`;
  await page.getByTestId('download-source').fill(address);
  await page.getByTestId('download-start').click();
  const error = await page.getByTestId('download-0-error').innerText({ timeout: 60_000 });
  assert.match(error, /storage for this site is full, so the rest of tiny-sd15\.safetensors \(\d+ bytes kept; resume after freeing space\) could not be saved/);
  const kept = Number(/\((\d+) bytes kept/.exec(error)![1]);
  assert.ok(kept < size, `${kept} of ${size}`);
  assert.deepEqual(await page.getByTestId('model-select').locator('option').allInnerTexts(), before, 'no half model in the library');
  const onDisk = await page.evaluate(async () => {
    const dir = await (await (await (await navigator.storage.getDirectory()).getDirectoryHandle('library')).getDirectoryHandle('models')).getDirectoryHandle('tiny-sd15.safetensors');
    const names: string[] = [];
    for await (const [name] of dir as unknown as AsyncIterable<[string]>) names.push(name);
    return { names, part: (await (await dir.getFileHandle('tiny-sd15.safetensors.part')).getFile()).size };
  });
  assert.deepEqual(onDisk.names, ['tiny-sd15.safetensors.part'], 'only the part file');
  assert.ok(onDisk.part <= kept, `the part on disk (${onDisk.part}) holds at most what was reported kept (${kept})`);

  // room again: resume fetches the rest with a range request and the model is listed, byte-exact
  await cdp.send('Storage.overrideQuotaForOrigin', { origin });
  const ranged = page.waitForRequest((r) => r.url() === address);
  await page.getByTestId('download-0-resume').click();
  const request = await ranged;
  if (onDisk.part) assert.equal(request.headers().range, `bytes=${onDisk.part}-`);
  await page.getByTestId('download-0').waitFor({ state: 'detached', timeout: 60_000 });
  await ready(page);
  const stored = await storedSha256(page, 'library', 'models', 'tiny-sd15.safetensors', 'tiny-sd15.safetensors');
  assert.equal(stored, createHash('sha256').update(readFileSync(MODEL)).digest('hex'));
  await cdp.detach();
});

test('the built page carries its Content-Security-Policy; nothing the studio did tripped it, and nothing left for another origin', async () => {
  const { page, url } = studio;
  const policy = await page.evaluate(() => document.querySelector('meta[http-equiv="Content-Security-Policy"]')?.getAttribute('content'));
  assert.match(policy ?? '', /default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'/);
  assert.doesNotMatch(policy!, /'unsafe-inline'|'unsafe-eval'/);
  // an inline script is refused by the policy
  const ran = await page.evaluate(async () => {
    const s = document.createElement('script');
    s.textContent = 'window.__inline = 1';
    document.body.append(s);
    await new Promise((r) => setTimeout(r, 50));
    return (window as unknown as { __inline?: number }).__inline;
  });
  assert.equal(ran, undefined);
  assert.equal(cspReports.filter((r) => !/window.__inline|inline script/i.test(r)).length, 0, cspReports.join('\n'));
  const foreign = requests.filter((r) => !r.startsWith(url) && !/^(data|blob):/.test(r));
  assert.deepEqual(foreign, []);
  assert.ok(requests.length > 10);
});
