// Layout scenes and their masks: boxes rasterised to every attention grid against hand-counted cells
// (the code's whole-cell rule and our centre rule), the isolation bias by hand and against a literal
// transcription of the code's loop, re-initialisation by hand, and the scene checker on good, bad and
// hostile input.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SD15_CONFIG } from '../../workers/checkpoint/config.ts';
import { unetAttentionLayers } from '../../workers/graph/unet.ts';
import { attentionGrids, BLOCKED, gridMasks, isolationBias, isolationFactors, rasterBox, regionWeights } from '../../workers/layout/masks.ts';
import { ISOLATION_FACTORS } from '../../workers/graph/layers.ts';
import { argmaxWindow, meanStd, reinitLatent } from '../../workers/layout/reinit.ts';
import { conceptTokens } from '../../workers/layout/concept-tokens.ts';
import { layoutSwitches, MAX_BOXES, parseScene, sceneJob, testScene, type Scene } from '../../workers/layout/scene.ts';
import { Rng } from '../../workers/engine/random.ts';

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

test('a box on cell borders covers exactly its cells at every grid, by either rule', () => {
  // x 64..192, y 128..192 in a 512 frame
  const box = { x: 64, y: 128, width: 128, height: 64 };
  for (const rule of ['covered', 'centre'] as const) {
    assert.deepEqual(cells(rasterBox(box, 512, 512, 64, 64, rule), 64), rect(16, 23, 8, 23));
    assert.deepEqual(cells(rasterBox(box, 512, 512, 32, 32, rule), 32), rect(8, 11, 4, 11));
    assert.deepEqual(cells(rasterBox(box, 512, 512, 16, 16, rule), 16), rect(4, 5, 2, 5));
  }
  // 64-pixel cells: x covers cells 1 and 2 whole, y (128..192) exactly cell 2
  assert.deepEqual(cells(rasterBox(box, 512, 512, 8, 8, 'covered'), 8), [[2, 1], [2, 2]]);
  // centres 96 and 160 lie in x, only 160 in y
  assert.deepEqual(cells(rasterBox(box, 512, 512, 8, 8, 'centre'), 8), [[2, 1], [2, 2]]);
});

test('covered (the code): ceil of the start, floor of the end; a box narrower than a cell has none. Centre (ours) never empties', () => {
  // x 20..50, y 20..30 on 8-pixel cells: columns ceil(2.5) = 3 .. floor(6.25) = 6, rows ceil(2.5) = 3 .. floor(3.75) = 3: none
  const box = { x: 20, y: 20, width: 30, height: 10 };
  assert.deepEqual(cells(rasterBox(box, 512, 512, 64, 64, 'covered'), 64), []);
  // 16..56 x 8..28 on a 64 frame: 8-pixel cells columns 2..6, rows 1..3; 16-pixel cells columns 1..3, rows ceil(0.5) = 1 .. floor(1.75) = 1: none
  const b2 = { x: 16, y: 8, width: 40, height: 20 };
  assert.deepEqual(cells(rasterBox(b2, 64, 64, 8, 8, 'covered'), 8), rect(1, 2, 2, 6));
  assert.deepEqual(cells(rasterBox(b2, 64, 64, 4, 4, 'covered'), 4), []);
  const m = gridMasks([b2], 64, 64, 4, 4, 'covered');
  assert.equal(m.extents[0], null);
  assert.deepEqual(gridMasks([b2], 64, 64, 8, 8, 'covered').extents[0], { row: 1, col: 2, rows: 2, cols: 5 });
  // the centre rule: 8-pixel cell centres 20, 28, 36, 44 in x; 20, 28 in y
  assert.deepEqual(cells(rasterBox(box, 512, 512, 64, 64, 'centre'), 64), rect(2, 3, 2, 5));
  // 64-pixel cells: the only centre (32, 32) is below the box; its own centre (35, 25) is in cell (0, 0)
  assert.deepEqual(cells(rasterBox(box, 512, 512, 8, 8, 'centre'), 8), [[0, 0]]);
  assert.deepEqual(gridMasks([box], 512, 512, 8, 8, 'centre').extents[0], { row: 0, col: 0, rows: 1, cols: 1 });
  // a box ending on the frame's last pixel
  for (const rule of ['covered', 'centre'] as const) assert.deepEqual(cells(rasterBox({ x: 448, y: 448, width: 64, height: 64 }, 512, 512, 8, 8, rule), 8), [[7, 7]]);
});

/** The code's concept region mask, transcribed loop for loop (multi_lora_sample.py ~392-404): 1 where it adds -1e6 at least once. */
function codeIsolation(boxes: Uint8Array[], n: number): Uint8Array {
  const out = new Uint8Array(n * n);
  boxes.forEach((mask, k) => {
    const others = boxes.filter((_, j) => j !== k);
    for (const other of others) for (let q = 0; q < n; q++) if (mask[q]) for (let key = 0; key < n; key++) if (other[key]) out[q * n + key] = 1;
  });
  return out;
}

