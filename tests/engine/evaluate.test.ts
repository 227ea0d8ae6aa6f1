// `evaluate` as a user runs it on the tiny model and the tiny scorer: the rows and images it writes,
// summary.json against means and intervals recomputed from the CSV with the printed t table, a
// row's scores against the `score` command on its PNG, resuming (nothing remade, then only the lost
// rows, with the same numbers), changed seeds, a hub scorer fetched once from a local server, and
// a bad testbed.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { tinyTestbedJson } from '../../workers/eval/tiny-testbed.ts';
import { parseResultsCsv, type ResultRow } from '../../workers/eval/stats.ts';

const args = (...a: string[]) => ['--liftoff-only', '--import', 'tsx', '--import', './scripts/wgsl.mjs', 'workers/cli.ts', ...a];
const cli = (...a: string[]) => {
  const r = spawnSync(process.execPath, args(...a), { encoding: 'utf8', timeout: 400_000, env: { ...process.env, ...extraEnv } });
  return { code: r.status, out: r.stdout, err: r.stderr.split('\n').filter((l) => l && !l.includes('XDG_RUNTIME_DIR')) };
};
let extraEnv: Record<string, string> = {};

const dir = mkdtempSync(join(tmpdir(), 'lora-studio-eval-'));
assert.equal(cli('make-test-model', '--out', dir).code, 0);
const testbed = join(dir, 'small.json');
const small = (seeds: number[]) => ({
  ...tinyTestbedJson(),
  defaults: { width: 64, height: 64, steps: 2, cfg: 5, scheduler: 'ddim', negative: '' },
  combinations: { sizes: [2], categories: ['character', 'style'], require: 'character', limit: 1 },
  methods: ['merge', 'composite'],
  seeds,
});
writeFileSync(testbed, JSON.stringify(small([1, 2])));
const out = join(dir, 'out');
const rowsOf = () => parseResultsCsv(readFileSync(join(out, 'results.csv'), 'utf8'));
const same = (a: ResultRow, b: ResultRow) => {
  for (const k of ['clipScore', 'clipScorePrompt', 'global', 'textSimilarity', 'textSimilarityRaw', 'imageSimilarity', 'imageSimilarityFirst', 'unetEvaluations', 'unetGMacs', 'image'] as const) assert.equal(a[k], b[k], `${a.scene} ${a.method} ${a.seed} ${k}`);
};

test('evaluate writes a row, an image and a scored PNG per run; summary.json agrees with the CSV', () => {
  const r = cli('evaluate', '--testbed', testbed, '--out', out, '--backend', 'wasm');
  assert.equal(r.code, 0, r.err.join('\n'));
  assert.deepEqual(JSON.parse(r.out), { out, results: join(out, 'results.csv'), summary: join(out, 'summary.json'), planned: 8, made: 8, reused: 0 });
  const rows = rowsOf();
  assert.deepEqual(rows.map((x) => `${x.scene}|${x.method}|${x.seed}`), ['fox-and-owl|merge|1', 'fox-and-owl|merge|2', 'fox-and-owl|composite|1', 'fox-and-owl|composite|2', 'n2-fox+watercolor|merge|1', 'n2-fox+watercolor|merge|2', 'n2-fox+watercolor|composite|1', 'n2-fox+watercolor|composite|2']);
  for (const x of rows) assert.ok(existsSync(join(out, x.image)), x.image);
  // The layout scene: 2 steps + the re-initialisation probe; the fox's box has two references, the owl's one.
  const box = rows[0];
  assert.deepEqual([box.loras, box.boxes, box.unetEvaluations], [3, 2, 3]);
  assert.ok(box.imageSimilarity !== null && box.imageSimilarity > -1 && box.imageSimilarity <= 1);
  // Two LoRAs over the frame: merge runs the UNet once per step, composite once per LoRA.
  assert.deepEqual([rows[4].unetEvaluations, rows[6].unetEvaluations], [2, 4]);
  // fox has two references, watercolor none: the image similarity is the fox's alone.
  assert.ok(rows[4].imageSimilarity !== null);

  const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
  assert.equal(summary.adapter.backend, 'wasm');
  assert.deepEqual(summary.runs, { planned: 8, made: 8, reused: 0 });
  const T3 = 3.1824; // t(0.975, 3)
  for (const m of ['merge', 'composite']) {
    const v = rows.filter((x) => x.method === m).map((x) => x.textSimilarity);
    const mean = v.reduce((a, b) => a + b, 0) / v.length;
    const sd = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1));
    const got = summary.methods[m].textSimilarity;
    assert.ok(Math.abs(got.mean - mean) < 1e-12 && Math.abs(got.hi - (mean + (T3 * sd) / 2)) < 1e-3 * Math.max(1, sd), `${m}: ${JSON.stringify(got)}`);
    assert.deepEqual(Object.keys(summary.byLoraCount[m]), ['2', '3']);
  }
  assert.equal(summary.pairwise.merge.against, 'composite');
  assert.equal(summary.pairwise.merge.wins + summary.pairwise.merge.ties + summary.pairwise.merge.losses, 4);
});

