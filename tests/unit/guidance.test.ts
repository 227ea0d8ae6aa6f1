// The guidance losses against values worked out by hand from LoRA-Composer's code
// (multi_lora_sample.py ~33-153: the 3x3 smoothing, the box Gaussian, top-k, the fill L1 over the whole
// grid, the region term), their gradients against central finite differences in float64, the step
// size against its closed form, and the code's refinement schedule step by step.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { boxGaussian, GUIDANCE_LOSS_DEFAULTS, guidanceLoss, guidanceStepSize, RefineSchedule, smooth3x3, smooth3x3Adjoint, smoothingKernel, topCount, type GuidanceBox } from '../../workers/layout/guidance.ts';
import { Rng } from '../../workers/engine/random.ts';

const R = 4;
const C = 5;
const cells = R * C;

function box(row: number, col: number, rows: number, cols: number): GuidanceBox {
  const mask = new Uint8Array(cells);
  for (let r = row; r < row + rows; r++) for (let c = col; c < col + cols; c++) mask[r * C + c] = 1;
  return { mask, extent: { row, col, rows, cols } };
}

const close = (a: number, b: number, tol = 1e-12) => assert.ok(Math.abs(a - b) <= tol, `${a} vs ${b}`);

test("the code's smoothing kernel: exp(-((i - 1) / (2 sigma))^2) per axis, summed to 1; reflect padding by hand", () => {
  const e = Math.exp(-1);
  const S = (1 + 2 * e) ** 2;
  const k = smoothingKernel(0.5);
  close(k[4], 1 / S);
  close(k[0], (e * e) / S);
  close(k[1], e / S);
  // a unit impulse in the corner of a 3 x 3 grid: reflect padding mirrors it (without repeating the edge)
  const x = new Float64Array(9);
  x[0] = 1;
  const y = smooth3x3(x, 3, 3);
  close(y[0], 1 / S); // only the centre tap reads (0, 0)
  close(y[1], e / S); // (0, 1): its left tap
  close(y[4], (e * e) / S); // (1, 1): its top-left tap
  close(y[2], 0);
  // and its adjoint: <S x, y> = <x, S^T y>
  const rng = new Rng(3);
  const a = Float64Array.from(rng.normal(20));
  const b = Float64Array.from(rng.normal(20));
  const sa = smooth3x3(a, 4, 5);
  const tb = smooth3x3Adjoint(b, 4, 5);
  close(sa.reduce((s, v, i) => s + v * b[i], 0), a.reduce((s, v, i) => s + v * tb[i], 0), 1e-12);
});

test("the box Gaussian: exp(-(x^2 + y^2) / 2) on linspace(-1, 1), divided by its max", () => {
  const g = boxGaussian({ row: 1, col: 1, rows: 2, cols: 3 }, R, C);
  // x in {-1, 1} (2 rows), y in {-1, 0, 1}: the middle column peaks at exp(-1/2), the corners exp(-1)
  close(g[1 * C + 2], 1);
  close(g[2 * C + 2], 1);
  close(g[1 * C + 1], Math.exp(-0.5));
  close(g[2 * C + 3], Math.exp(-0.5));
  close(g[0], 0);
});

test('a flat map of c: ce = 8 (1 - c), fill = 2 (1 - c) (box columns / grid columns + box rows / grid rows), region = 10 * the top self value', () => {
  // box rows 1..2, columns 1..3: 6 cells, k = floor(0.2 * 6) = 1
  const b = box(1, 1, 2, 3);
  const c = 0.25;
  const map = new Float64Array(cells).fill(c);
  const self = new Float64Array(cells * cells).fill(1 / cells);
  const l = guidanceLoss([b], [[map]], self, R, C);
  // a flat map stays flat under the smoothing; the top value under mask and Gaussian is c (Gaussian 1)
  close(l.ce, 8 * (1 - c));
  close(l.fill, 2 * (3 * (1 - c)) / C + 2 * (2 * (1 - c)) / R);
  close(l.region, 10 / cells);
  close(l.total, l.ce + l.fill + l.region);
  // two tokens: two ce and two fill terms
  const two = guidanceLoss([b], [[map, map]], self, R, C);
  close(two.ce, 2 * l.ce);
  close(two.fill, 2 * l.fill);
  close(two.region, l.region);
  // a switch turns its term off
  const noFill = guidanceLoss([b], [[map]], self, R, C, { ...GUIDANCE_LOSS_DEFAULTS, fill: false, region: false });
  close(noFill.total, l.ce);
  assert.equal(noFill.dSelf, undefined);
  // a box with no cells on this grid is skipped
  const empty = guidanceLoss([{ mask: new Uint8Array(cells), extent: null }], [[map]], self, R, C);
  close(empty.total, 0);
  assert.equal(topCount(0.2, 6), 1);
  assert.equal(topCount(0.2, 4), 1, 'the code would take 0 and get NaN; we keep one');
  assert.equal(topCount(0.2, 64), 12);
});

