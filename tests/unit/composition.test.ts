// Composition plans against hand-worked schedules, and the frequency helpers against float64 DFTs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ContributionCache } from '../../workers/composition/cache.ts';
import { cpuRelativeAmplitudes, orderAndPartition, pow2Window, profileImages } from '../../workers/composition/frequency.ts';
import { METHODS } from '../../workers/composition/methods.ts';
import { resolveComposition, type Partition } from '../../workers/composition/plan.ts';
import type { CompositionOptions } from '../../workers/api/contract.ts';
import { Rng } from '../../workers/engine/random.ts';
import { bandAmplitudes64, dft2d } from '../../workers/reference/fft.ts';

/** Run a method's plans over `steps` steps with the loop's cache bookkeeping (no model). */
function schedule(options: CompositionOptions, steps: number, count: number, partition?: Partition, latentAmplitudes?: number[]) {
  const o = resolveComposition(options, steps, count);
  const order = partition ? [...partition.high, ...partition.low] : Array.from({ length: count }, (_, i) => i);
  const cache = new ContributionCache(count);
  const rows = [];
  for (let step = 0; step < steps; step++) {
    const plan = METHODS[o.method].plan({
      step,
      steps,
      count,
      options: o,
      order,
      partition: partition ?? { high: order, low: [] },
      latentAmplitude: latentAmplitudes?.[step] ?? 1,
      cache: cache.view(step),
    });
    const weight = plan.evaluations.reduce((a, e) => a + e.weight, 0) + plan.cached.reduce((a, c) => a + c.weight, 0);
    assert.ok(Math.abs(weight - 1) < 1e-12, `step ${step}: weights sum to ${weight}`);
    const fresh = plan.evaluations.flatMap((e) => e.loras).sort();
    if (plan.dominant !== null) cache.update(new Map(fresh.map((l) => [l, new Float32Array(1)])), plan.dominant, step);
    rows.push({ fresh, cached: plan.cached.map((c) => c.lora).sort(), dominant: plan.dominant, phase: plan.phase, plan });
  }
  return rows;
}

test('prompt only and merge run the UNet once per step; composite once per LoRA, averaged', () => {
  for (const [method, fresh] of [['none', []], ['merge', [0, 1, 2]]] as const) {
    for (const r of schedule({ method }, 4, 3)) {
      assert.equal(r.plan.evaluations.length, 1);
      assert.deepEqual(r.fresh, fresh);
    }
  }
  for (const r of schedule({ method: 'composite' }, 3, 4)) {
    assert.deepEqual(r.plan.evaluations.map((e) => [e.loras, e.weight]), [[[0], 0.25], [[1], 0.25], [[2], 0.25], [[3], 0.25]]);
  }
});

test('LoRA Switch cycles one LoRA every switchStep steps', () => {
  assert.deepEqual(schedule({ method: 'switch', switchStep: 2 }, 9, 3).map((r) => r.fresh), [[0], [0], [1], [1], [2], [2], [0], [0], [1]]);
  assert.deepEqual(schedule({ method: 'switch' }, 12, 2).map((r) => r.fresh[0]), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]);
});

