// The denoising loop's mixing and caching against a float64 re-derivation. The UNet is a closed-form
// stand-in whose noise prediction depends on the LoRA set merged into it, so the expected latent of
// every step can be written down from the hand-worked schedule (see composition.test.ts) alone.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import type { GenerateJob, ProgressEvent } from '../../workers/api/contract.ts';
import { TINY_CONFIG } from '../../workers/checkpoint/config.ts';
import { denoise, type PipelineParts } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { loadOrt } from '../../workers/engine/runtime.ts';
import { alphasCumprod } from '../../workers/schedulers/common.ts';
import { ddimTimesteps } from '../../workers/schedulers/ddim.ts';
import type { ClipTextTokenizer } from '../../workers/text/tokenizer.ts';

const config = TINY_CONFIG;
const C = config.unet.inChannels;
const SIZE = 64;
const N = C * (SIZE / 8) * (SIZE / 8);

/** The stand-in's guided-branch noise prediction: affine in x, a different slope per LoRA set. */
function eps64(set: number[], x: ArrayLike<number>, t: number, branch: 0 | 1): Float64Array {
  const slope = 0.1 + 0.05 * set.reduce((a, i) => a + (i + 1) ** 2, 0) + 0.03 * branch;
  const shift = 0.02 * (set.length + 1) * Math.cos(t / 100) + 0.01 * branch;
  return Float64Array.from({ length: N }, (_, k) => slope * x[k] + shift * Math.sin(k));
}

function standIn(log: { merges: string[]; final?: Float32Array }): PipelineParts {
  let merged: number[] = [];
  return {
    ort: undefined as unknown as PipelineParts['ort'],
    config,
    tokenizer: { encode: () => ({ ids: [1, 2], tokenCount: 2, truncated: false }), maxLength: 77 } as unknown as ClipTextTokenizer,
    textEncoder: async () => ({ last_hidden_state: { data: new Float32Array(config.textEncoder.maxPositions * config.unet.crossAttentionDim) } }) as unknown as OrtNs.InferenceSession.OnnxValueMapType,
    unet: async (feeds) => {
      const batch = feeds.sample.dims[0];
      const x = feeds.sample.data as Float32Array;
      const t = Math.acos(Math.max(-1, Math.min(1, (feeds.timestep_embedding.data as Float32Array)[0]))); // recovers t mod 2π: enough to vary
      const out = new Float32Array(batch * N);
      for (let b = 0; b < batch; b++) out.set(eps64(merged, x.subarray(b * N, (b + 1) * N), t, batch === 2 ? (b as 0 | 1) : 1), b * N);
      return { noise_pred: { data: out } } as unknown as OrtNs.InferenceSession.OnnxValueMapType;
    },
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
    // the profile batch (one image per LoRA) makes 0 and 1 the high-frequency LoRAs and 2 the low one
    amplitudes: async (_images, count) => (count === 3 ? [0.9, 0.8, 0.1] : Array.from({ length: count }, () => 0.5)),
    loraNames: ['a', 'b', 'c'],
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
  const log: { merges: string[]; final?: Float32Array } = { merges: [] };
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

// hand-worked schedules (LoRAs 0 and 1 high-frequency, 2 low): which LoRAs run at each step and which
// leads; the rest come from the cache. In the second, step 6 rebuilds LoRA 2 through LoRA 0's entry.
const SCENARIOS = [
  {
    options: { cacheLow: 3, highPhase: 0.6 },
    fresh: [[0, 1, 2], [0], [0, 1], [0, 2], [0, 1], [0, 1], [0, 1, 2], [0], [0, 1], [0, 2]],
    dominant: [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    hits: [0, 0.4, 0.6],
  },
  {
    options: { cacheLow: 4, highPhase: 1 },
    fresh: [[0, 1, 2], [0], [0, 1], [0], [0, 1, 2], [0, 1], [1], [0, 1], [1, 2], [0, 1]],
    dominant: [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    hits: [0.2, 0.2, 0.7],
  },
];

for (const { options, fresh, dominant, hits } of SCENARIOS) test(`cmlora (cacheLow ${options.cacheLow}): cached LoRAs are their stored offset plus their anchor's prediction now`, async () => {
  const log: { merges: string[]; final?: Float32Array } = { merges: [] };
  const parts = { ...standIn(log), ort: await loadOrt() };
  const events: ProgressEvent[] = [];
  const r = await denoise(parts, { ...JOB, composition: { method: 'cmlora', switchStep: 5, cacheHigh: 2, profileSteps: 2, ...options } }, (e) => events.push(e));
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
  assert.deepEqual(comp.partition, { high: [0, 1], low: [2] });
  assert.deepEqual(comp.profile && [comp.profile.source, comp.profile.unetEvaluations], ['run', 6]);
  assert.equal(r.unetEvaluations, 6 + fresh.flat().length);
  assert.deepEqual(comp.unetEvaluations, { profile: 6, denoise: fresh.flat().length });
  assert.deepEqual(comp.cacheHitRate, hits);
  assert.deepEqual(events.filter((e) => e.phase === 'denoise').map((e) => e.composition), comp.steps);
  assert.deepEqual(events.filter((e) => e.phase === 'profile').map((e) => e.step), [0, 1, 2]);
});
