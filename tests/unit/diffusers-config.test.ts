// The JSON a diffusers folder carries, from our config: SD 1.5's own values (as its repository's
// files hold them), and the test model's folder with every component model_index.json names.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SD15_CONFIG } from '../../workers/checkpoint/config.ts';
import { MODEL_INDEX_JSON, textEncoderConfigJson, unetConfigJson, vaeConfigJson } from '../../workers/checkpoint/diffusers-config.ts';
import { makeTinyModel, tinyModelFiles } from '../../workers/engine/test-model.ts';

test("SD 1.5's component configs come out as its repository's", () => {
  const u = unetConfigJson(SD15_CONFIG.unet, 64);
  assert.deepEqual(
    [u.attention_head_dim, u.block_out_channels, u.cross_attention_dim, u.layers_per_block, u.norm_num_groups, u.in_channels, u.out_channels, u.sample_size],
    [8, [320, 640, 1280, 1280], 768, 2, 32, 4, 4, 64],
  );
  assert.deepEqual(u.down_block_types, ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D']);
  assert.deepEqual(u.up_block_types, ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']);
  const v = vaeConfigJson(SD15_CONFIG.vae, 512);
  assert.deepEqual([v.block_out_channels, v.latent_channels, v.layers_per_block, v.norm_num_groups, v.scaling_factor], [[128, 256, 512, 512], 4, 2, 32, 0.18215]);
  const t = textEncoderConfigJson(SD15_CONFIG.textEncoder, 49406, 49407);
  assert.deepEqual([t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_hidden_layers, t.vocab_size, t.max_position_embeddings, t.hidden_act], [768, 3072, 12, 12, 49408, 77, 'quick_gelu']);
});

test("the test model's diffusers folder has a config for every component model_index.json names, and the scheduler's", () => {
  const model = makeTinyModel();
  const files = new Map(tinyModelFiles(model).map((f) => [f.path, new TextDecoder().decode(Buffer.concat(f.parts))]));
  const index = JSON.parse(files.get('diffusers/model_index.json')!);
  assert.deepEqual(index, MODEL_INDEX_JSON);
  const unet = JSON.parse(files.get('diffusers/unet/config.json')!);
  assert.deepEqual(unet.block_out_channels, model.config.unet.blockOutChannels);
  assert.equal(JSON.parse(files.get('diffusers/text_encoder/config.json')!).vocab_size, model.config.textEncoder.vocabSize);
  assert.equal(JSON.parse(files.get('diffusers/vae/config.json')!).latent_channels, 4);
  assert.equal(JSON.parse(files.get('diffusers/scheduler/scheduler_config.json')!).steps_offset, 1);
  for (const [name, entry] of Object.entries(index)) {
    if (!Array.isArray(entry) || entry[0] === null) continue;
    const folder = `diffusers/${name}/`;
    assert.ok([...files.keys()].some((p) => p.startsWith(folder)), `${name} has its folder`);
  }
});