test('CMLoRA (offline, async): dominant by phase, decaying w_dom, per-group cache intervals', () => {
  // worked by hand: N = 3, high group {0, 1}, low group {2}; phase switch at step 6 of 10;
  // dominant changes every 5 steps; high LoRAs recomputed every 2 steps, low every 3
  const rows = schedule({ method: 'cmlora', switchStep: 5, cacheHigh: 2, cacheLow: 3, highPhase: 0.6 }, 10, 3, { high: [0, 1], low: [2] });
  assert.deepEqual(rows.map((r) => r.dominant), [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
  assert.deepEqual(rows.map((r) => r.phase), ['high', 'high', 'high', 'high', 'high', 'high', 'low', 'low', 'low', 'low']);
  // at the switch (step 5) the old dominant has no entry and runs; LoRA 2's offset, taken against
  // LoRA 0, is still young enough to be reused through LoRA 0's fresh prediction
  assert.deepEqual(rows.map((r) => r.fresh), [[0, 1, 2], [0], [0, 1], [0, 2], [0, 1], [0, 1], [0, 1, 2], [0], [0, 1], [0, 2]]);
  assert.deepEqual(rows.map((r) => r.cached), [[], [1, 2], [2], [1], [2], [2], [], [1, 2], [2], [1]]);
  // w_dom = c / (c + N - 1) with c = N - 0.5 = 2.5 before the first switch and 2.5 - 0.5 after it
  const dom = (r: (typeof rows)[number]) => r.plan.evaluations.find((e) => e.loras[0] === r.dominant)!.weight;
  assert.ok(Math.abs(dom(rows[0]) - 2.5 / 4.5) < 1e-12);
  assert.ok(Math.abs(dom(rows[5]) - 2 / 4) < 1e-12);
  assert.ok(Math.abs(rows[7].plan.cached[0].weight - 1 / 4) < 1e-12);
});

test('CMLoRA: w_dom decays by halves to plain averaging; the sync variant keeps it and follows the cache', () => {
  const rows = schedule({ method: 'cmlora', switchStep: 1, cacheHigh: 1, cacheLow: 1 }, 6, 4);
  const c = [3.5, 3, 2.75, 2.625, 2.5625, 2.53125];
  rows.forEach((r, k) => {
    assert.equal(r.dominant, k % 4);
    assert.equal(r.plan.cached.length, 0);
    assert.ok(Math.abs(r.plan.evaluations[0].weight - c[k] / (c[k] + 3)) < 1e-12, `step ${k}`);
  });
  // with N = 2 the coefficient (1.5) would fall below 1: it stops at 1, equal weights
  const two = schedule({ method: 'cmlora', switchStep: 1 }, 4, 2);
  two.forEach((r, k) => assert.ok(Math.abs(r.plan.evaluations[0].weight - [0.6, 0.5, 0.5, 0.5][k]) < 1e-12));
  const sync = schedule({ method: 'cmlora', async: false, cacheHigh: 3, cacheLow: 3 }, 7, 3);
  assert.deepEqual(sync.map((r) => r.dominant), [0, 0, 0, 1, 1, 1, 2]);
  for (const r of sync) assert.ok(Math.abs(r.plan.evaluations[0].weight - 2.5 / 4.5) < 1e-12);
});

test('CMLoRA online: the phase follows the latent amplitude against the threshold', () => {
  const amps = [1.0, 0.9, 0.7, 0.6, 0.5];
  const rows = schedule({ method: 'cmlora', profiling: 'online', threshold: 0.68, switchStep: 1, cacheHigh: 1, cacheLow: 1 }, 5, 3, { high: [1], low: [0, 2] }, amps);
  assert.deepEqual(rows.map((r) => r.phase), ['high', 'high', 'high', 'low', 'low']);
  // high phase: only LoRA 1 can lead; low phase: the low group first, then the high one, by switch count
  assert.deepEqual(rows.map((r) => r.dominant), [1, 1, 1, 0, 2]);
});

test('order and partition from amplitudes; option checks', () => {
  assert.deepEqual(orderAndPartition([0.5, 0.9, 0.7]), { order: [1, 2, 0], partition: { high: [1, 2], low: [0] } });
  assert.deepEqual(orderAndPartition([0.3, 0.3]), { order: [0, 1], partition: { high: [0, 1], low: [] } });
  assert.deepEqual(orderAndPartition([0.2, 0.1, 0.1, 0.1]), { order: [0, 1, 2, 3], partition: { high: [0], low: [1, 2, 3] } });
  assert.equal(resolveComposition(undefined, 20, 2).method, 'merge');
  assert.equal(resolveComposition(undefined, 20, 0).method, 'none');
  assert.equal(resolveComposition({ method: 'cmlora' }, 30, 5).switchStep, 3);
  assert.equal(resolveComposition({ method: 'cmlora' }, 30, 5).domCoeff, 4.5);
  assert.throws(() => resolveComposition({ method: 'blend' as 'merge' }, 20, 2), /Unknown composition method "blend"/);
  assert.throws(() => resolveComposition({ method: 'cmlora', cacheLow: 0 }, 20, 2), /cacheLow must be a whole number from 1/);
  assert.throws(() => resolveComposition({ method: 'cmlora', cutoff: Number.NaN }, 20, 2), /cutoff must be a number/);
});

test('profile images: channel mean over the centred power-of-two window', () => {
  assert.deepEqual([1, 2, 3, 8, 12, 96, 1000].map(pow2Window), [1, 2, 2, 8, 8, 64, 512]);
  // 2 channels, 3 x 6 latent -> 2 x 4 window at rows 0-1, columns 1-4
  const latent = Float32Array.from({ length: 36 }, (_, i) => i);
  const img = profileImages([latent], 2, 3, 6);
  assert.equal(img.height, 2);
  assert.equal(img.width, 4);
  const want = [];
  for (let y = 0; y < 2; y++) for (let x = 1; x < 5; x++) want.push((y * 6 + x + (18 + y * 6 + x)) / 2);
  assert.deepEqual(Array.from(img.data), want);
});

test('the CPU relative amplitude matches the float64 DFT band means', () => {
  for (const [count, h, w, cutoff] of [[2, 8, 8, 0.14], [1, 4, 16, 0.25], [3, 16, 16, 0.3]]) {
    const images = new Rng(h * w + count).normal(count * h * w);
    const got = cpuRelativeAmplitudes(images, count, h, w, cutoff);
    for (let b = 0; b < count; b++) {
      const ref = bandAmplitudes64(dft2d(images.subarray(b * h * w, (b + 1) * h * w), h, w), h, w, cutoff);
      assert.ok(Math.abs(got[b] - ref.high / ref.all) < 1e-12, `${h}x${w} image ${b}: ${got[b]} vs ${ref.high / ref.all}`);
    }
  }
});
