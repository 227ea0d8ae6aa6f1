// The evaluation's arithmetic against closed forms and tables: Student's t quantiles, 95% intervals,
// pairwise wins, the results.csv round trip, ComposLoRA's combination counts, testbed errors, and
// PNG decoding of every filter type.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deflateSync, inflateSync } from 'node:zlib';
import { decodePng, encodePng, PngError } from '../../workers/engine/png.ts';
import { compareScores, csvHeader, csvLine, interval, pyRound1, parseResultsCsv, studentTCdf, studentTQuantile, summariseRows, type ResultRow } from '../../workers/eval/stats.ts';
import { expandTestbed, parseTestbed, TestbedError } from '../../workers/eval/testbed.ts';
import { tinyTestbedJson } from '../../workers/eval/tiny-testbed.ts';
import { crc32 } from '../../workers/engine/png.ts';

test("Student's t: the 97.5% quantiles of the printed tables, and the CDF's closed forms", () => {
  const table: [number, number][] = [[1, 12.7062], [2, 4.3027], [3, 3.1824], [5, 2.5706], [10, 2.2281], [30, 2.0423], [120, 1.9799]];
  for (const [df, t] of table) assert.ok(Math.abs(studentTQuantile(0.975, df) - t) < 5e-4, `df ${df}: ${studentTQuantile(0.975, df)}`);
  // df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/pi; df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
  for (const t of [-3, -0.5, 0, 0.7, 4]) {
    assert.ok(Math.abs(studentTCdf(t, 1) - (0.5 + Math.atan(t) / Math.PI)) < 1e-12);
    assert.ok(Math.abs(studentTCdf(t, 2) - (0.5 + t / (2 * Math.sqrt(2 + t * t)))) < 1e-12);
  }
});

test('95% interval of the mean: mean +- t * s / sqrt(n)', () => {
  const v = [2, 4, 4, 4, 5, 5, 7, 9];
  const i = interval(v);
  const s = Math.sqrt(32 / 7);
  assert.equal(i.mean, 5);
  assert.ok(Math.abs(i.hi - (5 + (studentTQuantile(0.975, 7) * s) / Math.sqrt(8))) < 1e-12);
  assert.ok(Math.abs(i.hi - 6.7875) < 1e-3);
  assert.deepEqual(interval([3]), { n: 1, mean: 3, lo: 3, hi: 3 });
});

const row = (method: string, scene: string, seed: number, clipScore: number, loras = 2): ResultRow => ({
  scene, method, seed, loras, boxes: 0, clipScore, clipScorePrompt: clipScore + 1.5, global: clipScore / 100, textSimilarity: 0.25, textSimilarityRaw: 0.125,
  imageSimilarity: method === 'merge' ? null : 0.5, imageSimilarityFirst: method === 'merge' ? null : 0.625, unetEvaluations: 10, unetGMacs: 3.25, profileEvaluations: 0, totalMs: 1234.5, denoiseMs: 1000, image: `images/${scene}/${method}-${seed}.png`, config: 'abc123',
});

test('results.csv: rows round-trip exactly, quoted names included; a cut-off last line is dropped', () => {
  const rows = [row('merge', 'a,"b"', 1, 21.5), row('composite', 'plain', 2, 0.1 + 0.2)];
  const text = csvHeader() + rows.map(csvLine).join('');
  assert.deepEqual(parseResultsCsv(text), rows);
  assert.deepEqual(parseResultsCsv(text + 'plain,cmlora,3,2,0,12.'), rows);
  assert.equal(csvHeader() + parseResultsCsv(text).map(csvLine).join(''), text);
});

