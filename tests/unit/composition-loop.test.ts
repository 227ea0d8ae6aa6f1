// The denoising loop's mixing and caching against a float64 re-derivation. The UNet is a closed-form
// stand-in whose noise prediction depends on the LoRA set merged into it (and, for the deep-feature
// cache, on deep features its whole run returns and its shallow run takes), so the expected latent of
// every step can be written down from the hand-worked schedule (see composition.test.ts) alone.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import type { GenerateJob, ProgressEvent } from '../../workers/api/contract.ts';
import { TINY_CONFIG } from '../../workers/checkpoint/config.ts';
import { denoise, type PipelineParts } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { loadOrt } from '../../workers/engine/runtime.ts';
import { MemoryProfileStore } from '../../workers/engine/profile-store.ts';
import { alphasCumprod } from '../../workers/schedulers/common.ts';
import { ddimTimesteps } from '../../workers/schedulers/ddim.ts';
import type { ClipTextTokenizer } from '../../workers/text/tokenizer.ts';
import { TokenTable } from '../../workers/text/token-table.ts';

const config = TINY_CONFIG;
const C = config.unet.inChannels;
const SIZE = 64;
const N = C * (SIZE / 8) * (SIZE / 8);

const slopeOf = (set: number[], branch: 0 | 1) => 0.1 + 0.05 * set.reduce((a, i) => a + (i + 1) ** 2, 0) + 0.03 * branch;

/** The stand-in's deep features: what its whole run computes from x (only the first N values matter). */
function feature64(set: number[], x: ArrayLike<number>, t: number, branch: 0 | 1): Float64Array {
  return Float64Array.from({ length: N }, (_, k) => 0.2 * slopeOf(set, branch) * x[k] + 0.05 * Math.cos(t + k));
}

/**
 * The stand-in's guided-branch noise prediction: affine in x, a different slope per LoRA set; the part
 * from the deep features `f` (its own, or kept ones on a shallow run).
 */
function eps64(set: number[], x: ArrayLike<number>, t: number, branch: 0 | 1, f = feature64(set, x, t, branch)): Float64Array {
  const slope = slopeOf(set, branch);
  const shift = 0.02 * (set.length + 1) * Math.cos(t / 100) + 0.01 * branch;
  return Float64Array.from({ length: N }, (_, k) => 0.5 * slope * x[k] + shift * Math.sin(k) + f[k]);
}

interface Log {
  merges: string[];
  runs: string[];
  profiles: number;
  final?: Float32Array;
}

const FEATURE = 2 * 32 * (SIZE / 8) * (SIZE / 8);

