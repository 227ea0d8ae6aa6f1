// PyTorch .pth files read without running them: files written by Python's own pickler and zipfile in
// torch.save's layout (tests/fixtures/save_like_torch.py) give back every tensor byte for byte; the
// ED-LoRA and A1111 textual-inversion layouts load as such; a file that names any other global, a
// truncated or legacy file, and damaged pickles get sentences.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { concatBytes, encodeSafetensors, SafetensorsFile } from '../../workers/checkpoint/safetensors.ts';
import { MemorySource } from '../../workers/checkpoint/source.ts';
import { openTensorFile } from '../../workers/checkpoint/tensor-file.ts';
import { torchFileToSafetensors, unpickle } from '../../workers/checkpoint/torch-pickle.ts';
import { makeTinyModel } from '../../workers/engine/test-model.ts';
import { loraFingerprint, openLora } from '../../workers/lora/load.ts';
import { TEST_CONCEPT_TOKENS, tinyLoras, tinyTextualInversion } from '../../workers/lora/test-loras.ts';
import { crossAttentionLayers } from '../../workers/graph/cross-kv.ts';
import { readTextualInversion } from '../../workers/text/embeddings.ts';

const model = makeTinyModel(1234);
const dir = mkdtempSync(join(tmpdir(), 'pth-'));
const edlora = concatBytes(tinyLoras(model).find((l) => l.file === 'loras/edlora.safetensors')!.parts);

function saveLikeTorch(safetensors: Uint8Array, name: string, args: string[] = []): Uint8Array {
  const src = join(dir, `${name}.safetensors`);
  const out = join(dir, `${name}.pth`);
  writeFileSync(src, safetensors);
  const r = spawnSync('python3', ['tests/fixtures/save_like_torch.py', src, out, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return new Uint8Array(readFileSync(out));
}

async function tensors(bytes: Uint8Array) {
  const f = await SafetensorsFile.open(new MemorySource('x', bytes));
  return new Map(await Promise.all(f.keys().map(async (k) => [k, { info: f.info(k)!, bytes: await f.bytes(k) }] as const)));
}

test("a torch.save-layout ED-LoRA gives back every tensor byte for byte, and loads as the same LoRA with the same concepts", async () => {
  const pth = saveLikeTorch(edlora, 'edlora');
  assert.equal(pth[0], 0x50, 'a zip archive');
  const want = await tensors(edlora);
  const got = await tensors(torchFileToSafetensors(pth, 'edlora.pth'));
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  for (const [k, w] of want) {
    const g = got.get(k)!;
    assert.equal(g.info.dtype, w.info.dtype, k);
    assert.deepEqual(g.info.shape, w.info.shape, k);
    assert.deepEqual(g.bytes, w.bytes, k);
  }
  const layers = crossAttentionLayers(model.config.unet).length;
  const a = await openLora(new MemorySource('edlora.safetensors', edlora), model.config, undefined, layers);
  const b = await openLora(new MemorySource('edlora.pth', pth), model.config, undefined, layers);
  assert.equal(b.format, 'edlora');
  assert.equal(loraFingerprint(b), loraFingerprint(a));
  assert.deepEqual(b.unmatched, []);
  assert.deepEqual(b.concepts.map((c) => c.name), TEST_CONCEPT_TOKENS);
  assert.equal(b.concepts[0].layers.length, layers);
  assert.deepEqual(b.concepts.map((c) => c.layers.map((l) => [...l])), a.concepts.map((c) => c.layers.map((l) => [...l])));
  // the older key layout (<module>_lora.down.weight) reads the same
  const old = (await tensors(edlora)).entries();
  const renamed = [...old].map(([k, v]) => ({ name: k.replace('.lora_down.', '_lora.down.').replace('.lora_up.', '_lora.up.'), dtype: v.info.dtype, shape: v.info.shape, data: v.bytes }));
  const c = await openLora(new MemorySource('old.safetensors', concatBytes(encodeSafetensors(renamed))), model.config, undefined, layers);
  assert.equal(loraFingerprint(c), loraFingerprint(a));
});

test("an A1111 textual inversion (.pt, string_to_param.*) reads as the same vectors as its safetensors", async () => {
  const ti = tinyTextualInversion(model);
  const pt = saveLikeTorch(concatBytes(encodeSafetensors([{ name: 'string_to_param.*', dtype: 'F32', shape: [2, 32], data: new Uint8Array(ti.vectors.buffer.slice(0)) }])), 'ti', ['--nest', '1']);
  const e = await readTextualInversion(await openTensorFile(new MemorySource('my-style.pt', pt)), 32);
  assert.equal(e.name, 'my-style');
  assert.equal(e.count, 2);
  assert.deepEqual([...e.layers[0]], [...ti.vectors]);
  const s = await readTextualInversion(await openTensorFile(new MemorySource('tiny-ti.safetensors', concatBytes(ti.parts))), 32);
  assert.equal(s.name, 'tiny-ti');
  assert.deepEqual([...s.layers[0]], [...ti.vectors]);
  await assert.rejects(readTextualInversion(await openTensorFile(new MemorySource('big.safetensors', concatBytes(encodeSafetensors([{ name: 'emb_params', dtype: 'F32', shape: [1, 1024], data: new Uint8Array(4096) }])))), 32), /width 1024 \(SD 2\.x\); this model's is 32/);
});

test('nothing from the file runs: another global, a truncated or legacy file and damaged pickles get sentences', async () => {
  const hostile = saveLikeTorch(edlora, 'hostile', ['--extra-global', 'os.system']);
  assert.throws(() => torchFileToSafetensors(hostile, 'hostile.pth'), (e: Error) => e.name === 'PthFormatError' && /hostile\.pth cannot be read as a PyTorch checkpoint: it asks to run "os\.system" while loading/.test(e.message));
  const pth = saveLikeTorch(edlora, 'cut');
  assert.throws(() => torchFileToSafetensors(pth.subarray(0, pth.length >> 1), 'cut.pth'), /not a zip archive \(no end-of-directory record\); it may be truncated/);
  assert.throws(() => torchFileToSafetensors(Uint8Array.from([0x80, 0x02, 0x8a, 0x0a]), 'old.pth'), /older than 1\.6 \(the legacy format\)/);
  const bad = (bytes: number[], re: RegExp) => assert.throws(() => unpickle(Uint8Array.from(bytes), 'p.pkl'), re);
  bad([0x80, 0x02, 0x7d], /pops from an empty stack|ends in the middle/);
  bad([0x80, 0x02, 0x68, 0x05, 0x2e], /refers to a value it never stored/);
  bad([0x80, 0x02, 0x63, ...new TextEncoder().encode('builtins\neval\n'), 0x2e], /asks to run "builtins\.eval"/);
  bad([0x80, 0x02, 0x58, 0xff, 0xff, 0xff, 0x7f], /truncated or damaged/);
  bad([0x80, 0x02, 0x01], /instruction 0x1/);
});
