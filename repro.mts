import { openStudio } from './e2e/harness.ts';
const s = await openStudio(4878);
const page = s.page;
await page.getByTestId('share').click();
const link = await page.getByTestId('share-url').inputValue();
const fresh = await s.browser.newContext();
const other = await fresh.newPage();
other.on('console', (m) => m.type() === 'error' && console.log('console:', m.text().slice(0, 300)));
await other.goto(link);
await other.getByTestId('generate').and(other.locator(':enabled')).waitFor({ timeout: 120000 });
const show = async (label: string) => console.log(label, JSON.stringify(await other.getByTestId('status').innerText()), '|', await other.getByTestId('model-name').innerText(), '| err', (await other.getByTestId('error').count()) ? await other.getByTestId('error').innerText() : '-', '| alert', (await other.getByTestId('alert').count()) ? (await other.getByTestId('alert').innerText()).slice(0, 60) : '-', '| sw', await other.evaluate(() => !!navigator.serviceWorker.controller));
await show('ready');
await other.evaluate((h) => (location.hash = h), '#scene=1.AAAAAAAA');
await other.waitForTimeout(1000);
await show('bad hash');
await other.reload();
for (let i = 0; i < 8; i++) { await other.waitForTimeout(4000); await show(`after ${i}`); }
await s.close();