test("a row's scores are those of its PNG scored again by the score command", () => {
  for (const row of [rowsOf()[2], rowsOf()[6]]) {
    const s = cli('score', '--image', join(out, row.image), '--clip', join(dir, 'clip'), '--backend', 'wasm');
    assert.equal(s.code, 0, s.err.join('\n'));
    const rep = JSON.parse(s.out);
    assert.ok(Math.abs(rep.global - row.global) < 1e-6, `${rep.global} vs ${row.global}`);
    // CLIPScore against the trigger words, which the scene in the PNG carries
    assert.ok(Math.abs(rep.clipScore - row.clipScore) < 1e-4, `${rep.clipScore} vs ${row.clipScore}`);
    assert.ok(Math.abs(rep.clipScorePrompt - row.clipScorePrompt) < 1e-4);
    assert.ok(Math.abs(rep.clipScorePrompt - 100 * Math.max(0, rep.global)) < 1e-9);
    // Without the testbed there are no class words: the box prompts as the scene has them.
    if (row.boxes) {
      assert.equal(rep.clipScoreText, 'zxc, sks');
      assert.deepEqual(rep.boxes.map((b: { text: string }) => b.text), ['a zxc fox', 'a sks owl']);
    } else assert.equal(rep.clipScoreText, 'zxc', 'the style LoRA has no trigger words');
  }
});

test('resume: nothing is remade; lost and cut-off rows are remade with the same numbers; changed seeds replace rows', () => {
  const before = rowsOf();
  const csv = readFileSync(join(out, 'results.csv'), 'utf8');
  const again = cli('evaluate', '--testbed', testbed, '--out', out, '--backend', 'wasm');
  assert.equal(again.code, 0, again.err.join('\n'));
  assert.deepEqual([JSON.parse(again.out).made, JSON.parse(again.out).reused], [0, 8]);
  assert.equal(readFileSync(join(out, 'results.csv'), 'utf8'), csv);
  // Lose two rows, and leave half a line as a killed run would.
  const lines = csv.split('\n');
  writeFileSync(join(out, 'results.csv'), [...lines.slice(0, 3), ...lines.slice(5, 8), lines[8].slice(0, 20)].join('\n'));
  const resumed = cli('evaluate', '--testbed', testbed, '--out', out, '--backend', 'wasm');
  assert.equal(resumed.code, 0, resumed.err.join('\n'));
  assert.deepEqual([JSON.parse(resumed.out).made, JSON.parse(resumed.out).reused], [3, 5]);
  const after = rowsOf();
  assert.equal(after.length, 8);
  for (const b of before) same(after.find((a) => a.scene === b.scene && a.method === b.method && a.seed === b.seed)!, b);
  // Seeds 1 and 3: seed 2's rows leave the CSV, seed 3's are made.
  writeFileSync(testbed, JSON.stringify(small([1, 3])));
  const moved = cli('evaluate', '--testbed', testbed, '--out', out, '--backend', 'wasm');
  assert.equal(moved.code, 0, moved.err.join('\n'));
  assert.deepEqual([JSON.parse(moved.out).made, JSON.parse(moved.out).reused], [4, 4]);
  assert.deepEqual([...new Set(rowsOf().map((x) => x.seed))].sort(), [1, 3]);
});

test('a hub scorer is fetched once into the cache (HF_ENDPOINT), then used offline', async () => {
  const served: string[] = [];
  const server = createServer((req, res) => {
    served.push(req.url!);
    const m = req.url!.match(/^\/tiny\/clip\/resolve\/main\/(.+)$/);
    const path = m && join(dir, 'clip', decodeURIComponent(m[1]));
    if (!path || !existsSync(path)) return void res.writeHead(404).end();
    res.writeHead(200).end(readFileSync(path));
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as { port: number }).port;
  const cache = mkdtempSync(join(tmpdir(), 'lora-studio-cache-'));
  const png = join(out, rowsOf()[0].image);
  const run = (env: Record<string, string>) =>
    new Promise<{ code: number | null; out: string; err: string }>((ok) => {
      const p = spawn(process.execPath, args('score', '--image', png, '--clip', 'tiny/clip', '--backend', 'wasm'), { env: { ...process.env, XDG_CACHE_HOME: cache, ...env } });
      let o = '';
      let e = '';
      p.stdout.on('data', (d) => (o += d));
      p.stderr.on('data', (d) => (e += d));
      p.on('close', (code) => ok({ code, out: o, err: e }));
    });
  try {
    const first = await run({ HF_ENDPOINT: `http://127.0.0.1:${port}` });
    assert.equal(first.code, 0, first.err);
    assert.equal(served.length, 6, served.join(' '));
    const second = await run({ HF_ENDPOINT: 'http://127.0.0.1:9' });
    assert.equal(second.code, 0, second.err);
    assert.equal(JSON.parse(second.out).global, JSON.parse(first.out).global);
    assert.equal(served.length, 6, 'nothing fetched the second time');
  } finally {
    server.close();
  }
});

test('a bad testbed or scorer gets one sentence and exit code 1', () => {
  writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...small([1]), scenes: [{ name: 'x', loras: ['ghost'] }] }));
  const r = cli('evaluate', '--testbed', join(dir, 'bad.json'), '--out', join(dir, 'bad-out'), '--backend', 'wasm');
  assert.equal(r.code, 1);
  assert.match(r.err.join('\n'), /^error: This testbed cannot be used: scenes\[0\]\.loras\[0\] names no LoRA of the testbed \("ghost"\)\.$/m);
  const s = cli('score', '--image', join(dir, 'references', 'fox-1.png'), '--clip', join(dir, 'clip'), '--backend', 'wasm');
  assert.equal(s.code, 1);
  assert.match(s.err.join('\n'), /holds no scene/);
  const c = cli('score', '--image', join(out, rowsOf()[0].image), '--clip', join(dir, 'loras'), '--backend', 'wasm');
  assert.equal(c.code, 1);
  assert.match(c.err.join('\n'), /holds no CLIP scorer/);
});
