// e2e harness: the built app served by `vite preview`, and Debian's Chromium with a real WebGPU
// adapter (SwiftShader) driven by playwright-core.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { after, before } from 'node:test';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { createRuntime, type Runtime } from '../workers/engine/runtime.ts';
import { openTinyEngine } from '../workers/node/tiny.ts';
import { dawnFeaturesFlag, installNodeWebGpu } from '../workers/node/webgpu.ts';

const DAWN_FLAG = dawnFeaturesFlag();

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  // the same Dawn toggles as the Node side of the tests (see scripts/test.mjs)
  ...(DAWN_FLAG ? [`--${DAWN_FLAG}`] : []),
];

/**
 * `vite preview` on `port`. A busy machine can take long to start it, and a port can be held
 * (a server another run left behind): when vite exits, the next port is tried; its own words are
 * in the error when none serves.
 */
export async function serve(port: number, tries = 4): Promise<{ url: string; stop: () => void }> {
  let said = '';
  for (let attempt = 0; attempt < tries; attempt++, port++) {
    const proc: ChildProcess = spawn(process.execPath, ['node_modules/vite/bin/vite.js', 'preview', '--port', String(port), '--strictPort', '--host', '127.0.0.1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let exited = false;
    proc.on('exit', () => (exited = true));
    // never left behind holding the port, however this process ends
    process.on('exit', () => proc.kill());
    proc.stderr!.on('data', (d: Buffer) => (said += d.toString()));
    const url = `http://127.0.0.1:${port}/`;
    for (let i = 0; i < 600 && !exited; i++) {
      try {
        if ((await fetch(url, { signal: AbortSignal.timeout(2000) })).ok) return { url, stop: () => proc.kill() };
      } catch {
        /* not up yet */
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    proc.kill();
  }
  throw new Error(`vite preview did not start: ${said.trim().slice(-400) || 'no output'}`);
}

export function launch(): Promise<Browser> {
  return chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, headless: true });
}

/** The studio served and open in Chromium, with its embedded test model loaded. */
export async function openStudio(port: number): Promise<{ page: Page; browser: Browser; url: string; stopServer: () => void; close: () => Promise<void> }> {
  const server = await serve(port);
  const browser = await launch();
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('pageerror:', e.message));
  try {
    await page.goto(server.url);
    await page.getByTestId('status').filter({ hasText: 'Ready' }).waitFor({ timeout: 120_000 });
  } catch (e) {
    const say = async (id: string) => ((await page.getByTestId(id).count()) ? await page.getByTestId(id).innerText() : '-');
    console.error(`the studio did not get ready: status "${await say('status')}", error "${await say('error')}"`);
    await browser.close();
    server.stop();
    throw e;
  }
  mkdirSync('e2e/screenshots', { recursive: true });
  return {
    page,
    browser,
    url: server.url,
    stopServer: server.stop,
    close: async () => {
      await browser.close();
      server.stop();
    },
  };
}

export type OpenStudio = Awaited<ReturnType<typeof openStudio>>;

/**
 * The studio for the tests of one file: opened before them (on a port from `basePort`, then
 * `setup` on its page), closed after them. Its fields are there once the tests run.
 */
export function studioForFile(basePort: number, setup?: (page: Page) => Promise<void>): OpenStudio {
  const studio = {} as OpenStudio;
  before(async () => {
    // within 100 of the base: the files' ranges never overlap, so two files can run at once
    Object.assign(studio, await openStudio(basePort + Math.floor(Math.random() * 100)));
    await setup?.(studio.page);
  });
  after(async () => {
    await studio.close?.();
    setTimeout(() => process.exit(0), 10).unref();
  });
  return studio;
}

let nodeRuntime: Promise<Runtime> | undefined;

/** The same engine in Node (Dawn's WebGPU) on the built test model with the named test LoRAs: what the page is compared with. */
export async function nodeEngine(loraNames: string[] = []) {
  nodeRuntime ??= installNodeWebGpu().then(() => createRuntime('webgpu'));
  return openTinyEngine('dist/test-model', await nodeRuntime, loraNames);
}

/**
 * Click Generate, wait for the job to end, and return every text the status line showed meanwhile,
 * in order, as the page rendered it (a MutationObserver; polling from Node can miss a short phase).
 */
export async function generateWatchingStatus(page: Page): Promise<string> {
  type Watch = { statusWatch: { seen: string[]; observer: MutationObserver } };
  await page.getByTestId('status').evaluate((el) => {
    const seen: string[] = [];
    const observer = new MutationObserver(() => seen.push(el.textContent ?? ''));
    observer.observe(el, { childList: true, characterData: true, subtree: true });
    (window as unknown as Watch).statusWatch = { seen, observer };
  });
  await generateAndWait(page);
  const seen = await page.evaluate(() => {
    const { seen, observer } = (window as unknown as Watch).statusWatch;
    observer.disconnect();
    return seen;
  });
  return [...new Set(seen)].join(' | ');
}

/** Click Generate and wait until the button is enabled again (the job ended). */
export async function generateAndWait(page: Page): Promise<void> {
  await page.getByTestId('generate').click();
  await page.getByTestId('generate').and(page.locator(':enabled')).waitFor({ timeout: 240_000 });
}

/** Open the result's Details drawer (research detail: UNet runs, attention shares, memory), once. */
export async function openDetails(page: Page): Promise<void> {
  const details = page.getByTestId('details');
  if ((await details.getAttribute('open')) === null) await details.locator('summary').first().click();
}

/** RGBA bytes of the result canvas. */
export function resultPixels(page: Page): Promise<number[]> {
  return page.getByTestId('result').evaluate((c: HTMLCanvasElement) => Array.from(c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data));
}

/** A one-finger touch stroke (CDP touch events) over a canvas showing `frame` pixels across, through points in frame pixels. */
export async function touchStroke(page: Page, canvas: Locator, points: [number, number][], frame = 64): Promise<void> {
  await canvas.scrollIntoViewIfNeeded();
  const box = (await canvas.boundingBox())!;
  const k = box.width / frame;
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Emulation.setTouchEmulationEnabled', { enabled: true, maxTouchPoints: 1 });
  const at = ([x, y]: [number, number]) => [{ x: box.x + x * k, y: box.y + y * k }];
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: at(points[0]) });
  for (const p of points.slice(1)) await cdp.send('Input.dispatchTouchEvent', { type: 'touchMove', touchPoints: at(p) });
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
  await cdp.send('Emulation.setTouchEmulationEnabled', { enabled: false });
}