test('summary: per method, per LoRA count, and pairwise wins on the same scene and seed', () => {
  const rows = [row('composite', 's1', 1, 20), row('composite', 's1', 2, 22), row('composite', 's2', 1, 30, 3), row('cmlora', 's1', 1, 25), row('cmlora', 's1', 2, 22), row('cmlora', 's2', 1, 10, 3)];
  const s = summariseRows(rows);
  assert.equal(s.methods.composite.clipScore!.mean, 24);
  assert.deepEqual(Object.keys(s.byLoraCount.cmlora), ['2', '3']);
  assert.equal(s.byLoraCount.cmlora['2'].clipScore!.mean, 23.5);
  assert.ok(Math.abs(s.byLoraCount.cmlora['2'].clipScore!.hi - (23.5 + 12.7062 * Math.sqrt(4.5) / Math.sqrt(2))) < 1e-2);
  assert.deepEqual(s.pairwise.cmlora, { against: 'composite', metric: 'clipScore', tolerance: 0.1, wins: 1, ties: 1, losses: 1, winOrTie: 2 / 3, winRate: 0.5 });
  assert.equal(s.pairwise.composite, undefined);
  // the papers' columns: trigger-word CLIPScore, the code's text score, first-reference image score, (wins + ties) / pairs
  assert.deepEqual(s.paper.cmlora, { clipScore: 19, textSimilarity: 0.25, imageSimilarity: 0.625, winOrTie: 2 / 3, unetGMacs: 3.25 });
  assert.equal(s.paper.composite.winOrTie, null);
});

test("Python's round(x, 1) and analysis.py's tie rule, in the same double arithmetic", () => {
  // halfway cases are only the doubles k/4 with k odd; they go to the even tenth
  assert.deepEqual([0.25, 0.75, 1.25, -0.25, 2.5].map(pyRound1), [0.2, 0.8, 1.2, -0.2, 2.5]);
  // 0.15 and 0.35 are not halfway as doubles (0.1499..., 0.3499...): round(0.15, 1) == 0.1, round(0.35, 1) == 0.3
  assert.deepEqual([0.15, 0.35, 0.45, 2.675, 31.26].map(pyRound1), [0.1, 0.3, 0.5, 2.7, 31.3]);
  // 0.4 - 0.3 = 0.10000000000000003 > 0.1: no tie; 0.3 - 0.2 = 0.09999999999999998: a tie
  assert.equal(compareScores(0.3, 0.4), 'loss');
  assert.equal(compareScores(0.4, 0.3), 'win');
  assert.equal(compareScores(0.3, 0.2), 'tie');
  // both rounded first: 31.04 -> 31.0 and 30.96 -> 31.0
  assert.equal(compareScores(31.04, 30.96), 'tie');
  assert.equal(compareScores(31.26, 31.14), 'win');
});

test('ComposLoRA combinations: one LoRA per category, the required one always in', () => {
  const raw = tinyTestbedJson();
  const t = parseTestbed(JSON.stringify({ ...raw, scenes: [], combinations: { sizes: [2, 3], categories: ['character', 'clothing', 'style', 'background'], require: 'character' } }));
  // characters: fox, owl; one each of clothing, style, background.
  // size 2: 3 partner categories x 2 characters = 6; size 3: C(3,2) = 3 pairs x 2 = 6.
  assert.equal(t.scenes.length, 12);
  for (const s of t.scenes) {
    const ids = s.scene.loras.map((l) => l.name);
    assert.ok(ids.includes('fox') || ids.includes('owl'));
    assert.ok(!(ids.includes('fox') && ids.includes('owl')), 'two LoRAs of one category');
  }
  assert.equal(t.scenes[0].scene.prompt, 'a zxc fox, a red hat');
  const limited = parseTestbed(JSON.stringify(raw));
  assert.equal(limited.scenes.length, 1 + 2 + 2);
  const runs = expandTestbed(limited);
  assert.equal(runs.length, 5 * 4 * 2);
  assert.equal(new Set(runs.map((r) => r.key)).size, runs.length);
  assert.deepEqual([runs[0].loraCount, runs[0].job.boxes.length, runs[0].job.seed], [3, 2, 1]);
  assert.deepEqual(runs.find((r) => r.method === 'cmlora')!.job.composition, { method: 'cmlora', switchStep: 1 });
});

