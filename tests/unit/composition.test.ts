// Composition plans against schedules worked by hand from the authors' code (CMLoRA's
// pipeline_offline.py / pipeline_async.py index arithmetic, ComposLoRA's callbacks.py), and the
// frequency measures against hand values and float64 DFTs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ContributionCache } from '../../workers/composition/cache.ts';
import { cpuSpectrumMagnitudes, derivedThreshold, dft2d, greyscale, highBand, latentHighBand, pow2Window, profileCutoff, profileImages, radialProfile } from '../../workers/composition/frequency.ts';
import { METHODS } from '../../workers/composition/methods.ts';
import { categoryOrder, profileOrder } from '../../workers/composition/order.ts';
import { resolveComposition, type Partition } from '../../workers/composition/plan.ts';
import { asyncStep, refreshSteps, syncStep } from '../../workers/composition/schedule.ts';
import { switchActive } from '../../workers/composition/switch.ts';
import { featureReuse } from '../../workers/engine/pipeline.ts';
import type { CompositionOptions } from '../../workers/api/contract.ts';
import { Rng } from '../../workers/engine/random.ts';
import { dft2d as dft64 } from '../../workers/reference/fft.ts';

/** Run a method's plans over `steps` steps with the loop's bookkeeping (no model). */
function schedule(options: CompositionOptions, steps: number, count: number, partition?: Partition, latentAmplitudes?: number[]) {
  const o = resolveComposition(options, steps, count);
  if (Number.isNaN(o.threshold)) o.threshold = 0.5;
  const order = partition ? [...partition.high, ...partition.low] : Array.from({ length: count }, (_, i) => i);
  const cache = new ContributionCache(count);
  const features = new Array(count).fill(false);
  const rows = [];
  for (let step = 0; step < steps; step++) {
    const plan = METHODS[o.method].plan({ step, steps, count, options: o, order, partition: partition ?? { high: order, low: [] }, latentAmplitude: latentAmplitudes?.[step] ?? Infinity, cache: cache.view(step), features: features.slice() });
    const weight = plan.evaluations.reduce((a, e) => a + e.weight, 0) + plan.cached.reduce((a, c) => a + c.weight, 0);
    assert.ok(Math.abs(weight - 1) < 1e-12, `step ${step}: weights sum to ${weight}`);
    const fresh = plan.evaluations.flatMap((e) => e.loras).sort();
    if (plan.dominant !== null) cache.update(new Map(fresh.map((l) => [l, new Float32Array(1)])), plan.dominant, step);
    for (const e of plan.evaluations) if (e.deep === 'record') features[e.loras[0]] = true;
    rows.push({ fresh, cached: plan.cached.map((c) => c.lora).sort(), dominant: plan.dominant, phase: plan.phase, plan });
  }
  return rows;
}

/** A schedule as "dominant/refresh" per step, '-' for no refresh. */
const cells = (list: { dominant: number; refresh: number | null }[]) => list.map((s) => `${s.dominant}/${s.refresh ?? '-'}`).join(' ');

test("the code's refresh steps: the 2-3-2 pattern, every step, every c steps", () => {
  assert.deepEqual(refreshSteps(20, 0), [0, 2, 4, 6, 7, 10, 13, 16, 17, 19]);
  const long = refreshSteps(220, 0);
  assert.equal(long.length, 92);
  assert.deepEqual(long.slice(0, 3), [0, 2, 4]);
  assert.deepEqual(long.slice(40, 44), [80, 82, 85, 88]);
  assert.deepEqual(long.slice(-3), [214, 216, 218]);
  assert.deepEqual(refreshSteps(7, 1), [0, 1, 2, 3, 4, 5, 6]);
  assert.deepEqual(refreshSteps(10, 3), [0, 3, 6, 9]);
});