function standIn(log: Log): PipelineParts {
  let merged: number[] = [];
  return {
    ort: undefined as unknown as PipelineParts['ort'],
    config,
    tokenizer: { encode: () => ({ ids: [1, 2], tokenCount: 2, truncated: false }), maxLength: 77 } as unknown as ClipTextTokenizer,
    textEncoder: async () => ({ last_hidden_state: { data: new Float32Array(config.textEncoder.maxPositions * config.unet.crossAttentionDim) } }) as unknown as OrtNs.InferenceSession.OnnxValueMapType,
    tokens: TokenTable.of(new Float32Array(3 * config.textEncoder.hidden), config.textEncoder.hidden, 'fp32'),
    unet: async (feeds, variant = 'full') => {
      const batch = feeds.sample.dims[0];
      const x = feeds.sample.data as Float32Array;
      const t = Math.acos(Math.max(-1, Math.min(1, (feeds.timestep_embedding.data as Float32Array)[0]))); // recovers t mod 2π: enough to vary
      const size = FEATURE / batch;
      const given = feeds.deep_feature?.data as Float32Array | undefined;
      if ((variant === 'reuse') !== !!given) throw new Error(`a ${variant} run ${given ? 'with' : 'without'} deep features`);
      const out = new Float32Array(batch * N);
      const features = new Float32Array(FEATURE);
      for (let b = 0; b < batch; b++) {
        const branch = batch === 2 ? (b as 0 | 1) : 1;
        const xb = x.subarray(b * N, (b + 1) * N);
        const f = given ? Float64Array.from(given.subarray(b * size, b * size + N)) : feature64(merged, xb, t, branch);
        features.set(f, b * size);
        out.set(eps64(merged, xb, t, branch, f), b * N);
      }
      log.runs.push(variant);
      return { noise_pred: { data: out }, ...(variant === 'record' ? { deep_feature: { data: features } } : {}) } as unknown as OrtNs.InferenceSession.OnnxValueMapType;
    },
    unetMultiplyAdds: { full: 100, record: 100, reuse: 30 },
    vae: async (feeds) => {
      log.final = Float32Array.from(feeds.latent.data as Float32Array);
      return { image: { data: new Float32Array(3 * SIZE * SIZE) } } as unknown as OrtNs.InferenceSession.OnnxValueMapType;
    },
    isCancelled: () => false,
    checkDevice: () => {},
    setLoras: async (loras, component) => {
      if (component === 'textEncoder') return undefined;
      if (String(loras) === String(merged)) return undefined;
      merged = loras.slice();
      log.merges.push(String(loras));
      return 1;
    },
    // each profiling image's spectrum falls as 1 / (1 + r)^p, p = 0.5, 1, 4 for LoRAs 0, 1, 2: 0 and 1
    // are the high-frequency ones
    magnitudes: async (_images, count, h, w) => {
      const p = [0.5, 1, 4][log.profiles++ % 3];
      return Float64Array.from({ length: count * h * w }, (_, k) => 1e3 / (1 + Math.hypot(Math.min(Math.floor(k / w) % h, h - (Math.floor(k / w) % h)), Math.min(k % w, w - (k % w)))) ** p);
    },
    loraNames: ['a', 'b', 'c'],
    // LoRA 2 is a background: last and low, as the code groups by category
    loraCategories: ['character', 'style', 'background'],
  };
}

/** DDIM (eta 0) in float64 with the guided, mixed prediction of each step given by `mix`. */
function ddim64(steps: number, seed: number, mix: (step: number, x: Float64Array, t: number) => Float64Array): Float64Array {
  const ac = alphasCumprod();
  const ts = ddimTimesteps(steps);
  let x = Float64Array.from(new Rng(seed).normal(N));
  for (let i = 0; i < steps; i++) {
    const t = ts[i];
    const e = mix(i, x, Math.acos(Math.max(-1, Math.min(1, Math.cos(t)))));
    const a = ac[t];
    const ap = t - 1000 / steps >= 0 ? ac[t - 1000 / steps] : ac[0];
    x = x.map((v, k) => Math.sqrt(ap) * ((v - Math.sqrt(1 - a) * e[k]) / Math.sqrt(a)) + Math.sqrt(1 - ap) * e[k]);
  }
  return x;
}

const guided = (set: number[], x: Float64Array, t: number, cfg: number) => {
  const u = eps64(set, x, t, 0);
  const c = eps64(set, x, t, 1);
  return u.map((v, k) => v + cfg * (c[k] - v));
};

const JOB: GenerateJob = { prompt: 'p', negative: '', steps: 10, cfg: 3, seed: 5, width: SIZE, height: SIZE, scheduler: 'ddim', loras: [0, 1, 2].map((i) => ({ lora: `l${i}`, scale: 1 })) };

test('composite: the final latent is DDIM over the average of each LoRA alone', async () => {
  const log: Log = { merges: [], runs: [], profiles: 0 };
  const parts = { ...standIn(log), ort: await loadOrt() };
  const r = await denoise(parts, { ...JOB, steps: 4, composition: { method: 'composite' } });
  const want = ddim64(4, JOB.seed, (_, x, t) => {
    const sum = new Float64Array(N);
    for (const l of [0, 1, 2]) guided([l], x, t, JOB.cfg).forEach((v, k) => (sum[k] += v / 3));
    return sum;
  });
  let worst = 0;
  for (let k = 0; k < N; k++) worst = Math.max(worst, Math.abs(log.final![k] - want[k]) / (1 + Math.abs(want[k])));
  assert.ok(worst < 1e-5, `relative error ${worst}`);
  assert.equal(r.unetEvaluations, 12);
  // each step starts with the LoRA the previous one ended on: 3 + 2 + 2 + 2 merges
  assert.equal(log.merges.length, 9);
});

