// LoRA files in every format: layer mapping, factor folding and scales against the float64 deltas
// the generator computed from the raw factors; metadata; and every kind of bad file.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EngineError } from '../../workers/api/errors.ts';
import { concatBytes, encodeSafetensors, type TensorToWrite } from '../../workers/checkpoint/safetensors.ts';
import { MemorySource } from '../../workers/checkpoint/source.ts';
import { makeTinyModel, tinyModelFiles } from '../../workers/engine/test-model.ts';
import { openLora, type LoraModule } from '../../workers/lora/load.ts';
import { tinyLoras } from '../../workers/lora/test-loras.ts';
import { mergeReference } from '../../workers/reference/lora.ts';
import { maxAbsDiff } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const model = makeTinyModel(1234);
const loras = tinyLoras(model);
const source = (name: string, parts: Uint8Array[]) => new MemorySource(name, concatBytes(parts));

function moduleDelta(m: LoraModule): Float64Array {
  const { rows, cols } = m.target;
  const zero = new Float64Array(rows * cols);
  return mergeReference(zero, rows, cols, [{ ...m.factors, scale: m.alphaScale, hadamard: m.hadamard }]);
}

test('every test LoRA format loads and means the deltas its factors define', async () => {
  const formats: Record<string, string> = {};
  for (const l of loras) {
    const lora = await openLora(source(l.file, l.parts), model.config);
    formats[l.file] = lora.format;
    assert.deepEqual(lora.unmatched, [], `${l.file}: unmatched ${JSON.stringify(lora.unmatched.slice(0, 3))}`);
    assert.equal(lora.modules.length, l.deltas.size, l.file);
    for (const m of lora.modules) {
      const want = l.deltas.get(`${m.target.component}:${m.target.weight}`);
      assert.ok(want, `${l.file}: ${m.key} mapped to ${m.target.weight}, which the file did not train`);
      const { diff, scale } = maxAbsDiff(moduleDelta(m), want);
      assert.ok(scale > 0 && diff <= 1e-5 * scale, `${l.file} ${m.key}: delta off by ${diff} (scale ${scale})`);
    }
  }
  assert.deepEqual(formats, {
    'loras/kohya.safetensors': 'kohya',
    'loras/locon.safetensors': 'locon',
    'loras/loha.safetensors': 'loha',
    'loras/peft.safetensors': 'peft',
    'loras/diffusers-old.safetensors': 'diffusers-old',
    'loras/kohya-2.safetensors': 'kohya',
    'loras/kohya-3.safetensors': 'kohya',
    'loras/kohya-4.safetensors': 'kohya',
    'loras/edlora.safetensors': 'edlora',
  });
});

test('kohya metadata: base model, dim, alpha and training tags', async () => {
  const l = loras[0];
  const lora = await openLora(source(l.file, l.parts), model.config);
  assert.equal(lora.metadata.baseModel, 'sd_v1');
  assert.equal(lora.metadata.networkDim, 4);
  assert.equal(lora.metadata.networkAlpha, 2);
  assert.deepEqual(lora.metadata.tags[0], { tag: 'red fox', count: 12 });
  assert.equal(lora.rank, 4);
  // kohya: scale = alpha / rank
  assert.equal(lora.modules[0].alphaScale, 0.5);
});

const f32 = (shape: number[], fill = 0.01): TensorToWrite => {
  const n = shape.reduce((a, b) => a * b, 1);
  return { name: '', dtype: 'F32', shape, data: new Uint8Array(new Float32Array(n).fill(fill).buffer) };
};
const t = (name: string, shape: number[]) => ({ ...f32(shape), name });
const Q = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q';
const K2 = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k';
const C = model.config.unet.blockOutChannels[0];

async function loadError(tensors: TensorToWrite[], name = 'bad.safetensors'): Promise<EngineError> {
  try {
    await openLora(source(name, encodeSafetensors(tensors)), model.config);
  } catch (e) {
    assert.ok(e instanceof EngineError, String(e));
    return e;
  }
  assert.fail('the file was accepted');
}

test('unknown and unsupported layers are reported with a reason, never dropped silently', async () => {
  const lora = await openLora(
    source('mixed.safetensors', encodeSafetensors([
      t(`${Q}.lora_down.weight`, [2, C]),
      t(`${Q}.lora_up.weight`, [C, 2]),
      t('lora_unet_no_such_block_to_q.lora_down.weight', [2, C]),
      t('lora_unet_no_such_block_to_q.lora_up.weight', [C, 2]),
      t(`${K2}.lokr_w1`, [2, 2]),
      t('some_random_tensor', [3]),
    ])),
    model.config,
  );
  assert.equal(lora.modules.length, 1);
  assert.deepEqual(lora.unmatched.map((u) => u.key).sort(), [K2, 'lora_unet_no_such_block_to_q', 'some_random_tensor'].sort());
  assert.match(lora.unmatched.find((u) => u.key === K2)!.reason, /LoKr/);
});

test('a LoRA for another architecture, a wrong shape, a checkpoint and a cut file get named errors', async () => {
  const sdxl = await loadError([t('lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight', [2, 768]), t('lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight', [768, 2])]);
  assert.equal(sdxl.code, 'unsupported-architecture');
  assert.match(sdxl.message, /SDXL LoRA.*lora_te1_/);

  const sd2 = await loadError([t(`${K2}.lora_down.weight`, [2, 1024]), t(`${K2}.lora_up.weight`, [C, 2])]);
  assert.equal(sd2.code, 'unsupported-architecture');
  assert.match(sd2.message, /SD 2\.x LoRA.*1024 input features/);

  const shape = await loadError([t(`${Q}.lora_down.weight`, [2, C]), t(`${Q}.lora_up.weight`, [C + 1, 2])]);
  assert.equal(shape.code, 'lora-shape-mismatch');
  assert.ok(shape.message.includes(Q) && shape.message.includes(`up [${C + 1}, 2], down [2, ${C}]`) && shape.message.includes(`[${C}, ${C}]`), shape.message);

  const ckpt = tinyModelFiles(model).find((f) => f.path === 'tiny-sd15.safetensors')!;
  await assert.rejects(openLora(source('tiny-sd15.safetensors', ckpt.parts), model.config), (e: EngineError) => e.code === 'not-a-lora' && /model checkpoint/.test(e.message));

  const whole = concatBytes(loras[0].parts);
  await assert.rejects(openLora(new MemorySource('cut.safetensors', whole.subarray(0, whole.byteLength - 100)), model.config), (e: EngineError) => e.code === 'safetensors-truncated' || e.code === 'safetensors-format');

  const foreign = await loadError([t('lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight', [2, 8]), t('lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight', [8, 2])]);
  assert.equal(foreign.code, 'unsupported-architecture');
  assert.match(foreign.message, /double_blocks_0_img_attn_qkv/);
});
