// TCD and Heun against diffusers' TCDScheduler and HeunDiscreteScheduler. Expected arrays are the
// diffusers formulas worked in float64 (numpy) apart from this code; the full loops reproduce the
// golden sums of diffusers' own scheduler tests (tests/schedulers/test_scheduler_tcd.py and
// test_scheduler_heun.py), which ran in float32.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { alphasCumprod } from '../../workers/schedulers/common.ts';
import { HeunScheduler, heunTimesteps } from '../../workers/schedulers/heun.ts';
import { createScheduler, SCHEDULERS } from '../../workers/schedulers/registry.ts';
import { TcdScheduler, tcdIntermediate, tcdTimesteps } from '../../workers/schedulers/tcd.ts';
import type { LinearStep } from '../../workers/schedulers/common.ts';
import { Rng } from '../../workers/engine/random.ts';

const close = (got: number, want: number, tol: number, what: string) => assert.ok(Math.abs(got - want) <= tol, `${what}: ${got} vs ${want}`);
const sumAbs = (v: ArrayLike<number>) => Array.from(v).reduce((s, x) => s + Math.abs(x), 0);

// diffusers' dummy_sample_deter and dummy_noise_deter, elementwise: k / 768 and (767 - k) / 768
// (their permutation does not matter to an elementwise sampler and a sum of absolute values)
const deterSample = () => Float32Array.from({ length: 768 }, (_, k) => k / 768);
const deterNoise = () => Float32Array.from({ length: 768 }, (_, k) => (767 - k) / 768);
// diffusers' dummy_model: sample * t / (t + 1)
const dummyModel = (x: Float32Array, t: number) => x.map((v) => (v * t) / (t + 1));

