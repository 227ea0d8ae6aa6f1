import { openStudio } from './e2e/harness.ts';
const s = await openStudio(4877);
const p = s.page;
const show = async (label: string) => console.log(label, JSON.stringify(await p.getByTestId('status').innerText()), '|', await p.getByTestId('model-name').innerText(), '| err', (await p.getByTestId('error').count()) ? await p.getByTestId('error').innerText() : '-', '| alert', (await p.getByTestId('alert').count()) ? await p.getByTestId('alert').innerText() : '-', '| sw', await p.evaluate(() => !!navigator.serviceWorker.controller));
await p.waitForTimeout(3000);
await show('before');
await p.evaluate(() => { location.hash = '#scene=1.AAAAAAAA'; });
await p.waitForTimeout(1000);
await p.reload();
for (let i = 0; i < 8; i++) { await p.waitForTimeout(4000); await show(`after ${i}`); }
await s.close();
