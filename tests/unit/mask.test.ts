// The inpainting mask: brush strokes stamped by the brush tool's state machine, invert, bounds, the
// frame-resize and cover-crop geometry, and the mask codec (run lengths, deflate, base64url): byte-exact
// round trips for any bytes, against an independent inflater, and hostile data (bombs, runs that do
// not add up, wrong sizes, stray characters) ending in a MaskCodecError with its sentence.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { brushDown, brushMove, brushUp, IDLE } from '../../src/canvas/brush-tool.ts';
import { coverCrop, hiresSize, invertMask, maskBounds, maskCoverage, resizeMask, stampSegment } from '../../src/picture/mask.ts';
import { decodeMask, encodeMask, fromRunLengths, MaskCodecError, runLengths } from '../../workers/layout/mask-codec.ts';
import { toBase64Url } from '../../workers/api/base64url.ts';
import { seeded } from '../helpers.ts';

const count = (m: Uint8Array, v: number) => m.reduce((a, x) => a + (x === v ? 1 : 0), 0);

test('a dot of size 4 paints the pixels whose centres lie within 2 px; a segment paints a capsule', () => {
  const m = new Uint8Array(16 * 16);
  const dirty = stampSegment(m, 16, 16, { x: 8, y: 8 }, { x: 8, y: 8 }, 2, 255);
  // centres at 6.5..9.5: (dx, dy) in {±0.5, ±1.5}; inside radius 2 when dx² + dy² <= 4: 12 pixels
  assert.equal(count(m, 255), 12);
  assert.deepEqual(dirty, { x: 6, y: 6, width: 5, height: 5 });
  const line = new Uint8Array(32 * 8);
  stampSegment(line, 32, 8, { x: 4, y: 4 }, { x: 28, y: 4 }, 1, 255);
  // rows 3 and 4 (centres 0.5 from the line); along it, centres 3.5 to 28.5 (the round ends reach
  // sqrt(0.75) = 0.87 past each end): 26 pixels a row
  assert.equal(count(line.subarray(3 * 32, 4 * 32), 255), 26);
  assert.equal(count(line.subarray(4 * 32, 5 * 32), 255), 26);
  assert.equal(count(line.subarray(0, 3 * 32), 255) + count(line.subarray(5 * 32), 255), 0, 'nothing above or below the band');
  // outside the frame: nothing
  assert.equal(stampSegment(m, 16, 16, { x: -20, y: -20 }, { x: -10, y: -30 }, 3, 255), null);
});

test('the brush tool paints one pointer at a time, erases, and says when a stroke ends', () => {
  const target = { mask: new Uint8Array(32 * 32), width: 32, height: 32 };
  const brush = { size: 4, erase: false };
  let s = brushDown(IDLE, 1, { x: 4, y: 4 }, target, brush);
  assert.equal(s.state.kind, 'painting');
  const afterDot = count(target.mask, 255);
  assert.equal(afterDot, 12);
  // a second finger neither paints nor takes over
  const other = brushMove(s.state, 2, { x: 20, y: 20 }, target, brush);
  assert.equal(count(target.mask, 255), afterDot);
  assert.equal(other.dirty, null);
  s = brushMove(s.state, 1, { x: 28, y: 4 }, target, brush);
  const stroke = count(target.mask, 255);
  assert.ok(stroke > 90 && stroke < 110, `a 24 px stroke 4 px wide: ${stroke} pixels`);
  assert.equal(brushUp(s.state, 2).done, false, 'another pointer does not end it');
  const up = brushUp(s.state, 1);
  assert.equal(up.done, true);
  assert.equal(up.state.kind, 'idle');
  // moves after the stroke paint nothing
  assert.equal(brushMove(up.state, 1, { x: 16, y: 20 }, target, brush).dirty, null);
  // the eraser clears what it covers
  let e = brushDown(IDLE, 3, { x: 4, y: 4 }, target, { size: 8, erase: true });
  e = brushMove(e.state, 3, { x: 28, y: 4 }, target, { size: 8, erase: true });
  assert.equal(count(target.mask, 255), 0);
});