test('TCD timesteps are LCM\'s picks from the 50-step distillation schedule', () => {
  assert.deepEqual(tcdTimesteps(1), [999]);
  assert.deepEqual(tcdTimesteps(2), [999, 499]);
  assert.deepEqual(tcdTimesteps(4), [999, 759, 499, 259]);
  assert.deepEqual(tcdTimesteps(6), [999, 839, 679, 499, 339, 179]);
  assert.deepEqual(tcdTimesteps(8), [999, 879, 759, 639, 499, 379, 259, 139]);
  assert.deepEqual(tcdTimesteps(10), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
  assert.throws(() => tcdTimesteps(51), /TCD takes at most 50 steps/);
  assert.throws(() => new TcdScheduler(4, 1.5), /gamma must be from 0 to 1/);
  const s = new TcdScheduler(4);
  assert.equal(s.gamma, 0.3);
  assert.equal(s.evaluations, 4);
  // s = floor(0.7 * t_next), and 0 after the last step
  assert.deepEqual([759, 499, 259, 0].map((t) => tcdIntermediate(t, 0.3)), [531, 349, 181, 0]);
});

test('a TCD step by hand: back to s along DDIM, forward to t_next with fresh noise; the last step draws none', () => {
  const ac = alphasCumprod();
  const s = new TcdScheduler(4);
  // inputs exact in float32, so float64 by hand and numpy see the same numbers
  const x = Float32Array.from([0.5, -1.25]);
  const eps = Float32Array.from([0.125, 0.375]);
  const z = Float32Array.from([1, -1]);
  // step 1: t = 759, t_next = 499, s = 349
  const [a, aS, aN] = [ac[759], ac[349], ac[499]];
  const hand = [0, 1].map((k) => {
    const x0 = (x[k] - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a);
    const atS = Math.sqrt(aS) * x0 + Math.sqrt(1 - aS) * eps[k];
    return Math.sqrt(aN / aS) * atS + Math.sqrt(1 - aN / aS) * z[k];
  });
  const numpy = [1.6106897060857843, -4.203581574563858];
  const got = s.step(eps, 1, x, () => z);
  [0, 1].forEach((k) => {
    close(hand[k], numpy[k], 1e-12, 'hand vs numpy');
    close(got[k], hand[k], 1e-6, `step 1 [${k}]`);
  });
  // the last step (t = 259): s = 0, no noise, x at t = 0 of the DDIM trajectory
  const last = s.step(eps, 3, x, () => assert.fail('TCD draws no noise at its last step'));
  [0.5294339673261635, -1.7979042717192024].forEach((w, k) => close(last[k], w, 1e-6, `last [${k}]`));
});

test('TCD with gamma = 0 reproduces diffusers\' deterministic full-loop golden sums', () => {
  for (const [steps, sum, mean] of [[1, 29.8715, 0.0389], [10, 181.204, 0.2359]]) {
    const s = new TcdScheduler(steps, 0);
    let x: Float32Array = deterSample();
    for (let i = 0; i < s.timesteps.length; i++) x = s.step(dummyModel(x, s.timesteps[i]), i, x, () => assert.fail('gamma = 0 draws no noise'));
    close(sumAbs(x), sum, 1e-3, `${steps} steps: sum`);
    close(sumAbs(x) / x.length, mean, 1e-3, `${steps} steps: mean`);
  }
});

test('Heun interleaves timesteps and sigmas as diffusers: 2N - 1 evaluations', () => {
  const s5 = [14.614641229333639, 4.08608803547124, 4.08608803547124, 1.6155825101612464, 1.6155825101612464, 0.6951504277059113, 0.6951504277059113, 0.029167158151720367, 0.029167158151720367, 0];
  const cases: [number, number[], number[]][] = [
    [1, [0], [0.029167158151720367, 0]],
    [2, [999, 0, 0], [14.614641229333639, 0.029167158151720367, 0.029167158151720367, 0]],
    [3, [999, 499.5, 499.5, 0, 0], [14.614641229333639, 1.6155825101612464, 1.6155825101612464, 0.029167158151720367, 0.029167158151720367, 0]],
    [5, [999, 749.25, 749.25, 499.5, 499.5, 249.75, 249.75, 0, 0], s5],
  ];
  for (const [n, ts, sig] of cases) {
    const h = new HeunScheduler(n);
    assert.deepEqual(h.timesteps, ts);
    assert.equal(h.evaluations, 2 * n - 1);
    assert.equal(h.sigmas.length, 2 * n);
    h.sigmas.forEach((v, i) => close(v, sig[i], 1e-12, `${n} steps: sigma ${i}`));
    close(h.initNoiseSigma, Math.max(...sig), 1e-12, `${n} steps: init sigma`);
  }
  assert.deepEqual(heunTimesteps(4, 'leading', 1000, 1), [751, 501, 251, 1]);
  assert.deepEqual(heunTimesteps(4, 'trailing'), [999, 749, 499, 249]);
  const h = new HeunScheduler(3);
  assert.equal(h.order, 2);
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => h.isCorrector(i)), [false, true, false, true, false]);
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => h.stepOf(i)), [0, 0, 1, 1, 2]);
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => h.endsStep(i)), [false, true, false, true, true]);
  close(h.scaleModelInput(new Float32Array([2]), 1)[0], 2 / Math.sqrt(1.6155825101612464 ** 2 + 1), 1e-6, 'input scaling at the corrector');
});

test('a Heun step by hand: Euler predictor, then the corrector from the predictor\'s start with the mean derivative', () => {
  const h = new HeunScheduler(3);
  const [s0, s1] = [h.sigmas[0], h.sigmas[1]];
  const x = Float32Array.from([7.25, -18.5]);
  const e1 = Float32Array.from([0.125, 0.375]);
  const e2 = Float32Array.from([-0.25, 0.5]);
  const dt = s1 - s0;
  const predicted = h.step(e1, 0, x);
  const corrected = h.step(e2, 1, predicted);
  const numpy = { predicted: [5.6251176601034505, -23.374647019689647], corrected: [8.062441169948274, -24.187088189637922] };
  [0, 1].forEach((k) => {
    close(x[k] + dt * e1[k], numpy.predicted[k], 1e-12, 'hand vs numpy');
    close(x[k] + (dt * (e1[k] + e2[k])) / 2, numpy.corrected[k], 1e-12, 'hand vs numpy');
    close(predicted[k], x[k] + dt * e1[k], 1e-5, `predictor [${k}]`);
    close(corrected[k], x[k] + (dt * (e1[k] + e2[k])) / 2, 1e-5, `corrector [${k}]`);
    close(corrected[k], numpy.corrected[k], 1e-5, `corrector vs numpy [${k}]`);
  });
  assert.throws(() => new HeunScheduler(3).step(e2, 1, x), /corrector and needs the predictor of evaluation 0/);
});

