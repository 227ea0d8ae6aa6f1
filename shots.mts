import { openStudio } from './e2e/harness.ts';
const s = await openStudio(4870);
const sizes = [[390, 844], [768, 1024], [1280, 800], [1920, 1080]];
for (const [id, v] of [["width", "64"], ["height", "64"], ["steps", "2"]]) await s.page.getByTestId(id).fill(v);
for (const [w, h] of sizes) {
  await s.page.setViewportSize({ width: w, height: h });
  await s.page.waitForTimeout(300);
  await s.page.screenshot({ path: `/tmp/shot-${w}.png`, fullPage: false });
}
if (process.argv[2] === 'gen') {
  await s.page.setViewportSize({ width: 1280, height: 800 });
  await s.page.getByTestId('generate').click();
  await s.page.getByTestId('status').filter({ hasText: 'Ready' }).waitFor({ timeout: 300_000 });
  for (const [w, h] of sizes) {
    await s.page.setViewportSize({ width: w, height: h });
    await s.page.waitForTimeout(300);
    await s.page.screenshot({ path: `/tmp/shot-gen-${w}.png`, fullPage: false });
  }
}
await s.close();
