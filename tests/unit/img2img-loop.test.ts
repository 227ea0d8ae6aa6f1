// Image to image and inpainting in the denoising loop against float64 re-derivations from diffusers'
// formulas: the start step (get_timesteps), the noised start (add_noise), the multistep sampler's
// first-order first step after a begin index, the per-step blend of a 4-channel inpainting pipeline,
// and the 9-channel UNet's input. The UNet is a closed-form stand-in (affine in its input), so each
// step's expected latent can be written down.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import type { GenerateJob } from '../../workers/api/contract.ts';
import { TINY_CONFIG, type ModelConfig } from '../../workers/checkpoint/config.ts';
import { denoise, type PipelineParts } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { loadOrt } from '../../workers/engine/runtime.ts';
import { alphasCumprod } from '../../workers/schedulers/common.ts';
import { ddimTimesteps } from '../../workers/schedulers/ddim.ts';
import { DpmSolverPP2MScheduler } from '../../workers/schedulers/dpmpp-2m.ts';
import type { ClipTextTokenizer } from '../../workers/text/tokenizer.ts';
import { TokenTable } from '../../workers/text/token-table.ts';

const SIZE = 64;
const C = 4;
const CELLS = (SIZE / 8) * (SIZE / 8);
const N = C * CELLS;

/** The stand-in's noise prediction from the UNet input u (its first N values: the latent). */
const eps64 = (u: ArrayLike<number>, extra = 0) => Float64Array.from({ length: N }, (_, k) => 0.3 * u[k] + 0.1 * Math.sin(k) + extra);

interface Seen {
  samples: Float32Array[];
  final?: Float32Array;
}

function standIn(seen: Seen, config: ModelConfig = TINY_CONFIG): PipelineParts {
  return {
    ort: undefined as unknown as PipelineParts['ort'],
    config,
    tokenizer: { encode: () => ({ ids: [1, 2], tokenCount: 2, truncated: false }), maxLength: 77 } as unknown as ClipTextTokenizer,
    textEncoder: async () => ({ last_hidden_state: { data: new Float32Array(config.textEncoder.maxPositions * config.unet.crossAttentionDim) } }) as unknown as OrtNs.InferenceSession.OnnxValueMapType,
    tokens: TokenTable.of(new Float32Array(3 * config.textEncoder.hidden), config.textEncoder.hidden, 'fp32'),
    unet: async (feeds) => {
      const u = feeds.sample.data as Float32Array;
      seen.samples.push(u.slice());
      // a 9-channel input adds the mean of its extra channels, so they must arrive to match
      const extra = u.length > N ? u.subarray(N).reduce((a, b) => a + b, 0) / (u.length - N) : 0;
      return { noise_pred: { data: Float32Array.from(eps64(u, extra)) } } as unknown as OrtNs.InferenceSession.OnnxValueMapType;
    },
    vae: async (feeds) => {
      seen.final = Float32Array.from(feeds.latent.data as Float32Array);
      return { image: { data: new Float32Array(3 * SIZE * SIZE) } } as unknown as OrtNs.InferenceSession.OnnxValueMapType;
    },
    isCancelled: () => false,
    checkDevice: () => {},
    setLoras: async () => undefined,
    magnitudes: async (_i, count, h, w) => new Float64Array(count * h * w),
    loraNames: [],
  };
}

const JOB: GenerateJob = { prompt: 'p', negative: '', steps: 4, cfg: 1, seed: 11, width: SIZE, height: SIZE, scheduler: 'ddim', previewEvery: 0 };
const picture = Float32Array.from({ length: N }, (_, k) => Math.cos(k / 3));

function worst(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let w = 0;
  for (let k = 0; k < b.length; k++) w = Math.max(w, Math.abs(a[k] - b[k]) / (1 + Math.abs(b[k])));
  return w;
}

/** DDIM (eta 0, leading, steps_offset 1) from schedule index `from`, in float64, with `after` applied to each step's result. */
function ddimFrom(x: Float64Array, steps: number, from: number, after: (i: number, x: Float64Array) => Float64Array = (_, v) => v, to = steps): Float64Array {
  const ac = alphasCumprod();
  const ts = ddimTimesteps(steps);
  for (let i = from; i < to; i++) {
    const t = ts[i];
    const e = eps64(x);
    const a = ac[t];
    const prev = t - 1000 / steps;
    const ap = prev >= 0 ? ac[prev] : ac[0];
    x = after(i, x.map((v, k) => Math.sqrt(ap) * ((v - Math.sqrt(1 - a) * e[k]) / Math.sqrt(a)) + Math.sqrt(1 - ap) * e[k]));
  }
  return x;
}

