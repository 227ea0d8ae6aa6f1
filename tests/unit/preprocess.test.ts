// CLIP's image preparation against closed forms: constants stay constant, a linear ramp stays linear
// away from the borders (the antialiased cubic filter is symmetric and sums to one), a same-size
// image is untouched, the centre crop takes the middle, and both config forms are read.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ImageData8 } from '../../workers/api/contract.ts';
import { EngineError } from '../../workers/api/errors.ts';
import { CLIP_MEAN, CLIP_STD, clipPixels, cropImage, parsePreprocessorConfig, resizeBicubic } from '../../workers/eval/preprocess.ts';

function image(width: number, height: number, f: (x: number, y: number, c: number) => number): ImageData8 {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) for (let c = 0; c < 4; c++) data[(y * width + x) * 4 + c] = c === 3 ? 255 : f(x, y, c);
  return { width, height, data };
}

const pre = parsePreprocessorConfig(JSON.stringify({ size: { shortest_edge: 16 }, crop_size: { height: 16, width: 16 }, image_mean: CLIP_MEAN, image_std: CLIP_STD }));

test('a constant image gives (v/255 - mean)/std everywhere, at any size', () => {
  for (const [w, h] of [[16, 16], [50, 30], [7, 9]]) {
    const px = clipPixels(image(w, h, (_x, _y, c) => [200, 90, 13][c]), pre);
    for (let c = 0; c < 3; c++) {
      const want = ([200, 90, 13][c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c];
      for (let i = 0; i < 256; i++) assert.ok(Math.abs(px[c * 256 + i] - want) < 1e-6, `${w}x${h} c${c}`);
    }
  }
});

test('a linear ramp stays linear inside the image when shrunk and when enlarged', () => {
  for (const [from, to, slope] of [[96, 24, 2], [40, 16, 5], [12, 30, 16]]) {
    // integer values, exactly linear: the only error left is the final rounding
    const img = image(from, 4, (x) => 20 + slope * x);
    const out = resizeBicubic(img, to, 4);
    const margin = Math.ceil((2 * Math.max(from / to, 1) * to) / from) + 1;
    for (let x = margin; x < to - margin; x++) {
      const want = 20 + slope * ((x + 0.5) * (from / to) - 0.5);
      assert.ok(Math.abs(out.data[(1 * to + x) * 4] - want) <= 0.5 + 1e-9, `${from}->${to} at ${x}: ${out.data[(to + x) * 4]} vs ${want}`);
    }
  }
});

test('an image already at the crop size is only normalised; a wide one is cut in the middle', () => {
  const img = image(16, 16, (x, y, c) => (x * 7 + y * 13 + c * 5) % 256);
  const px = clipPixels(img, pre);
  for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) assert.ok(Math.abs(px[(1 * 16 + y) * 16 + x] - (img.data[(y * 16 + x) * 4 + 1] / 255 - CLIP_MEAN[1]) / CLIP_STD[1]) < 1e-6);
  // 16 high and 40 wide: no resize, the crop starts at column 12.
  const wide = image(40, 16, (x) => x * 6);
  const w = clipPixels(wide, pre);
  for (let x = 0; x < 16; x++) assert.ok(Math.abs(w[x] - (((x + 12) * 6) / 255 - CLIP_MEAN[0]) / CLIP_STD[0]) < 1e-6);
});

test('crops are clamped to the image', () => {
  const img = image(10, 10, (x, y) => x + 10 * y);
  const c = cropImage(img, { x: 6, y: 7, width: 8, height: 8 });
  assert.deepEqual([c.width, c.height], [4, 3]);
  assert.equal(c.data[0], 76);
  assert.equal(c.data[(2 * 4 + 3) * 4], 99);
});

test('both forms of preprocessor_config.json are read; nonsense is refused with a sentence', () => {
  const old = parsePreprocessorConfig(JSON.stringify({ size: 224, crop_size: 224 }));
  assert.deepEqual([old.shortestEdge, old.crop.height, old.crop.width], [224, 224, 224]);
  assert.deepEqual(old.mean, CLIP_MEAN);
  assert.throws(() => parsePreprocessorConfig('{"size": -3}'), (e: unknown) => e instanceof EngineError && /size/.test(e.message));
  assert.throws(() => parsePreprocessorConfig('not json'), EngineError);
});
