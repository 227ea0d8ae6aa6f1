// The guidance losses against values worked out by hand, and their gradients against central finite
// differences in float64; the step-size schedule against its closed form.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { boxGaussian, GUIDANCE_DEFAULTS, guidanceLoss, guidanceStepSize, type GuidanceBox } from '../../workers/layout/guidance.ts';
import { Rng } from '../../workers/engine/random.ts';

const R = 6;
const C = 7;
const cells = R * C;

function box(row: number, col: number, rows: number, cols: number): GuidanceBox {
  const mask = new Uint8Array(cells);
  for (let r = row; r < row + rows; r++) for (let c = col; c < col + cols; c++) mask[r * C + c] = 1;
  return { mask, row, col, rows, cols };
}

test('a concept that fills its box exactly: L_fill is 0, L_ce is 1 minus the top Gaussian weights, L_region the leak', () => {
  const b = box(1, 2, 3, 3);
  const concept = Float64Array.from(b.mask, (m) => m * 0.4);
  const self = new Float64Array(cells * cells).fill(1 / cells);
  const l = guidanceLoss([b], [concept], self, R, C);
  const edge = Math.exp(-0.5 * (1 / 1.5) ** 2); // one cell from the centre, sigma = 3 / 2
  assert.ok(Math.abs(l.ce - (1 - (1 + edge) / 2)) < 1e-12, `L_ce ${l.ce}`); // S = ceil(0.2 * 9) = 2
  assert.ok(Math.abs(l.fill) < 1e-12, `L_fill ${l.fill}`);
  assert.ok(Math.abs(l.region - 1 / cells) < 1e-15);
  assert.ok(Math.abs(l.total - (l.ce + 0.8 / cells)) < 1e-12);
  const g = boxGaussian(b, R, C);
  assert.equal(g[2 * C + 3], 1);
  assert.ok(Math.abs(g[2 * C + 4] - edge) < 1e-15);
});

test('a concept outside its box: L_fill is 1 and L_ce is 1', () => {
  const b = box(0, 0, 2, 2);
  const concept = new Float64Array(cells);
  concept[5 * C + 6] = 1;
  const l = guidanceLoss([b], [concept], undefined, R, C, { ...GUIDANCE_DEFAULTS, region: false });
  assert.equal(l.ce, 1);
  assert.equal(l.fill, 1);
  assert.equal(l.total, 1 + 0.25);
  assert.equal(l.dSelf, undefined);
});

test('the gradients match central finite differences, each term alone and all together', () => {
  const rng = new Rng(4);
  const boxes = [box(0, 0, 3, 4), box(2, 3, 4, 4)];
  const concept = boxes.map(() => Float64Array.from(rng.normal(cells), (v) => Math.abs(v) + 0.1));
  const self = Float64Array.from(rng.normal(cells * cells), (v) => Math.abs(v) / cells);
  for (const sw of [{ ce: true, fill: false, region: false }, { ce: false, fill: true, region: false }, { ce: false, fill: false, region: true }, { ce: true, fill: true, region: true }]) {
    const o = { ...GUIDANCE_DEFAULTS, ...sw };
    const l = guidanceLoss(boxes, concept, self, R, C, o);
    const h = 1e-6;
    for (const [n, q] of [[0, 0], [0, 5], [0, 13], [1, 20], [1, 31], [1, 41], [0, 40]]) {
      const f = (d: number) => {
        const c = concept.map((m) => Float64Array.from(m));
        c[n][q] += d;
        return guidanceLoss(boxes, c, self, R, C, o).total;
      };
      const fd = (f(h) - f(-h)) / (2 * h);
      assert.ok(Math.abs(fd - l.dConcept[n][q]) < 1e-6, `${JSON.stringify(sw)} dL/dconcept[${n}][${q}]: ${l.dConcept[n][q]} vs ${fd}`);
    }
    for (const q of [0, 7, 3 * cells + 10, 20 * cells + 3, 30 * cells + 40]) {
      const f = (d: number) => {
        const s = Float64Array.from(self);
        s[q] += d;
        return guidanceLoss(boxes, concept, s, R, C, o).total;
      };
      const fd = (f(h) - f(-h)) / (2 * h);
      assert.ok(Math.abs(fd - (l.dSelf?.[q] ?? 0)) < 1e-6, `${JSON.stringify(sw)} dL/dself[${q}]: ${l.dSelf?.[q]} vs ${fd}`);
    }
  }
});

test('the step size falls linearly from the scale to half of it', () => {
  assert.equal(guidanceStepSize(20, 0, 11), 20);
  assert.equal(guidanceStepSize(20, 5, 11), 15);
  assert.equal(guidanceStepSize(20, 10, 11), 10);
  assert.equal(guidanceStepSize(8, 0, 1), 8);
});