const noised = (x0: ArrayLike<number>, noise: ArrayLike<number>, alphaBar: number) => Float64Array.from({ length: N }, (_, k) => Math.sqrt(alphaBar) * x0[k] + Math.sqrt(1 - alphaBar) * noise[k]);

test('image to image: strength 0.5 of 4 DDIM steps starts at step 2 from the picture noised to t = 251 and runs 2 steps', async () => {
  const seen: Seen = { samples: [] };
  const ort = await loadOrt();
  const r = await denoise({ ...standIn(seen), ort, init: { latent: picture, strength: 0.5 } }, JOB);
  assert.equal(r.startStep, 2);
  assert.equal(r.stepsRun, 2);
  assert.equal(r.unetEvaluations, 2);
  assert.deepEqual(ddimTimesteps(4), [751, 501, 251, 1]);
  const noise = new Rng(JOB.seed).normal(N);
  const start = noised(picture, noise, alphasCumprod()[251]);
  assert.ok(worst(seen.samples[0], start) < 1e-6, 'the first UNet input is the noised picture');
  const want = ddimFrom(start, 4, 2);
  assert.ok(worst(r.latent, want) < 1e-5, `final latent (relative error ${worst(r.latent, want)})`);
});

test('image to image: strength 0 runs no step (the picture itself is decoded); strength 1 is text to image with the same seed', async () => {
  const ort = await loadOrt();
  const keep: Seen = { samples: [] };
  const r0 = await denoise({ ...standIn(keep), ort, init: { latent: picture, strength: 0 } }, JOB);
  assert.equal(r0.stepsRun, 0);
  assert.equal(keep.samples.length, 0);
  assert.deepEqual(keep.final, picture);
  // below one step's worth (4 x 0.2 = 0.8 floors to 0) is the same
  const r02 = await denoise({ ...standIn({ samples: [] }), ort, init: { latent: picture, strength: 0.2 } }, JOB);
  assert.equal(r02.stepsRun, 0);
  const full: Seen = { samples: [] };
  const plain: Seen = { samples: [] };
  const r1 = await denoise({ ...standIn(full), ort, init: { latent: picture, strength: 1 } }, JOB);
  const t2i = await denoise({ ...standIn(plain), ort }, JOB);
  assert.equal(r1.startStep, 0);
  assert.deepEqual(r1.latent, t2i.latent);
  assert.deepEqual(full.final, plain.final);
});

test('DPM++ 2M after a begin index: the first step is first order (no memory), the next second order', async () => {
  const ort = await loadOrt();
  const seen: Seen = { samples: [] };
  const job: GenerateJob = { ...JOB, steps: 6, scheduler: 'dpmpp-2m' };
  const r = await denoise({ ...standIn(seen), ort, init: { latent: picture, strength: 0.5 } }, job);
  assert.equal(r.startStep, 3);
  const s = new DpmSolverPP2MScheduler(6).sigmas;
  const vp = (sg: number) => ({ alpha: 1 / Math.sqrt(sg * sg + 1), sigma: sg / Math.sqrt(sg * sg + 1) });
  const lambda = (c: { alpha: number; sigma: number }) => Math.log(c.alpha / c.sigma);
  const noise = new Rng(job.seed).normal(N);
  let x = Float64Array.from({ length: N }, (_, k) => vp(s[3]).alpha * picture[k] + vp(s[3]).sigma * noise[k]);
  let prev: Float64Array | undefined;
  for (let i = 3; i < 6; i++) {
    const cur = vp(s[i]);
    const next = vp(s[i + 1]);
    const e = eps64(x);
    const x0 = x.map((v, k) => (v - cur.sigma * e[k]) / cur.alpha);
    if (next.sigma === 0) x = x0;
    else {
      const h = lambda(next) - lambda(cur);
      const c = next.alpha * (Math.exp(-h) - 1);
      // first order at the begin index (and at the last step: lower_order_final)
      const firstOrder = i === 3 || i === 5;
      const r2 = prev ? (lambda(cur) - lambda(vp(s[i - 1]))) / h : 0;
      x = x.map((v, k) => (next.sigma / cur.sigma) * v - c * x0[k] - (firstOrder ? 0 : (0.5 * c * (x0[k] - prev![k])) / r2));
    }
    prev = x0;
  }
  assert.ok(worst(r.latent, x) < 1e-5, `relative error ${worst(r.latent, x)}`);
});