test('invert, coverage, bounds and resize with the frame', () => {
  const m = new Uint8Array(8 * 4);
  m[1 * 8 + 2] = 255;
  m[2 * 8 + 5] = 255;
  assert.deepEqual(maskBounds(m, 8, 4), { x: 2, y: 1, width: 4, height: 2 });
  assert.equal(maskBounds(new Uint8Array(32), 8, 4), null);
  assert.equal(maskCoverage(m), 2 / 32);
  const inv = invertMask(m);
  assert.equal(count(inv, 0), 2);
  assert.equal(count(inv, 255), 30);
  assert.deepEqual(invertMask(inv), m, 'twice is the same mask');
  const big = resizeMask(m, { width: 8, height: 4 }, { width: 16, height: 8 });
  assert.equal(count(big, 255), 8, 'each pixel becomes 2x2');
  assert.deepEqual(resizeMask(big, { width: 16, height: 8 }, { width: 8, height: 4 }), m, 'and back');
});

test('the cover crop: centred, the longer sides cut; the hires size in multiples of 64', () => {
  assert.deepEqual(coverCrop({ width: 640, height: 480 }, { width: 512, height: 512 }), { x: 80, y: 0, width: 480, height: 480, cut: 'sides' });
  assert.deepEqual(coverCrop({ width: 300, height: 600 }, { width: 512, height: 512 }), { x: 0, y: 150, width: 300, height: 300, cut: 'top and bottom' });
  assert.deepEqual(coverCrop({ width: 128, height: 64 }, { width: 512, height: 256 }), { x: 0, y: 0, width: 128, height: 64, cut: 'none' });
  assert.deepEqual(hiresSize(512, 512, 2), { width: 1024, height: 1024 });
  assert.deepEqual(hiresSize(512, 768, 1.5), { width: 768, height: 1152 });
  assert.deepEqual(hiresSize(64, 64, 1.5), { width: 128, height: 128 }, '96 rounds to 128');
  assert.deepEqual(hiresSize(1536, 1536, 2), { width: 2048, height: 2048 });
});

test('run lengths: byte-exact for any bytes, with LEB128 runs past 127 and 16383', () => {
  const r = seeded(3);
  const rand = () => r() + 0.5; // seeded() gives -0.5 to 0.5
  const cases: Uint8Array[] = [
    new Uint8Array(1),
    new Uint8Array(128).fill(255),
    new Uint8Array(20000).fill(7),
    Uint8Array.from({ length: 777 }, () => Math.floor(rand() * 256)),
    Uint8Array.from({ length: 5000 }, (_, i) => (i % 300 < 150 ? 0 : 255)),
  ];
  for (const c of cases) assert.deepEqual(fromRunLengths(runLengths(c), c.length), c);
  assert.deepEqual([...runLengths(new Uint8Array(128).fill(255))], [255, 0x80, 0x01]);
  assert.deepEqual([...runLengths(Uint8Array.of(0, 0, 9))], [0, 2, 9, 1]);
});

test('the codec: byte-exact round trips; a painted mask is small and deflated; an independent inflater reads it', async () => {
  const r = seeded(11);
  const rand = () => r() + 0.5;
  // strokes at 512 x 512, as a brush paints them
  const mask = new Uint8Array(512 * 512);
  for (let i = 0; i < 12; i++) stampSegment(mask, 512, 512, { x: rand() * 512, y: rand() * 512 }, { x: rand() * 512, y: rand() * 512 }, 6 + rand() * 30, 255);
  const enc = await encodeMask(mask, 512, 512);
  assert.equal(enc.data[0], 'z');
  assert.ok(enc.data.length < 8000, `a stroked 512 x 512 mask takes ${enc.data.length} characters`);
  assert.deepEqual(await decodeMask(enc, { width: 512, height: 512 }), mask);
  const runs = inflateRawSync(Buffer.from(enc.data.slice(1), 'base64url'));
  assert.deepEqual(new Uint8Array(runs), runLengths(mask), 'zlib inflates our deflate to the runs');
  // noise does not deflate well: kept as plain runs when that is shorter, still exact
  const noise = Uint8Array.from({ length: 64 * 64 }, () => Math.floor(rand() * 256));
  const n = await encodeMask(noise, 64, 64);
  assert.deepEqual(await decodeMask(n, { width: 64, height: 64 }), noise);
  // an odd size and soft values
  const soft = Uint8Array.from({ length: 3 * 5 }, (_, i) => i * 17);
  assert.deepEqual(await decodeMask(await encodeMask(soft, 3, 5)), soft);
  // plain runs (what a platform without CompressionStream writes) are read too
  assert.deepEqual(await decodeMask({ width: 512, height: 512, data: `r${toBase64Url(runLengths(mask))}` }), mask);
});

