// The token table the engine looks prompts up in (CPU memory): fp32 rows byte for byte, fp16 rows
// rounded to nearest-even half precision (checked against a float64 rounding written here), added
// tokens read from their own table, and ids outside both refused by value.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../../workers/engine/random.ts';
import { TokenTable } from '../../workers/text/token-table.ts';

/** x rounded to the nearest float16 (ties to even), in float64: 11 significant bits, subnormals from 2^-24, overflow to infinity. */
function toHalf64(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  e = Math.max(e, -14);
  const ulp = 2 ** (e - 10);
  const q = a / ulp;
  let r = Math.floor(q);
  if (q - r > 0.5 || (q - r === 0.5 && r % 2 === 1)) r++;
  const v = r * ulp;
  return Math.sign(x) * (v >= 65520 ? Infinity : v);
}

const H = 8;
const ROWS = 50;
const values = new Rng(3).normal(ROWS * H);
// a few values at the edges of half precision: ties, subnormals, the largest finite, overflow
values.set([1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -20, -3 * 2 ** -25, 65504, 65519, 65520, -1e6], 7 * H);

test('fp32: the rows of the ids, byte for byte', () => {
  const table = TokenTable.of(values, H, 'fp32');
  assert.equal(table.rows, ROWS);
  assert.equal(table.bytes, ROWS * H * 4);
  const ids = [0, 7, 49, 7, 3];
  const got = table.embed(ids);
  assert.equal(got.length, ids.length * H);
  ids.forEach((id, i) => assert.deepEqual(got.subarray(i * H, (i + 1) * H), values.subarray(id * H, (id + 1) * H)));
});

test('fp16: each value rounded to nearest-even half precision, in half the memory', () => {
  const table = TokenTable.of(values, H, 'fp16');
  assert.equal(table.bytes, ROWS * H * 2);
  const ids = Array.from({ length: ROWS }, (_, i) => ROWS - 1 - i);
  const got = table.embed(ids);
  ids.forEach((id, i) => {
    for (let c = 0; c < H; c++) assert.equal(got[i * H + c], toHalf64(values[id * H + c]), `row ${id}, column ${c}: ${values[id * H + c]}`);
  });
  // the edge row, spelled out
  assert.deepEqual(Array.from(table.embed([7])), [1, 1 + 4 * 2 ** -11, 2 ** -20, -(2 ** -23), 65504, 65504, Infinity, -Infinity]);
});

test('added tokens read their own rows, as they are', () => {
  const added = new Rng(4).normal(3 * H);
  for (const precision of ['fp32', 'fp16'] as const) {
    const table = TokenTable.of(values, H, precision);
    const got = table.embed([ROWS + 2, 1, ROWS], added);
    assert.deepEqual(got.subarray(0, H), added.subarray(2 * H, 3 * H));
    assert.deepEqual(got.subarray(2 * H), added.subarray(0, H));
    assert.deepEqual(got.subarray(H, 2 * H), table.embed([1]));
  }
});

test('an id outside the vocabulary and the added rows is refused by value', () => {
  const table = TokenTable.of(values, H, 'fp32');
  assert.throws(() => table.embed([ROWS]), /token id 50 is outside the vocabulary \(50 rows\)/);
  assert.throws(() => table.embed([-1]), /token id -1/);
  assert.throws(() => table.embed([1.5]), /token id 1.5/);
  assert.throws(() => table.embed([ROWS + 2], new Float32Array(2 * H)), /token id 52 is outside the vocabulary \(50 rows and 2 added\)/);
  assert.throws(() => TokenTable.of(new Float32Array(H + 1), H, 'fp32'), /not a whole number of rows of 8/);
  assert.throws(() => table.embed([ROWS], new Float32Array(H + 3)), /an added table of 11 values is not a whole number of rows of 8/);
  assert.throws(() => TokenTable.of(values, H, 'fp16').embed([ROWS]), /token id 50 is outside the vocabulary \(50 rows\)/);
});
