import assert from 'node:assert/strict';
import { test } from 'node:test';
import { alphasCumprod, karrasSigmas, trainSigmas } from '../../workers/schedulers/common.ts';
import { DdimScheduler } from '../../workers/schedulers/ddim.ts';
import { DpmSolverPP2MScheduler } from '../../workers/schedulers/dpmpp-2m.ts';
import { EulerAncestralScheduler } from '../../workers/schedulers/euler-ancestral.ts';
import { EulerScheduler } from '../../workers/schedulers/euler.ts';
import { LcmScheduler, lcmScalings, lcmTimesteps } from '../../workers/schedulers/lcm.ts';
import { Rng } from '../../workers/engine/random.ts';

const close = (a: number, b: number, tol: number, what: string) => assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);

test('scaled-linear schedule matches its closed form and SD 1.5 sigma range', () => {
  const ac = alphasCumprod();
  close(ac[0], 1 - 0.00085, 1e-15, 'alphā_0');
  let prod = 1;
  for (let i = 0; i < 1000; i++) prod *= 1 - (Math.sqrt(0.00085) + (i / 999) * (Math.sqrt(0.012) - Math.sqrt(0.00085))) ** 2;
  close(ac[999], prod, 1e-15, 'alphā_999');
  const s = trainSigmas(ac);
  close(s[999], 14.6146, 1e-4, 'sigma_max');
  close(s[0], 0.029168, 1e-5, 'sigma_min');
});

test('timestep spacings match diffusers', () => {
  const ddim = new DdimScheduler(50).timesteps;
  assert.equal(ddim.length, 50);
  assert.deepEqual(ddim.slice(0, 3), [981, 961, 941]);
  assert.equal(ddim[49], 1);
  assert.deepEqual(new EulerAncestralScheduler(10).timesteps, Array.from({ length: 10 }, (_, i) => 999 - 111 * i));
  assert.deepEqual(new DpmSolverPP2MScheduler(20).timesteps, [999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50]);
  const ea = new EulerAncestralScheduler(10);
  close(ea.initNoiseSigma, 14.6146, 1e-4, 'euler init sigma (linspace: max sigma)');
  assert.equal(ea.sigmas[10], 0);
});