test('offline schedule, 3 LoRAs, 20 steps: the dominant moves one place per refresh and is refreshed (tables from the code)', () => {
  const o = { order: [0, 1, 2], high: 3 };
  const want: Record<number, string> = {
    0: '0/0 0/- 1/1 1/- 2/2 2/- 0/0 1/1 1/- 1/- 2/2 2/- 2/- 0/0 0/- 0/- 1/1 2/2 2/- 0/0',
    1: '0/0 1/1 2/2 0/0 1/1 2/2 0/0 1/1 2/2 0/0 1/1 2/2 0/0 1/1 2/2 0/0 1/1 2/2 0/0 1/1',
    2: '0/0 0/- 1/1 1/- 2/2 2/- 0/0 0/- 1/1 1/- 2/2 2/- 0/0 0/- 1/1 1/- 2/2 2/- 0/0 0/-',
    3: '0/0 0/- 0/- 1/1 1/- 1/- 2/2 2/- 2/- 0/0 0/- 0/- 1/1 1/- 1/- 2/2 2/- 2/- 0/0 0/-',
    5: '0/0 0/- 0/- 0/- 0/- 1/1 1/- 1/- 1/- 1/- 2/2 2/- 2/- 2/- 2/- 0/0 0/- 0/- 0/- 0/-',
  };
  for (const [c, row] of Object.entries(want)) assert.equal(cells(Array.from({ length: 20 }, (_, i) => syncStep(i, 'high', o, refreshSteps(20, Number(c))))), row, `cache interval ${c}`);
});

test('offline with a background at 220 steps: after step 120 the dominant goes round the LoRAs from the second and is refreshed (the code writes that refresh into a copy)', () => {
  const o = { order: [0, 1, 2], high: 2 };
  const list = refreshSteps(220, 1);
  const rows = [116, 117, 118, 119, 120, 121, 122, 123, 124].map((i) => syncStep(i, i <= 120 ? 'high' : 'low', o, list));
  // the code's table: 0/0 1/1 0/0 1/1 0/0 2/none 1/none 2/none 1/none
  assert.equal(cells(rows), '0/0 1/1 0/0 1/1 0/0 2/2 1/1 2/2 1/1');
});

test('async schedule: the dominant starts at the last LoRA and moves every 20 of 220 steps; the refresh is the one after it (tables from the code)', () => {
  const o = { order: [0, 1, 2], high: 3 };
  const refresh = new Set(refreshSteps(220, 0));
  const rows = Array.from({ length: 45 }, (_, i) => asyncStep(i, 20, o, refresh));
  assert.ok(rows.slice(0, 20).every((s, i) => s.dominant === 2 && s.refresh === (i % 2 === 0 ? 0 : null)));
  // step 20: the new dominant 0 is refreshed; then the one after it, 1
  assert.deepEqual([rows[20], rows[21], rows[22]].map((s) => [s.dominant, s.refresh]), [[0, 0], [0, null], [0, 1]]);
  assert.deepEqual([rows[40], rows[42], rows[44]].map((s) => [s.dominant, s.refresh]), [[1, 1], [1, 2], [1, 2]]);
  // 20 steps at the code's 20: LoRA 2 leads throughout, only LoRA 0 is refreshed
  const short = Array.from({ length: 20 }, (_, i) => asyncStep(i, 20, o, new Set(refreshSteps(20, 0))));
  assert.ok(short.every((s) => s.dominant === 2 && (s.refresh === null || s.refresh === 0)));
  assert.equal(resolveComposition({ method: 'cmlora' }, 220, 3).switchStep, 20);
  assert.equal(resolveComposition({ method: 'cmlora' }, 20, 3).switchStep, 2);
});

test("LoRA Switch as ComposLoRA's callback: the first LoRA gets switchStep + 1 steps, then switchStep each", () => {
  assert.deepEqual(Array.from({ length: 21 }, (_, s) => switchActive(s, 5, 3)).join(''), '000000111112222200000');
  assert.deepEqual(schedule({ method: 'switch' }, 13, 3).map((r) => r.fresh[0]), [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2]);
});

