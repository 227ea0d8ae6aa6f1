// Whole generations with the tiny model, through the same engine the worker and the CLI use.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { GenerateJob } from '../../workers/api/contract.ts';
import { CancelledError, EngineError, ShapeMismatchError } from '../../workers/api/errors.ts';
import { floatToHalf } from '../../workers/checkpoint/dtype.ts';
import { concatBytes, encodeSafetensors, SafetensorsFile } from '../../workers/checkpoint/safetensors.ts';
import { MemorySource } from '../../workers/checkpoint/source.ts';
import { Engine } from '../../workers/engine/engine.ts';
import { openModelPath } from '../../workers/node/files.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

const JOB: GenerateJob = { prompt: 'a photo of a cat with a red hat', negative: 'blurry', steps: 3, cfg: 7, seed: 42, width: 64, height: 64, scheduler: 'dpmpp-2m' };

async function engineFor(backend: 'wasm' | 'webgpu', path?: string) {
  const { dir } = await tinyModelDir();
  const { files, tokenizer } = await openModelPath(path ?? join(dir, 'tiny-sd15.safetensors'));
  const engine = new Engine(await runtime(backend));
  const info = await engine.loadModel(files, tokenizer!, 'fp32');
  return { engine, info };
}

function pixelsDiffer(data: Uint8ClampedArray): number {
  const distinct = new Set<number>();
  for (let i = 0; i < data.length; i += 4) distinct.add(data[i] * 65536 + data[i + 1] * 256 + data[i + 2]);
  return distinct.size;
}

test('single-file and diffusers layouts load to the same model and image; same seed, same pixels', async () => {
  const { dir } = await tinyModelDir();
  const a = await engineFor('wasm');
  assert.equal(a.info.layout, 'single-file');
  assert.equal(a.info.isTestModel, true);
  assert.deepEqual(a.info.config.unet.blockOutChannels, [16, 32, 32, 32]);
  const r1 = await a.engine.generate(JOB);
  const r2 = await a.engine.generate(JOB);
  assert.deepEqual(r1.image.data, r2.image.data, 'same seed twice');
  assert.ok(pixelsDiffer(r1.image.data) > 100, 'image is not constant');
  assert.equal(r1.report.unetEvaluations, 3);
  assert.equal(r1.image.width, 64);
  const r3 = await a.engine.generate({ ...JOB, seed: 43 });
  assert.notDeepEqual(r3.image.data, r1.image.data, 'another seed, another image');
  a.engine.unload();
  const b = await engineFor('wasm', join(dir, 'diffusers'));
  assert.equal(b.info.layout, 'diffusers');
  assert.deepEqual(b.info.config, a.info.config);
  const rb = await b.engine.generate(JOB);
  assert.deepEqual(rb.image.data, r1.image.data, 'both layouts give the same pixels');
  b.engine.unload();
});