test('the gradients match central finite differences, each term alone and all together', () => {
  const rng = new Rng(4);
  const boxes = [box(0, 0, 2, 3), box(1, 2, 3, 3)];
  const tokens = boxes.map(() => [0, 1].map(() => Float64Array.from(rng.normal(cells), (v) => Math.abs(v) * 0.1 + 0.01)));
  const self = Float64Array.from(rng.normal(cells * cells), (v) => Math.abs(v) / cells);
  for (const sw of [{ ce: true, fill: false, region: false }, { ce: false, fill: true, region: false }, { ce: false, fill: false, region: true }, { ce: true, fill: true, region: true }]) {
    const o = { ...GUIDANCE_LOSS_DEFAULTS, ...sw };
    const l = guidanceLoss(boxes, tokens, self, R, C, o);
    const h = 1e-7;
    for (const [n, t, q] of [[0, 0, 0], [0, 1, 5], [0, 0, 13], [1, 1, 12], [1, 0, 18], [1, 1, 19], [0, 1, 7]]) {
      const f = (d: number) => {
        const tk = tokens.map((b) => b.map((m) => Float64Array.from(m)));
        tk[n][t][q] += d;
        return guidanceLoss(boxes, tk, self, R, C, o).total;
      };
      const fd = (f(h) - f(-h)) / (2 * h);
      assert.ok(Math.abs(fd - l.dTokens[n][t][q]) < 1e-6, `${JSON.stringify(sw)} dL/dtoken[${n}][${t}][${q}]: ${l.dTokens[n][t][q]} vs ${fd}`);
    }
    for (const q of [0, 7, 1 * cells + 10, 6 * cells + 3, 12 * cells + 19]) {
      const f = (d: number) => {
        const s = Float64Array.from(self);
        s[q] += d;
        return guidanceLoss(boxes, tokens, s, R, C, o).total;
      };
      const fd = (f(h) - f(-h)) / (2 * h);
      assert.ok(Math.abs(fd - (l.dSelf?.[q] ?? 0)) < 1e-6, `${JSON.stringify(sw)} dL/dself[${q}]: ${l.dSelf?.[q]} vs ${fd}`);
    }
  }
});

test("the step size is the code's 20 sqrt(linspace(1, 0.5))", () => {
  close(guidanceStepSize(20, 0, 11), 20);
  close(guidanceStepSize(20, 5, 11), 20 * Math.sqrt(0.75));
  close(guidanceStepSize(20, 10, 11), 20 * Math.sqrt(0.5));
  close(guidanceStepSize(20, 49, 50), 20 * Math.sqrt(0.5));
  close(guidanceStepSize(8, 0, 1), 8);
});

test("the refinement schedule: no stop before step 5, the rising step still updated, L kept even when it rose early, cap at lastStep", () => {
  const s = new RefineSchedule({ earlyStop: true, lastStep: 25, guided: 50 });
  // step:   0   1   2    3  4  5    6
  const losses = [10, 9, 9.5, 8, 7, 7.5, 6];
  const seen: [number, boolean, boolean][] = [];
  for (const [i, l] of losses.entries()) {
    const active = s.active(i);
    seen.push([i, active, active ? s.record(i, l) : false]);
  }
  // step 2 rose but i < 5 (and 9.5 becomes the bar); step 5 rose above 7 and is the last, still updated
  assert.deepEqual(seen, [[0, true, true], [1, true, true], [2, true, true], [3, true, true], [4, true, true], [5, true, true], [6, false, false]]);
  assert.equal(s.stoppedAt, 5);
  // falling all the way: the cap at step 25 (guided, then off)
  const cap = new RefineSchedule({ earlyStop: true, lastStep: 25, guided: 50 });
  for (let i = 0; i <= 25; i++) {
    assert.ok(cap.active(i), `step ${i}`);
    cap.record(i, 100 - i);
  }
  assert.equal(cap.active(26), false);
  assert.equal(cap.stoppedAt, 25);
  // early stop off: a rise does not stop it; the share (ours) ends it first; L = 0 is not an update
  const off = new RefineSchedule({ earlyStop: false, lastStep: 25, guided: 3 });
  off.record(0, 1);
  off.record(1, 5);
  assert.ok(off.active(2));
  assert.equal(off.record(2, 0), false);
  assert.equal(off.active(3), false);
  assert.equal(off.stoppedAt, null);
});
