// Working from a picture with the tiny model on the WebGPU EP (Dawn): image to image, inpainting with
// a 4-channel and a 9-channel UNet, "only masked", the hires fix and a separate VAE file, against
// float64 references and text to image.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { GenerateJob, ImageData8 } from '../../workers/api/contract.ts';
import { NotAModelError } from '../../workers/api/errors.ts';
import { encodeSafetensors, SafetensorsFile } from '../../workers/checkpoint/safetensors.ts';
import { MemorySource } from '../../workers/checkpoint/source.ts';
import { Engine } from '../../workers/engine/engine.ts';
import { pictureToPlanes, resizeBilinear } from '../../workers/engine/picture.ts';
import { toImage } from '../../workers/engine/pipeline.ts';
import { tinyVaeVariant } from '../../workers/engine/test-model.ts';
import { NodeFileSource, openModelPath } from '../../workers/node/files.ts';
import { owlAndFoxJob } from '../../workers/node/tiny.ts';
import * as nn from '../../workers/reference/nn.ts';
import * as ref from '../../workers/reference/sd15.ts';
import { runtime, tinyModelDir } from '../helpers.ts';

// without CFG (batch 1): what these tests check does not depend on it, and each UNet run costs half
const JOB: GenerateJob = { prompt: 'a photo of a cat with a red hat', negative: 'blurry', steps: 4, cfg: 1, seed: 9, width: 64, height: 64, scheduler: 'ddim', previewEvery: 0 };

async function engineFor(file: string) {
  const { dir, model } = await tinyModelDir();
  const { files, tokenizer } = await openModelPath(join(dir, file));
  const engine = new Engine(await runtime('webgpu'));
  const info = await engine.loadModel(files, tokenizer!, 'fp32');
  return { engine, info, dir, model };
}

let base: Awaited<ReturnType<typeof engineFor>> | undefined;
const tiny = async () => (base ??= await engineFor('tiny-sd15.safetensors'));
/** Results the tests share: text to image of JOB, and the picture at strength 0. */
const shared: { t2i?: Uint8ClampedArray; keep?: Uint8ClampedArray } = {};

/** A smooth picture with some structure: what a photo is to the VAE, more than noise is. */
function testPicture(w: number, h: number): ImageData8 {
  const data = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const p = (y * w + x) * 4;
      data[p] = 128 + 100 * Math.sin(x / 7);
      data[p + 1] = 128 + 90 * Math.cos(y / 9);
      data[p + 2] = (x * 3 + y * 2) % 256;
      data[p + 3] = 255;
    }
  return { width: w, height: h, data };
}

const W64 = (m: Map<string, Float32Array>) => (name: string) => Float64Array.from(m.get(name)!);

function maxByteDiff(a: Uint8ClampedArray, b: Uint8ClampedArray, where: (p: number) => boolean = () => true): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) if (i % 4 !== 3 && where(i >> 2)) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

