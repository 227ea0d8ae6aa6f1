// The staged VAE's arithmetic: tile placement, the windows a stage reads, the group statistics and
// the zero padding outside the map, against closed forms.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VaeStage } from '../../workers/graph/vae-stages.ts';
import { decoderStages, encoderStages, stageWindow } from '../../workers/graph/vae-stages.ts';
import { groupStats, readWindow, tileStarts } from '../../workers/engine/vae-tiles.ts';

test('tiles: equal sizes, the stride of size minus overlap, the last one flush with the end', () => {
  assert.deepEqual(tileStarts(10, 6, 2), [0, 4]);
  assert.deepEqual(tileStarts(16, 8, 2), [0, 6, 8]);
  assert.deepEqual(tileStarts(64, 32, 8), [0, 24, 32]);
  assert.deepEqual(tileStarts(8, 8, 2), [0]);
  assert.deepEqual(tileStarts(5, 8, 2), [0]);
  assert.deepEqual(tileStarts(12, 5), [0, 5, 7]);
  assert.throws(() => tileStarts(10, 4, 4), /overlap/);
});

test('windows: a 3x3 convolution reads one pixel around its tile; upsampling writes twice its grid; a stride-2 one reads 2n+1 rows', () => {
  const conv: VaeStage = { kind: 'norm-conv', input: 'a', norm: 'n', conv: 'c', cin: 8, cout: 8, output: 'b' };
  const up: VaeStage = { kind: 'up', input: 'a', conv: 'c', c: 8, output: 'a' };
  const down: VaeStage = { kind: 'down', input: 'a', conv: 'c', c: 8, output: 'a' };
  assert.deepEqual(stageWindow(conv, 5, 4), { from: 4, length: 6, at: 5, outSize: 4 });
  assert.deepEqual(stageWindow(up, 5, 4), { from: 4, length: 6, at: 10, outSize: 8 });
  // output rows 5..8 of a stride-2 convolution read input rows 10..18
  assert.deepEqual(stageWindow(down, 5, 4), { from: 10, length: 9, at: 5, outSize: 4 });
});

test('the stage lists: two norm-conv stages per resnet, the upsamplers and downsamplers between levels', () => {
  const cfg = { blockOutChannels: [8, 16], layersPerBlock: 1, normGroups: 4, latentChannels: 4, scalingFactor: 0.18215 } as Parameters<typeof decoderStages>[0];
  const dec = decoderStages(cfg);
  // 2 levels x 2 resnets x 2 stages, one upsampler, conv_norm_out + conv_out
  assert.equal(dec.length, 2 * 2 * 2 + 1 + 1);
  assert.deepEqual(dec.map((s) => s.kind).slice(3, 6), ['norm-conv', 'up', 'norm-conv']);
  const last = dec[dec.length - 1];
  assert.ok(last.kind === 'norm-conv' && last.cout === 3 && last.output === 'image');
  // the first resnet of the second level changes 16 -> 8 channels: a 1x1 shortcut
  const change = dec[6];
  assert.ok(change.kind === 'norm-conv' && change.skip?.conv === 'decoder.up_blocks.1.resnets.0.conv_shortcut' && change.skip.cin === 16);
  const enc = encoderStages(cfg);
  assert.deepEqual(enc.map((s) => s.kind), ['conv', 'norm-conv', 'norm-conv', 'down', 'norm-conv', 'norm-conv']);
});

test('group statistics over a whole map: float64 sums, the biased variance, per channel', () => {
  // 4 channels of 2 x 2 in 2 groups: group 0 holds 0..7, group 1 holds eight 3s
  const data = Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7, 3, 3, 3, 3, 3, 3, 3, 3]);
  const { mean, invstd } = groupStats({ data, c: 4, h: 2, w: 2 }, 2, 1e-6);
  assert.deepEqual([...mean], [3.5, 3.5, 3, 3]);
  // the variance of 0..7 is (64 - 1) / 12 = 5.25
  assert.ok(Math.abs(invstd[1] - 1 / Math.sqrt(5.25 + 1e-6)) < 1e-6);
  assert.ok(Math.abs(invstd[3] - 1 / Math.sqrt(1e-6)) < 1e-2);
});

test('a window past the map\'s edge reads zeros there', () => {
  // one channel, 3 x 3, values 1..9
  const map = { data: Float32Array.from({ length: 9 }, (_, i) => i + 1), c: 1, h: 3, w: 3 };
  assert.deepEqual([...readWindow(map, -1, 3, -1, 3)], [0, 0, 0, 0, 1, 2, 0, 4, 5]);
  assert.deepEqual([...readWindow(map, 2, 2, 1, 3)], [8, 9, 0, 0, 0, 0]);
});
