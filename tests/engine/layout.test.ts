// Layouts on the real engine (tiny model, WebGPU): regions that all say the same thing are the plain
// image; injection changes where the box prompts attend; re-initialisation and isolation run and
// report. The tiny model's weights are random, so it has no reason to put a concept in its box: the
// in-box share with injection is not asserted to be higher here (measured: about equal).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { GenerateJob, LayoutOptions, LoraInfo } from '../../workers/api/contract.ts';
import { EngineError } from '../../workers/api/errors.ts';
import { Engine } from '../../workers/engine/engine.ts';
import { NodeFileSource, openModelPath } from '../../workers/node/files.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'two friends in a park', negative: 'blurry', steps: 3, cfg: 5, seed: 7, width: 64, height: 64, scheduler: 'dpmpp-2m' };

let setup: Promise<{ engine: Engine; loras: LoraInfo[] }> | undefined;
function studio() {
  setup ??= (async () => {
    const { dir } = await tinyModelDir();
    const { files, tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
    const engine = new Engine(await runtime('webgpu'));
    await engine.loadModel(files, tokenizer!, 'fp32');
    const loras = [];
    for (const f of ['kohya', 'loha']) loras.push(await engine.loadLora(await NodeFileSource.open(join(dir, `loras/${f}.safetensors`))));
    return { engine, loras };
  })();
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

test('region-aware injection changes the image and where the box prompts attend; the probe maps are shares of the box', async () => {
  const { engine, loras } = await studio();
  const on = await engine.generate({ ...JOB, layout: layout(loras) });
  const off = await engine.generate({ ...JOB, layout: layout(loras, { injection: false }) });
  const share = (r: typeof on) => r.report.boxes.map((b) => b.attentionInBox);
  for (const s of [...share(on), ...share(off)]) assert.ok(s > 0 && s < 1, `share ${s}`);
  assert.notDeepEqual(share(on), share(off));
  assert.ok(maxAbsDiff(on.image.data, off.image.data).diff > 0);
  // without injection the box LoRAs are composed with the frame's (merge: one UNet run per step)
  assert.deepEqual(off.report.composition.loras, ['kohya.safetensors', 'loha.safetensors']);
  assert.equal(off.report.unetEvaluations, 3);
});

test('isolation and re-initialisation run, report their windows, and a box outside the frame is refused', async () => {
  const { engine, loras } = await studio();
  const r = await engine.generate({ ...JOB, layout: layout(loras, { isolation: true, reinit: true }) });
  assert.equal(r.report.unetEvaluations, 4, 'three steps and the probe step');
  for (const b of r.report.boxes) {
    assert.ok(b.window && b.window.row >= 0 && b.window.row + 6 <= 8 && b.window.col >= 0 && b.window.col + 4 <= 8, JSON.stringify(b.window));
  }
  const bad = layout(loras);
  bad.boxes[1].x = 48;
  await assert.rejects(engine.generate({ ...JOB, layout: bad }), (e: EngineError) => e.code === 'bad-argument' && /Box "owl" reaches outside the 64x64 frame/.test(e.message));
});