test('inpainting (4 channels): after every step the kept cells are the picture noised to the next step, and clean at the end', async () => {
  const ort = await loadOrt();
  const seen: Seen = { samples: [] };
  // repaint the left half of the latent grid
  const blend = Float32Array.from({ length: CELLS }, (_, c) => (c % 8 < 4 ? 1 : 0));
  const r = await denoise({ ...standIn(seen), ort, init: { latent: picture, strength: 0.75, blend } }, JOB);
  assert.equal(r.startStep, 1);
  assert.equal(r.latentsOnGpu, false);
  const ac = alphasCumprod();
  const ts = ddimTimesteps(4);
  const noise = new Rng(JOB.seed).normal(N);
  const start = noised(picture, noise, ac[ts[1]]);
  const want = ddimFrom(start, 4, 1, (i, x) => {
    const proper = i < 3 ? noised(picture, noise, ac[ts[i + 1]]) : Float64Array.from(picture);
    return x.map((v, k) => (blend[k % CELLS] ? v : proper[k]));
  });
  assert.ok(worst(r.latent, want) < 1e-5, `relative error ${worst(r.latent, want)}`);
  for (let k = 0; k < N; k++) if (!blend[k % CELLS]) assert.equal(r.latent[k], picture[k], `kept value ${k} is the picture's`);
  let moved = 0;
  for (let k = 0; k < N; k++) if (blend[k % CELLS]) moved = Math.max(moved, Math.abs(r.latent[k] - picture[k]));
  assert.ok(moved > 0.05, `the masked half was repainted (${moved})`);
  // and the UNet saw, at step 2, the blended latent of step 1
  const afterFirst = ddimFrom(
    start,
    4,
    1,
    (_, x) => {
      const proper = noised(picture, noise, ac[ts[2]]);
      return x.map((v, k) => (blend[k % CELLS] ? v : proper[k]));
    },
    2,
  );
  assert.equal(seen.samples.length, 3);
  assert.ok(worst(seen.samples[1], afterFirst) < 1e-5, 'the second UNet input is the blended latent');
});

test('an inpainting UNet gets latent, mask and masked picture latent as its 9 input channels, for both CFG halves', async () => {
  const ort = await loadOrt();
  const seen: Seen = { samples: [] };
  const config = { ...TINY_CONFIG, unet: { ...TINY_CONFIG.unet, inChannels: 9 } };
  const mask = Float32Array.from({ length: CELLS }, (_, c) => (c < 20 ? 1 : 0));
  const masked = Float32Array.from({ length: N }, (_, k) => Math.sin(k / 5));
  const r = await denoise({ ...standIn(seen, config), ort, init: { latent: picture, strength: 1 }, inpaintInput: { mask, masked } }, { ...JOB, cfg: 2 });
  assert.equal(r.latentsOnGpu, false);
  assert.equal(seen.samples.length, 4);
  const first = seen.samples[0];
  assert.equal(first.length, 2 * 9 * CELLS, 'two halves of 9 channels');
  for (const half of [0, 1]) {
    const u = first.subarray(half * 9 * CELLS, (half + 1) * 9 * CELLS);
    const latent = new Rng(JOB.seed).normal(N);
    assert.ok(worst(u.subarray(0, N), latent) < 1e-6, 'channels 0-3: the latent');
    assert.deepEqual(u.subarray(N, N + CELLS), mask, 'channel 4: the mask');
    assert.deepEqual(u.subarray(N + CELLS), masked, 'channels 5-8: the masked picture latent');
  }
});

test('Heun from part-way starts on a predictor, at evaluation tStart x 2 of its interleaved schedule', async () => {
  const ort = await loadOrt();
  const seen: Seen = { samples: [] };
  const r = await denoise({ ...standIn(seen), ort, init: { latent: picture, strength: 0.5 } }, { ...JOB, scheduler: 'heun' });
  // 4 steps are 7 evaluations; strength 0.5 runs the last 2 steps: evaluations 4, 5, 6
  assert.equal(r.startStep, 4);
  assert.equal(r.stepsRun, 3);
  assert.equal(seen.samples.length, 3);
});