test('testbed errors name the field', () => {
  const raw = tinyTestbedJson();
  const bad = (patch: Record<string, unknown>, re: RegExp) =>
    assert.throws(() => parseTestbed(JSON.stringify({ ...raw, ...patch })), (e: unknown) => e instanceof TestbedError && re.test(e.message), JSON.stringify(patch));
  bad({ version: 2 }, /version/);
  bad({ methods: ['best'] }, /methods\[0\] "best" is not a method/);
  bad({ methods: [{ name: 'x', method: 'cmlora', cacheHigh: 0 }] }, /cacheHigh must be a whole number/);
  bad({ methods: [{ name: 'x', method: 'merge', wobble: 1 }] }, /wobble is not a composition setting/);
  bad({ scenes: [{ name: 'a', loras: ['nobody'] }] }, /scenes\[0\]\.loras\[0\] names no LoRA/);
  bad({ scenes: [{ name: 'a', boxes: [{ x: 0, y: 0, width: 200, height: 8 }] }] }, /scene "a": box .* reaches outside/);
  bad({ seeds: [1, 1] }, /repeats/);
  bad({ combinations: { sizes: [9] } }, /sizes/);
  assert.throws(() => parseTestbed('{'), /not JSON/);
});

/** A PNG with each row under the given filter type (the forward filters, written from the spec). */
function filteredPng(w: number, h: number, channels: number, pixels: Uint8Array, filters: number[]): Uint8Array {
  const stride = w * channels;
  const raw = new Uint8Array(h * (stride + 1));
  for (let y = 0; y < h; y++) {
    const f = filters[y % filters.length];
    raw[y * (stride + 1)] = f;
    for (let i = 0; i < stride; i++) {
      const x = pixels[y * stride + i];
      const a = i >= channels ? pixels[y * stride + i - channels] : 0;
      const b = y ? pixels[(y - 1) * stride + i] : 0;
      const c = y && i >= channels ? pixels[(y - 1) * stride + i - channels] : 0;
      const p = a + b - c;
      const paeth = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c;
      const pred = [0, a, b, (a + b) >> 1, paeth][f];
      raw[y * (stride + 1) + 1 + i] = (x - pred) & 0xff;
    }
  }
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length);
    const v = new DataView(out.buffer);
    v.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    v.setUint32(8 + data.length, (crc32(out.subarray(4, 8 + data.length)) ^ 0xffffffff) >>> 0);
    return out;
  };
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, w);
  new DataView(ihdr.buffer).setUint32(4, h);
  ihdr[8] = 8;
  ihdr[9] = { 1: 0, 2: 4, 3: 2, 4: 6 }[channels]!;
  const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', new Uint8Array())];
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

const inflate = (d: Uint8Array, max: number) => inflateSync(d, { maxOutputLength: max + 1 });

test('PNG pixels: every filter type and colour type decodes to the pixels written; our own PNGs round-trip', async () => {
  let s = 7;
  const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 16) & 0xff;
  for (const channels of [1, 2, 3, 4]) {
    const w = 9;
    const h = 10;
    const px = Uint8Array.from({ length: w * h * channels }, rand);
    const img = decodePng(filteredPng(w, h, channels, px, [0, 1, 2, 3, 4]), inflate);
    for (let i = 0; i < w * h; i++) {
      const src = px.subarray(i * channels, (i + 1) * channels);
      const want = channels <= 2 ? [src[0], src[0], src[0], channels === 2 ? src[1] : 255] : [src[0], src[1], src[2], channels === 4 ? src[3] : 255];
      assert.deepEqual([...img.data.subarray(i * 4, i * 4 + 4)], want, `channels ${channels} pixel ${i}`);
    }
  }
  const rgba = Uint8ClampedArray.from({ length: 16 * 8 * 4 }, rand);
  const back = decodePng(await encodePng(rgba, 16, 8, { k: 'v' }, (d) => deflateSync(d)), inflate);
  assert.deepEqual(back.data, rgba);
  assert.throws(() => decodePng(new Uint8Array([1, 2, 3]), inflate), PngError);
  assert.throws(() => decodePng(filteredPng(4, 4, 3, new Uint8Array(48), [0]), inflate, 8), /at most 8 pixels/);
});