test('concept isolation (the code): a box query cannot see other boxes; background queries see all, box queries see the background', () => {
  const m = gridMasks([{ x: 0, y: 0, width: 32, height: 64 }], 64, 64, 2, 2);
  assert.deepEqual([...m.boxes[0]], [1, 0, 1, 0]);
  assert.deepEqual([...m.background], [0, 1, 0, 1]);
  // one box: nothing to isolate it from
  assert.deepEqual([...isolationBias(m)], new Array(16).fill(0));
  const B = BLOCKED;
  // ours before ('regions'): the background walled off too
  assert.deepEqual([...isolationBias(m, 'regions')], [0, B, 0, B, B, 0, B, 0, 0, B, 0, B, B, 0, B, 0]);
  // boxes A (cells 0, 1) and B (cells 1, 2) on a 1 x 4 strip; cell 3 background
  const o = gridMasks([{ x: 0, y: 0, width: 64, height: 8 }, { x: 32, y: 0, width: 64, height: 8 }], 128, 8, 1, 4);
  assert.deepEqual([...o.boxes[0], ...o.boxes[1], ...o.background], [1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1]);
  // by hand: A's own cell sees itself and the background; the shared cell only the background; the
  // background sees everything
  assert.deepEqual([...isolationBias(o)], [0, B, B, 0, B, B, B, 0, B, B, 0, 0, 0, 0, 0, 0]);
  // ours before: the shared cell sees both, the two exclusive cells not each other
  const regions = isolationBias(o, 'regions');
  assert.deepEqual([regions[0 * 4 + 1], regions[0 * 4 + 2], regions[1 * 4 + 2], regions[2 * 4 + 3], regions[3 * 4 + 3]], [0, B, 0, B, 0]);
  // cross-attention region weights: background first, the shared cell split between its two boxes
  assert.deepEqual([...regionWeights(o)], [0, 0, 0, 1, 1, 0.5, 0, 0, 0, 0.5, 1, 0]);
  // random layouts of 1 to 5 boxes, overlapping or not: the code's loop, pair for pair
  const rng = new Rng(5);
  for (let trial = 0; trial < 40; trial++) {
    const count = 1 + (trial % 5);
    const boxes = Array.from({ length: count }, () => {
      const [u] = rng.normal(1);
      const x = 8 * Math.floor(Math.abs(u * 3) % 6);
      const y = 8 * (trial % 5);
      return { x, y, width: 8 * (1 + (trial % 3)), height: 16 };
    });
    const g = gridMasks(boxes, 64, 64, 8, 8);
    const want = codeIsolation(g.boxes, 64);
    const got = isolationBias(g);
    for (let i = 0; i < want.length; i++) assert.equal(got[i], want[i] ? BLOCKED : 0, `trial ${trial}, pair ${i}`);
  }
});

