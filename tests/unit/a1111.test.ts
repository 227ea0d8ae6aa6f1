// A1111's `parameters` text: read as its web UI writes it (hand-written samples in its format), and
// ours read back the same.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatA1111, loraTags, parseA1111, schedulerOf } from '../../workers/layout/a1111.ts';

const SAMPLE = `masterpiece, a knight in a field of flowers <lora:knightStyle_v2:0.8>, (sunset:1.2)
<lora:add_detail:0.5:1>
Negative prompt: lowres, bad anatomy,
blurry
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "knightStyle_v2: 1a2b3c4d5e6f, add_detail: 7a8b9c0d1e2f", Version: v1.10.1`;

test('an A1111 parameters text: prompt without its LoRA tags, the negative on two lines, every setting, quoted values', () => {
  const p = parseA1111(SAMPLE);
  assert.equal(p.prompt, 'masterpiece, a knight in a field of flowers, (sunset:1.2)');
  assert.equal(p.negative, 'lowres, bad anatomy,\nblurry');
  assert.deepEqual(p.loras, [
    { name: 'knightStyle_v2', te: 0.8, unet: 0.8 },
    { name: 'add_detail', te: 0.5, unet: 1 },
  ]);
  assert.deepEqual([p.steps, p.sampler, p.scheduleType, p.cfg, p.seed, p.width, p.height, p.clipSkip, p.model], [28, 'DPM++ 2M', 'Karras', 6.5, 3141592653, 512, 768, 2, 'v1-5-pruned-emaonly']);
  assert.equal(p.settings['Lora hashes'], 'knightStyle_v2: 1a2b3c4d5e6f, add_detail: 7a8b9c0d1e2f');
  assert.equal(p.settings.Version, 'v1.10.1');
  assert.equal(schedulerOf(p.sampler, p.scheduleType), 'dpmpp-2m-karras');
});

test('samplers by their A1111 names, old and new style; LoRA tags with named strengths; a prompt with no settings line', () => {
  assert.equal(schedulerOf('DPM++ 2M Karras'), 'dpmpp-2m-karras');
  assert.equal(schedulerOf('DPM++ 2M', 'Automatic'), 'dpmpp-2m');
  assert.equal(schedulerOf('Euler a'), 'euler-a');
  assert.equal(schedulerOf('DDIM'), 'ddim');
  assert.equal(schedulerOf('UniPC'), undefined);
  assert.deepEqual(loraTags('a cat <lora:a:te=0.25:unet=0.75> <LORA:b:1.5>, smiling').loras, [
    { name: 'a', te: 0.25, unet: 0.75 },
    { name: 'b', te: 1.5, unet: 1.5 },
  ]);
  assert.equal(loraTags('a cat <lora:a:1>, smiling').prompt, 'a cat, smiling');
  const plain = parseA1111('just a prompt, with a comma');
  assert.deepEqual([plain.prompt, plain.negative, plain.steps], ['just a prompt, with a comma', '', undefined]);
  assert.throws(() => parseA1111('  '), /no prompt and no settings/);
});

test('a studio picture\'s parameters read back as they were written', () => {
  const job = { prompt: 'a fox, in a "red" coat', negative: 'blurry', steps: 20, scheduler: 'euler-a' as const, cfg: 7.5, seed: 42, width: 640, height: 512, clipSkip: 2, model: 'tiny-sd15.safetensors', loras: [{ name: 'kohya.safetensors', scale: 0.8 }, { name: 'loha.safetensors', scale: 1, textEncoderScale: 0.5 }] };
  const text = formatA1111(job);
  assert.equal(text.split('\n').length, 3);
  const p = parseA1111(text);
  assert.equal(p.prompt, job.prompt);
  assert.equal(p.negative, job.negative);
  assert.deepEqual(p.loras, [{ name: 'kohya', te: 0.8, unet: 0.8 }, { name: 'loha', te: 0.5, unet: 1 }]);
  assert.deepEqual([p.steps, schedulerOf(p.sampler, p.scheduleType), p.cfg, p.seed, p.width, p.height, p.clipSkip, p.model], [20, 'euler-a', 7.5, 42, 640, 512, 2, 'tiny-sd15.safetensors']);
});

test('a picture from a start picture or with the hires fix says so as A1111 does, and reads back', () => {
  const base = { prompt: 'a fox', negative: '', steps: 20, scheduler: 'heun' as const, cfg: 5, seed: 1, width: 512, height: 512, loras: [] };
  const inpainted = formatA1111({ ...base, init: { strength: 0.6, mode: 'inpaint', maskBlur: 4 } });
  assert.match(inpainted, /Sampler: Heun, .*Denoising strength: 0\.6, Mask blur: 4, Version/);
  assert.equal(parseA1111(inpainted).denoisingStrength, 0.6);
  assert.equal(schedulerOf(parseA1111(inpainted).sampler), 'heun');
  const fixed = formatA1111({ ...base, hires: { width: 1024, strength: 0.7, steps: 10, upscaler: 'latent' } });
  assert.match(fixed, /Size: 512x512, Denoising strength: 0\.7, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent/);
  const p = parseA1111(fixed);
  assert.deepEqual([p.denoisingStrength, p.hires], [0.7, { scale: 2, steps: 10, upscaler: 'latent' }]);
  // A1111's own picture upscalers are ours `image`
  assert.deepEqual(parseA1111('a cat\nSteps: 20, Sampler: Euler, Size: 512x512, Denoising strength: 0.5, Hires upscale: 1.5, Hires upscaler: R-ESRGAN 4x+').hires, { scale: 1.5, upscaler: 'image' });
});
