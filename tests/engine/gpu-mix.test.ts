// Several predictions a step with the latents on the GPU (tiny model, WebGPU): LoRA Composite, CMLoRA
// as its code runs it (the deep-feature cache), with its prediction cache (offsets kept on the GPU and
// chained) and online, and DeepCache under Composite without CFG give the CPU loop's image, its plan
// step by step, its frequency measures and its previews, while only the measures and the previews come
// back: the measures once after the loop, or each step where a preview is asked or the online phase
// needs the last one.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { CompositionOptions, GenerateJob, GenerateResult, LoraInfo } from '../../workers/api/contract.ts';
import { ContributionCache } from '../../workers/composition/cache.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'a fox in a red coat', negative: 'blurry', steps: 4, cfg: 5, seed: 21, width: 64, height: 64, scheduler: 'euler-a', previewEvery: 0 };
const use = (loras: LoraInfo[], n: number) => loras.slice(0, n).map((l, i) => ({ lora: l.id, scale: 1 - 0.2 * i }));

/** The same plan, step by step, and the same measures (float32 on the GPU against float64 on the CPU). */
function samePlan(gpu: GenerateResult, cpu: GenerateResult, what: string) {
  const [g, c] = [gpu.report.composition, cpu.report.composition];
  assert.equal(g.steps.length, c.steps.length);
  const close = (a: number | null, b: number | null, name: string) => {
    if (a === null || b === null) return assert.equal(a, b, `${what}: ${name}`);
    assert.ok(Math.abs(a - b) <= 1e-5 + 2e-4 * Math.abs(b), `${what}: ${name} ${a} vs ${b}`);
  };
  g.steps.forEach((s, i) => {
    const t = c.steps[i];
    for (const k of ['active', 'shallow', 'cached', 'dominant', 'refreshed', 'phase', 'weights', 'unetEvaluations', 'unetMultiplyAdds'] as const) assert.deepEqual(s[k], t[k], `${what}, step ${i}: ${k}`);
    s.amplitudes.forEach((a, l) => close(a, t.amplitudes[l], `step ${i}, LoRA ${l}'s amplitude`));
    close(s.mixAmplitude, t.mixAmplitude, `step ${i}, the mix's amplitude`);
    close(s.latentAmplitude, t.latentAmplitude, `step ${i}, the latent's amplitude`);
    close(s.latentSimilarity, t.latentSimilarity, `step ${i}, the cosine`);
  });
  assert.deepEqual(g.cacheHitRate, c.cacheHitRate, `${what}: cache hit rates`);
  assert.deepEqual(gpu.report.unetEvaluations, cpu.report.unetEvaluations);
}

