// LoRAs in the engine: merged weights against float64 (base + sum of scale x delta) on the GPU and
// on the CPU path for every kind (LoRA, LoCon with CP cores, LoHa, LoKr, DoRA, an LCM-style LoRA),
// exact un-apply, and whole generations with LoRAs on WebGPU and wasm.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { GenerateJob } from '../../workers/api/contract.ts';
import { EngineError } from '../../workers/api/errors.ts';
import { MemorySource } from '../../workers/checkpoint/source.ts';
import { Engine } from '../../workers/engine/engine.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
import { readBuffer } from '../../workers/gpu/buffers.ts';
import { loraTargetTable } from '../../workers/lora/keys.ts';
import { openLora } from '../../workers/lora/load.ts';
import { LoraWeights, type MergeBackend } from '../../workers/lora/merger.ts';
import { tinyLoras } from '../../workers/lora/test-loras.ts';
import { concatBytes } from '../../workers/checkpoint/safetensors.ts';
import { NodeFileSource } from '../../workers/node/files.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const JOB: GenerateJob = { prompt: 'red fox in a forest', negative: '', steps: 3, cfg: 5, seed: 7, width: 64, height: 64, scheduler: 'euler-a' };

async function weightsOn(backend: 'webgpu' | 'wasm') {
  const { model } = await tinyModelDir();
  const rt = await runtime(backend);
  const sets = { unet: new WeightSet(rt, 'float32'), textEncoder: new WeightSet(rt, 'float32') };
  await sets.unet.load(model.specs.unet, { read: async (s) => model.weights.unet.get(s.name)! });
  await sets.textEncoder.load(model.specs.textEncoder, { read: async (s) => model.weights.textEncoder.get(s.name)! });
  return { rt, sets, model };
}

async function readWeight(rt: Awaited<ReturnType<typeof runtime>>, set: WeightSet, name: string): Promise<Float32Array> {
  const buf = set.buffers.get(name);
  if (buf) return new Float32Array(await readBuffer(rt.gpu!.device, buf));
  return set.tensors.get(name)!.data as Float32Array;
}

