// Composition methods on the real engine (tiny model): the equivalences that must hold pixel for
// pixel, the deep-feature cache's graphs against the whole UNet (bit for bit on wasm), cmlora's
// schedule, profile store and report on real latents, and cancelling mid-profile.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import type { GenerateJob, GenerateResult, LoraInfo } from '../../workers/api/contract.ts';
import { EngineError } from '../../workers/api/errors.ts';
import { sessionOptions, type Backend } from '../../workers/engine/runtime.ts';
import { makeTinyModel } from '../../workers/engine/test-model.ts';
import { timestepEmbedding } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
import { multiplyAdds } from '../../workers/graph/cost.ts';
import { buildUNet, DEEP_FEATURE, deepFeatureDims } from '../../workers/graph/unet.ts';
import { FileProfileStore } from '../../workers/node/profile-store.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'a fox in a red coat', negative: '', steps: 2, cfg: 5, seed: 11, width: 64, height: 64, scheduler: 'euler-a' };

const engines: Partial<Record<Backend, ReturnType<typeof openTinyEngine>>> = {};
function studio(backend: Backend = 'wasm') {
  engines[backend] ??= tinyModelDir().then(async ({ dir }) => openTinyEngine(dir, await runtime(backend), ['kohya', 'locon', 'loha', 'peft', 'kohya-2']));
  return engines[backend]!;
}

const use = (loras: LoraInfo[], n: number) => loras.slice(0, n).map((l, i) => ({ lora: l.id, scale: 1 - 0.2 * i }));
const pixels = (r: GenerateResult) => r.image.data;

