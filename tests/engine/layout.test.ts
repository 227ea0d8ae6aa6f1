// Layouts on the real engine (tiny model, wasm): regions that all say the same thing are the plain
// image; with injection the attention the image gives each box prompt lies inside its box, without it
// spreads over the frame; re-initialisation and isolation run and report. The tiny model's weights are
// random, so where a box prompt would attend with nothing masked (attentionInBoxUnmasked) has no
// reason to follow the box: it is only checked to be a share.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { GenerateJob, LayoutOptions, LoraInfo } from '../../workers/api/contract.ts';
import { EngineError } from '../../workers/api/errors.ts';
import type { Engine } from '../../workers/engine/engine.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { appendedTokens } from '../../workers/layout/regional.ts';
import { ClipTextTokenizer } from '../../workers/text/tokenizer.ts';
import { openModelPath } from '../../workers/node/files.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'two friends in a park', negative: 'blurry', steps: 3, cfg: 5, seed: 7, width: 64, height: 64, scheduler: 'dpmpp-2m' };

// the wasm backend: the layout graph itself is checked on WebGPU in blocks.test.ts and guidance.test.ts,
// and the whole studio path in Chromium (e2e/layout.test.ts)
let setup: Promise<{ engine: Engine; loras: LoraInfo[] }> | undefined;
function studio() {
  setup ??= tinyModelDir().then(async ({ dir }) => openTinyEngine(dir, await runtime('wasm'), ['kohya', 'loha', 'locon']));
  return setup;
}

const layout = (loras: LoraInfo[], patch: Partial<LayoutOptions> = {}): LayoutOptions => ({
  boxes: [
    { name: 'fox', x: 0, y: 8, width: 32, height: 48, prompt: 'a red fox', loras: [{ lora: loras[0].id, scale: 1 }] },
    { name: 'owl', x: 32, y: 8, width: 32, height: 48, prompt: 'a grey owl', loras: [{ lora: loras[1].id, scale: 0.8 }] },
  ],
  injection: true,
  isolation: false,
  reinit: false,
  ...patch,
});

test('boxes that repeat the global prompt without LoRAs give the plain image', async () => {
  const { engine, loras } = await studio();
  const plain = await engine.generate(JOB);
  const same = layout(loras);
  for (const b of same.boxes) Object.assign(b, { prompt: JOB.prompt, loras: [] });
  const regional = await engine.generate({ ...JOB, layout: same });
  assert.ok(maxAbsDiff(regional.image.data, plain.image.data).diff <= 1, `max pixel difference ${maxAbsDiff(regional.image.data, plain.image.data).diff}`);
  assert.deepEqual(regional.report.boxes.map((b) => b.name), ['fox', 'owl']);
});

test('with injection the attention given to each box prompt lies in its box; without, it spreads', async () => {
  const { engine, loras } = await studio();
  const on = await engine.generate({ ...JOB, layout: layout(loras) });
  const off = await engine.generate({ ...JOB, layout: layout(loras, { injection: false }) });
  // the boxes do not overlap, so each box region's weight is 1 inside it and 0 outside: all of it
  for (const b of on.report.boxes) assert.ok(Math.abs(b.attentionInBox - 1) < 1e-9, `${b.name} ${b.attentionInBox}`);
  // without: the box prompt's tokens in the joined prompt, seen from every cell; each box covers 3/8
  for (const b of off.report.boxes) assert.ok(b.attentionInBox > 0.05 && b.attentionInBox < 0.8, `${b.name} ${b.attentionInBox}`);
  for (const b of [...on.report.boxes, ...off.report.boxes]) assert.ok(b.attentionInBoxUnmasked > 0 && b.attentionInBoxUnmasked < 1, `${b.name} ${b.attentionInBoxUnmasked}`);
  assert.ok(maxAbsDiff(on.image.data, off.image.data).diff > 0);
  // without injection the box LoRAs are composed with the frame's (merge: one UNet run per step)
  assert.deepEqual(off.report.composition.loras, ['kohya.safetensors', 'loha.safetensors']);
  assert.equal(off.report.unetEvaluations, 3);
});