test('Heun with oracle noise lands on x0 + sigma * n after every evaluation and ends at x0', () => {
  const h = new HeunScheduler(6);
  const rng = new Rng(5);
  const x0 = rng.normal(32);
  const n = rng.normal(32);
  let x: Float32Array = x0.map((v, k) => v + h.sigmas[0] * n[k]);
  for (let i = 0; i < h.evaluations; i++) {
    x = h.step(n, i, x);
    x.forEach((v, k) => close(v, x0[k] + h.sigmas[i + 1] * n[k], 1e-4, `evaluation ${i}`));
  }
});

// diffusers' Heun tests use 1100 training steps of linear betas 0.0001..0.02
function linearBetaSigmas(): Float64Array {
  const n = 1100;
  const out = new Float64Array(n);
  let prod = 1;
  for (let i = 0; i < n; i++) {
    prod *= 1 - (0.0001 + ((0.02 - 0.0001) * i) / (n - 1));
    out[i] = Math.sqrt((1 - prod) / prod);
  }
  return out;
}

test("Heun reproduces diffusers' full-loop golden sums, with and without a part-way start", () => {
  // their loop passes the scaled model input on to step(), so we do too
  const run = (tStart: number) => {
    const h = new HeunScheduler(10, 'linspace', linearBetaSigmas());
    const begin = tStart * h.order;
    h.begin = begin;
    let x: Float32Array = deterSample().map((v) => v * h.initNoiseSigma);
    if (tStart > 0) x = h.addNoise(x, deterNoise(), begin);
    for (let i = begin; i < h.evaluations; i++) {
      x = h.scaleModelInput(x, i);
      x = h.step(dummyModel(x, h.timesteps[i]), i, x);
    }
    return sumAbs(x);
  };
  close(run(0), 0.1233, 1e-2, 'no noise: sum');
  close(run(0) / 768, 0.0002, 1e-3, 'no noise: mean');
  // float32 there, float64 here: 75074.865 against their 75074.8906
  close(run(8), 75074.8906, 75074.8906 * 1e-6, 'from t_start = 8: sum');
});

test('addNoise is the forward process at evaluation i: TCD sqrt(ac) x0 + sqrt(1 - ac) n, Heun x0 + sigma n', () => {
  const ac = alphasCumprod();
  const x0 = Float32Array.from([0.25, -0.5, 1]);
  const n = Float32Array.from([1, 0.5, -2]);
  const t = new TcdScheduler(4);
  const noisy = t.addNoise(x0, n, 2);
  x0.forEach((v, k) => close(noisy[k], Math.sqrt(ac[499]) * v + Math.sqrt(1 - ac[499]) * n[k], 1e-6, `TCD [${k}]`));
  const h = new HeunScheduler(5);
  const heun = h.addNoise(x0, n, 4);
  x0.forEach((v, k) => close(heun[k], v + 1.6155825101612464 * n[k], 1e-6, `Heun [${k}]`));
  // the predicted x0 of the noised sample with its own noise is x0 again
  const back = h.predictOriginal(n, 4, heun);
  x0.forEach((v, k) => close(back[k], v, 1e-6, `Heun x0 [${k}]`));
  const tBack = t.predictOriginal(n, 2, noisy);
  x0.forEach((v, k) => close(tBack[k], v, 1e-5, `TCD x0 [${k}]`));
});

