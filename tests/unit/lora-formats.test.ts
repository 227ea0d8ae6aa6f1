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

/** What a loaded layer adds at multiplier 1, by the float64 reference (DoRA: against the model's weight). */
function moduleDelta(m: LoraModule): Float64Array {
  const { rows, cols } = m.target;
  if (!m.dora) return mergeReference(new Float64Array(rows * cols), rows, cols, [{ ...m.factors, scale: m.alphaScale, hadamard: m.hadamard, kron: m.kron }]);
  const base = (m.target.component === 'unet' ? model.weights.unet : model.weights.textEncoder).get(m.target.weight)!;
  const dora = { ...m.dora, kernel: cols / m.target.dims[1], alpha: m.alphaScale };
  return mergeReference(base, rows, cols, [{ ...m.factors, scale: 1, hadamard: m.hadamard, kron: m.kron, dora }]).map((x, i) => x - base[i]);
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
    'loras/lokr.safetensors': 'lokr',
    'loras/dora.safetensors': 'dora',
    // kohya naming with 3x3 convolution factors: LoCon's layout, as the real LCM-LoRA file is
    'loras/lcm-lora.safetensors': 'locon',
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
const V2 = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v';
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
      t(`${V2}.diff`, [C, C]),
      t('some_random_tensor', [3]),
    ])),
    model.config,
  );
  assert.equal(lora.modules.length, 1);
  assert.deepEqual(lora.unmatched.map((u) => u.key).sort(), [K2, V2, 'lora_unet_no_such_block_to_q', 'some_random_tensor'].sort());
  assert.match(lora.unmatched.find((u) => u.key === K2)!.reason, /LoKr layer without lokr_w2/);
  assert.match(lora.unmatched.find((u) => u.key === V2)!.reason, /full weight difference layers are not supported/);
});

const lokr = loras.find((l) => l.file === 'loras/lokr.safetensors')!;
const moduleOf = (lora: { modules: LoraModule[] }, re: RegExp) => lora.modules.find((m) => re.test(m.key))!;

test('LoKr: alpha / rank where a factor is factorised, 1 where both are whole; every factor form, convolutions too', async () => {
  const lora = await openLora(source(lokr.file, lokr.parts), model.config);
  assert.equal(lora.format, 'lokr');
  const q = moduleOf(lora, /down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q$/);
  const k = moduleOf(lora, /down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k$/);
  const v = moduleOf(lora, /down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v$/);
  const tucker = moduleOf(lora, /down_blocks_0_resnets_0_conv1$/);
  const wholeConv = moduleOf(lora, /up_blocks_0_resnets_0_conv2$/);
  // the file's alpha is 1 and its rank 2 (A1111: dim from lokr_w2_b, else lokr_w1_b)
  assert.deepEqual([q, k, v, tucker, wholeConv].map((m) => m.alphaScale), [1, 0.5, 0.5, 0.5, 1]);
  assert.deepEqual([q, k, v, tucker, wholeConv].map((m) => m.factors.rank), [0, 2, 2, 2, 0]);
  // w1 is [out_a, in_c] with out = a*b, in = c*d: 16 = 4*4; 32x32x3x3 splits as (4, 8) x (4, 8)
  assert.deepEqual([q.kron!.rows, q.kron!.cols, wholeConv.kron!.rows, wholeConv.kron!.cols], [4, 4, 4, 4]);
  assert.equal(wholeConv.factors.up.length, 8 * 8 * 9);
});

test('DoRA: magnitudes per output channel or per input channel (dora_scale), PEFT lora_magnitude_vector per output', async () => {
  const l = loras.find((x) => x.file === 'loras/dora.safetensors')!;
  const lora = await openLora(source(l.file, l.parts), model.config);
  assert.equal(lora.format, 'dora');
  for (const m of lora.modules) {
    assert.ok(m.dora, m.key);
    assert.equal(m.dora.perInput, /attn2|up_blocks_0_resnets_0_conv1/.test(m.key), m.key);
    assert.equal(m.dora.magnitude.length, m.dora.perInput ? m.target.dims[1] : m.target.rows, m.key);
  }

  const Q1 = 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';
  const CONV = 'unet.down_blocks.0.resnets.0.conv1';
  const peft = await openLora(
    source('peft-dora.safetensors', encodeSafetensors([
      t(`${Q1}.lora_A.weight`, [2, C]),
      t(`${Q1}.lora_B.weight`, [C, 2]),
      t(`${Q1}.lora_magnitude_vector`, [C]),
      t(`${CONV}.lora_A.weight`, [2, C, 3, 3]),
      t(`${CONV}.lora_B.weight`, [C, 2, 1, 1]),
      // PEFT's convolution magnitude: [1, out, 1, 1], still per output channel
      t(`${CONV}.lora_magnitude_vector.weight`, [1, C, 1, 1]),
    ])),
    model.config,
  );
  assert.equal(peft.format, 'dora');
  assert.deepEqual(peft.unmatched, []);
  assert.deepEqual(peft.modules.map((m) => [m.target.weight, m.dora?.perInput]), [
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight', false],
    ['down_blocks.0.resnets.0.conv1.weight', false],
  ]);
  // a magnitude that fits neither axis, a LoKr factor that does not divide the weight
  const badMagnitude = await loadError([t(`${Q}.lora_down.weight`, [2, C]), t(`${Q}.lora_up.weight`, [C, 2]), t(`${Q}.dora_scale`, [C + 1, 1])]);
  assert.equal(badMagnitude.code, 'lora-shape-mismatch');
  assert.match(badMagnitude.message, /dora_scale \[17, 1\]/);
  const badKron = await loadError([t(`${Q}.lokr_w1`, [3, 4]), t(`${Q}.lokr_w2`, [5, 4])]);
  assert.equal(badKron.code, 'lora-shape-mismatch');
  assert.match(badKron.message, /lokr_w1 \[3, 4\], lokr_w2 \[5, 4\]/);
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
