// Layout scenes and their masks: boxes rasterised to every attention grid against hand-counted cells,
// the isolation bias by hand, and the scene checker on good, bad and hostile input.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SD15_CONFIG } from '../../workers/checkpoint/config.ts';
import { unetAttentionLayers } from '../../workers/graph/unet.ts';
import { attentionGrids, BLOCKED, gridMasks, isolationBias, rasterBox, regionWeights } from '../../workers/layout/masks.ts';
import { argmaxWindow, cellBox, reinitLatent } from '../../workers/layout/reinit.ts';
import { MAX_BOXES, parseScene, testScene, type Scene } from '../../workers/layout/scene.ts';

const cells = (m: Uint8Array, cols: number) => [...m.keys()].filter((i) => m[i]).map((i) => [Math.floor(i / cols), i % cols]);
const rect = (r0: number, r1: number, c0: number, c1: number) => {
  const out = [];
  for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) out.push([r, c]);
  return out;
};

test('SD 1.5 at 512x512 attends on 64, 32, 16 and 8 cell grids', () => {
  assert.deepEqual(attentionGrids(unetAttentionLayers(SD15_CONFIG.unet, 64, 64)), [
    { rows: 64, cols: 64 },
    { rows: 32, cols: 32 },
    { rows: 16, cols: 16 },
    { rows: 8, cols: 8 },
  ]);
  assert.deepEqual(attentionGrids(unetAttentionLayers(SD15_CONFIG.unet, 64, 96)).map((g) => `${g.rows}x${g.cols}`), ['64x96', '32x48', '16x24', '8x12']);
});

test('a box on cell borders covers exactly its cells at every grid', () => {
  // x 64..192, y 128..192 in a 512 frame
  const box = { x: 64, y: 128, width: 128, height: 64 };
  assert.deepEqual(cells(rasterBox(box, 512, 512, 64, 64), 64), rect(16, 23, 8, 23));
  assert.deepEqual(cells(rasterBox(box, 512, 512, 32, 32), 32), rect(8, 11, 4, 11));
  assert.deepEqual(cells(rasterBox(box, 512, 512, 16, 16), 16), rect(4, 5, 2, 5));
  // 64-pixel cells: centres 96 and 160 lie in x, only 160 in y
  assert.deepEqual(cells(rasterBox(box, 512, 512, 8, 8), 8), [[2, 1], [2, 2]]);
});

test('a box off cell borders takes the cells whose centres it holds; a tiny one keeps the cell under its centre', () => {
  // x 20..50, y 20..30: 8-pixel cell centres 20, 28, 36, 44 in x; 20, 28 in y
  const box = { x: 20, y: 20, width: 30, height: 10 };
  assert.deepEqual(cells(rasterBox(box, 512, 512, 64, 64), 64), rect(2, 3, 2, 5));
  // 64-pixel cells: the only centre (32, 32) is below the box; its own centre (35, 25) is in cell (0, 0)
  assert.deepEqual(cells(rasterBox(box, 512, 512, 8, 8), 8), [[0, 0]]);
  // a box ending on the frame's last pixel
  assert.deepEqual(cells(rasterBox({ x: 448, y: 448, width: 64, height: 64 }, 512, 512, 8, 8), 8), [[7, 7]]);
});

test('background is every cell outside the boxes; the isolation bias blocks pairs from different regions', () => {
  const m = gridMasks([{ x: 0, y: 0, width: 32, height: 64 }], 64, 64, 2, 2);
  assert.deepEqual([...m.boxes[0]], [1, 0, 1, 0]);
  assert.deepEqual([...m.background], [0, 1, 0, 1]);
  const B = BLOCKED;
  assert.deepEqual([...isolationBias(m)], [0, B, 0, B, B, 0, B, 0, 0, B, 0, B, B, 0, B, 0]);
  // two overlapping boxes: the shared cell sees both, the two exclusive cells not each other
  const o = gridMasks([{ x: 0, y: 0, width: 64, height: 8 }, { x: 32, y: 0, width: 64, height: 8 }], 128, 8, 1, 4);
  assert.deepEqual([...o.boxes[0], ...o.boxes[1], ...o.background], [1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1]);
  const bias = isolationBias(o);
  assert.deepEqual([bias[0 * 4 + 1], bias[0 * 4 + 2], bias[1 * 4 + 2], bias[2 * 4 + 3], bias[3 * 4 + 3]], [0, B, 0, B, 0]);
  // cross-attention region weights: background first, the shared cell split between its two boxes
  assert.deepEqual([...regionWeights(o)], [0, 0, 0, 1, 1, 0.5, 0, 0, 0, 0.5, 1, 0]);
});

const SCENE: Scene = {
  version: 1,
  width: 512,
  height: 512,
  prompt: 'two friends in a park, watercolour',
  negative: 'blurry',
  loras: [{ name: 'watercolor.safetensors', scale: 0.7, fingerprint: '0123abcd0123abcd' }],
  boxes: [
    { id: 'a', name: 'cat', x: 32, y: 128, width: 192, height: 320, prompt: 'a ginger cat', loras: [{ name: 'cat.safetensors', scale: 1 }], color: '#e4572e' },
    { id: 'b', name: 'dog', x: 288, y: 96, width: 192, height: 352, prompt: 'a corgi <script>alert(1)</script>', loras: [], color: '#17bebb' },
  ],
  composition: { method: 'cmlora', cacheLow: 3 },
  ablation: { injection: true, isolation: true, reinit: false },
  seed: 42,
  steps: 20,
  cfg: 7,
  scheduler: 'dpmpp-2m',
};