// the prediction cache (ours), async: LoRA 2 (the background, last in the order) leads for steps 0-4,
// LoRA 0 from step 5; high LoRAs (0, 1) recomputed every 2 steps, the low one (2) every 3; the
// offsets chain through the dominant (composition.test.ts works the same table out)
const PREDICTION = {
  fresh: [[0, 1, 2], [2], [0, 1, 2], [2], [0, 1, 2], [0, 2], [0, 1], [0], [0, 1, 2], [0]],
  dominant: [2, 2, 2, 2, 2, 0, 0, 0, 0, 0],
  hits: [0.2, 0.5, 0.3],
};

test('cmlora, prediction cache: cached LoRAs are their stored offset plus their anchor\'s prediction now', async () => {
  const log: Log = { merges: [], runs: [], profiles: 0 };
  const parts = { ...standIn(log), ort: await loadOrt() };
  const events: ProgressEvent[] = [];
  const { fresh, dominant, hits } = PREDICTION;
  const r = await denoise(parts, { ...JOB, composition: { method: 'cmlora', cache: 'prediction', switchStep: 5, cacheHigh: 2, cacheLow: 3 } }, (e) => events.push(e));
  const stored: ({ eps: Float64Array; anchorEps: Float64Array; anchor: number } | undefined)[] = [];
  const want = ddim64(10, JOB.seed, (i, x, t) => {
    const c = i < 5 ? 2.5 : 2;
    const d = dominant[i];
    const now = new Map(fresh[i].map((l) => [l, guided([l], x, t, JOB.cfg)]));
    // a cached prediction: the anchor's prediction now plus the offset stored against it
    const resolve = (l: number): Float64Array => {
      if (now.has(l)) return now.get(l)!;
      const s = stored[l]!;
      return resolve(s.anchor).map((v, k) => v + s.eps[k] - s.anchorEps[k]);
    };
    const sum = new Float64Array(N);
    for (const l of [0, 1, 2]) resolve(l).forEach((v, k) => (sum[k] += (v * (l === d ? c : 1)) / (c + 2)));
    for (const [l, e] of now) if (l !== d) stored[l] = { eps: e, anchorEps: now.get(d)!, anchor: d };
    stored[d] = undefined;
    return sum;
  });
  let worst = 0;
  for (let k = 0; k < N; k++) worst = Math.max(worst, Math.abs(log.final![k] - want[k]) / (1 + Math.abs(want[k])));
  assert.ok(worst < 1e-5, `relative error ${worst}`);
  const comp = r.composition;
  assert.deepEqual(comp.steps.map((s) => s.active), fresh);
  assert.deepEqual(comp.steps.map((s) => s.dominant), dominant);
  assert.deepEqual(comp.partition, { high: [0, 1], low: [2] });
  assert.deepEqual(comp.profile && [comp.profile.source, comp.profile.unetEvaluations], ['category', 0]);
  assert.equal(r.unetEvaluations, fresh.flat().length);
  assert.deepEqual(comp.cacheHitRate, hits);
  assert.deepEqual(events.filter((e) => e.phase === 'denoise').map((e) => e.composition), comp.steps);
});