test('prompt only and merge run the UNet once per step; composite once per LoRA, averaged', () => {
  for (const [method, fresh] of [['none', []], ['merge', [0, 1, 2]]] as const) {
    for (const r of schedule({ method }, 4, 3)) {
      assert.equal(r.plan.evaluations.length, 1);
      assert.deepEqual(r.fresh, fresh);
    }
  }
  for (const r of schedule({ method: 'composite' }, 3, 4)) assert.deepEqual(r.plan.evaluations.map((e) => [e.loras, e.weight]), [[[0], 0.25], [[1], 0.25], [[2], 0.25], [[3], 0.25]]);
});

test('cmlora with the deep cache: every LoRA every step, the whole UNet at its first run and its refresh, the shallow part otherwise', () => {
  // async, 10 steps, switch at 5, refresh every 2 steps: LoRA 0 refreshed at 0, 2, 4; LoRA 1 at 6, 8
  const rows = schedule({ method: 'cmlora', switchStep: 5, cacheInterval: 2 }, 10, 3);
  const deep = rows.map((r) => r.plan.evaluations.map((e) => (e.deep === 'record' ? 'R' : 'r')).join(''));
  assert.deepEqual(deep, ['RRR', 'rrr', 'Rrr', 'rrr', 'Rrr', 'rrr', 'rRr', 'rrr', 'rRr', 'rrr']);
  assert.deepEqual(rows.map((r) => r.dominant), [2, 2, 2, 2, 2, 0, 0, 0, 0, 0]);
  // w_dom: c = N - 0.5 = 2.5, less 0.5 at the first switch (the paper's decay, applied)
  const dom = (r: (typeof rows)[number]) => r.plan.evaluations.find((e) => e.loras[0] === r.dominant)!.weight;
  assert.ok(Math.abs(dom(rows[0]) - 2.5 / 4.5) < 1e-12);
  assert.ok(Math.abs(dom(rows[5]) - 2 / 4) < 1e-12);
  // interval 1 (the code: no caching) and cache off: the whole UNet, nothing kept
  for (const o of [{ cacheInterval: 1 }, { cache: 'off' as const }]) assert.ok(schedule({ method: 'cmlora', ...o }, 4, 3).every((r) => r.plan.evaluations.every((e) => e.deep === undefined)));
});

test('cmlora offline: the dominant is the refreshed LoRA; the high phase ends at step 120 of 220 (scaled); w_dom fixed', () => {
  const rows = schedule({ method: 'cmlora', async: false, cacheInterval: 2 }, 11, 3, { high: [0, 1], low: [2] });
  // the high phase: steps 0..round(0.545 * 11) = 6
  assert.deepEqual(rows.map((r) => r.phase), ['high', 'high', 'high', 'high', 'high', 'high', 'high', 'low', 'low', 'low', 'low']);
  // refreshes at 0, 2, 4, 6 in the high group (0, 1, 0, 1); from step 7 the dominant is
  // 1 + (indicator - 1) % 2 of the order: 2 at 7 (indicator 4), refresh 1 + 4 % 2 = 1 at 8, 2 at 10
  assert.deepEqual(rows.map((r) => r.dominant), [0, 0, 1, 1, 0, 0, 1, 2, 1, 1, 2]);
  assert.deepEqual(rows.map((r) => r.plan.refreshed), [0, null, 1, null, 0, null, 1, null, 1, null, 2]);
  for (const r of rows) assert.ok(Math.abs(r.plan.evaluations.find((e) => e.loras[0] === r.dominant)!.weight - 2.5 / 4.5) < 1e-12);
});

test('cmlora online: the phase follows the latent measure against the threshold (step 0 high, as the code starts m at 1)', () => {
  const rows = schedule({ method: 'cmlora', async: false, profiling: 'online', threshold: 0.68, cacheInterval: 1 }, 5, 3, { high: [1, 0], low: [2] }, [Infinity, 0.9, 0.7, 0.6, 0.5]);
  assert.deepEqual(rows.map((r) => r.phase), ['high', 'high', 'high', 'low', 'low']);
  // order [1, 0, 2]: high phase round [1, 0]; low phase round the order from the second, [0, 2]
  assert.deepEqual(rows.map((r) => r.dominant), [1, 0, 1, 2, 0]);
});