/** The canvas's box once the page has stopped moving it: two reads 50 ms apart agree. */
async function settledBox(canvas: Locator): Promise<{ x: number; y: number; width: number; height: number }> {
  let last = await canvas.boundingBox();
  for (let i = 0; i < 40; i++) {
    await canvas.page().waitForTimeout(50);
    const now = await canvas.boundingBox();
    if (now && last && now.x === last.x && now.y === last.y && now.width === last.width) return now;
    last = now;
  }
  throw new Error('the layout canvas kept moving for 2 s; a drag on it would land in the wrong place');
}

/**
 * Drag on the layout canvas between two points given in image pixels of a `frame`-wide image. Each
 * pointer position is taken from the canvas's box read just before that move, so a page that moves the
 * canvas (a panel growing above it, a scroll) cannot shift the box drawn.
 */
export async function dragOnCanvas(page: Page, from: [number, number], to: [number, number], frame = 64): Promise<void> {
  const canvas = page.getByTestId('layout-canvas').locator('canvas').first();
  await canvas.scrollIntoViewIfNeeded();
  const at = async ([x, y]: [number, number]) => {
    const box = await settledBox(canvas);
    const k = box.width / frame;
    return [box.x + x * k, box.y + y * k] as const;
  };
  await page.mouse.move(...(await at(from)));
  await page.mouse.down();
  await page.mouse.move(...(await at([(from[0] + to[0]) / 2, (from[1] + to[1]) / 2])), { steps: 4 });
  await page.mouse.move(...(await at(to)), { steps: 4 });
  await page.mouse.up();
}

/** Wait until Generate can be pressed: a model is loaded and nothing is loading or running. */
export async function ready(page: Page, timeout = 120_000): Promise<void> {
  await page.getByTestId('generate').and(page.locator(':enabled')).waitFor({ timeout });
}

/** The SHA-256 (hex) of a file in the page's Origin Private File System, by its path there. */
export function storedSha256(page: Page, ...path: string[]): Promise<string> {
  return page.evaluate(async (path) => {
    let dir = await navigator.storage.getDirectory();
    for (const name of path.slice(0, -1)) dir = await dir.getDirectoryHandle(name);
    const f = await (await dir.getFileHandle(path[path.length - 1])).getFile();
    return [...new Uint8Array(await crypto.subtle.digest('SHA-256', await f.arrayBuffer()))].map((b) => b.toString(16).padStart(2, '0')).join('');
  }, path);
}