test('concept isolation in factors: BLOCKED * relu(L R^T) is the bias, pair for pair, in both scopes, up to the most boxes', () => {
  const F = ISOLATION_FACTORS;
  assert.equal(F, MAX_BOXES + 2, 'room for every box the studio allows');
  const rng = new Rng(17);
  const u = () => rng.normal(1)[0];
  let blockedPairs = 0;
  for (let trial = 0; trial < 60; trial++) {
    const count = 1 + (trial % MAX_BOXES);
    const [rows, cols] = [[4, 4], [3, 5], [8, 8], [6, 2]][trial % 4];
    // boxes on a frame of 8-pixel cells, overlapping at random, some off whole cells
    const boxes = Array.from({ length: count }, () => {
      const x = Math.floor(Math.abs(u()) * cols * 4);
      const y = Math.floor(Math.abs(u()) * rows * 4);
      return { x, y, width: 4 + Math.floor(Math.abs(u()) * cols * 6), height: 4 + Math.floor(Math.abs(u()) * rows * 6) };
    });
    const m = gridMasks(boxes, cols * 8, rows * 8, rows, cols);
    const n = rows * cols;
    for (const scope of ['concepts', 'regions'] as const) {
      const want = isolationBias(m, scope);
      const f = isolationFactors(m, scope);
      assert.equal(f.length, 2 * n * F);
      for (let q = 0; q < n; q++) {
        for (let k = 0; k < n; k++) {
          let dot = 0;
          for (let j = 0; j < F; j++) dot += f[q * F + j] * f[(n + k) * F + j];
          const got = BLOCKED * Math.max(0, dot);
          assert.ok(Object.is(got + 0, want[q * n + k] + 0), `trial ${trial} (${count} boxes), ${scope}, pair ${q}, ${k}: ${got} against ${want[q * n + k]}`);
          if (want[q * n + k]) blockedPairs++;
        }
      }
    }
  }
  assert.ok(blockedPairs > 1000, `the layouts have pairs to block (${blockedPairs})`);
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

test('latent re-initialisation (the code): the box-sized window with the most attention, copied at grid-to-latent scale, then the noise\'s mean and std', () => {
  // 4 x 5 map whose heaviest 2 x 2 window starts at (2, 3)
  const map = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 1, 3, 2];
  assert.deepEqual(argmaxWindow(map, 4, 5, 2, 2), { row: 2, col: 3, sum: 11 });
  assert.deepEqual(argmaxWindow(map, 4, 5, 1, 5), { row: 2, col: 0, sum: 6 });
  // a 2 x 3 grid over a 4 x 6 latent (2 latent cells per grid cell), 2 channels; the box is grid
  // cell (0, 0); the map peaks at grid cell (1, 2), so latent rows 2..3, columns 4..5 move to rows
  // 0..1, columns 0..1 of each channel
  const grid = [0, 0, 0, 0, 1, 5];
  const noise = Float32Array.from({ length: 48 }, (_, i) => (i * 7) % 11);
  const { latent, windows } = reinitLatent(noise, 2, 2, 3, 2, [{ box: { row: 0, col: 0, rows: 1, cols: 1 }, map: grid }]);
  assert.deepEqual(windows, [{ row: 1, col: 2 }]);
  const moved = Float64Array.from(noise);
  for (const ch of [0, 1]) for (const [r, c] of [[0, 0], [0, 1], [1, 0], [1, 1]]) moved[ch * 24 + r * 6 + c] = noise[ch * 24 + (2 + r) * 6 + 4 + c];
  // torch's std is the unbiased one
  const stats = (x: ArrayLike<number>) => {
    const n = x.length;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[i] / n;
    let ss = 0;
    for (let i = 0; i < n; i++) ss += (x[i] - mean) ** 2;
    return { mean, std: Math.sqrt(ss / (n - 1)) };
  };
  const a = stats(moved);
  const b = stats(noise);
  moved.forEach((v, i) => assert.ok(Math.abs(latent[i] - ((v - a.mean) / a.std) * b.std - b.mean) < 1e-5, `cell ${i}`));
  const after = meanStd(latent);
  assert.ok(Math.abs(after.mean - b.mean) < 1e-5 && Math.abs(after.std - b.std) < 1e-5);
});

test('concept tokens: the trigger words where the prompt has them, else the content words but articles and quality tags', () => {
  // a word-level stand-in for the tokenizer: one id per word, start 0, end 99
  const vocab = new Map<string, number>();
  const id = (w: string) => vocab.get(w) ?? vocab.set(w, vocab.size + 1).get(w)!;
  const words = (t: string) => t.replace(/,/g, ' , ').split(/\s+/).filter(Boolean).map(id);
  const encode = (t: string) => {
    const w = words(t);
    return { ids: [0, ...w, ...new Array(76 - w.length).fill(99)], tokenCount: w.length + 2 };
  };
  const p = encode('masterpiece, best quality, a sks dog on the grass');
  // positions: 1 masterpiece, 2 ',', 3 best, 4 quality, 5 ',', 6 a, 7 sks, 8 dog, 9 on, 10 the, 11 grass
  assert.deepEqual(conceptTokens(p.ids, p.tokenCount, words, 'sks dog'), { positions: [7, 8], source: 'trigger', missing: [] });
  assert.deepEqual(conceptTokens(p.ids, p.tokenCount, words, 'sks, grass'), { positions: [7, 11], source: 'trigger', missing: [] });
  assert.deepEqual(conceptTokens(p.ids, p.tokenCount, words, 'ohwx cat'), { positions: [7, 8, 11], source: 'content', missing: ['ohwx cat'] });
  assert.deepEqual(conceptTokens(p.ids, p.tokenCount, words), { positions: [7, 8, 11], source: 'content', missing: [] });
  const q = encode('masterpiece, best quality');
  assert.deepEqual(conceptTokens(q.ids, q.tokenCount, words), { positions: [1, 2, 3, 4], source: 'all-content', missing: [] });
});

test('scenes: guidance is on unless a switch says off; trigger words and layout choices reach the job', () => {
  const s = testScene();
  assert.deepEqual(layoutSwitches(s).guidance, { ce: true, fill: true, region: true, scale: 20, share: 1, earlyStop: true, lastStep: 25 });
  assert.equal(layoutSwitches({ ...s, ablation: { ...s.ablation, ce: false, fill: false, region: false } }).guidance, undefined);
  const withWords = parseScene({ ...s, boxes: [{ ...s.boxes[0], loras: [{ name: 'a.safetensors', scale: 1, trigger: 'sks dog' }, { name: 'b.safetensors', scale: 1, trigger: 'watercolor' }] }], layout: { masks: 'centre', regionNegative: 'frame' } });
  const job = sceneJob(withWords);
  assert.equal(job.layout!.boxes[0].trigger, 'sks dog, watercolor');
  assert.equal(job.layout!.masks, 'centre');
  assert.equal(job.layout!.regionNegative, 'frame');
  assert.throws(() => parseScene({ ...s, layout: { masks: 'middle' } }), /layout\.masks must be one of covered, centre/);
});
