// The tiled VAE decode's arithmetic: tile placement and the feathered blend, against closed forms.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeTiled, tileStarts } from '../../workers/engine/vae-tiles.ts';

test('tiles: equal sizes, the stride of size minus overlap, the last one flush with the end', () => {
  assert.deepEqual(tileStarts(10, 6, 2), [0, 4]);
  assert.deepEqual(tileStarts(16, 8, 2), [0, 6, 8]);
  assert.deepEqual(tileStarts(64, 32, 8), [0, 24, 32]);
  assert.deepEqual(tileStarts(8, 8, 2), [0]);
  assert.deepEqual(tileStarts(5, 8, 2), [0]);
  assert.throws(() => tileStarts(10, 4, 4), /overlap/);
});

test('one tile is the whole decode, value for value', async () => {
  const latent = Float32Array.from({ length: 2 * 4 * 4 }, (_, i) => i);
  const whole = Float32Array.from({ length: 3 * 8 * 8 }, (_, i) => Math.sin(i));
  const out = await decodeTiled(latent, { channels: 2, lh: 4, lw: 4 }, { tile: 4, overlap: 1 }, async (tile) => {
    assert.deepEqual(tile, latent);
    return whole;
  }, 2);
  assert.deepEqual(out, whole);
});

test('four tiles: each gets its own latent cells; overlaps ramp linearly and the weights sum to one', async () => {
  // a 10x10 latent of one channel (value 100y + x), tiles of 6 overlapping by 2 at starts 0 and 4,
  // and a decoder (scale 1) that paints tile k with the constant k + 1 in all three channels
  const latent = Float32Array.from({ length: 100 }, (_, i) => 100 * Math.floor(i / 10) + (i % 10));
  const seen: number[][] = [];
  let k = 0;
  const out = await decodeTiled(latent, { channels: 1, lh: 10, lw: 10 }, { tile: 6, overlap: 2 }, async (tile, th, tw) => {
    assert.equal(th, 6);
    assert.equal(tw, 6);
    seen.push([tile[0], tile[35]]);
    k += 1;
    return new Float32Array(3 * 36).fill(k);
  }, 1);
  // row-major tiles: (0,0), (0,4), (4,0), (4,4): first and last cell of each
  assert.deepEqual(seen, [[0, 505], [4, 509], [400, 905], [404, 909]]);
  const at = (c: number, y: number, x: number) => out[c * 100 + y * 10 + x];
  // outside every overlap: the tile's own value
  assert.equal(at(0, 0, 0), 1);
  assert.equal(at(1, 0, 9), 2);
  assert.equal(at(2, 9, 0), 3);
  assert.equal(at(0, 9, 9), 4);
  // the overlap rows 4 and 5: the upper tile's weight falls 0.75, 0.25 and the lower one's rises 0.25, 0.75
  assert.equal(at(0, 4, 0), 0.75 * 1 + 0.25 * 3);
  assert.equal(at(0, 5, 0), 0.25 * 1 + 0.75 * 3);
  assert.equal(at(0, 0, 4), 0.75 * 1 + 0.25 * 2);
  // where four tiles meet, the product of the two ramps
  assert.equal(at(0, 4, 4), 0.75 * 0.75 * 1 + 0.75 * 0.25 * 2 + 0.25 * 0.75 * 3 + 0.25 * 0.25 * 4);
  assert.equal(at(2, 5, 5), 0.25 * 0.25 * 1 + 0.25 * 0.75 * 2 + 0.75 * 0.25 * 3 + 0.75 * 0.75 * 4);
});
