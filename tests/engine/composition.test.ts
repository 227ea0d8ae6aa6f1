// Composition methods on the real engine (tiny model, WebGPU): the equivalences that must hold
// pixel for pixel, cmlora's profile, cache and report on real latents, and cancelling mid-profile.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { GenerateJob, GenerateResult, LoraInfo, ProgressEvent } from '../../workers/api/contract.ts';
import { EngineError } from '../../workers/api/errors.ts';
import type { Engine } from '../../workers/engine/engine.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'a fox in a red coat', negative: '', steps: 2, cfg: 5, seed: 11, width: 64, height: 64, scheduler: 'euler-a' };

let setup: Promise<{ engine: Engine; loras: LoraInfo[] }> | undefined;
function studio() {
  setup ??= tinyModelDir().then(async ({ dir }) => openTinyEngine(dir, await runtime('webgpu'), ['kohya', 'locon', 'loha', 'peft', 'kohya-2']));
  return setup;
}

const use = (loras: LoraInfo[], n: number) => loras.slice(0, n).map((l, i) => ({ lora: l.id, scale: 1 - 0.2 * i }));
const pixels = (r: GenerateResult) => r.image.data;

test('equivalences: composite of one LoRA is that LoRA merged; a switch that never switches is the first LoRA; prompt only ignores LoRAs', async () => {
  const { engine, loras } = await studio();
  const merged = await engine.generate({ ...JOB, loras: use(loras, 1) });
  const composite = await engine.generate({ ...JOB, loras: use(loras, 1), composition: { method: 'composite' } });
  assert.deepEqual(pixels(composite), pixels(merged));
  const switched = await engine.generate({ ...JOB, loras: use(loras, 2), composition: { method: 'switch', switchStep: 10 } });
  assert.deepEqual(pixels(switched), pixels(merged));
  assert.deepEqual(switched.report.composition.steps.map((s) => s.active), [[0], [0]]);
  const base = await engine.generate(JOB);
  const none = await engine.generate({ ...JOB, loras: use(loras, 2), composition: { method: 'none' } });
  assert.deepEqual(pixels(none), pixels(base));
  assert.ok(maxAbsDiff(pixels(merged), pixels(base)).diff > 0, 'the LoRA changes the image');
  assert.match(none.report.warnings.join(' '), /Prompt only/);
  for (const r of [merged, composite, switched, base, none]) assert.equal(r.report.unetEvaluations, 2);
});

test('cmlora with equal weights and no caching is composite (up to float summation order)', async () => {
  const { engine, loras } = await studio();
  const job = { ...JOB, scheduler: 'ddim' as const, loras: use(loras, 3) };
  const composite = await engine.generate({ ...job, composition: { method: 'composite' } });
  const cm = await engine.generate({ ...job, composition: { method: 'cmlora', profiling: 'online', domCoeff: 1, cacheHigh: 1, cacheLow: 1 } });
  assert.ok(maxAbsDiff(pixels(cm), pixels(composite)).diff <= 1, `max pixel difference ${maxAbsDiff(pixels(cm), pixels(composite)).diff}`);
  assert.equal(composite.report.unetEvaluations, 6);
  assert.equal(cm.report.unetEvaluations, 6);
  for (const s of composite.report.composition.steps) {
    assert.deepEqual(s.weights.map((w) => Math.round(w * 1e9) / 1e9), [0.333333333, 0.333333333, 0.333333333]);
    assert.ok(s.amplitudes.every((a) => a !== null && a > 0 && a < 4), `amplitudes ${s.amplitudes}`);
  }
});