for (const backend of ['batched', 'direct', 'cpu'] as MergeBackend[]) {
  test(`${backend} merge: weights equal base + sum(scale x delta) in float64; switching off restores them bit for bit`, async () => {
    const { rt, sets, model } = await weightsOn(backend === 'cpu' ? 'wasm' : 'webgpu');
    const loras = tinyLoras(model);
    const pick = (f: string) => loras.find((l) => l.file === `loras/${f}.safetensors`)!;
    const table = loraTargetTable(model.config);
    const merger = await LoraWeights.create(rt, sets, backend);
    assert.equal(merger.backend, backend);
    const used = [
      { l: pick('kohya'), unet: 0.7, te: 1.3 },
      { l: pick('locon'), unet: -0.4, te: 0 },
      { l: pick('loha'), unet: 1.5, te: 0 },
      { l: pick('lokr'), unet: 0.9, te: 0 },
      // DoRA's delta is its whole change W' - W at multiplier 1, which the multiplier scales
      { l: pick('dora'), unet: 0.6, te: -0.8 },
      { l: pick('lcm-lora'), unet: 0.5, te: 0 },
    ];
    for (const [i, u] of used.entries()) await merger.add(`l${i}`, await openLora(new MemorySource(u.l.file, concatBytes(u.l.parts)), model.config, table));
    const stats = await merger.apply(used.map((u, i) => ({ id: `l${i}`, unet: u.unet, textEncoder: u.te })));
    assert.ok(stats && stats.weights > 100, `merged ${stats?.weights} weights`);
    if (backend === 'batched') assert.ok(stats.dispatches < 10, `${stats.dispatches} dispatches`);
    if (backend === 'direct') assert.equal(stats.dispatches, stats.weights);

    const keys = new Set(used.flatMap((u) => [...u.l.deltas.keys()]));
    assert.equal(stats.weights, keys.size, 'every weight some LoRA trains, once');
    let worst = 0;
    for (const key of keys) {
      const [component, name] = key.split(':') as ['unet' | 'textEncoder', string];
      const base = (component === 'unet' ? model.weights.unet : model.weights.textEncoder).get(name)!;
      const want = Float64Array.from(base);
      for (const u of used) {
        const d = u.l.deltas.get(key);
        const s = component === 'unet' ? u.unet : u.te;
        if (d) for (let i = 0; i < want.length; i++) want[i] += s * d[i];
      }
      const got = await readWeight(rt, sets[component], name);
      const { diff, scale } = maxAbsDiff(got, want);
      worst = Math.max(worst, diff / scale);
    }
    assert.ok(worst < 2e-6, `largest relative error ${worst}`);

    // Same set again: nothing to do. Then everything off: the base, bit for bit.
    assert.equal(await merger.apply(used.map((u, i) => ({ id: `l${i}`, unet: u.unet, textEncoder: u.te }))), undefined);
    const off = await merger.apply(used.map((_, i) => ({ id: `l${i}`, unet: 0, textEncoder: 0 })));
    assert.equal(off?.weights, keys.size);
    for (const key of keys) {
      const [component, name] = key.split(':') as ['unet' | 'textEncoder', string];
      const base = (component === 'unet' ? model.weights.unet : model.weights.textEncoder).get(name)!;
      const got = await readWeight(rt, sets[component], name);
      assert.deepEqual(new Uint8Array(got.buffer, got.byteOffset, got.byteLength), new Uint8Array(base.buffer, base.byteOffset, base.byteLength), `${key} restored`);
    }
    // Removing a LoRA compacts the factor arena; the others still merge correctly.
    merger.remove('l0');
    await merger.apply([{ id: 'l2', unet: 1, textEncoder: 1 }]);
    const [k2] = pick('loha').deltas.keys();
    const name2 = k2.split(':')[1];
    const want2 = Float64Array.from(model.weights.unet.get(name2)!, (v, i) => v + pick('loha').deltas.get(k2)![i]);
    const r2 = maxAbsDiff(await readWeight(rt, sets.unet, name2), want2);
    assert.ok(r2.diff <= 2e-6 * r2.scale, `after remove: ${r2.diff}`);
    merger.dispose();
    sets.unet.dispose();
    sets.textEncoder.dispose();
  });
}

async function engineFor(backend: 'webgpu' | 'wasm') {
  const { dir } = await tinyModelDir();
  const { engine } = await openTinyEngine(dir, await runtime(backend));
  return { engine, dir };
}

