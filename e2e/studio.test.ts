// The studio as an artist keeps it, in Chromium: a model and a LoRA imported into the library (OPFS)
// survive a reload; a result lands in the gallery (IndexedDB), its PNG carries the scene and dropping
// it back restores the scene; a share link opens the same scene in a fresh browser profile and lists
// the missing LoRA; hostile links change nothing but the message; downloads are planned from the hub's
// file list, checked by sha256 and resumed with a range request after a reload.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { test } from 'node:test';
import type { BrowserContext, Page } from 'playwright-core';
import { deflateRawSync } from 'node:zlib';
import { readPngText } from '../workers/engine/png.ts';
import { toBase64Url } from '../src/share/link.ts';
import { dragOnCanvas, generateAndWait, storedSha256, studioForFile, ready } from './harness.ts';

const MODEL = 'dist/test-model/tiny-sd15.safetensors';
const LORA = 'dist/test-model/loras/kohya.safetensors';
const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

const studio = studioForFile(6000);

async function small(p: Page, prompt: string, seed: string) {
  for (const [id, v] of [['width', '64'], ['height', '64'], ['steps', '2'], ['seed', seed], ['cfg', '4'], ['prompt', prompt]]) await p.getByTestId(id).fill(v);
}

/** Wait until the model picker shows a model (React sets the property, not the attribute). */
const modelChosen = (p: Page, id: string) =>
  p.waitForFunction((v) => (document.querySelector('[data-testid="model-select"]') as HTMLSelectElement | null)?.value === v, id, { timeout: 120_000, polling: 250 });

const optionTexts = (p: Page) => p.getByTestId('model-select').locator('option').allInnerTexts();

test('import a model and a LoRA; generate; the gallery keeps the image; its PNG dropped back restores the scene; a reload keeps it all', async () => {
  const { page } = studio;
  await page.getByTestId('model-file').setInputFiles(MODEL);
  await modelChosen(page, 'model:tiny-sd15.safetensors');
  await ready(page);
  const mb = (statSync('dist/test-model/tiny-sd15.safetensors').size / 2 ** 20).toFixed(1);
  assert.deepEqual(await optionTexts(page), ['Tiny test model (built in)', `tiny-sd15.safetensors (${mb} MB)`]);
  await page.getByTestId('lora-file').setInputFiles(LORA);
  await page.getByTestId('lora-info-0').waitFor({ timeout: 60_000 });
  await page.getByTestId('lora-category-0').selectOption('style');
  await small(page, 'a studio test', '5');
  await generateAndWait(page);
  await page.getByTestId('gallery-item-0').waitFor();
  await page.getByTestId('plots-drawer').locator('summary').click();
  await page.getByTestId('plots').waitFor();
  assert.equal(await page.getByTestId('plot-active').locator('rect[data-state="active"]').count(), 2, 'one LoRA computed at each of two steps');

  // the PNG download carries the scene
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('gallery-download-0').click()]);
  const png = readFileSync((await download.path())!);
  const scene = JSON.parse(readPngText(png)['lorastudio.scene']);
  assert.equal(scene.prompt, 'a studio test');
  assert.equal(scene.seed, 5);
  assert.deepEqual(scene.loras.map((l: { name: string; scale: number }) => [l.name, l.scale]), [['kohya.safetensors', 1]]);
  const saved = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.scene')!));
  assert.deepEqual(scene, saved, 'the PNG holds the scene the page autosaved');

  // change things, then drop the PNG onto the page: the scene comes back
  await page.getByTestId('prompt').fill('something else');
  await page.getByTestId('seed').fill('9');
  const dt = await page.evaluateHandle((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const d = new DataTransfer();
    d.items.add(new File([bytes], 'result.png', { type: 'image/png' }));
    return d;
  }, png.toString('base64'));
  await page.dispatchEvent('main', 'drop', { dataTransfer: dt });
  await page.getByTestId('status').filter({ hasText: 'Opened the scene from the image result.png.' }).waitFor();
  assert.equal(await page.getByTestId('prompt').inputValue(), 'a studio test');
  assert.equal(await page.getByTestId('seed').inputValue(), '5');

  // a PNG that is not the studio's gets a sentence
  await page.getByTestId('open-png').setInputFiles({ name: 'other.png', mimeType: 'image/png', buffer: readFileSync('public/icons/icon-192.png') });
  assert.match(await page.getByTestId('error').innerText(), /No scene could be taken from this image: it was not made by LoRA Studio/);
  await page.screenshot({ path: 'e2e/screenshots/studio.png', fullPage: true });

  // reload: the stored model is chosen again, the LoRA and its category are back, the gallery too
  await page.reload();
  await ready(page);
  assert.equal(await page.getByTestId('model-select').inputValue(), 'model:tiny-sd15.safetensors');
  await page.getByTestId('lora-info-0').waitFor({ timeout: 60_000 });
  assert.equal(await page.getByTestId('lora-category-0').inputValue(), 'style');
  assert.ok(await page.getByTestId('lora-enabled-0').isChecked());
  assert.equal(await page.locator('[data-testid^="gallery-item-"]').count(), 1);
  assert.match(await page.getByTestId('storage').innerText(), /^Storage: [\d.]+ (KB|MB) used, /);
});