test('cmlora offline: profile, order, cache and counts are consistent; the profile is reused for the same set', async () => {
  const { engine, loras } = await studio();
  const job: GenerateJob = { ...JOB, steps: 4, scheduler: 'dpmpp-2m-karras', loras: use(loras, 3), composition: { method: 'cmlora', profileSteps: 2, switchStep: 2 } };
  const events: ProgressEvent[] = [];
  const first = await engine.generate(job, (e) => events.push(e));
  const c = first.report.composition;
  assert.equal(c.method, 'cmlora');
  assert.deepEqual(c.loras, ['kohya.safetensors', 'locon.safetensors', 'loha.safetensors']);
  assert.equal(c.profile!.source, 'run');
  assert.equal(c.profile!.unetEvaluations, 6);
  const amps = c.profile!.amplitudes;
  assert.deepEqual(c.order, [0, 1, 2].sort((a, b) => amps[b] - amps[a] || a - b));
  const mean = amps.reduce((a, b) => a + b) / 3;
  assert.deepEqual(c.partition!.high, c.order.filter((i) => amps[i] >= mean));
  let denoise = 0;
  for (const s of c.steps) {
    denoise += s.unetEvaluations;
    assert.equal(s.unetEvaluations, s.active.length);
    assert.ok(s.dominant !== null && s.active.includes(s.dominant));
    assert.deepEqual([...s.active, ...s.cached].sort(), [0, 1, 2]);
    assert.ok(Math.abs(s.weights.reduce((a, b) => a + b) - 1) < 1e-9);
    assert.ok(s.latentSimilarity > -1 && s.latentSimilarity <= 1 + 1e-9);
    s.cached.forEach((l) => assert.equal(s.amplitudes[l], null));
  }
  assert.equal(first.report.unetEvaluations, 6 + denoise);
  assert.ok(denoise < 12, `caching saved UNet runs: ${denoise} of 12`);
  c.cacheHitRate.forEach((rate, l) => assert.equal(rate, c.steps.filter((s) => s.cached.includes(l)).length / 4));
  assert.deepEqual(events.filter((e) => e.phase === 'denoise').map((e) => e.composition), c.steps);

  const again = await engine.generate(job);
  assert.equal(again.report.composition.profile!.source, 'cache');
  assert.equal(again.report.composition.profile!.unetEvaluations, 0);
  assert.deepEqual(again.report.composition.profile!.amplitudes, amps);
  assert.equal(again.report.unetEvaluations, denoise);
  assert.deepEqual(pixels(again), pixels(first));
});

test('five LoRAs: cmlora online and LoRA Switch run with DPM++ 2M; a cancel during profiling leaves the engine usable', async () => {
  const { engine, loras } = await studio();
  const online = await engine.generate({ ...JOB, scheduler: 'dpmpp-2m', loras: use(loras, 5), composition: { method: 'cmlora', profiling: 'online' } });
  const c = online.report.composition;
  assert.equal(c.profile!.source, 'online');
  assert.equal(c.steps[0].unetEvaluations, 5);
  assert.ok(c.steps[0].amplitudes.every((a) => a !== null));
  // step 1 partitions by the amplitudes step 0 measured; the final order is by the latest amplitude of each LoRA
  const a0 = c.steps[0].amplitudes as number[];
  const mean0 = a0.reduce((a, b) => a + b) / 5;
  assert.deepEqual(c.steps[1].partition!.high.slice().sort(), [0, 1, 2, 3, 4].filter((l) => a0[l] >= mean0));
  const latest = [0, 1, 2, 3, 4].map((l) => c.steps[1].amplitudes[l] ?? a0[l]);
  assert.deepEqual(c.order, [0, 1, 2, 3, 4].sort((x, y) => latest[y] - latest[x] || x - y));
  const sw = await engine.generate({ ...JOB, steps: 3, scheduler: 'dpmpp-2m', loras: use(loras, 5), composition: { method: 'switch', switchStep: 1 } });
  assert.deepEqual(sw.report.composition.steps.map((s) => s.active), [[0], [1], [2]]);

  const cancelled = engine.generate({ ...JOB, loras: use(loras, 2), composition: { method: 'cmlora', profileSteps: 3 } }, (e) => {
    if (e.phase === 'profile') engine.cancel();
  });
  await assert.rejects(cancelled, (e: EngineError) => e.code === 'cancelled');
  const after = await engine.generate({ ...JOB, loras: use(loras, 1) });
  assert.equal(after.report.unetEvaluations, 2);
  await assert.rejects(engine.generate({ ...JOB, composition: { method: 'cmlora', cacheHigh: 0 } }), (e: EngineError) => e.code === 'bad-argument' && /cacheHigh/.test(e.message));
});
