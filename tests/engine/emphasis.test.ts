// A1111's prompt emphasis: the parse against hand-worked weights, the mean-restoring scale against a
// hand-worked context, the weighted tokens against the plain tokenizer, and on the engine a weight of
// 1 changes nothing while 1.5 changes the picture.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { openModelPath } from '../../workers/node/files.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { applyEmphasis, chunkTokens, parseEmphasis } from '../../workers/text/emphasis.ts';
import { ClipTextTokenizer } from '../../workers/text/tokenizer.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const close = (runs: { text: string; weight: number }[], want: [string, number][]) => {
  assert.deepEqual(runs.map((r) => r.text), want.map((w) => w[0]));
  runs.forEach((r, i) => assert.ok(Math.abs(r.weight - want[i][1]) < 1e-12, `${r.text}: ${r.weight} vs ${want[i][1]}`));
};

test('emphasis as A1111 reads it: (x) 1.1, ((x)) 1.21, [x] 1/1.1, (x:1.5), nesting, escapes, unclosed brackets, BREAK', () => {
  close(parseEmphasis('a (red:1.5) fox').runs, [['a ', 1], ['red', 1.5], [' fox', 1]]);
  close(parseEmphasis('((big)) [small] cat').runs, [['big', 1.21], [' ', 1], ['small', 1 / 1.1], [' cat', 1]]);
  close(parseEmphasis('(a fox (in snow:1.2) sitting:0.5)').runs, [['a fox ', 0.5], ['in snow', 0.6], [' sitting', 0.5]]);
  close(parseEmphasis('a \\(literal\\) bracket').runs, [['a (literal) bracket', 1]]);
  close(parseEmphasis('open (ended').runs, [['open ', 1], ['ended', 1.1]]);
  close(parseEmphasis('ratio 16:9 frame').runs, [['ratio 16:9 frame', 1]]);
  const b = parseEmphasis('a castle BREAK (a dragon)');
  assert.equal(b.breaks, 1);
  close(b.runs, [['a castle', 1], ['', 1], ['a dragon', 1.1]]);
  assert.deepEqual(b.runs.map((r) => !!r.break), [false, true, false]);
});

test("chunks of 75 tokens by A1111's rules: BREAK starts one; a full chunk with a comma in its last 20 tokens ends after it", () => {
  const PAD = 0;
  const COMMA = 99;
  // 80 tokens, a comma at index 60: the first chunk ends after it (61 tokens), the other 19 move on
  const ids = Array.from({ length: 80 }, (_, i) => (i === 60 ? COMMA : 1000 + i));
  const [a, b, ...rest] = chunkTokens([{ ids, weight: 1.5 }], COMMA, PAD);
  assert.equal(rest.length, 0);
  assert.deepEqual(a.ids, [...ids.slice(0, 61), ...Array(14).fill(PAD)]);
  assert.deepEqual(a.weights, [...Array(61).fill(1.5), ...Array(14).fill(1)]);
  assert.deepEqual(b.ids, [...ids.slice(61), ...Array(56).fill(PAD)]);
  // a comma too far back (index 40, 35 tokens before the end) does not move anything
  const far = Array.from({ length: 80 }, (_, i) => (i === 40 ? COMMA : 2000 + i));
  const [c, d] = chunkTokens([{ ids: far, weight: 1 }], COMMA, PAD);
  assert.deepEqual([c.ids.slice(0, 75), d.ids.slice(0, 5)], [far.slice(0, 75), far.slice(75)]);
  // BREAK: what follows starts a new chunk; nothing at all is one empty chunk
  const e = chunkTokens([{ ids: [5, 6], weight: 1 }, { ids: [], weight: 1, break: true }, { ids: [7], weight: 2 }], COMMA, PAD);
  assert.deepEqual(e.map((x) => x.ids.filter((v) => v !== PAD)), [[5, 6], [7]]);
  assert.deepEqual(e[1].weights.slice(0, 2), [2, 1]);
  assert.deepEqual(chunkTokens([], COMMA, PAD).map((x) => x.ids.length), [75]);
});

test('the context scaled by token weights, then by the ratio of its means (a hand-worked 3 x 2 context)', () => {
  const c = Float32Array.from([1, 2, 3, 4, 5, 6]);
  applyEmphasis(c, [1, 2, 1], 2);
  // sum before 21, after weighting 28: every value times 21/28
  assert.deepEqual(Array.from(c), [0.75, 1.5, 4.5, 6, 3.75, 4.5]);
  const plain = Float32Array.from([1, -2, 3]);
  applyEmphasis(plain, [1, 1, 1], 1);
  assert.deepEqual(Array.from(plain), [1, -2, 3], 'weights of one leave it as it is');
});

test('weighted tokens are the plain tokens of the bracket-free prompt; on the engine weight 1 is the plain picture and 1.5 another', async () => {
  const { dir } = await tinyModelDir();
  const { tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const tok = ClipTextTokenizer.fromFiles(tokenizer!);
  const w = tok.encodeWeighted(parseEmphasis('a (red fox:1.5) in the [snow]').runs);
  assert.deepEqual(w.ids, tok.encode('a red fox in the snow').ids);
  const n = tok.encode('a').tokenCount - 2;
  const red = tok.encode('red fox').tokenCount - 2;
  const snow = tok.encode('snow').tokenCount - 2;
  const inThe = tok.encode('in the').tokenCount - 2;
  const expected = [1, ...Array(n).fill(1), ...Array(red).fill(1.5), ...Array(inThe).fill(1), ...Array(snow).fill(1 / 1.1), 1];
  assert.deepEqual(w.weights.slice(0, expected.length), expected);
  assert.ok(w.weights.slice(expected.length).every((x) => x === 1), 'padding weighs 1');

  const rt = await runtime('wasm');
  const { engine } = await openTinyEngine(dir, rt);
  const job = { negative: '', steps: 2, cfg: 4, seed: 3, width: 64, height: 64, scheduler: 'ddim' as const };
  const plain = await engine.generate({ ...job, prompt: 'a red fox in the snow' });
  const one = await engine.generate({ ...job, prompt: 'a (red fox:1) in the snow' });
  const more = await engine.generate({ ...job, prompt: 'a (red fox:1.5) in the snow' });
  assert.equal(maxAbsDiff(one.image.data, plain.image.data).diff, 0, 'weight 1: the same picture');
  assert.ok(maxAbsDiff(more.image.data, plain.image.data).diff > 0, 'weight 1.5: another picture');

  // BREAK: two chunks, each begin + tokens + end, encoded apart; the short negative is filled up
  const chunks = tok.encodeChunks(parseEmphasis('a red fox BREAK in the snow').runs).chunks;
  assert.deepEqual(chunks.map((c) => c.ids), [tok.encode('a red fox').ids, tok.encode('in the snow').ids]);
  const broken = await engine.generate({ ...job, prompt: 'a red fox BREAK in the snow' });
  assert.deepEqual(broken.report.warnings, []);
  assert.ok(maxAbsDiff(broken.image.data, plain.image.data).diff > 0, 'two chunks: another picture');
  assert.deepEqual((await engine.generate({ ...job, prompt: 'a red fox BREAK in the snow' })).image.data, broken.image.data, 'and the same again');
  // a prompt past 75 tokens is read whole in chunks, not cut
  const long = Array.from({ length: 30 }, (_, i) => `word${i}`).join(' ');
  const whole = await engine.generate({ ...job, prompt: long });
  assert.ok(!whole.report.warnings.some((w) => /only the first/.test(w)), whole.report.warnings.join(' '));
});
