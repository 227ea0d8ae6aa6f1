// Faults on the real engine (tiny model, WebGPU): a cancel at every phase gives back every GPU byte
// the job took, buffers past the adapter's limits are refused before anything is allocated, and two
// jobs sent at once run one after the other; the GPU running out of memory mid-job or mid-load ends
// it with the named error and stops the engine until a new one is made. (A lost device is in
// device-lost.test.ts: it ends the device for the rest of its process.)
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { FileRef, GenerateJob, LoraInfo, ProgressEvent } from '../../workers/api/contract.ts';
import { EngineError, GpuOutOfMemoryError } from '../../workers/api/errors.ts';
import { Engine } from '../../workers/engine/engine.ts';
import { MemoryProfileStore } from '../../workers/engine/profile-store.ts';
import { createWorkerApi } from '../../workers/engine/worker-api.ts';
import { GpuLimitError } from '../../workers/gpu/limits.ts';
import { graphSpecs } from '../../workers/graph/specs.ts';
import { openModelPath } from '../../workers/node/files.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { makeTinyClip, tinyClipFiles } from '../../workers/eval/tiny-clip.ts';
import { runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'a fox in a red coat', negative: '', steps: 3, cfg: 5, seed: 5, width: 64, height: 64, scheduler: 'dpmpp-2m' };

let setup: Promise<{ engine: Engine; loras: LoraInfo[] }> | undefined;
const studio = () => (setup ??= tinyModelDir().then(async ({ dir }) => openTinyEngine(dir, await runtime('webgpu'), ['kohya', 'loha'])));

const gpuLive = async () => (await runtime('webgpu')).gpu!.memory.live;

/**
 * onnxruntime keeps freed buffers in a cache of its own on the shared device, and from one run to the
 * next it may hold one small input-sized buffer more or less (2 KB here). Anything of the engine's
 * that a cancel left behind is larger: one set of the GPU loop's buffers is 12 KB at this size.
 */
const ORT_CACHE_SLACK = 4096;
const sameBytes = async (idle: number, what: string) => {
  const live = await gpuLive();
  assert.ok(Math.abs(live - idle) <= ORT_CACHE_SLACK, `${what}: ${live} bytes live, ${idle} before`);
};

test('a cancel in every phase (text, profiling, a step, decode) gives back the GPU bytes and the next job makes the same image', async () => {
  const { engine, loras } = await studio();
  // without CFG (a batch of one): what is checked, the GPU bytes a cancel gives back, does not depend on it
  const jobs: GenerateJob[] = [
    { ...JOB, cfg: 1, steps: 2, loras: [{ lora: loras[0].id, scale: 0.8 }] },
    { ...JOB, cfg: 1, steps: 2, loras: loras.map((l) => ({ lora: l.id, scale: 0.8 })), composition: { method: 'cmlora', partition: 'profile', profiling: 'offline', profileSteps: 2 } },
    {
      ...JOB,
      cfg: 1,
      steps: 2,
      layout: {
        boxes: [{ name: 'fox', x: 0, y: 8, width: 32, height: 48, prompt: 'a red fox', loras: [{ lora: loras[1].id, scale: 1 }] }],
        injection: true, isolation: true, reinit: true,
        guidance: { ce: true, fill: true, region: false, scale: 2, share: 0.7, earlyStop: false },
      },
    },
  ];
  for (const job of jobs) {
    const reference = await engine.generate(job);
    // a second run first: onnxruntime's buffer cache takes one more small buffer on a job's second
    // run, then holds steady run after run
    await engine.generate(job);
    const idle = await gpuLive();
    // a plain job is cancelled in every common phase, cmlora in its profiling, the layout job in its
    // denoising (where its own buffers are live)
    const phases = job.composition?.method === 'cmlora' ? ['profile'] : job.layout ? ['denoise'] : ['text', 'denoise', 'decode'];
    for (const phase of phases) {
      const seen: string[] = [];
      // the reference run kept each LoRA's profile: an empty store makes the profiling run again
      if (phase === 'profile') engine.profileStore = new MemoryProfileStore();
      const run = engine.generate(job, (e: ProgressEvent) => {
        seen.push(e.phase);
        if (e.phase === phase) engine.cancel();
      });
      await assert.rejects(run, (e: EngineError) => e.code === 'cancelled', `cancel during ${phase}`);
      assert.ok(!seen.includes('done'), `cancelled in ${phase}, yet the job finished`);
      await sameBytes(idle, `GPU bytes after a cancel during ${phase}`);
    }
    const again = await engine.generate(job);
    assert.deepEqual(again.image.data, reference.image.data, 'the job after the cancels gives the same image');
    await sameBytes(idle, 'GPU bytes after the job that follows the cancels');
  }
});