test('cmlora prediction cache (ours): non-dominant LoRAs reuse their offset per group interval; the dominant always runs', () => {
  const rows = schedule({ method: 'cmlora', cache: 'prediction', switchStep: 5, cacheHigh: 2, cacheLow: 3 }, 10, 3, { high: [0, 1], low: [2] });
  assert.deepEqual(rows.map((r) => r.dominant), [2, 2, 2, 2, 2, 0, 0, 0, 0, 0]);
  assert.deepEqual(rows.map((r) => r.fresh), [[0, 1, 2], [2], [0, 1, 2], [2], [0, 1, 2], [0, 2], [0, 1], [0], [0, 1, 2], [0]]);
  assert.deepEqual(rows.map((r) => r.cached), [[], [0, 1], [], [0, 1], [], [1], [2], [1, 2], [], [1, 2]]);
});

test('order and groups: by category (backgrounds last and low), by profile (high first, the high group at or above the mean)', () => {
  assert.deepEqual(categoryOrder(['background', 'character', 'style', 'background', 'object']), { order: [1, 2, 4, 0, 3], partition: { high: [1, 2, 4], low: [0, 3] } });
  assert.deepEqual(categoryOrder(['character', 'clothing']), { order: [0, 1], partition: { high: [0, 1], low: [] } });
  assert.deepEqual(profileOrder([0.5, 0.9, 0.7]), { order: [1, 2, 0], partition: { high: [1, 2], low: [0] } });
  assert.deepEqual(profileOrder([0.3, 0.3]), { order: [0, 1], partition: { high: [0, 1], low: [] } });
});

test('options: the code defaults and the checks', () => {
  const o = resolveComposition({ method: 'cmlora' }, 20, 3);
  assert.deepEqual([o.async, o.cache, o.cacheInterval, o.partition, o.cutoff, o.domCoeff, o.deepCacheInterval, o.profileSteps], [true, 'deep', 0, 'category', 72, 2.5, 1, 20]);
  assert.ok(Math.abs(o.highPhase - 120 / 220) < 1e-15);
  assert.ok(Number.isNaN(o.threshold), 'derived by the pipeline');
  assert.equal(resolveComposition(undefined, 20, 2).method, 'merge');
  assert.equal(resolveComposition({ method: 'switch' }, 20, 2).switchStep, 5);
  assert.throws(() => resolveComposition({ method: 'blend' as 'merge' }, 20, 2), /Unknown composition method "blend"/);
  assert.throws(() => resolveComposition({ method: 'cmlora', cache: 'latent' as 'deep' }, 20, 2), /cache must be deep or prediction or off/);
  assert.throws(() => resolveComposition({ method: 'cmlora', partition: 'random' as 'profile' }, 20, 2), /partition must be category or profile/);
  assert.throws(() => resolveComposition({ method: 'merge', deepCacheInterval: 0 }, 20, 2), /deepCacheInterval must be a whole number from 1/);
});

