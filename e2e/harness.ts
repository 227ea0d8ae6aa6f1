// e2e harness: the built app served by `vite preview`, and Debian's Chromium with a real WebGPU
// adapter (SwiftShader) driven by playwright-core.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

export async function serve(port: number): Promise<{ url: string; stop: () => void }> {
  const proc: ChildProcess = spawn(process.execPath, ['node_modules/vite/bin/vite.js', 'preview', '--port', String(port), '--strictPort', '--host', '127.0.0.1'], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}/`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(url)).ok) return { url, stop: () => proc.kill() };
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  proc.kill();
  throw new Error('vite preview did not start');
}

export function launch(): Promise<Browser> {
  return chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, headless: true });
}

/** The studio served and open in Chromium, with its embedded test model loaded. */
export async function openStudio(port: number): Promise<{ page: Page; close: () => Promise<void> }> {
  const server = await serve(port);
  const browser = await launch();
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('pageerror:', e.message));
  await page.goto(server.url);
  await page.getByTestId('status').filter({ hasText: 'Ready' }).waitFor({ timeout: 120_000 });
  mkdirSync('e2e/screenshots', { recursive: true });
  return {
    page,
    close: async () => {
      await browser.close();
      server.stop();
    },
  };
}

/** Click Generate and wait until the button is enabled again (the job ended). */
export async function generateAndWait(page: Page): Promise<void> {
  await page.getByTestId('generate').click();
  await page.getByTestId('generate').and(page.locator(':enabled')).waitFor({ timeout: 240_000 });
}

/** RGBA bytes of the result canvas. */
export function resultPixels(page: Page): Promise<number[]> {
  return page.getByTestId('result').evaluate((c: HTMLCanvasElement) => Array.from(c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data));
}