test('a cancel while the model loads releases its weights; the next load and job run', async () => {
  const { dir } = await tinyModelDir();
  const { files, tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const engine = new Engine(await runtime('webgpu'));
  const before = await gpuLive();
  await assert.rejects(
    engine.loadModel(files, tokenizer!, 'fp32', (done) => {
      if (done === 20) engine.cancel();
    }),
    (e: EngineError) => e.code === 'cancelled',
  );
  assert.equal(await gpuLive(), before, 'no weight buffer is left behind');
  assert.equal(engine.modelInfo, undefined);
  const info = await engine.loadModel(files, tokenizer!, 'fp32');
  assert.ok(info.weightBytes > 0);
  assert.equal(await gpuLive(), before + info.weightBytes);
  const r = await engine.generate({ ...JOB, steps: 1 });
  assert.equal(r.report.unetEvaluations, 1);
  engine.unload();
});

test('a weight or an activation larger than one GPU buffer is refused before anything is allocated, with the fix', async () => {
  const { dir } = await tinyModelDir();
  const { files, tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const rt = await runtime('webgpu');
  const real = new Engine(rt);
  const info = await real.loadModel(files, tokenizer!, 'fp32');
  // the jobs' plans on this GPU, by the job's plan (attention split, decode tiled, CFG halves where those help)
  const planned = async (e: Engine, size: number) => (await e.planJob({ ...JOB, width: size, height: size })).largestBufferBytes;
  const at64 = await planned(real, 64);
  const whole128 = await planned(real, 128);
  real.unload();
  // the largest weight of the tiny model the GPU holds, in fp32: a UNet convolution's (CLIP's token
  // table is larger, but stays in CPU memory)
  const specs = graphSpecs(info.config);
  const elements = (s: { dims: number[] }) => s.dims.reduce((a, b) => a * b, 1);
  const table = elements(specs.tokenTable) * 4;
  const largest = Math.max(...[...specs.unet, ...specs.textEncoder, ...specs.vae].map((s) => elements(s) * 4));
  assert.ok(table > largest, `${table} ${largest}`);
  const limited = (limit: number, shaderF16: boolean) =>
    new Engine({ ...rt, gpu: { ...rt.gpu!, adapter: { ...rt.gpu!.adapter, maxStorageBufferBindingSize: limit, shaderF16 } } });

  const before = await gpuLive();
  const halfFits = limited(largest - 4, true);
  await assert.rejects(halfFits.loadModel(files, tokenizer!, 'fp32'), (e: Error) => {
    assert.ok(e instanceof GpuLimitError);
    assert.match(e.message, new RegExp(`needs ${(largest / 2 ** 20).toFixed(3)} MB in fp32.*at most ${((largest - 4) / 2 ** 20).toFixed(3)} MB.*fp16`));
    return true;
  });
  const nothingFits = limited(largest / 2 - 4, false);
  await assert.rejects(nothingFits.loadModel(files, tokenizer!, 'fp32'), /No precision setting makes it fit/);
  assert.equal(await gpuLive(), before, 'nothing was allocated');
  // a limit below the token table but not below any weight on the GPU loads the model in fp32
  const tableAbove = limited(largest, false);
  await tableAbove.loadModel(files, tokenizer!, 'fp32');
  tableAbove.unload();
  assert.equal(await gpuLive(), before, 'unloading gives back every buffer');

  // activations: a limit at the 64x64 plan's largest buffer admits 64x64 but not 128x128
  assert.ok(at64 >= largest, `tiny model: ${at64} / ${largest}`);
  const engine = limited(at64, false);
  await engine.loadModel(files, tokenizer!, 'fp32');
  const at128 = await planned(engine, 128);
  assert.ok(at128 > at64, `${at128} ${at64}`);
  const loaded = await gpuLive();
  await assert.rejects(engine.generate({ ...JOB, width: 128, height: 128 }), (e: Error) => e instanceof GpuLimitError && new RegExp(`A 128x128 image needs a buffer of ${(at128 / 2 ** 20).toFixed(3)} MB .* Use a smaller size \\(64x64 fits\\)`).test(e.message));
  assert.equal(await gpuLive(), loaded, 'the refused job allocated nothing');
  // a limit the 128x128 plan meets only by decoding in tiles (its whole decode's maps are larger) runs the job
  const tiled = limited(at128, false);
  await tiled.loadModel(files, tokenizer!, 'fp32');
  assert.ok(whole128 > at128, `without a limit the 128x128 plan's largest buffer ${whole128} is above ${at128}`);
  const big = await tiled.generate({ ...JOB, width: 128, height: 128, steps: 1 });
  assert.equal(big.image.width, 128);
  assert.ok(big.report.memoryPlan.vaeTile !== null && big.report.memoryPlan.largestBufferBytes <= at128, JSON.stringify(big.report.memoryPlan));
  tiled.unload();
  const ok = await engine.generate({ ...JOB, steps: 1 });
  assert.equal(ok.image.width, 64);
  engine.unload();
});

test('two jobs sent at once through the worker interface run one after the other; the engine itself refuses a second', async () => {
  const { dir } = await tinyModelDir();
  const path = join(dir, 'tiny-sd15.safetensors');
  const { tokenizer } = await openModelPath(path);
  const blob = new Blob([await readFile(path)]);
  await runtime('webgpu');
  const api = createWorkerApi();
  await api.loadModel({ single: { kind: 'blob', name: 'tiny-sd15.safetensors', blob }, tokenizer: tokenizer!, precision: 'fp32' });
  const a = { ...JOB, seed: 1, steps: 2 };
  const b = { ...JOB, seed: 2, steps: 1 };
  const log: string[] = [];
  const [ra, rb] = await Promise.all([api.generate(a, (p) => void log.push(`a:${p.phase}`)), api.generate(b, (p) => void log.push(`b:${p.phase}`))]);
  assert.equal(log.indexOf('a:done'), log.findIndex((x) => x.startsWith('b:')) - 1, `interleaved: ${log.join(' ')}`);
  const alone = await api.generate(b);
  assert.deepEqual(rb.image.data, alone.image.data, 'the queued job is the job run alone');
  assert.equal(ra.report.seed, 1);

  const { engine } = await studio();
  const first = engine.generate(JOB);
  await assert.rejects(engine.generate(JOB), (e: EngineError) => e.code === 'busy' && /already running/.test(e.message));
  await first;
});

/**
 * SwiftShader allocates one piece of at most just under 1 GiB: a 1 GiB buffer (within its
 * maxBufferSize, so no validation error) fails as an out-of-memory, as any allocation past a GPU's
 * memory does. Made through the device's createBuffer, as onnxruntime's allocations are, it is what
 * onnxruntime meets when a job does not fit; `unscoped` calls WebGPU's own createBuffer, outside the
 * engine's error scopes, so the error reaches the device's uncaptured-error listener instead. It
 * holds nothing, so the device is as it was.
 */
const allocateTooMuch = (device: GPUDevice, unscoped = false) => {
  const desc = { size: 2 ** 30, usage: GPUBufferUsage.STORAGE };
  return unscoped ? (Object.getPrototypeOf(device) as GPUDevice).createBuffer.call(device, desc) : device.createBuffer(desc);
};
const mbText = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MB`;

test('the GPU out of memory mid-job: the named error with the step and the plan, the engine refuses until a new one; a new engine makes the same image; out of memory while loading says so', async () => {
  const { dir } = await tinyModelDir();
  const rt = await runtime('webgpu');
  const { engine, loras } = await studio();
  const job = { ...JOB, loras: [{ lora: loras[0].id, scale: 0.8 }] };
  const before = await engine.generate(job);
  const steps: number[] = [];
  let failure: GpuOutOfMemoryError | undefined;
  await assert.rejects(
    engine.generate(job, (e) => {
      if (e.phase !== 'denoise') return;
      steps.push(e.step);
      if (e.step === 1) allocateTooMuch(rt.gpu!.device);
    }),
    (e: Error) => {
      failure = e as GpuOutOfMemoryError;
      return e instanceof GpuOutOfMemoryError && e.code === 'gpu-out-of-memory';
    },
  );
  const data = failure!.data!;
  assert.equal(data.plannedPeakBytes, before.report.memoryPlan.peakBytes);
  // what was in use when it failed (the failed buffer not counted): at least the model's weights, at
  // most what the same job held at its peak
  const weights = Object.values(before.report.memoryPlan.parts.weightBytes).reduce((a, b) => a + b, 0);
  const peak = before.report.gpuBytesAllocated;
  assert.ok(data.liveBytes >= weights && data.liveBytes <= peak + ORT_CACHE_SLACK, `${data.liveBytes} in use; weights ${weights}, the job's peak ${peak}`);
  assert.ok(Math.abs(rt.gpu!.memory.live - data.liveBytes) <= ORT_CACHE_SLACK + 2 ** 20, `the failed buffer left the count: ${rt.gpu!.memory.live} live`);
  assert.equal(
    failure!.message,
    `The GPU ran out of memory after step ${steps.at(-1)} of 3 (${mbText(data.liveBytes)} were in use; the job planned ${mbText(before.report.memoryPlan.peakBytes)} at peak, largest buffer ${mbText(before.report.memoryPlan.largestBufferBytes)}). ` +
      'Restart the engine, then use a smaller picture, fewer LoRAs or a GPU memory limit; your scene is kept.',
  );
  // the error comes as an event: by the next step's check at the latest
  assert.ok(steps.length <= 2 && steps[0] === 1, `the job ended at the step after it: ${steps}`);
  // onnxruntime may keep a failed buffer in its pool: nothing more runs on this engine
  await assert.rejects(engine.generate(JOB), (e: EngineError) => e === failure);
  await assert.rejects(engine.applyLoras([]), (e: EngineError) => e === failure);

  const { files, tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const loading = new Engine(rt);
  let parts = 0;
  await assert.rejects(
    loading.loadModel(files, tokenizer!, 'fp32', (done) => {
      parts = done;
      if (done === 3) allocateTooMuch(rt.gpu!.device, true);
    }),
    (e: EngineError) =>
      e.code === 'gpu-out-of-memory' &&
      /^The GPU ran out of memory while loading the model \(\d+\.\d MB were in use\)\. Restart the engine, then close other programs that use the GPU; your scene is kept\.$/.test(e.message),
  );
  assert.ok(parts < 10, `the load stopped at the next part (${parts})`);
  await assert.rejects(loading.generate(JOB), (e: EngineError) => e.code === 'gpu-out-of-memory');

  // a restart: a new engine (the failed allocations held nothing) makes the same image
  const fresh = await openTinyEngine(dir, rt, ['kohya']);
  const again = await fresh.engine.generate({ ...job, loras: [{ lora: fresh.loras[0].id, scale: 0.8 }] });
  assert.deepEqual(again.image.data, before.image.data, 'a new engine makes the same image');
});

test('the GPU out of memory while the CLIP scorer loads: said as such (not at the next job as "between jobs"), and the engine refuses until a new one', async () => {
  const rt = await runtime('webgpu');
  const clip = makeTinyClip();
  const files = (): Record<string, FileRef> => Object.fromEntries(tinyClipFiles(clip).map((f) => [f.path, { kind: 'blob', name: f.path, blob: new Blob(f.parts as BlobPart[]) }]));
  // the scorer loads through the worker interface as the studio loads it
  const healthy = createWorkerApi();
  assert.equal((await healthy.loadScorer({ name: 'tiny', files: files() })).name, 'tiny');

  // the same files, but the GPU runs out while the scorer reads its first file (another program took it)
  class Starved extends Blob {
    override async text() {
      allocateTooMuch(rt.gpu!.device, true);
      return super.text();
    }
  }
  const starved = files();
  const config = starved['config.json'] as { kind: 'blob'; name: string; blob: Blob };
  starved['config.json'] = { ...config, blob: new Starved([await config.blob.arrayBuffer()]) };
  const api = createWorkerApi();
  await api.init();
  let failure: EngineError | undefined;
  await assert.rejects(api.loadScorer({ name: 'tiny', files: starved }), (e: EngineError) => {
    failure = e;
    return (
      e.code === 'gpu-out-of-memory' &&
      /^The GPU ran out of memory while loading the CLIP scorer \(\d+\.\d MB were in use\)\. Restart the engine, then close other programs that use the GPU, or use the built-in scorer; your scene is kept\.$/.test(e.message)
    );
  });
  // the next call is refused with the same sentence, as after a job's out-of-memory
  await assert.rejects(api.generate(JOB), (e: EngineError) => e.code === 'gpu-out-of-memory' && e.message === failure!.message);
});