test('several predictions a step stay on the GPU: the CPU loop\'s image, plan and measures, the measures read once a job (each step with previews or online)', async () => {
  const { dir } = await tinyModelDir();
  const { engine, loras } = await openTinyEngine(dir, await runtime('webgpu'), ['kohya', 'loha', 'locon']);
  const start = (await engine.generate({ ...JOB, steps: 1, seed: 3 })).image;
  const cases: [string, Partial<GenerateJob> & { composition: CompositionOptions }][] = [
    // the code's CMLoRA: every LoRA every step, the shallow UNet on kept deep features between refreshes
    ['cmlora, deep cache', { steps: 3, loras: use(loras, 3), composition: { method: 'cmlora', switchStep: 1 } }],
    // our prediction cache: offsets from the dominant kept on the GPU and chained as the dominant moves
    ['cmlora, prediction cache', { steps: 5, loras: use(loras, 3), composition: { method: 'cmlora', cache: 'prediction', switchStep: 2, cacheHigh: 4, cacheLow: 4 } }],
    // online: the next step's phase from this step's measure, read back
    ['cmlora online', { scheduler: 'dpmpp-2m', loras: use(loras, 2), composition: { method: 'cmlora', async: false, profiling: 'online', cache: 'off' } }],
    // without CFG (a batch of one), DeepCache under Composite (a kept feature per LoRA), a preview every step
    ['composite, deep-feature cache, no CFG', { steps: 3, cfg: 1, previewEvery: 1, loras: use(loras, 2), composition: { method: 'composite', deepCacheInterval: 2 } }],
    // from a start picture: the loop begins part-way down the schedule, its measures kept from that step's row
    ['composite from a start picture', { steps: 5, loras: use(loras, 2), composition: { method: 'composite' }, init: { image: start, strength: 0.6 } }],
  ];
  for (const [what, c] of cases) {
    const job = { ...JOB, ...c };
    const previews: Uint8ClampedArray[][] = [[], []];
    const gpu = await engine.generate(job, (p) => p.preview && previews[0].push(p.preview.data));
    const cpu = await engine.generate({ ...job, latentsOnGpu: false }, (p) => p.preview && previews[1].push(p.preview.data));
    assert.equal(gpu.report.latentsOnGpu, true, `${what}: ${gpu.report.latentsOnGpuReason}`);
    assert.equal(cpu.report.latentsOnGpu, false);
    assert.equal(gpu.report.graphCaptured, false);
    const { diff } = maxAbsDiff(gpu.image.data, cpu.image.data);
    assert.ok(diff <= 1, `${what}: GPU and CPU loops within 1/255 (${diff})`);
    samePlan(gpu, cpu, what);
    const previewed = job.previewEvery === 1;
    const online = c.composition.profiling === 'online';
    // kept on the GPU, the measures are read after the loop, not in it
    assert.equal(gpu.report.readbacksPerStep, previewed ? 2 : online ? 1 : 0, `${what}: ${previewed ? 'the measures and the preview' : online ? 'the measures' : 'nothing'} come back each step`);
    assert.equal(previews[0].length, previewed ? job.steps : 0);
    previews[0].forEach((p, i) => assert.ok(maxAbsDiff(p, previews[1][i]).diff <= 1, `${what}: preview ${i} as the CPU loop's`));
    const runs = cpu.report.composition.unetEvaluations.denoise;
    const steps = gpu.report.composition.steps;
    assert.ok(Math.abs(cpu.report.readbacksPerStep * steps.length - runs) < 1e-9 && runs >= steps.length, `${what}: each of the CPU loop's ${runs} runs comes back (${cpu.report.readbacksPerStep} a step)`);
    if (job.init) assert.ok(steps.length < job.steps && steps[0].step > 0, `${what}: began at step ${steps[0].step} of ${job.steps}`);
    // the plan counts what the loop keeps: each run's prediction and the mix (and CMLoRA's cached offsets), beside its own four latents
    const n = job.loras!.length;
    const kept = n + 1 + (c.composition.cache === 'prediction' ? n : 0);
    assert.equal(gpu.report.memoryPlan.parts.latentBytes, (4 + kept) * 4 * 8 * 8 * 4 * (job.cfg > 1 ? 2 : 1), `${what}: kept predictions`);
    if (what === 'cmlora online') {
      const phases = new Set(steps.map((s) => s.phase));
      assert.ok(phases.has('high') && phases.has('low'), `both phases, each step's from the last step's measure read back (${[...phases]})`);
    }
    if (what.startsWith('composite, deep')) assert.ok(steps.some((s) => s.shallow.length === 2), 'both LoRAs ran shallow on their own kept features');
    if (what === 'cmlora, deep cache') assert.ok(steps.some((s) => s.shallow.length), 'some runs reused kept deep features');
    if (what === 'cmlora, prediction cache') {
      // the plan replayed on the cache: some LoRA was cached while the dominant that anchored it was
      // cached too, so its prediction took two offsets
      const replay = new ContributionCache<number>(3);
      let longest = 0;
      for (const s of steps) {
        const ran = new Set(s.active);
        for (const l of s.cached) longest = Math.max(longest, replay.chain(l, ran).offsets.length);
        if (s.dominant !== null && ran.has(s.dominant)) replay.update(new Map([...ran].map((l) => [l, 0])), s.dominant, s.step, () => 0);
      }
      assert.equal(longest, 2, 'a chain of two offsets');
    }
  }
  engine.unload();
});