for (const backend of ['wasm', 'webgpu'] as Backend[]) {
  test(`the deep-feature cache's graphs: the whole UNet with its deep features is the whole UNet; the shallow part on fresh features is too (${backend})`, async () => {
    const model = makeTinyModel();
    const cfg = model.config.unet;
    const rt = await runtime(backend);
    const opt = { batch: 2, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32' as const };
    const rng = new Rng(31);
    const inputs: Record<string, { data: Float32Array; dims: number[] }> = {
      sample: { data: rng.normal(2 * 4 * 64), dims: [2, 4, 8, 8] },
      timestep_embedding: { data: Float32Array.from([...timestepEmbedding(321, 16), ...timestepEmbedding(321, 16)]), dims: [2, 16] },
      encoder_hidden_states: { data: rng.normal(2 * 77 * 32).map((v) => 0.5 * v), dims: [2, 77, 32] },
    };
    const run = async (g: ReturnType<typeof buildUNet>, extra: Record<string, { data: Float32Array; dims: number[] }> = {}) => {
      const ws = new WeightSet(rt, 'float32');
      for (const spec of g.weights.values()) ws.add(spec, model.weights.unet.get(spec.name)!);
      const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
      const feeds: Record<string, OrtNs.Tensor> = ws.feeds(g.weights.keys());
      for (const [k, v] of Object.entries({ ...inputs, ...extra })) if (session.inputNames.includes(k)) feeds[k] = new rt.ort.Tensor('float32', v.data, v.dims);
      const out = await session.run(feeds);
      await session.release();
      ws.dispose();
      return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
    };
    const recorded = await run(buildUNet(cfg, { ...opt, deepCache: 'full' }));
    // (WebGPU on SwiftShader compiles slowly: there the whole run with its features stands for the whole UNet)
    const whole = backend === 'wasm' ? await run(buildUNet(cfg, opt)) : recorded;
    const shallowGraph = buildUNet(cfg, { ...opt, deepCache: 'shallow' });
    const shallow = await run(shallowGraph, { [DEEP_FEATURE]: { data: recorded[DEEP_FEATURE], dims: deepFeatureDims(cfg, 2, 8, 8) } });
    assert.deepEqual(recorded[DEEP_FEATURE].length, 2 * 32 * 64);
    if (backend === 'wasm') {
      assert.deepEqual(recorded.noise_pred, whole.noise_pred, 'bit for bit');
      assert.deepEqual(shallow.noise_pred, whole.noise_pred, 'bit for bit');
    } else {
      for (const got of [recorded.noise_pred, shallow.noise_pred]) {
        const d = maxAbsDiff(got, whole.noise_pred);
        assert.ok(d.diff <= 1e-5 * Math.max(1, d.scale), `difference ${d.diff}`);
      }
    }
    // the shallow part skips the deep one: fewer multiply-adds, and only the first and last levels' weights
    assert.ok(multiplyAdds(shallowGraph) < 0.5 * multiplyAdds(buildUNet(cfg, opt)));
    assert.ok([...shallowGraph.weights.keys()].every((w) => /^(conv_in|conv_out|conv_norm_out|time_embedding|down_blocks\.0\.(resnets|attentions)|up_blocks\.3\.)/.test(w)));
  });
}

test('equivalences: composite of one LoRA is that LoRA merged; a switch that never switches is the first LoRA; prompt only ignores LoRAs', async () => {
  const { engine, loras } = await studio();
  const merged = await engine.generate({ ...JOB, loras: use(loras, 1) });
  const composite = await engine.generate({ ...JOB, loras: use(loras, 1), composition: { method: 'composite' } });
  assert.deepEqual(pixels(composite), pixels(merged));
  // the switch encodes the prompt with the first LoRA's text encoder only, as ComposLoRA does
  const switched = await engine.generate({ ...JOB, loras: use(loras, 2), composition: { method: 'switch', switchStep: 10 } });
  assert.deepEqual(pixels(switched), pixels(merged));
  assert.deepEqual(switched.report.composition.steps.map((s) => s.active), [[0], [0]]);
  const base = await engine.generate(JOB);
  const none = await engine.generate({ ...JOB, loras: use(loras, 2), composition: { method: 'none' } });
  assert.deepEqual(pixels(none), pixels(base));
  assert.ok(maxAbsDiff(pixels(merged), pixels(base)).diff > 0, 'the LoRA changes the image');
  assert.match(none.report.warnings.join(' '), /Prompt only/);
  for (const r of [merged, composite, switched, base, none]) assert.equal(r.report.unetEvaluations, 2);
  assert.equal(composite.report.unetMultiplyAdds, merged.report.unetMultiplyAdds);
});

test('cmlora with equal weights and no caching is composite (up to float summation order)', async () => {
  const { engine, loras } = await studio();
  const job = { ...JOB, scheduler: 'ddim' as const, loras: use(loras, 3) };
  const composite = await engine.generate({ ...job, composition: { method: 'composite' } });
  const cm = await engine.generate({ ...job, composition: { method: 'cmlora', domCoeff: 1, cache: 'off' } });
  assert.ok(maxAbsDiff(pixels(cm), pixels(composite)).diff <= 1, `max pixel difference ${maxAbsDiff(pixels(cm), pixels(composite)).diff}`);
  assert.equal(composite.report.unetEvaluations, 6);
  assert.equal(cm.report.unetEvaluations, 6);
  assert.equal(cm.report.unetMultiplyAdds, composite.report.unetMultiplyAdds);
  for (const s of composite.report.composition.steps) assert.deepEqual(s.weights.map((w) => Math.round(w * 1e9) / 1e9), [0.333333333, 0.333333333, 0.333333333]);
});

test("cmlora as the code runs it: every LoRA every step, the shallow UNet between refreshes, fewer multiply-adds than composite; the report agrees with itself", async () => {
  const { engine, loras } = await studio();
  const job: GenerateJob = { ...JOB, steps: 8, scheduler: 'dpmpp-2m', loras: use(loras, 3) };
  const composite = await engine.generate({ ...job, composition: { method: 'composite' } });
  const cm = await engine.generate({ ...job, composition: { method: 'cmlora' } });
  const c = cm.report.composition;
  assert.deepEqual([c.options.async, c.options.cache, c.options.cacheInterval, c.options.partition, c.options.switchStep], [true, 'deep', 0, 'category', 1]);
  assert.deepEqual(c.profile!.source, 'category');
  // the 2-3-2 pattern at 8 steps refreshes at 0, 2 | 3, 6 | 7; each step runs all three LoRAs
  assert.deepEqual(c.steps.map((s) => s.refreshed !== null), [true, false, true, true, false, false, true, true]);
  for (const [i, s] of c.steps.entries()) {
    assert.deepEqual(s.active, [0, 1, 2]);
    assert.equal(s.unetEvaluations, 3);
    // every LoRA runs whole at step 0; later only the refreshed one does
    assert.deepEqual([0, 1, 2].filter((l) => !s.shallow.includes(l)), i === 0 ? [0, 1, 2] : s.refreshed === null ? [] : [s.refreshed]);
    assert.ok(Math.abs(s.weights.reduce((a, b) => a + b) - 1) < 1e-9);
  }
  assert.equal(cm.report.unetEvaluations, composite.report.unetEvaluations);
  const ratio = cm.report.unetMultiplyAdds / composite.report.unetMultiplyAdds;
  assert.ok(ratio < 0.75, `cmlora / composite multiply-adds ${ratio.toFixed(3)}`);
  assert.equal(cm.report.unetMultiplyAdds, c.steps.reduce((a, s) => a + s.unetMultiplyAdds, 0));
  assert.ok(maxAbsDiff(pixels(cm), pixels(composite)).diff > 0);
});

test('cmlora by profile: each LoRA profiled once, kept in the profile file; a new engine (a new CLI process) reads it back', async () => {
  const { dir } = await tinyModelDir();
  const file = join(mkdtempSync(join(tmpdir(), 'profiles-')), 'profiles.json');
  const job: GenerateJob = { ...JOB, steps: 3, loras: [], composition: { method: 'cmlora', partition: 'profile', profileSteps: 2 } };
  const first = await openTinyEngine(dir, await runtime('wasm'), ['kohya', 'locon', 'loha']);
  first.engine.profileStore = new FileProfileStore(file);
  const r1 = await first.engine.generate({ ...job, loras: use(first.loras, 3) });
  const p1 = r1.report.composition.profile!;
  assert.deepEqual([p1.source, p1.unetEvaluations], ['run', 6]);
  const amps = p1.amplitudes;
  assert.deepEqual(r1.report.composition.order, [0, 1, 2].sort((a, b) => amps[b] - amps[a] || a - b));
  // a LoRA profiled in another set is not profiled again
  const r2 = await first.engine.generate({ ...job, loras: use(first.loras, 3).slice(1) });
  assert.deepEqual(r2.report.composition.profile!.sources, ['cache', 'cache']);
  first.engine.unload();
  const second = await openTinyEngine(dir, await runtime('wasm'), ['kohya', 'locon', 'loha']);
  second.engine.profileStore = new FileProfileStore(file);
  const r3 = await second.engine.generate({ ...job, loras: use(second.loras, 3) });
  assert.deepEqual([r3.report.composition.profile!.source, r3.report.composition.profile!.unetEvaluations], ['cache', 0]);
  assert.deepEqual(r3.report.composition.profile!.amplitudes, amps);
  assert.deepEqual(pixels(r3), pixels(r1));
  assert.equal(r3.report.composition.unetMultiplyAdds.profile, 0);
  assert.ok(r1.report.composition.unetMultiplyAdds.profile > 0);
  second.engine.unload();
});

test('five LoRAs: cmlora online and LoRA Switch; a cancel during profiling leaves the engine usable; bad options refused', async () => {
  const { engine, loras } = await studio();
  const online = await engine.generate({ ...JOB, steps: 3, scheduler: 'dpmpp-2m', loras: use(loras, 5), composition: { method: 'cmlora', async: false, profiling: 'online' } });
  const c = online.report.composition;
  assert.ok(Number.isFinite(c.options.threshold) && c.options.threshold > 0 && c.options.threshold < 1, `derived threshold ${c.options.threshold}`);
  assert.equal(c.steps[0].phase, 'high');
  for (const s of c.steps) assert.equal(s.phase, s.step === 0 || s.latentAmplitude! >= c.options.threshold ? 'high' : 'low');
  const sw = await engine.generate({ ...JOB, steps: 4, scheduler: 'dpmpp-2m', loras: use(loras, 5), composition: { method: 'switch', switchStep: 1 } });
  assert.deepEqual(sw.report.composition.steps.map((s) => s.active), [[0], [0], [1], [2]]);

  const cancelled = engine.generate({ ...JOB, loras: use(loras, 2).map((u) => ({ ...u, trigger: 'cancel me' })), composition: { method: 'cmlora', partition: 'profile', profileSteps: 3 } }, (e) => {
    if (e.phase === 'profile') engine.cancel();
  });
  await assert.rejects(cancelled, (e: EngineError) => e.code === 'cancelled');
  const after = await engine.generate({ ...JOB, loras: use(loras, 1) });
  assert.equal(after.report.unetEvaluations, 2);
  await assert.rejects(engine.generate({ ...JOB, composition: { method: 'cmlora', cacheHigh: 0 } }), (e: EngineError) => e.code === 'bad-argument' && /cacheHigh/.test(e.message));
  await assert.rejects(engine.generate({ ...JOB, loras: [{ ...use(loras, 1)[0], category: 'monster' }] }), /category must be one of character, clothing, style, background, object/);
});