test("the radial profile by hand; the high band; the notebook's cutoff scaled; greyscale truncates", () => {
  // a 4 x 4 spectrum, rows scaled 8, 2, 4, 2 and columns 1, 1, 0.5, 1; radius floor(sqrt(fu^2 + fv^2)),
  // fu = min(u, 4 - u): bin 0 is (0,0); bin 1 the 4 axis neighbours and the 4 diagonals (sqrt 2);
  // bin 2 the 7 others (2, sqrt 5, sqrt 8)
  const mags = Float64Array.from({ length: 16 }, (_, i) => [8, 2, 4, 2][Math.floor(i / 4)] * [1, 1, 0.5, 1][i % 4]);
  const p = radialProfile(mags, 4, 4, false);
  const bin1 = (8 + 8 + 2 + 2 + 2 + 2 + 2 + 2) / 8;
  const bin2 = (4 + 4 + 1 + 4 + 2 + 4 + 1) / 7;
  assert.deepEqual(Array.from(p), [1, bin1 / 8, bin2 / 8]);
  assert.ok(Math.abs(highBand(p, 1) - (bin1 / 8 + bin2 / 8) / 2) < 1e-15);
  assert.equal(highBand(p, 9), 0);
  assert.deepEqual([512, 64, 768, 1024].map(profileCutoff), [72, 9, 108, 144]);
  assert.deepEqual(Array.from(greyscale(Uint8ClampedArray.from([1, 2, 2, 255, 255, 254, 254, 255]), 2, 1)), [1, 254]);
  // the log profile: log(|F| + 1e-8) per cell, then the same binning
  const lp = radialProfile(mags, 4, 4, true);
  assert.ok(Math.abs(lp[1] - (2 * Math.log(8 + 1e-8) + 6 * Math.log(2 + 1e-8)) / 8 / Math.log(8 + 1e-8)) < 1e-12);
});

test('spectra: the CPU magnitudes equal a float64 DFT; the online measure of noise is high and of a smooth latent low; the derived threshold lies between', () => {
  const img = new Rng(3).normal(8 * 16);
  const m = cpuSpectrumMagnitudes(img, 1, 8, 16);
  const ref = dft64(img, 8, 16);
  for (let k = 0; k < 128; k++) assert.ok(Math.abs(m[k] - Math.hypot(ref[2 * k], ref[2 * k + 1])) < 1e-9);
  // our complex DFT against the reference, and its inverse
  const re = Float64Array.from(img);
  const im = new Float64Array(128);
  dft2d(re, im, 8, 16);
  for (let k = 0; k < 128; k++) assert.ok(Math.abs(re[k] - ref[2 * k]) < 1e-9 && Math.abs(im[k] - ref[2 * k + 1]) < 1e-9);
  dft2d(re, im, 8, 16, true);
  for (let k = 0; k < 128; k++) assert.ok(Math.abs(re[k] - img[k]) < 1e-9);
  const noise = latentHighBand(new Rng(4).normal(4 * 64 * 64), 4, 64, 64, 9);
  const smooth = Float32Array.from({ length: 4 * 64 * 64 }, (_, i) => Math.sin(((i % 64) / 64) * 2 * Math.PI) + Math.cos((Math.floor(i / 64) % 64) / 10));
  const clean = latentHighBand(smooth, 4, 64, 64, 9);
  const g = derivedThreshold(500, { height: 64, width: 64 }, 9);
  assert.ok(clean < g && g < noise, `smooth ${clean}, threshold ${g}, noise ${noise}`);
  assert.equal(derivedThreshold(500, { height: 64, width: 64 }, 9), g, 'deterministic');
  assert.ok(derivedThreshold(900, { height: 64, width: 64 }, 9) > g, 'noisier steps measure higher');
  assert.deepEqual([1, 2, 3, 8, 12, 96, 1000].map(pow2Window), [1, 2, 2, 8, 8, 64, 512]);
  const latent = Float32Array.from({ length: 36 }, (_, i) => i);
  assert.deepEqual(Array.from(profileImages([latent], 2, 3, 6).data), [10, 11, 12, 13, 16, 17, 18, 19]);
});

test("the research series: the share of earlier steps whose features are alike (cosine at least 0.9) with the latest", () => {
  const a = Float32Array.from([1, 0, 0]);
  const b = Float32Array.from([0.95, 0.31, 0]);
  const c = Float32Array.from([0, 1, 0]);
  assert.equal(featureReuse([a]), null);
  assert.equal(featureReuse([a, b]), 1);
  assert.equal(featureReuse([a, c, b]), 0.5);
  assert.equal(featureReuse([a, b, c]), 0);
});
