import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EngineError, NotAModelError, SafetensorsFormatError, SafetensorsTruncatedError, UnsupportedArchitectureError } from '../../workers/api/errors.ts';
import { floatToHalf, halfToFloat, toFloat32, toFloat16Bits } from '../../workers/checkpoint/dtype.ts';
import { ModelCheckpoint } from '../../workers/checkpoint/model.ts';
import { concatBytes, encodeSafetensors, SafetensorsFile } from '../../workers/checkpoint/safetensors.ts';
import { MemorySource } from '../../workers/checkpoint/source.ts';

const f32 = (a: number[]) => new Uint8Array(Float32Array.from(a).buffer);

function fileOf(tensors: Parameters<typeof encodeSafetensors>[0], meta?: Record<string, string>) {
  return concatBytes(encodeSafetensors(tensors, meta));
}

function rawFile(header: object, dataBytes: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  return out;
}

test('safetensors round trip is byte-exact, with metadata, and reads only requested ranges', async () => {
  const a = f32([1, 2, 3, 4, 5, 6]);
  const b = new Uint8Array(new Uint16Array([0x3c00, 0xc000, 0x7bff]).buffer);
  const bytes = fileOf(
    [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: a },
      { name: 'b', dtype: 'F16', shape: [3], data: b },
    ],
    { hello: 'world' },
  );
  const reads: [number, number][] = [];
  const src = new MemorySource('t.safetensors', bytes);
  const spy = { name: src.name, size: src.size, read: (o: number, l: number) => (reads.push([o, l]), src.read(o, l)) };
  const f = await SafetensorsFile.open(spy);
  assert.deepEqual(f.metadata, { hello: 'world' });
  assert.deepEqual(f.info('a')!.shape, [2, 3]);
  assert.deepEqual([...(await f.bytes('b'))], [...b]);
  assert.deepEqual([...(await f.bytes('a'))], [...a]);
  assert.equal((f.header.dataStart - 8) % 8, 0, 'header padded to 8 bytes');
  assert.ok(reads.every(([, l]) => l <= Math.max(a.length, f.header.dataStart)), 'no read larger than one tensor or the header');
  // re-encoding the parsed tensors yields the same file
  const again = fileOf(
    [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: await f.bytes('a') },
      { name: 'b', dtype: 'F16', shape: [3], data: await f.bytes('b') },
    ],
    { hello: 'world' },
  );
  assert.deepEqual(again, bytes);
});

test('f16 and bf16 decode to exact float32 values', () => {
  const half = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00, 0x3555]);
  const want = [1, -2, 65504, 2 ** -24, -0, Infinity, 0.333251953125];
  assert.deepEqual([...toFloat32(new Uint8Array(half.buffer), 'F16')], want);
  const bf = new Uint16Array([0x3f80, 0xc040, 0x4049]);
  assert.deepEqual([...toFloat32(new Uint8Array(bf.buffer), 'BF16')], [1, -3, 3.140625]);
  for (let h = 0; h < 0x7c00; h += 7) assert.equal(floatToHalf(halfToFloat(h)), h, `half ${h} round trip`);
  assert.equal(floatToHalf(1 + 2 ** -11), 0x3c00, 'ties round to even');
  assert.equal(floatToHalf(1 + 3 * 2 ** -11), 0x3c02, 'ties round to even (odd case)');
  assert.deepEqual([...toFloat16Bits(f32([1, -2]), 'F32')], [0x3c00, 0xc000]);
});

test('bad files get named errors that say what is wrong', async () => {
  const open = (bytes: Uint8Array) => SafetensorsFile.open(new MemorySource('x.safetensors', bytes));
  await assert.rejects(open(new Uint8Array(5)), SafetensorsFormatError);
  const hugeLen = new Uint8Array(16);
  new DataView(hugeLen.buffer).setUint32(0, 1e9, true);
  await assert.rejects(open(hugeLen), /header length/);
  const good = fileOf([{ name: 'w', dtype: 'F32', shape: [4], data: f32([1, 2, 3, 4]) }]);
  await assert.rejects(open(good.subarray(0, good.length - 3)), (e: unknown) => e instanceof SafetensorsTruncatedError && /"w" is cut off/.test((e as Error).message));
  await assert.rejects(open(rawFile({ w: { dtype: 'Q4', shape: [1], data_offsets: [0, 4] } }, 4)), /unknown dtype "Q4"/);
  await assert.rejects(open(rawFile({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 4] } }, 4)), /needs 12 bytes but its offsets span 4/);
  await assert.rejects(
    open(rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12)),
    /overlap/,
  );
  const notJson = new Uint8Array(12);
  new DataView(notJson.buffer).setUint32(0, 4, true);
  notJson.set([0x7b, 0x7b, 0x7b, 0x7b], 8);
  await assert.rejects(open(notJson), /not valid JSON/);
});

test('LoRAs, SDXL and SD 2.x files are refused as models with what was found', async () => {
  const one = f32([0]);
  const model = (names: string[]) => new MemorySource('m.safetensors', fileOf(names.map((name) => ({ name, dtype: 'F32' as const, shape: [1], data: one }))));
  await assert.rejects(ModelCheckpoint.open({ single: model(['lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight', 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight']) }), NotAModelError);
  await assert.rejects(ModelCheckpoint.open({ single: model(['conditioner.embedders.0.transformer.x', 'model.diffusion_model.input_blocks.0.0.weight']) }), (e: unknown) => e instanceof UnsupportedArchitectureError && /SDXL/.test((e as Error).message));
  await assert.rejects(ModelCheckpoint.open({ single: model(['cond_stage_model.model.transformer.resblocks.0.x', 'model.diffusion_model.input_blocks.0.0.weight']) }), /Stable Diffusion 2\.x/);
  await assert.rejects(ModelCheckpoint.open({ single: model(['first_stage_model.decoder.conv_in.weight']) }), /a VAE alone/);
  await assert.rejects(ModelCheckpoint.open({ single: model(['foo.bar']) }), (e: unknown) => e instanceof EngineError && /foo\.bar/.test((e as Error).message));
});

test('a header that names a tensor twice is refused, and so is a weight holding NaN or Inf', async () => {
  const json = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}, "x\\"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
  const bytes = new Uint8Array(8 + json.length + 8);
  new DataView(bytes.buffer).setUint32(0, json.length, true);
  bytes.set(new TextEncoder().encode(json), 8);
  await assert.rejects(SafetensorsFile.open(new MemorySource('dup.safetensors', bytes)), (e) => e instanceof SafetensorsFormatError && /describes the tensor "w" twice/.test(e.message));
  // the same names nested in values are not keys of the header
  const nested = rawFile({ __metadata__: { w: 'x', v: 'w' }, w: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, 4);
  assert.deepEqual((await SafetensorsFile.open(new MemorySource('ok.safetensors', nested))).keys(), ['w']);
});