test('cmlora, the code\'s deep cache: a LoRA\'s shallow runs reuse the deep features of its last whole run; multiply-adds counted per run', async () => {
  const log: Log = { merges: [], runs: [], profiles: 0 };
  const parts = { ...standIn(log), ort: await loadOrt() };
  const r = await denoise(parts, { ...JOB, composition: { method: 'cmlora', switchStep: 5, cacheInterval: 2 } });
  // refresh every 2 steps; before the switch at 5 LoRA 0 (the one after the dominant, 2), after it LoRA 1
  const record = [[0, 1, 2], [], [0], [], [0], [], [1], [], [1], []];
  const dominant = [2, 2, 2, 2, 2, 0, 0, 0, 0, 0];
  const kept: Float64Array[][] = [];
  const want = ddim64(10, JOB.seed, (i, x, t) => {
    const c = i < 5 ? 2.5 : 2;
    const sum = new Float64Array(N);
    for (const l of [0, 1, 2]) {
      // the deep features of both guided branches: new on a whole run, kept otherwise
      if (record[i].includes(l)) kept[l] = [feature64([l], x, t, 0), feature64([l], x, t, 1)];
      const u = eps64([l], x, t, 0, kept[l][0]);
      const e = eps64([l], x, t, 1, kept[l][1]);
      for (let k = 0; k < N; k++) sum[k] += ((u[k] + JOB.cfg * (e[k] - u[k])) * (l === dominant[i] ? c : 1)) / (c + 2);
    }
    return sum;
  });
  let worst = 0;
  for (let k = 0; k < N; k++) worst = Math.max(worst, Math.abs(log.final![k] - want[k]) / (1 + Math.abs(want[k])));
  assert.ok(worst < 1e-5, `relative error ${worst}`);
  const steps = r.composition.steps;
  assert.deepEqual(steps.map((s) => [0, 1, 2].filter((l) => !s.shallow.includes(l))), record);
  assert.deepEqual(steps.map((s) => s.refreshed), [0, null, 0, null, 0, null, 1, null, 1, null]);
  const records = record.flat().length;
  assert.equal(log.runs.filter((v) => v === 'record').length, records);
  assert.equal(r.unetEvaluations, 30);
  assert.equal(r.unetMultiplyAdds, records * 100 + (30 - records) * 30);
  assert.deepEqual(steps.map((s) => s.unetMultiplyAdds), record.map((l) => l.length * 100 + (3 - l.length) * 30));
});

test('DeepCache on its own (deepCacheInterval) for merge: the whole UNet every N steps, the shallow part between', async () => {
  const log: Log = { merges: [], runs: [], profiles: 0 };
  const parts = { ...standIn(log), ort: await loadOrt() };
  const r = await denoise(parts, { ...JOB, steps: 7, composition: { method: 'merge', deepCacheInterval: 3 } });
  assert.deepEqual(log.runs, ['record', 'reuse', 'reuse', 'record', 'reuse', 'reuse', 'record']);
  assert.equal(r.unetMultiplyAdds, 3 * 100 + 4 * 30);
});

test('cmlora by profile: each LoRA profiled once on its own image (the notebook\'s measure), then from the store; order and groups by the profile', async () => {
  const log: Log = { merges: [], runs: [], profiles: 0 };
  const store = new MemoryProfileStore();
  const parts = { ...standIn(log), ort: await loadOrt(), profileStore: store, profileKey: (i: number, s: { prompt: string }) => `${i}:${s.prompt}` };
  const job = { ...JOB, steps: 4, composition: { method: 'cmlora' as const, partition: 'profile' as const, profileSteps: 2, cacheInterval: 1 } };
  const first = await denoise(parts, job);
  const p = first.composition.profile!;
  assert.deepEqual([p.source, p.sources, p.unetEvaluations], ['run', ['run', 'run', 'run'], 6]);
  assert.ok(p.amplitudes[0] > p.amplitudes[1] && p.amplitudes[1] > p.amplitudes[2], JSON.stringify(p.amplitudes));
  assert.deepEqual(first.composition.order, [0, 1, 2]);
  assert.deepEqual(first.composition.partition, { high: [0, 1], low: [2] });
  const again = await denoise(parts, job);
  assert.deepEqual([again.composition.profile!.source, again.composition.profile!.unetEvaluations], ['cache', 0]);
  assert.deepEqual(again.composition.profile!.amplitudes, p.amplitudes);
  assert.equal(log.profiles, 3, 'three profiling images in all');
});