test('box prompts appended to the global prompt are found at the right token positions', async () => {
  const { dir } = await tinyModelDir();
  const { tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const tok = ClipTextTokenizer.fromFiles(tokenizer!);
  const parts = ['two friends in a park', 'a red fox', 'a grey owl with big eyes'];
  const joined = tok.encode(parts.join(', ')).ids;
  const counts = parts.map((p) => tok.encode(p).tokenCount);
  for (const [i, p] of parts.entries()) {
    const { first, end } = appendedTokens(counts, i, 77);
    assert.deepEqual(joined.slice(first, end), tok.encode(p).ids.slice(1, counts[i] - 1), p);
  }
  // a part past the end of the context is cut to nothing
  const long = Array.from({ length: 40 }, () => 'a red fox');
  const c = long.map((p) => tok.encode(p).tokenCount);
  const cut = appendedTokens(c, 39, 77);
  assert.equal(cut.end - cut.first, 0);
});

test('isolation and re-initialisation run, report their windows, and a box outside the frame is refused', async () => {
  const { engine, loras } = await studio();
  const r = await engine.generate({ ...JOB, layout: layout(loras, { isolation: true, reinit: true }) });
  assert.equal(r.report.unetEvaluations, 4, 'three steps and the probe step');
  // the plan counts the layout's graphs: the region keys and the re-initialisation probe's cut UNet
  const plan = r.report.memoryPlan;
  assert.match(plan.notes.at(-1)!, /^a layout of 2 boxes: the UNet attends per region; the cut UNet for its attention maps runs between its runs$/);
  const a = plan.parts.activationBytes;
  assert.ok(a.layout! > 0);
  assert.equal(plan.peakBytes, Object.values(plan.parts.weightBytes).reduce((x, y) => x + y, 0) + Math.max(a.unet, a.textEncoder, a.vae, a.layout!) + plan.parts.loraArenaBytes + plan.parts.pristineBytes + plan.parts.cacheBytes + plan.parts.latentBytes);
  for (const b of r.report.boxes) {
    assert.ok(b.window && b.window.row >= 0 && b.window.row + 6 <= 8 && b.window.col >= 0 && b.window.col + 4 <= 8, JSON.stringify(b.window));
  }
  const bad = layout(loras);
  bad.boxes[1].x = 48;
  await assert.rejects(engine.generate({ ...JOB, layout: bad }), (e: EngineError) => e.code === 'bad-argument' && /Box "owl" reaches outside the 64x64 frame/.test(e.message));
});

test("each box region runs through its own LoRAs as the code does: its negative prompt, its output projection, the model without the frame's LoRAs", async () => {
  const { engine, loras } = await studio();
  const run = async (patch: Partial<LayoutOptions>, boxScale: number, frame = false) => {
    const l = layout(loras, patch);
    for (const b of l.boxes) b.loras = b.loras.map((u) => ({ ...u, scale: boxScale }));
    return engine.generate({ ...JOB, steps: 2, ...(frame ? { loras: [{ lora: loras[2].id, scale: 1 }] } : {}), layout: l });
  };
  const differ = (a: { image: { data: Uint8ClampedArray } }, b: { image: { data: Uint8ClampedArray } }) => maxAbsDiff(a.image.data, b.image.data).diff;
  // box LoRAs at strength 0 are the base model: every choice gives the same pixels
  const base = await run({}, 0);
  assert.equal(differ(base, await run({ regionNegative: 'frame' }, 0)), 0);
  assert.equal(differ(base, await run({ regionOutput: 'shared' }, 0)), 0);
  assert.deepEqual(base.report.layout!.options, { injection: true, isolation: false, reinit: false, guidance: null, masks: 'covered', isolationScope: 'concepts', regionBase: 'model', regionNegative: 'concept', regionOutput: 'own' });
  // with the LoRAs on, the negative prompt through them and their output projections change the image
  const code = await run({}, 1);
  assert.ok(differ(code, await run({ regionNegative: 'frame' }, 1)) > 0, 'the region negative through the box LoRA');
  assert.ok(differ(code, await run({ regionOutput: 'shared' }, 1)) > 0, 'the region output projection with the box LoRA');
  // the frame's LoRA reaches the box regions only when asked
  const frameCode = await run({}, 1, true);
  assert.ok(differ(frameCode, await run({ regionBase: 'frame' }, 1, true)) > 0);
  assert.equal(differ(code, await run({ regionBase: 'frame' }, 1)), 0, 'without frame LoRAs the two bases are one');
});