test('Karras sigmas run from sigma_max to sigma_min on the rho = 7 ramp', () => {
  const k = karrasSigmas(0.1, 10, 5);
  close(k[0], 10, 1e-12, 'first');
  close(k[4], 0.1, 1e-12, 'last');
  close(k[2], ((10 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7, 1e-12, 'midpoint');
  const sched = new DpmSolverPP2MScheduler(8, true);
  close(sched.sigmas[0], 14.6146, 1e-4, 'karras start');
  close(sched.sigmas[7], 0.029168, 1e-5, 'karras end');
  assert.equal(sched.timesteps[0], 999);
  assert.equal(sched.timesteps[7], 0);
});

// With the exact noise of a known x0 ("oracle" predictions), each deterministic step must land on
// the next noise level of the same x0 and noise: a closed-form check of every coefficient.
const x0 = Float32Array.from({ length: 16 }, (_, i) => Math.sin(i));
const eps = new Rng(7).normal(16);

test('DDIM with oracle noise moves exactly along the forward process', () => {
  const s = new DdimScheduler(10);
  const ac = alphasCumprod();
  for (let i = 0; i < 9; i++) {
    const t = s.timesteps[i];
    const tn = s.timesteps[i + 1];
    const x = x0.map((v, k) => Math.sqrt(ac[t]) * v + Math.sqrt(1 - ac[t]) * eps[k]);
    const next = s.step(eps, i, x);
    for (let k = 0; k < 16; k++) close(next[k], Math.sqrt(ac[tn]) * x0[k] + Math.sqrt(1 - ac[tn]) * eps[k], 1e-5, `step ${i}`);
  }
});

test('DPM-Solver++ 2M with oracle noise stays on the trajectory and ends at x0', () => {
  for (const karras of [false, true]) {
    const s = new DpmSolverPP2MScheduler(6, karras);
    const vp = (sig: number) => [1 / Math.sqrt(sig * sig + 1), sig / Math.sqrt(sig * sig + 1)];
    let [a, sg] = vp(s.sigmas[0]);
    let x: Float32Array = x0.map((v, k) => a * v + sg * eps[k]);
    for (let i = 0; i < 6; i++) {
      x = s.step(eps, i, x);
      [a, sg] = vp(s.sigmas[i + 1]);
      for (let k = 0; k < 16; k++) close(x[k], a * x0[k] + sg * eps[k], 2e-5, `karras=${karras} step ${i}`);
    }
    for (let k = 0; k < 16; k++) close(x[k], x0[k], 1e-5, 'final x0');
  }
});

test('Euler ancestral splits each move into sigma_down and sigma_up with sigma_down² + sigma_up² = sigma_next²', () => {
  const s = new EulerAncestralScheduler(5);
  const zeros = () => new Float32Array(16);
  const ones = () => new Float32Array(16).fill(1);
  for (let i = 0; i < 5; i++) {
    const sig = s.sigmas[i];
    const to = s.sigmas[i + 1];
    const x = x0.map((v, k) => v + sig * eps[k]);
    const det = s.step(eps, i, x, zeros);
    const withNoise = s.step(eps, i, x, ones);
    const up = withNoise[0] - det[0];
    const down = (det[0] - x0[0]) / eps[0];
    close(up * up + down * down, to * to, 1e-4 * Math.max(1, to * to), `step ${i}`);
    close(up, Math.sqrt((to * to * (sig * sig - to * to)) / (sig * sig)), 1e-4, `sigma_up ${i}`);
  }
  const scaled = s.scaleModelInput(new Float32Array([2]), 0);
  close(scaled[0], 2 / Math.sqrt(s.sigmas[0] ** 2 + 1), 1e-6, 'input scaling');
});

test('every sampler recovers x0 from a sample made of x0 and known noise at each of its steps', () => {
  const ac = alphasCumprod();
  const cases = [
    { s: new DdimScheduler(7), mix: (i: number, s: DdimScheduler) => [Math.sqrt(ac[s.timesteps[i]]), Math.sqrt(1 - ac[s.timesteps[i]])] },
    { s: new EulerAncestralScheduler(7), mix: (i: number, s: EulerAncestralScheduler) => [1, s.sigmas[i]] },
    { s: new DpmSolverPP2MScheduler(7, true), mix: (i: number, s: DpmSolverPP2MScheduler) => [1 / Math.hypot(s.sigmas[i], 1), s.sigmas[i] / Math.hypot(s.sigmas[i], 1)] },
  ] as { s: DdimScheduler; mix: (i: number, s: unknown) => number[] }[];
  for (const { s, mix } of cases) {
    for (let i = 0; i < 7; i++) {
      const [a, sg] = mix(i, s);
      const x = x0.map((v, k) => a * v + sg * eps[k]);
      const got = s.predictOriginal(eps, i, x);
      for (let k = 0; k < 16; k++) close(got[k], x0[k], 2e-5 * Math.max(1, sg), `${s.constructor.name} step ${i}`);
    }
  }
});

test('seeded noise is a fixed, standard-normal stream', () => {
  const a = new Rng(42).normal(20000);
  const b = new Rng(42).normal(20000);
  assert.deepEqual(a, b);
  assert.notDeepEqual(new Rng(43).normal(8), a.slice(0, 8));
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
  assert.ok(Math.abs(mean) < 0.03 && Math.abs(variance - 1) < 0.05, `mean ${mean} var ${variance}`);
  // golden values: the stream must never change, or saved seeds stop reproducing images
  assert.deepEqual(Array.from(new Rng(1).normal(3), (v) => +v.toFixed(6)), GOLDEN);
});

const GOLDEN = [0.816168, -0.680445, -0.740097];

test('each sampler as linear maps (the GPU loop\'s form) takes the same steps as its own step()', () => {
  const n = 64;
  for (const make of [() => new DdimScheduler(7), () => new EulerAncestralScheduler(7), () => new EulerScheduler(7), () => new LcmScheduler(7), () => new DpmSolverPP2MScheduler(7, false), () => new DpmSolverPP2MScheduler(7, true)]) {
    const s = make();
    const rng = new Rng(11);
    let x = rng.normal(n);
    let memory = new Float64Array(n);
    for (let i = 0; i < s.timesteps.length; i++) {
      const eps = rng.normal(n);
      const z = rng.normal(n);
      const k = s.linear(i);
      let drew = false;
      const expected = s.step(eps, i, x, () => ((drew = true), z));
      assert.equal(k.noise, drew, `step ${i}: draws noise as step() does`);
      const x0 = Float64Array.from(x, (v, j) => k.p * v + k.q * eps[j]);
      for (let j = 0; j < n; j++) {
        const got = k.a * x[j] + k.b * eps[j] + k.c * x0[j] + k.d * memory[j] + k.e * z[j];
        assert.ok(Math.abs(got - expected[j]) <= 2e-6 * Math.max(1, Math.abs(expected[j])), `${s.constructor.name} step ${i} [${j}]: ${got} vs ${expected[j]}`);
      }
      const scaled = s.scaleModelInput(x, i);
      assert.ok(Math.abs(scaled[0] - x[0] * s.inputScale(i)) <= 1e-6 * Math.abs(scaled[0]) + 1e-7);
      memory = x0;
      x = expected;
    }
  }
});

test("LCM as diffusers schedules it: the 4-step timesteps 999, 759, 499, 259; the boundary scalings; a step by hand", () => {
  assert.deepEqual(lcmTimesteps(4), [999, 759, 499, 259]);
  assert.deepEqual(lcmTimesteps(1), [999]);
  assert.deepEqual(lcmTimesteps(8), [999, 879, 759, 639, 499, 379, 259, 139]);
  assert.throws(() => lcmTimesteps(51), /at most 50 steps/);
  // t = 259: scaled 2590; c_skip = 0.25 / (2590^2 + 0.25), c_out = 2590 / sqrt(2590^2 + 0.25)
  const { cSkip, cOut } = lcmScalings(259);
  assert.ok(Math.abs(cSkip - 0.25 / (2590 ** 2 + 0.25)) < 1e-18);
  assert.ok(Math.abs(cOut - 2590 / Math.sqrt(2590 ** 2 + 0.25)) < 1e-15);
  const ac = alphasCumprod();
  const s = new LcmScheduler(4);
  const x = Float32Array.from([0.5, -1.25]);
  const eps = Float32Array.from([0.1, 0.3]);
  const z = Float32Array.from([1, -1]);
  // step 1 (t = 759 -> 499): x0 = (x - sqrt(1 - a) eps) / sqrt(a), d = c_out x0 + c_skip x, next = sqrt(a') d + sqrt(1 - a') z
  const [a, a2] = [ac[759], ac[499]];
  const sc = lcmScalings(759);
  const want = [0, 1].map((k) => Math.sqrt(a2) * (sc.cOut * ((x[k] - Math.sqrt(1 - a) * eps[k]) / Math.sqrt(a)) + sc.cSkip * x[k]) + Math.sqrt(1 - a2) * z[k]);
  const got = s.step(eps, 1, x, () => z);
  want.forEach((w, k) => assert.ok(Math.abs(got[k] - w) < 1e-6, `${got[k]} vs ${w}`));
  // the last step draws no noise and returns the clean estimate
  const last = s.step(eps, 3, x, () => assert.fail('no noise at the last step'));
  const l = lcmScalings(259);
  [0, 1].forEach((k) => assert.ok(Math.abs(last[k] - (l.cOut * ((x[k] - Math.sqrt(1 - ac[259]) * eps[k]) / Math.sqrt(ac[259])) + l.cSkip * x[k])) < 1e-6));
});

test("Euler (no noise) moves by (sigma_next - sigma) * eps on Euler ancestral's sigmas, and ends at x0 with the oracle noise", () => {
  const e = new EulerScheduler(10);
  const ea = new EulerAncestralScheduler(10);
  assert.deepEqual(e.sigmas, ea.sigmas);
  assert.equal(e.initNoiseSigma, Math.max(...e.sigmas));
  const rng = new Rng(4);
  const x0 = rng.normal(32);
  const n = rng.normal(32);
  // x_T = x0 + sigma_0 n, and the model predicts the true noise: every step stays on the line
  let x: Float32Array = x0.map((v, k) => v + e.sigmas[0] * n[k]);
  for (let i = 0; i < 10; i++) {
    x = e.step(n, i, x);
    x.forEach((v, k) => assert.ok(Math.abs(v - (x0[k] + e.sigmas[i + 1] * n[k])) < 1e-4));
  }
});

test('add_noise of every sampler is its own forward process: predictOriginal on the noise that made it returns x0', () => {
  const ac = alphasCumprod();
  const x0 = Float32Array.from({ length: 16 }, (_, k) => Math.sin(k));
  const n = new Rng(4).normal(16);
  // closed forms worked by hand from diffusers' add_noise at step index 2 of 5
  const ddim = new DdimScheduler(5);
  const a = ac[ddim.timesteps[2]];
  assert.ok(maxDiff(ddim.addNoise(x0, n, 2), x0.map((v, k) => Math.sqrt(a) * v + Math.sqrt(1 - a) * n[k])) < 1e-6);
  const euler = new EulerScheduler(5);
  assert.ok(maxDiff(euler.addNoise(x0, n, 2), x0.map((v, k) => v + euler.sigmas[2] * n[k])) < 1e-6);
  const dpm = new DpmSolverPP2MScheduler(5, true);
  const s = dpm.sigmas[2];
  assert.ok(maxDiff(dpm.addNoise(x0, n, 2), x0.map((v, k) => (v + s * n[k]) / Math.sqrt(s * s + 1))) < 1e-6);
  const lcm = new LcmScheduler(4);
  const al = ac[lcm.timesteps[2]];
  assert.ok(maxDiff(lcm.addNoise(x0, n, 2), x0.map((v, k) => Math.sqrt(al) * v + Math.sqrt(1 - al) * n[k])) < 1e-6);
  // and each sampler's x0 from (its noised sample, the noise as the prediction) is x0 again
  for (const sch of [ddim, euler, new EulerAncestralScheduler(5), dpm, new DpmSolverPP2MScheduler(5), lcm]) {
    const x = sch.addNoise(x0, n, 1);
    assert.ok(maxDiff(sch.predictOriginal(n, 1, x), x0) < 1e-5, sch.constructor.name);
  }
});

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}