test('a scene survives a JSON round trip byte for byte; unknown fields are dropped; text stays text', () => {
  const text = JSON.stringify(SCENE);
  assert.equal(JSON.stringify(parseScene(JSON.parse(text))), text);
  const extra = parseScene({ ...SCENE, __proto__: { polluted: true }, onload: 'x', boxes: [{ ...SCENE.boxes[0], extra: 1 }] } as unknown);
  assert.equal('onload' in extra, false);
  assert.equal('extra' in extra.boxes[0], false);
  assert.equal(parseScene(JSON.parse(text)).boxes[1].prompt, 'a corgi <script>alert(1)</script>');
  assert.equal(JSON.stringify(parseScene(JSON.parse(JSON.stringify(testScene())))), JSON.stringify(testScene()));
  const withModel = JSON.stringify({ ...SCENE, model: { name: 'owner/model', url: 'https://huggingface.co/owner/model' } });
  assert.equal(JSON.stringify(parseScene(JSON.parse(withModel))), withModel);
});

test('bad scenes get a sentence naming the problem', () => {
  const bad = (patch: Record<string, unknown>, msg: RegExp) => assert.throws(() => parseScene({ ...SCENE, ...patch }), (e: Error) => e.name === 'SceneError' && msg.test(e.message), String(msg));
  const box = (p: Record<string, unknown>) => ({ boxes: [{ ...SCENE.boxes[0], ...p }] });
  bad({ version: 2 }, /version is 2; this studio reads version 1/);
  bad(box({ x: 400 }), /box "cat" \(400, 128, 192x320\) reaches outside the 512x512 frame/);
  bad(box({ width: 0 }), /box "cat" is 0x320 pixels; a box must be at least 8x8/);
  bad({ boxes: Array.from({ length: MAX_BOXES + 1 }, (_, i) => ({ ...SCENE.boxes[0], id: `b${i}` })) }, /it has 9 boxes; at most 8 are supported/);
  bad({ boxes: [SCENE.boxes[0], SCENE.boxes[0]] }, /two boxes have the id "a"/);
  bad({ width: 1e308 }, /width must be a whole number from 64 to 2048/);
  bad({ width: 500 }, /multiples of 64/);
  bad({ steps: '20' }, /steps must be a whole number/);
  bad({ prompt: 'x'.repeat(5000) }, /prompt is 5000 characters long/);
  bad(box({ color: 'red;background:url(x)' }), /color must be #rrggbb/);
  bad({ loras: [{ name: 'a', scale: 1, url: 'javascript:alert(1)' }] }, /url must be an https:\/\/ address/);
  bad({ composition: { method: 'cmlora', cacheLow: { toString: 1 } } }, /composition.cacheLow has the wrong kind of value/);
  bad({ ablation: { injection: 'yes' } }, /ablation must be/);
  bad({ model: 'sd15' }, /model must be \{name, url\}/);
  bad({ model: { name: 'm', url: 'http://example.org/m.safetensors' } }, /model\.url must be an https:\/\/ address/);
  assert.throws(() => parseScene('[]'), /not a JSON object/);
});

test('latent re-initialisation: the box-sized window with the most attention moves into the box, then the latent is renormalised', () => {
  // 4 x 5 map whose heaviest 2 x 2 window starts at (2, 3)
  const map = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 1, 3, 2];
  assert.deepEqual(argmaxWindow(map, 4, 5, 2, 2), { row: 2, col: 3, sum: 11 });
  assert.deepEqual(argmaxWindow(map, 4, 5, 1, 5), { row: 2, col: 0, sum: 6 });
  assert.deepEqual(cellBox({ x: 8, y: 0, width: 16, height: 16 }, 4, 5), { row: 0, col: 1, rows: 2, cols: 2 });
  assert.deepEqual(cellBox({ x: 36, y: 30, width: 100, height: 4 }, 4, 5), { row: 3, col: 4, rows: 1, cols: 1 });
  // 2 channels; the box at (0, 1) receives noise cells (2..3, 3..4) of each channel
  const noise = Float32Array.from({ length: 40 }, (_, i) => i);
  const { latent, windows } = reinitLatent(noise, 2, 4, 5, [{ box: { row: 0, col: 1, rows: 2, cols: 2 }, map }]);
  assert.deepEqual(windows, [{ row: 2, col: 3 }]);
  const moved = Float64Array.from(noise);
  for (const ch of [0, 1]) for (const [r, c] of [[0, 0], [0, 1], [1, 0], [1, 1]]) moved[ch * 20 + r * 5 + 1 + c] = ch * 20 + (2 + r) * 5 + 3 + c;
  const mean = moved.reduce((a, b) => a + b) / 40;
  const std = Math.sqrt(moved.reduce((a, b) => a + (b - mean) ** 2, 0) / 40);
  moved.forEach((v, i) => assert.ok(Math.abs(latent[i] - (v - mean) / std) < 1e-6, `cell ${i}`));
});