test('hostile masks: each gets a MaskCodecError with its sentence, nothing larger than the frame is made', async () => {
  const fails = async (enc: unknown, pattern: RegExp, expect?: { width: number; height: number }) =>
    assert.rejects(decodeMask(enc as never, expect), (e: Error) => e instanceof MaskCodecError && pattern.test(e.message), pattern.source);
  const z = (bytes: Uint8Array | Buffer) => `z${Buffer.from(deflateRawSync(bytes)).toString('base64url')}`;
  const r = (bytes: number[]) => `r${Buffer.from(bytes).toString('base64url')}`;
  await fails({ width: 0, height: 8, data: 'rAA' }, /whole numbers from 1 to 2048/);
  await fails({ width: 1e9, height: 8, data: 'rAA' }, /whole numbers from 1 to 2048/);
  await fails({ width: 8.5, height: 8, data: 'rAA' }, /whole numbers/);
  await fails(null, /whole numbers/);
  await fails({ width: 8, height: 8, data: r([255, 64]) }, /it is 8x8 but the frame is 16x16/, { width: 16, height: 16 });
  await fails({ width: 8, height: 8, data: '' }, /no data/);
  await fails({ width: 8, height: 8, data: 'x' + 'AAAA' }, /not a known packing/);
  await fails({ width: 8, height: 8, data: 'r<script>' }, /contains the character "<"/);
  await fails({ width: 8, height: 8, data: 'rA' }, /cut short/);
  await fails({ width: 8, height: 8, data: r([255, 63]) }, /cover 63 of the 64 pixels/);
  await fails({ width: 8, height: 8, data: r([255, 65]) }, /more than the 64 pixels/);
  await fails({ width: 8, height: 8, data: r([255, 0, 0, 64]) }, /length 0/);
  await fails({ width: 8, height: 8, data: r([255, 0x80]) }, /stops in the middle of a run/);
  await fails({ width: 8, height: 8, data: r([255, 0xff, 0xff, 0xff, 0xff, 0x7f]) }, /too long to be real/);
  // a deflate bomb: 50 MB of zeros in a few kilobytes, for an 8 x 8 frame
  await fails({ width: 8, height: 8, data: z(Buffer.alloc(50_000_000)) }, /unpacks to more than 128 bytes/);
  await fails({ width: 8, height: 8, data: 'z' + Buffer.from([1, 2, 3, 4, 5, 6]).toString('base64url') }, /damaged|unpacks|runs/);
  await fails({ width: 8, height: 8, data: r(new Array(200).fill(1)) }, /more than any 8x8 mask needs/);
  await assert.rejects(decodeMask({ width: 8, height: 8, data: 'rAAAA' }, undefined, 3), /at most 3 are read/);
  // every one-character change of a real mask decodes to the right size or fails with the named error
  const mask = new Uint8Array(32 * 32);
  stampSegment(mask, 32, 32, { x: 4, y: 4 }, { x: 28, y: 20 }, 5, 255);
  const enc = await encodeMask(mask, 32, 32);
  for (let i = 1; i < enc.data.length; i++) {
    for (const c of 'A_z9-') {
      const data = enc.data.slice(0, i) + c + enc.data.slice(i + 1);
      try {
        assert.equal((await decodeMask({ ...enc, data })).length, 32 * 32);
      } catch (e) {
        assert.ok(e instanceof MaskCodecError, `${(e as Error).name}: ${(e as Error).message}`);
      }
    }
  }
});

test('the picture store: each finished mask an undo step; undo and redo give the same bytes back; a new frame size starts a new history', async () => {
  const { createPictureStore } = await import('../../src/store/picture.ts');
  const store = createPictureStore();
  const s = () => store.getState();
  const a = new Uint8Array(16).fill(255);
  const b = a.slice();
  b[3] = 0;
  s().setMask(a, 4, 4);
  s().setMask(b, 4, 4);
  assert.equal(s().past.length, 2, 'empty, then a');
  s().undo();
  assert.deepEqual(s().mask, a);
  s().undo();
  assert.equal(s().mask, undefined, 'before the first stroke: no mask');
  s().redo();
  s().redo();
  assert.deepEqual(s().mask, b);
  assert.equal(s().future.length, 0);
  const v = s().maskVersion;
  s().setMask(new Uint8Array(64), 8, 8, false);
  assert.equal(s().past.length, 0, 'masks of the old size cannot come back');
  assert.ok(s().maskVersion > v);
});