test('generate with LoRAs: scale 0 is the base image pixel for pixel, a nonzero scale changes it, and GPU and CPU merges agree', async () => {
  const { engine, dir } = await engineFor('webgpu');
  const base = await engine.generate(JOB);
  const kohya = await engine.loadLora(await NodeFileSource.open(join(dir, 'loras/kohya.safetensors')));
  const peft = await engine.loadLora(await NodeFileSource.open(join(dir, 'loras/peft.safetensors')));
  assert.equal(kohya.format, 'kohya');
  assert.equal(kohya.keysMatched, kohya.unetLayers + kohya.textEncoderLayers);
  assert.ok(kohya.textEncoderLayers > 0 && kohya.unetLayers > 0);

  const zero = await engine.generate({ ...JOB, loras: [{ lora: kohya.id, scale: 0 }] });
  assert.deepEqual(zero.image.data, base.image.data, 'scale 0 gives the base image');
  const one = await engine.generate({ ...JOB, loras: [{ lora: kohya.id, scale: 1 }, { lora: peft.id, scale: 0.6 }] });
  assert.equal(one.report.loraKeysMatched, kohya.keysMatched + peft.keysMatched);
  assert.deepEqual(one.report.loraKeysUnmatched, []);
  assert.equal(one.report.mergeMs.length, 2, "the text encoder's merge, then the UNet's");
  assert.ok(one.report.mergeMs.every((ms) => ms > 0));
  const changed = maxAbsDiff(one.image.data, base.image.data).diff;
  assert.ok(changed > 20, `the LoRAs change the image (max pixel change ${changed})`);
  const again = await engine.generate(JOB);
  assert.deepEqual(again.image.data, base.image.data, 'switching the LoRAs off gives the base image back exactly');

  // The wasm engine merges on the CPU: same image within the backends' usual 2/255.
  const cpu = await engineFor('wasm');
  const ck = await cpu.engine.loadLora(await NodeFileSource.open(join(dir, 'loras/kohya.safetensors')));
  const cp = await cpu.engine.loadLora(await NodeFileSource.open(join(dir, 'loras/peft.safetensors')));
  const oneCpu = await cpu.engine.generate({ ...JOB, loras: [{ lora: ck.id, scale: 1 }, { lora: cp.id, scale: 0.6 }] });
  assert.ok(maxAbsDiff(oneCpu.image.data, one.image.data).diff <= 2, 'GPU and CPU merges give the same image');
  cpu.engine.unload();

  await assert.rejects(engine.generate({ ...JOB, loras: [{ lora: 'lora-99', scale: 1 }] }), (e: EngineError) => e.code === 'bad-argument' && /lora-99/.test(e.message));
  await assert.rejects(engine.generate({ ...JOB, loras: [{ lora: kohya.id, scale: Number.NaN }] }), (e: EngineError) => e.code === 'bad-argument');
  const png = await readFile(join(dir, 'tiny-sd15.safetensors'));
  await assert.rejects(engine.loadLora(new MemorySource('model.safetensors', png)), (e: EngineError) => e.code === 'not-a-lora');
  engine.unload();
  const empty = new Engine(await runtime('webgpu'));
  await assert.rejects(empty.loadLora(new MemorySource('x.safetensors', new Uint8Array(8))), (e: EngineError) => e.code === 'bad-argument' && /model/.test(e.message));
});

test('LoKr, DoRA and LCM-style files in the engine and in inspect-lora: their format, every layer matched, strength 0 gives the base image', async () => {
  const { engine, dir } = await engineFor('webgpu');
  const { model } = await tinyModelDir();
  const files = tinyLoras(model);
  const base = await engine.generate(JOB);
  const want = { lokr: 'lokr', dora: 'dora', 'lcm-lora': 'locon' };
  const infos = [];
  for (const [name, format] of Object.entries(want)) {
    const info = await engine.loadLora(await NodeFileSource.open(join(dir, `loras/${name}.safetensors`)));
    assert.equal(info.format, format, name);
    assert.deepEqual(info.keysUnmatched, [], name);
    assert.equal(info.keysMatched, files.find((f) => f.file === `loras/${name}.safetensors`)!.deltas.size, name);
    infos.push(info);
  }
  const zero = await engine.generate({ ...JOB, loras: infos.map((i) => ({ lora: i.id, scale: 0 })) });
  assert.deepEqual(zero.image.data, base.image.data, 'strength 0 gives the base image');
  const one = await engine.generate({ ...JOB, loras: infos.map((i) => ({ lora: i.id, scale: 0.5 })) });
  assert.equal(one.report.loraKeysMatched, infos.reduce((a, i) => a + i.keysMatched, 0));
  assert.deepEqual(one.report.loraKeysUnmatched, []);
  assert.ok(maxAbsDiff(one.image.data, base.image.data).diff > 20, 'the LoRAs change the image');
  assert.deepEqual((await engine.generate(JOB)).image.data, base.image.data, 'switched off: the base image exactly');
  engine.unload();

  for (const [name, format] of Object.entries(want)) {
    const r = spawnSync(process.execPath, ['--liftoff-only', '--import', 'tsx', '--import', './scripts/wgsl.mjs', 'workers/cli.ts', 'inspect-lora', '--lora', join(dir, `loras/${name}.safetensors`), '--model', join(dir, 'tiny-sd15.safetensors')], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.deepEqual([out.format, out.keysUnmatched, out.keysMatched], [format, [], infos[Object.keys(want).indexOf(name)].keysMatched], name);
  }
});