/** Runs `linear(i)` the way the GPU loop does (memory: the previous evaluation's x0) beside `step`. */
function checkLinear(s: { begin: number; timesteps: number[]; linear(i: number): LinearStep; step(eps: Float32Array, i: number, x: Float32Array, noise: () => Float32Array): Float32Array; scaleModelInput(x: Float32Array, i: number): Float32Array; inputScale(i: number): number }, what: string, seed: number): void {
  const n = 64;
  const rng = new Rng(seed);
  let x = rng.normal(n);
  let memory = new Float64Array(n);
  for (let i = s.begin; i < s.timesteps.length; i++) {
    const eps = rng.normal(n);
    const z = rng.normal(n);
    const k = s.linear(i);
    let drew = false;
    const expected = s.step(eps, i, x, () => ((drew = true), z));
    assert.equal(k.noise, drew, `${what} evaluation ${i}: draws noise as step() does`);
    const x0 = Float64Array.from(x, (v, j) => k.p * v + k.q * eps[j]);
    for (let j = 0; j < n; j++) {
      const got = k.a * x[j] + k.b * eps[j] + k.c * x0[j] + k.d * memory[j] + k.e * z[j];
      // Heun's corrector recovers the predictor's eps as (x - x0') / sigma, so the float32 rounding of
      // the latent x (at most 2^-24 |x|) comes back times a = 1 - d (see HeunScheduler.linear); d is 0
      // everywhere else, which leaves 1e-6
      const tol = 1e-6 * Math.max(1, Math.abs(expected[j])) + Math.abs(k.d) * (1 + Math.abs(k.d)) * 2 ** -23 * Math.abs(x[j]);
      assert.ok(Math.abs(got - expected[j]) <= tol, `${what} evaluation ${i} [${j}]: ${got} vs ${expected[j]}`);
    }
    const scaled = s.scaleModelInput(x, i);
    assert.ok(Math.abs(scaled[0] - x[0] * s.inputScale(i)) <= 1e-6 * Math.abs(scaled[0]) + 1e-7);
    memory = x0;
    x = expected;
  }
}

test("TCD and Heun as linear maps (the GPU loop's form) take the same steps as their step()", () => {
  for (const steps of [1, 2, 4, 8]) for (const gamma of [0, 0.3, 1]) checkLinear(new TcdScheduler(steps, gamma), `TCD ${steps} steps, gamma ${gamma}`, steps);
  for (const steps of [1, 2, 3, 7, 20]) checkLinear(new HeunScheduler(steps), `Heun ${steps} steps`, steps);
  // starting part-way (image to image): the GPU loop's memory is 0 at the first step
  const tcd = new TcdScheduler(8);
  tcd.begin = 3;
  checkLinear(tcd, 'TCD from step 3', 9);
  const heun = new HeunScheduler(10);
  heun.begin = 4 * heun.order;
  checkLinear(heun, 'Heun from step 4', 10);
});

test('Heun begins only at a predictor, and its state does not leak from an earlier run', () => {
  const h = new HeunScheduler(5);
  const x = Float32Array.from([1, 2]);
  const e = Float32Array.from([0.5, -0.5]);
  h.begin = 3;
  assert.throws(() => h.linear(3), /must begin at a predictor/);
  assert.throws(() => h.step(e, 3, x), /must begin at a predictor/);
  // a predictor at 2 from one run, then a new run from begin 4: its corrector at 5 needs the predictor at 4
  h.begin = 0;
  h.step(e, 2, x);
  h.begin = 4;
  h.step(e, 4, x);
  assert.doesNotThrow(() => h.step(e, 5, x));
  assert.throws(() => h.step(e, 5, x), /needs the predictor of evaluation 4/);
});

test("Heun's corrector as a linear map is exact algebra: x0' and x give back the predictor's eps", () => {
  for (const steps of [2, 3, 10]) {
    const h = new HeunScheduler(steps);
    const rng = new Rng(steps);
    for (let i = 1; i < h.evaluations; i += 2) {
      const [sp, sc] = [h.sigmas[i - 1], h.sigmas[i]];
      const xp = Array.from(rng.normal(8), (v) => v * sp);
      const e1 = Array.from(rng.normal(8));
      const e2 = Array.from(rng.normal(8));
      const k = h.linear(i);
      for (let j = 0; j < 8; j++) {
        // in float64: x after the predictor, the predictor's x0, and diffusers' corrector
        const x = xp[j] + (sc - sp) * e1[j];
        const memory = xp[j] - sp * e1[j];
        const want = xp[j] + ((sc - sp) * (e1[j] + e2[j])) / 2;
        const got = k.a * x + k.b * e2[j] + k.c * (k.p * x + k.q * e2[j]) + k.d * memory;
        close(got, want, 1e-9 * Math.max(1, Math.abs(want)), `${steps} steps, evaluation ${i} [${j}]`);
      }
    }
  }
});

test('the registry names TCD and Heun', () => {
  assert.equal(SCHEDULERS.tcd.label, 'TCD');
  assert.equal(SCHEDULERS.heun.label, 'Heun');
  assert.ok(createScheduler('tcd', 4) instanceof TcdScheduler);
  const h = createScheduler('heun', 10);
  assert.ok(h instanceof HeunScheduler);
  assert.equal(h.timesteps.length, 19);
});