test('the model reports its encoder; strength 0 is the picture\'s VAE round trip (float64), strength 1 is text to image', async () => {
  const { engine, info, model } = await tiny();
  assert.equal(info.vaeEncoder, true);
  assert.equal(info.inpainting, false);
  const picture = testPicture(64, 64);
  const r0 = await engine.generate({ ...JOB, init: { image: picture, strength: 0 } });
  assert.equal(r0.report.init?.stepsRun, 0);
  assert.equal(r0.report.unetEvaluations, 0);
  const latent = ref.vaeEncode(W64(model.weights.vae), model.config.vae, nn.tensor(pictureToPlanes(picture), [1, 3, 64, 64]));
  const want = toImage(Float32Array.from(ref.vaeDecode(W64(model.weights.vae), model.config.vae, latent).data), 64, 64);
  const d0 = maxByteDiff(r0.image.data, want.data);
  assert.ok(d0 <= 1, `strength 0 = decode(encode(picture)) within 1/255 (${d0})`);
  const r1 = await engine.generate({ ...JOB, init: { image: picture, strength: 1 } });
  const t2i = await engine.generate(JOB);
  assert.deepEqual(r1.image.data, t2i.image.data, 'strength 1 starts from the same noise as text to image');
  assert.equal(r1.report.latentsOnGpu, true);
  // the plan: the encoder's weights in every job (loaded with the decoder's, f32 here), its
  // activations where the job encodes its picture
  for (const r of [r1, t2i]) assert.equal(r.report.memoryPlan.parts.weightBytes.vae, info.parameters.vae * 4);
  assert.ok(r1.report.memoryPlan.parts.activationBytes.vaeEncoder! > 0);
  assert.equal(t2i.report.memoryPlan.parts.activationBytes.vaeEncoder, undefined);
  assert.match(r1.report.memoryPlan.notes.join(' '), /the VAE's encoder \([0-9]+ MiB of weights\) is on the GPU and encodes the start picture/);
  shared.t2i = t2i.image.data;
  shared.keep = r0.image.data;
});

test('image to image at 0.5: two of four steps, on the GPU as on the CPU, between the picture and text to image', async () => {
  const { engine } = await tiny();
  const picture = testPicture(64, 64);
  const job = { ...JOB, init: { image: picture, strength: 0.5 } };
  const gpu = await engine.generate(job);
  const cpu = await engine.generate({ ...job, latentsOnGpu: false });
  assert.deepEqual([gpu.report.init?.startStep, gpu.report.init?.stepsRun, gpu.report.init?.mode], [2, 2, 'img2img']);
  assert.equal(gpu.report.unetEvaluations, 2);
  assert.equal(gpu.report.latentsOnGpu, true);
  assert.ok(maxByteDiff(gpu.image.data, cpu.image.data) <= 1, 'GPU and CPU loops agree');
  const keep = shared.keep ?? (await engine.generate({ ...JOB, init: { image: picture, strength: 0 } })).image.data;
  const t2i = shared.t2i ?? (await engine.generate(JOB)).image.data;
  const dist = (a: Uint8ClampedArray, b: Uint8ClampedArray) => a.reduce((s, v, i) => s + Math.abs(v - b[i]), 0) / a.length;
  assert.ok(dist(gpu.image.data, keep) < dist(t2i, keep), 'half strength stays nearer the picture than text to image does');
});

test('inpainting: kept pixels come back exactly, the masked half is repainted; the blend on the GPU as on the CPU', async () => {
  const { engine } = await tiny();
  const picture = testPicture(64, 64);
  // repaint the left half
  const mask = Uint8Array.from({ length: 64 * 64 }, (_, p) => (p % 64 < 32 ? 255 : 0));
  const r = await engine.generate({ ...JOB, init: { image: picture, strength: 1, mask, maskBlur: 2 } });
  assert.equal(r.report.init?.mode, 'inpaint');
  assert.equal(r.report.latentsOnGpu, true, 'the step graph blends the picture back in');
  assert.equal(r.report.readbacksPerStep, 0, 'nothing comes back to the CPU during the loop');
  const cpu = await engine.generate({ ...JOB, latentsOnGpu: false, init: { image: picture, strength: 1, mask, maskBlur: 2 } });
  assert.ok(maxByteDiff(r.image.data, cpu.image.data) <= 1, `GPU and CPU blends agree (${maxByteDiff(r.image.data, cpu.image.data)})`);
  // beyond the blur's reach (2.5 sigma = 5 px) of the edge, the kept half is the picture itself
  assert.equal(maxByteDiff(r.image.data, picture.data, (p) => p % 64 >= 38), 0);
  assert.ok(maxByteDiff(r.image.data, picture.data, (p) => p % 64 < 26) > 40, 'the masked half changed');
  // "only masked": a small mask is cut out with its padding, inpainted at 64x64, pasted back
  const small = Uint8Array.from({ length: 64 * 64 }, (_, p) => (p % 64 >= 40 && p % 64 < 48 && p >> 6 >= 8 && p >> 6 < 16 ? 255 : 0));
  const only = await engine.generate({ ...JOB, init: { image: picture, strength: 0.75, mask: small, maskBlur: 0, onlyMaskedPadding: 4 } });
  assert.deepEqual(only.report.init?.region, { x: 36, y: 4, width: 16, height: 16 });
  const inRegion = (p: number) => p % 64 >= 36 && p % 64 < 52 && p >> 6 >= 4 && p >> 6 < 20;
  assert.equal(maxByteDiff(only.image.data, picture.data, (p) => !inRegion(p)), 0, 'outside the cut, nothing moved');
  assert.ok(maxByteDiff(only.image.data, picture.data, (p) => small[p] === 255) > 10, 'the masked square changed');
});

test('LoRAs, boxes and a composition method act inside the mask: a two-box layout, and two LoRAs composed, inpainted', async () => {
  const { engine, dir } = await tiny();
  const loras = [await engine.loadLora(await NodeFileSource.open(join(dir, 'loras/kohya.safetensors'))), await engine.loadLora(await NodeFileSource.open(join(dir, 'loras/loha.safetensors')))];
  try {
    const picture = testPicture(64, 64);
    const mask = Uint8Array.from({ length: 64 * 64 }, (_, p) => (p >> 6 >= 16 && p >> 6 < 48 ? 255 : 0));
    const layout = owlAndFoxJob(loras, undefined, 4);
    const boxes = await engine.generate({ ...layout, cfg: 1, previewEvery: 0, init: { image: picture, strength: 0.75, mask, maskBlur: 0 } });
    assert.equal(boxes.report.boxes.length, 2);
    assert.deepEqual([boxes.report.init?.mode, boxes.report.init?.stepsRun], ['inpaint', 3]);
    assert.equal(maxByteDiff(boxes.image.data, picture.data, (p) => p >> 6 < 16 || p >> 6 >= 48), 0, 'outside the mask: the picture');
    const plain = await engine.generate({ ...layout, cfg: 1, previewEvery: 0, layout: undefined, init: { image: picture, strength: 0.75, mask, maskBlur: 0 } });
    assert.ok(maxByteDiff(boxes.image.data, plain.image.data, (p) => mask[p] === 255) > 5, 'the boxes and their LoRAs changed the masked band');
    const uses = loras.map((l) => ({ lora: l.id, scale: 0.8 }));
    const r = await engine.generate({ ...JOB, loras: uses, composition: { method: 'composite' }, init: { image: picture, strength: 0.75, mask, maskBlur: 0 } });
    assert.equal(r.report.composition.method, 'composite');
    assert.equal(r.report.composition.steps[0].step, 1, 'the method plans from the start step');
    assert.equal(r.report.unetEvaluations, 2 * 3, 'each LoRA alone at each of the 3 steps run');
    assert.equal(maxByteDiff(r.image.data, picture.data, (p) => mask[p] === 0), 0);
  } finally {
    for (const l of loras) engine.unloadLora(l.id);
  }
});

test('an inpainting checkpoint (9-channel UNet) loads, runs with a mask, and keeps what the mask keeps', async () => {
  const { engine, info } = await engineFor('tiny-sd15-inpainting.safetensors');
  assert.equal(info.inpainting, true);
  assert.equal(info.config.unet.inChannels, 9);
  const picture = testPicture(64, 64);
  const mask = Uint8Array.from({ length: 64 * 64 }, (_, p) => (p >> 6 < 32 ? 255 : 0));
  const r = await engine.generate({ ...JOB, init: { image: picture, strength: 1, mask, maskBlur: 0 } });
  assert.equal(r.report.init?.mode, 'inpaint-model');
  assert.equal(r.report.latentsOnGpu, true, "the step graph joins the mask and picture channels to the UNet's input");
  const cpu = await engine.generate({ ...JOB, latentsOnGpu: false, init: { image: picture, strength: 1, mask, maskBlur: 0 } });
  assert.ok(maxByteDiff(r.image.data, cpu.image.data) <= 1, `GPU and CPU loops agree (${maxByteDiff(r.image.data, cpu.image.data)})`);
  assert.equal(maxByteDiff(r.image.data, picture.data, (p) => p >> 6 >= 32), 0);
  assert.ok(maxByteDiff(r.image.data, picture.data, (p) => p >> 6 < 32) > 40);
  // text to image with it: a grey picture, everything repainted
  const t2i = await engine.generate(JOB);
  assert.equal(t2i.report.init, undefined);
  engine.unload();
});

test('hires fix: the latent upscaled bilinearly, then a second pass at 0.5 (two of four steps) at twice the size', async () => {
  const { engine, info } = await tiny();
  const r = await engine.generate({ ...JOB, hires: { scale: 2, strength: 0.5 } });
  assert.equal(r.image.width, 128);
  assert.equal(r.image.height, 128);
  assert.deepEqual({ ...r.report.hires, ms: 0 }, { width: 128, height: 128, upscaler: 'latent', strength: 0.5, steps: 4, stepsRun: 2, decodeTiles: 1, ms: 0 });
  assert.equal(r.report.width, 64, 'the report\'s own size is the first pass\'s');
  // the picture upscaler: decode, bicubic, encode; the engine says how it went
  const img = await engine.generate({ ...JOB, hires: { scale: 1.5, strength: 0.5, upscaler: 'image' } });
  assert.deepEqual([img.image.width, img.report.hires?.upscaler], [128, 'image'], '96 rounds up to 128 (multiples of 64)');
  assert.ok(info.vaeEncoder);
});

test('the latent upscale is torch\'s bilinear interpolation (align_corners=False) worked by hand', () => {
  // 1 channel, 2x2 -> 4x4: the source sample positions are (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
  const out = resizeBilinear(Float32Array.from([0, 1, 2, 3]), 1, 2, 2, 4, 4);
  const row = (a: number, b: number) => [a, a + 0.25 * (b - a), a + 0.75 * (b - a), b];
  const top = row(0, 1);
  const bottom = row(2, 3);
  const want = [0, 0.25, 0.75, 1].flatMap((f) => top.map((t, k) => t + f * (bottom[k] - t)));
  assert.deepEqual(Array.from(out), want);
});

test('a separate VAE file: its decode is float64\'s with its weights; the checkpoint\'s own comes back exactly; wrong files are refused', async () => {
  const { engine, dir, model } = await tiny();
  const before = await engine.generate({ ...JOB, steps: 2 });
  const bytes = await readFile(join(dir, 'tiny-vae-ft.safetensors'));
  const info = await engine.loadVae(new MemorySource('tiny-vae-ft.safetensors', new Uint8Array(bytes)));
  assert.equal(info.vaeFile, 'tiny-vae-ft.safetensors');
  assert.equal(info.vaeEncoder, true);
  const withVae = await engine.generate({ ...JOB, steps: 2, init: { image: testPicture(64, 64), strength: 0 } });
  const variant = tinyVaeVariant(model);
  const latent = ref.vaeEncode(W64(variant), model.config.vae, nn.tensor(pictureToPlanes(testPicture(64, 64)), [1, 3, 64, 64]));
  const want = toImage(Float32Array.from(ref.vaeDecode(W64(variant), model.config.vae, latent).data), 64, 64);
  assert.ok(maxByteDiff(withVae.image.data, want.data) <= 1, 'the round trip through the new VAE');
  // a decoder-only file: loaded, counted without an encoder by the next job's plan, and a start
  // picture refused
  const src = await SafetensorsFile.open(new MemorySource('tiny-vae-ft.safetensors', new Uint8Array(bytes)));
  const decoderOnly = await Promise.all(src.keys().filter((k) => !/^(encoder\.|quant_conv\.)/.test(k)).map(async (k) => ({ name: k, dtype: src.info(k)!.dtype, shape: src.info(k)!.shape, data: await src.bytes(k) })));
  assert.ok(decoderOnly.length < src.keys().length);
  const decoder = await engine.loadVae(new MemorySource('decoder-only.safetensors', Buffer.concat(encodeSafetensors(decoderOnly))));
  assert.equal(decoder.vaeEncoder, false);
  assert.ok(decoder.parameters.vae < info.parameters.vae);
  const noEncoder = await engine.generate({ ...JOB, steps: 2 });
  assert.equal(noEncoder.report.memoryPlan.parts.weightBytes.vae, decoder.parameters.vae * 4, 'the plan made before, with the encoder, is not reused');
  await assert.rejects(engine.generate({ ...JOB, init: { image: testPicture(64, 64), strength: 0.5 } }), /has no encoder/);
  const back = await engine.loadVae(null);
  assert.equal(back.vaeFile, undefined);
  assert.equal((await engine.generate({ ...JOB, steps: 2 })).report.memoryPlan.parts.weightBytes.vae, back.parameters.vae * 4);
  assert.deepEqual((await engine.generate({ ...JOB, steps: 2 })).image.data, before.image.data);
  const lora = await readFile(join(dir, 'loras/kohya.safetensors'));
  await assert.rejects(engine.loadVae(new MemorySource('style.safetensors', new Uint8Array(lora))), NotAModelError);
  const ckpt = await readFile(join(dir, 'tiny-sd15.safetensors'));
  await assert.rejects(engine.loadVae(new MemorySource('tiny-sd15.safetensors', new Uint8Array(ckpt))), /whole checkpoint/);
  // a refused file leaves the VAE in use as it was
  assert.deepEqual((await engine.generate({ ...JOB, steps: 2 })).image.data, before.image.data);
});

test('bad pictures, masks and hires settings are refused with what to do', async () => {
  const { engine } = await tiny();
  const picture = testPicture(64, 64);
  await assert.rejects(engine.generate({ ...JOB, init: { image: testPicture(32, 32), strength: 0.5 } }), /job's size, 64x64 \(got 32x32\)/);
  await assert.rejects(engine.generate({ ...JOB, init: { image: picture, strength: 1.5 } }), /Strength must be from 0/);
  await assert.rejects(engine.generate({ ...JOB, init: { image: picture, strength: 0.5, mask: new Uint8Array(10) } }), /one byte per pixel/);
  await assert.rejects(engine.generate({ ...JOB, hires: { scale: 1.01, strength: 0.5 } }), /leaves 64x64 as it is/);
  await assert.rejects(engine.generate({ ...JOB, init: { image: picture, strength: 0.5 }, hires: { scale: 2, strength: 0.5 } }), /hires fix follows text to image/);
});

after(() => setTimeout(() => process.exit(0), 10).unref());