test('a share link opens the same scene in a fresh profile and names the missing LoRA; hostile links only get a message', async () => {
  const { page } = studio;
  // a box with the LoRA in it
  await dragOnCanvas(page, [8, 8], [40, 48]);
  await page.getByTestId('box-name').fill('hero');
  await page.getByTestId('box-prompt').fill('a brave knight');
  await page.getByTestId('box-lora-add').selectOption('kohya.safetensors');
  await page.getByTestId('share').click();
  const link = await page.getByTestId('share-url').inputValue();
  assert.match(link, /#scene=1\.[A-Za-z0-9_-]+$/);
  const scene = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.scene')!));

  const fresh = await studio.browser.newContext();
  const other = await fresh.newPage();
  await other.goto(link);
  await ready(other);
  await other.getByTestId('missing-loras').waitFor();
  assert.equal(await other.getByTestId('prompt').inputValue(), 'a studio test');
  assert.deepEqual(await other.locator('[data-testid^="box-select-"]').allInnerTexts(), ['hero']);
  assert.deepEqual(await other.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.scene')!)), scene, 'the same scene, field for field');
  assert.match(await other.getByTestId('missing-loras').innerText(), /kohya\.safetensors \(fingerprint [0-9a-f]+\)/);

  // hostile contents: markup in prompts and names is shown as text and never runs
  const hostile = { ...scene, prompt: '<img src=x onerror="window.__pwned=1">', boxes: [{ ...scene.boxes[0], name: '<script>window.__pwned=2</script>' }] };
  const url = link.split('#')[0];
  await other.goto(`${url}#scene=1.${toBase64Url(deflateRawSync(Buffer.from(JSON.stringify(hostile))))}`);
  await other.getByTestId('status').filter({ hasText: 'Opened the scene from the link' }).waitFor();
  assert.equal(await other.getByTestId('prompt').inputValue(), hostile.prompt);
  assert.deepEqual(await other.locator('[data-testid^="box-select-"]').allInnerTexts(), ['<script>window.__pwned=2</script>']);
  assert.equal(await other.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined);
  assert.equal(await other.locator('img[src="x"]').count(), 0);

  for (const [hash, message] of [
    ['#scene=1.AAAAAAAA', /This share link cannot be opened: its data is damaged/],
    ['#scene=9.abc', /made by a studio that writes version 9 links/],
    [`#scene=1.${toBase64Url(deflateRawSync(Buffer.from(JSON.stringify({ ...scene, width: 1e300 }))))}`, /width must be a whole number from 64 to 2048/],
  ] as const) {
    await other.evaluate((h) => (location.hash = h), hash);
    await other.getByTestId('link-alert').filter({ hasText: message }).waitFor();
  }
  // a damaged link in the address, then a reload: the link is refused, the model loads and Generate works
  await other.reload();
  await other.getByTestId('link-alert').filter({ hasText: /its data is damaged|width must be/ }).waitFor();
  await other.getByTestId('generate').and(other.locator(':enabled')).waitFor({ timeout: 120_000 });
  assert.match(await other.getByTestId('model-name').innerText(), /tiny-sd15/);
  // the last good scene is still there, and the studio still works
  assert.equal(await other.getByTestId('prompt').inputValue(), hostile.prompt);
  await other.screenshot({ path: 'e2e/screenshots/share-link.png', fullPage: true });
  await fresh.close();

  // on a phone the refusal is the first thing seen on arrival, not under the fold below Generate
  const phone = await studio.browser.newContext({ viewport: { width: 390, height: 844 } });
  const small = await phone.newPage();
  await small.goto(`${url}#scene=1.AAAAAAAA`);
  const refusal = small.getByTestId('link-alert');
  await refusal.waitFor();
  const where = await refusal.boundingBox();
  assert.ok(where && where.y >= 0 && where.y + where.height <= 844 && where.x >= 0 && where.x + where.width <= 390, `the refusal is within the phone's first screen: ${JSON.stringify(where)}`);
  assert.equal(await small.evaluate(() => window.scrollY), 0);
  await small.screenshot({ path: 'e2e/screenshots/share-link-390x844.png' });
  await phone.close();
});

const LORA2 = 'dist/test-model/loras/kohya-2.safetensors';

/** The hub, answered from the built test model (tests never reach the network). */
async function routeHub(ctx: BrowserContext) {
  const files = ['unet/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors', 'vae/diffusion_pytorch_model.safetensors', 'tokenizer/vocab.json', 'tokenizer/merges.txt'];
  const local = (f: string) => `dist/test-model/diffusers/${f}`;
  const tree = files.map((f) => ({ type: 'file', path: f, size: statSync(local(f)).size, ...(f.endsWith('.safetensors') ? { lfs: { oid: sha256(local(f)), size: statSync(local(f)).size } } : {}) }));
  const api = (repo: string) => (u: URL) => u.href === `https://huggingface.co/api/models/studio-tests/${repo}/tree/main?recursive=true`;
  await ctx.route(api('tiny-sd15'), (r) => r.fulfill({ json: tree }));
  await ctx.route(api('broken'), (r) => r.fulfill({ json: [{ type: 'file', path: 'tiny.safetensors', size: statSync(MODEL).size, lfs: { oid: '0'.repeat(64), size: statSync(MODEL).size } }] }));
  await ctx.route(api('style-lora'), (r) =>
    r.fulfill({ json: [{ type: 'file', path: 'README.md', size: 10 }, { type: 'file', path: 'pytorch_lora_weights.safetensors', size: 134, lfs: { oid: sha256(LORA2), size: statSync(LORA2).size } }] }),
  );
  await ctx.route((u) => u.href.startsWith('https://huggingface.co/studio-tests/'), (r) => {
    const path = new URL(r.request().url()).pathname.split('/resolve/main/')[1];
    r.fulfill({ path: path === 'tiny.safetensors' ? MODEL : path === 'pytorch_lora_weights.safetensors' ? LORA2 : local(decodeURIComponent(path)) });
  });
}

test('downloads: a hub repository from its file list, checked by sha256; a bad hash is refused; a LoRA by its repository; a direct address resumes with a range request after a reload', async () => {
  const { page } = studio;
  await routeHub(page.context());
  await page.getByTestId('download-source').fill('studio-tests/tiny-sd15');
  await page.getByTestId('download-start').click();
  await modelChosen(page, 'model:studio-tests/tiny-sd15');
  await ready(page);
  assert.match((await page.getByTestId('model-name').getAttribute('title'))!, /^diffusers, /);

  await page.getByTestId('download-source').fill('https://huggingface.co/studio-tests/broken');
  await page.getByTestId('download-start').click();
  assert.match(await page.getByTestId('download-0-error').innerText(), /tiny\.safetensors does not match the sha256 the hub lists .* the damaged file was deleted/);
  await page.getByTestId('download-0-discard').click();
  await page.getByTestId('download-0').waitFor({ state: 'detached' });

  // a LoRA by its hub repository: fetched, checked, listed and loaded for the model
  await page.getByTestId('lora-url').fill('studio-tests/style-lora');
  await page.getByTestId('lora-url-add').click();
  const fetched = page.locator('[data-testid^="lora-"]').filter({ hasText: 'studio-tests--style-lora.safetensors' });
  await fetched.getByText(/^kohya · rank \d+/).waitFor({ timeout: 60_000 });
  const storedLora = await storedSha256(page, 'library', 'loras', 'studio-tests--style-lora.safetensors');
  assert.equal(storedLora, sha256(LORA2));

  // an interrupted direct download: the first megabyte is on disk, as a lost connection leaves it
  const address = `${studio.url}test-model/tiny-sd15.safetensors?copy=1`;
  const bytes = readFileSync(MODEL);
  await page.evaluate(
    async ({ address, head }) => {
      const root = await navigator.storage.getDirectory();
      const dir = await (await (await root.getDirectoryHandle('library', { create: true })).getDirectoryHandle('models', { create: true })).getDirectoryHandle('resumed-sd15.safetensors', { create: true });
      const w = await (await dir.getFileHandle('resumed-sd15.safetensors.part', { create: true })).createWritable();
      await w.write(Uint8Array.from(atob(head), (c) => c.charCodeAt(0)));
      await w.close();
      const db = await new Promise<IDBDatabase>((ok) => (indexedDB.open('lorastudio').onsuccess = (e) => ok((e.target as IDBOpenDBRequest).result)));
      const plan = { name: 'resumed-sd15.safetensors', source: address, files: [{ url: address, path: 'resumed-sd15.safetensors' }] };
      await new Promise((ok) => (db.transaction('downloads', 'readwrite').objectStore('downloads').put({ id: 'model:resumed-sd15.safetensors', plan }).onsuccess = ok));
    },
    { address, head: bytes.subarray(0, 1_000_000).toString('base64') },
  );
  await page.reload();
  await ready(page);
  assert.match(await page.getByTestId('download-0-progress').innerText(), /^977 KB — paused$/);
  const ranged = page.waitForRequest((r) => r.url() === address);
  await page.getByTestId('download-0-resume').click();
  const request = await ranged;
  assert.equal(request.headers().range, 'bytes=1000000-');
  assert.equal((await request.response())!.status(), 206);
  await page.getByTestId('download-0').waitFor({ state: 'detached', timeout: 60_000 });
  const stored = await storedSha256(page, 'library', 'models', 'resumed-sd15.safetensors', 'resumed-sd15.safetensors');
  assert.equal(stored, sha256(MODEL), 'the resumed file is the server file, byte for byte');
});

test('a shared scene names its downloaded model and LoRA by address; in a fresh profile one click fetches each', async () => {
  const { page } = studio;
  await page.getByTestId('model-select').selectOption('model:studio-tests/tiny-sd15');
  await page.locator('[data-testid="model-name"][title^="diffusers"]').waitFor({ timeout: 120_000 });
  await ready(page);
  // the scene is saved a moment after a change: wait for the model just chosen to be in it
  await page.waitForFunction(() => JSON.parse(localStorage.getItem('lorastudio.scene') ?? '{}').model?.name === 'studio-tests/tiny-sd15', undefined, { timeout: 30_000 });
  await page.getByTestId('share').click();
  const link = await page.getByTestId('share-url').inputValue();
  const scene = await page.evaluate(() => JSON.parse(localStorage.getItem('lorastudio.scene')!));
  assert.deepEqual(scene.model, { name: 'studio-tests/tiny-sd15', url: 'https://huggingface.co/studio-tests/tiny-sd15' });
  assert.ok(scene.loras.some((l: { name: string; url?: string }) => l.name === 'studio-tests--style-lora.safetensors' && l.url === 'https://huggingface.co/studio-tests/style-lora'), JSON.stringify(scene.loras));

  const fresh = await studio.browser.newContext();
  await routeHub(fresh);
  const other = await fresh.newPage();
  await other.goto(link);
  await ready(other);
  const missing = other.getByTestId('missing-loras');
  assert.match(await other.getByTestId('missing-model').innerText(), /^model studio-tests\/tiny-sd15 from https:\/\/huggingface\.co\/studio-tests\/tiny-sd15 Fetch$/);
  await other.getByTestId('missing-model-fetch').click();
  await modelChosen(other, 'model:studio-tests/tiny-sd15');
  await ready(other);
  await other.getByTestId('missing-model').waitFor({ state: 'detached' });
  await missing.locator('li', { hasText: 'studio-tests--style-lora.safetensors' }).getByRole('button', { name: 'Fetch' }).click();
  await other.locator('[data-testid^="lora-"]').filter({ hasText: 'studio-tests--style-lora.safetensors' }).getByText(/^kohya · rank \d+/).waitFor({ timeout: 60_000 });
  // only the LoRA that was imported from a file (no address) is left to add by hand
  assert.deepEqual(await missing.locator('li').allInnerTexts(), [byHand(scene)]);
  await fresh.close();
});

/** How the missing list names a LoRA that came from a file: by its fingerprint. */
const byHand = (scene: { loras: { name: string; fingerprint?: string }[] }) => {
  const l = scene.loras.find((x) => x.name === 'kohya.safetensors')!;
  return `kohya.safetensors (fingerprint ${l.fingerprint})`;
};

test('deleting the model in use frees its storage and falls back to the built-in model', async () => {
  const { page } = studio;
  const used = () => page.evaluate(async () => (await navigator.storage.estimate()).usage ?? 0);
  const before = await used();
  const size = statSync('dist/test-model/diffusers/unet/diffusion_pytorch_model.safetensors').size;
  await page.getByTestId('model-delete').click();
  await modelChosen(page, 'test-model');
  await ready(page);
  assert.ok(!(await optionTexts(page)).some((t) => t.startsWith('studio-tests/tiny-sd15')));
  const freed = before - (await used());
  assert.ok(freed >= size, `${freed} bytes freed; the UNet alone is ${size}`);
  assert.equal(await page.evaluate(async () => (await navigator.storage.getDirectory()).getDirectoryHandle('library').then((l) => l.getDirectoryHandle('models')).then((m) => m.getDirectoryHandle('studio-tests_tiny-sd15')).then(() => 'still there', () => 'gone')), 'gone');
});
