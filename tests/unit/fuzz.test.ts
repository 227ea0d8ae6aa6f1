// The fuzz properties at the size `npm test` affords (`npm run fuzz` runs them larger). A fixed seed
// per target keeps a failure reproducible; the counts of each outcome show the mutations reach past
// the first check into the deeper ones.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { exhaustiveLinkDamage, FUZZ_TARGETS } from '../fuzz/properties.ts';

const RUNS: Record<keyof typeof FUZZ_TARGETS, number> = { safetensors: 300, checkpoint: 60, lora: 150, png: 200, 'share-link': 200, pth: 150 };

for (const [name, fuzz] of Object.entries(FUZZ_TARGETS)) {
  test(`fuzz: ${name} input ends in a named error or a sound result`, async () => {
    const report = await fuzz(RUNS[name as keyof typeof RUNS], 20261125);
    assert.equal(report.cases, RUNS[name as keyof typeof RUNS]);
    // the mutations must reach many distinct checks, not one early refusal
    assert.ok(report.reasons >= 5, `only ${report.reasons} kinds of refusal: ${JSON.stringify(report.outcomes)}`);
    if (report.largestReadShare !== undefined) assert.ok(report.largestReadShare <= 1, `a read of ${report.largestReadShare}x the file`);
  });
}

test('fuzz: every one-character deletion and every truncation of a share link is decoded or refused by name', async () => {
  const report = await exhaustiveLinkDamage(7, false);
  assert.ok(report.cases > 200);
  assert.ok((report.outcomes.ShareLinkError ?? 0) > report.cases / 2, JSON.stringify(report.outcomes));
  assert.ok(report.reasons >= 3, `${report.reasons} kinds of refusal`);
});

test('fuzz: NaN and Inf weights in checkpoints and LoRAs are caught by name, never passed on', async () => {
  for (const name of ['checkpoint', 'lora'] as const) {
    const report = await FUZZ_TARGETS[name](200, 99);
    assert.ok((report.outcomes.NonFiniteWeightsError ?? 0) > 0, `${name}: ${JSON.stringify(report.outcomes)}`);
  }
});