test('every scheduler runs and gives its own image; an fp16 checkpoint gives nearly the same image', async () => {
  const { engine } = await engineFor('wasm');
  const images = [];
  for (const scheduler of ['ddim', 'euler-a', 'dpmpp-2m', 'dpmpp-2m-karras', 'euler', 'lcm'] as const) {
    const r = await engine.generate({ ...JOB, scheduler });
    assert.equal(r.report.scheduler, scheduler);
    images.push(r.image.data);
  }
  for (let i = 1; i < images.length; i++) assert.notDeepEqual(images[i], images[0]);
  engine.unload();

  // the same weights stored as F16 (as many downloads are)
  const { dir } = await tinyModelDir();
  const src = await SafetensorsFile.open(new MemorySource('f32', new Uint8Array(await readFile(join(dir, 'tiny-sd15.safetensors')))));
  const tensors = [];
  for (const key of src.keys()) {
    const info = src.info(key)!;
    const f = new Float32Array((await src.bytes(key)).slice().buffer);
    const h = Uint16Array.from(f, floatToHalf);
    tensors.push({ name: key, dtype: 'F16' as const, shape: info.shape, data: new Uint8Array(h.buffer) });
  }
  const fp16 = new MemorySource('tiny-fp16.safetensors', concatBytes(encodeSafetensors(tensors, src.metadata)));
  const { tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const e16 = new Engine(await runtime('wasm'));
  await e16.loadModel({ single: fp16 }, tokenizer!, 'fp32');
  const r16 = await e16.generate({ ...JOB, scheduler: 'dpmpp-2m' });
  // images[2] is DPM++ 2M (the list above)
  const { diff } = maxAbsDiff(r16.image.data, images[2]);
  assert.ok(diff <= 8, `fp16 weights change pixels by at most 8/255 (got ${diff})`);
  e16.unload();

  // the fp16 path itself: weights, activations and CLIP's token rows in half precision, every graph
  // built in float16 (onnxruntime's wasm EP runs them; SwiftShader has no shader-f16)
  const half = new Engine(await runtime('wasm'));
  const info = await half.loadModel({ single: fp16 }, tokenizer!, 'fp16');
  assert.equal(info.precision, 'fp16');
  const rh = await half.generate({ ...JOB, scheduler: 'dpmpp-2m' });
  assert.equal(rh.report.precision, 'fp16');
  const halfDiff = maxAbsDiff(rh.image.data, r16.image.data);
  assert.ok(halfDiff.diff <= 2 && halfDiff.diff > 0, `fp16 activations change pixels by at most 2/255, and do change them (got ${halfDiff.diff})`);
  half.unload();
});

test('WebGPU and wasm give the same image within 2/255; report fields are present', async () => {
  const w = await engineFor('wasm');
  const rw = await w.engine.generate(JOB);
  w.engine.unload();
  const g = await engineFor('webgpu');
  const rg = await g.engine.generate(JOB);
  const { diff } = maxAbsDiff(rg.image.data, rw.image.data);
  assert.ok(diff <= 2, `max pixel difference ${diff}`);
  const rg2 = await g.engine.generate(JOB);
  assert.deepEqual(rg2.image.data, rg.image.data, 'WebGPU is deterministic');
  const r = rg.report;
  assert.equal(r.adapter.backend, 'webgpu');
  // the group norms: reductions on a CPU adapter (SwiftShader), one InstanceNormalization elsewhere and on wasm
  assert.equal(r.groupNorm, (await runtime('webgpu')).gpu!.adapter.cpu ? 'reductions' : 'instance');
  assert.equal(rw.report.groupNorm, 'instance');
  assert.ok(r.gpuBytesAllocated >= g.info.weightBytes, `peak GPU bytes ${r.gpuBytesAllocated} hold the weights ${g.info.weightBytes}`);
  for (const k of ['textEncodeMs', 'denoiseMs', 'perStepMs', 'decodeMs', 'totalMs'] as const) assert.ok(r.timingsMs[k] > 0, k);
  g.engine.unload();
});

test('cancel stops within one step and the next job runs', async () => {
  const { engine } = await engineFor('wasm');
  const steps: number[] = [];
  const job = engine.generate({ ...JOB, steps: 20 }, (e) => {
    if (e.phase === 'denoise') {
      steps.push(e.step);
      if (e.step === 2) engine.cancel();
    }
  });
  await assert.rejects(job, CancelledError);
  assert.deepEqual(steps, [1, 2], 'no step runs after the cancel');
  const ok = await engine.generate(JOB);
  assert.equal(ok.report.unetEvaluations, 3);
  await assert.rejects(engine.generate({ ...JOB, width: 100 }), /multiples of 64/);
  // a prompt past 75 tokens is read in chunks of 75, as A1111 does; past 8 chunks the rest is cut
  const long = await engine.generate({ ...JOB, prompt: Array(90).fill('cat').join(' ') });
  assert.deepEqual(long.report.warnings, []);
  const endless = await engine.generate({ ...JOB, prompt: Array(700).fill('cat').join(' ') });
  assert.match(endless.report.warnings[0], /The prompt takes 10 chunks of 75 tokens; only the first 8 are used/);
  engine.unload();
});

test('a checkpoint with a wrong tensor shape is refused with the tensor named', async () => {
  const { dir } = await tinyModelDir();
  const src = await SafetensorsFile.open(new MemorySource('ok', new Uint8Array(await readFile(join(dir, 'tiny-sd15.safetensors')))));
  const tensors = [];
  for (const key of src.keys()) {
    const info = src.info(key)!;
    let data = await src.bytes(key);
    let shape = info.shape;
    if (key.endsWith('input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight')) {
      shape = [shape[0], shape[1] / 2];
      data = data.subarray(0, data.length / 2);
    }
    tensors.push({ name: key, dtype: info.dtype, shape, data });
  }
  const bad = new MemorySource('bad.safetensors', concatBytes(encodeSafetensors(tensors, src.metadata)));
  const { tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const e = new Engine(await runtime('wasm'));
  await assert.rejects(e.loadModel({ single: bad }, tokenizer!, 'fp32'), (err: unknown) => err instanceof ShapeMismatchError && /attn1\.to_q\.weight" has shape \[16, 8\] but the model needs \[16, 16\]/.test((err as Error).message));
  await assert.rejects(e.loadModel({ single: bad }, { tokenizerJson: '{' }, 'fp32'), EngineError);
});

after(() => setTimeout(() => process.exit(0), 10).unref());
