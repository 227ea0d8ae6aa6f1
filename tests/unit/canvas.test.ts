// The layout canvas's pure parts: grid geometry by hand, and the scene store's edits, undo/redo and
// saved copy, driven headlessly.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fitToFrame, hitTest, moveRect, rectFromDrag, resizeRect, snap } from '../../src/canvas/geometry.ts';
import { createSceneStore, SCENE_KEY } from '../../src/store/scene.ts';
import { parseScene } from '../../workers/layout/scene.ts';

const frame = { width: 512, height: 384 };

test('drawing, moving and resizing snap to the 8-pixel grid and stay in the frame', () => {
  assert.deepEqual([3, 4, 12, -5].map((v) => snap(v)), [0, 8, 16, -8]);
  assert.deepEqual(rectFromDrag({ x: 203, y: 150 }, { x: 13, y: 37 }, frame), { x: 16, y: 40, width: 184, height: 112 });
  assert.deepEqual(rectFromDrag({ x: 500, y: 370 }, { x: 700, y: 900 }, frame), { x: 504, y: 368, width: 8, height: 16 });
  assert.equal(rectFromDrag({ x: 10, y: 10 }, { x: 12, y: 90 }, frame), null, 'thinner than a cell');
  const r = { x: 16, y: 40, width: 184, height: 112 };
  assert.deepEqual(moveRect(r, 21, -100, frame), { x: 40, y: 0, width: 184, height: 112 });
  assert.deepEqual(moveRect(r, 1000, 1000, frame), { x: 328, y: 272, width: 184, height: 112 });
  assert.deepEqual(resizeRect({ x: 15, y: 41, width: 2, height: 2000 }, frame), { x: 16, y: 40, width: 8, height: 344 });
  assert.equal(hitTest([r, { x: 100, y: 100, width: 50, height: 50 }], { x: 120, y: 120 }), 1, 'the later box is on top');
  assert.equal(hitTest([r], { x: 200, y: 40 }), -1, 'right edge is outside');
  assert.deepEqual(fitToFrame([{ x: 256, y: 128, width: 128, height: 64 }], { width: 512, height: 512 }, { width: 768, height: 512 }), [{ x: 384, y: 128, width: 192, height: 64 }]);
});

function memoryStorage() {
  const m = new Map<string, string>();
  return { getItem: (k: string) => m.get(k) ?? null, setItem: (k: string, v: string) => void m.set(k, v) };
}

test('every edit can be undone and redone; the saved copy follows; a new edit clears redo', () => {
  const storage = memoryStorage();
  const s = createSceneStore(storage, 3);
  const a = s.getState().addBox({ x: 0, y: 0, width: 100, height: 100 })!;
  const b = s.getState().addBox({ x: 200, y: 200, width: 64, height: 64 })!;
  s.getState().updateBox(a, { prompt: 'a red fox', loras: [{ name: 'fox.safetensors', scale: 0.9 }] });
  s.getState().moveBox(b, 9, 0);
  s.getState().reorder(a, 1);
  assert.deepEqual(s.getState().scene.boxes.map((x) => [x.id, x.x, x.width]), [[b, 208, 64], [a, 0, 104]]);
  const saved = () => parseScene(JSON.parse(storage.getItem(SCENE_KEY)!));
  assert.deepEqual(saved(), s.getState().scene);
  for (let i = 0; i < 5; i++) s.getState().undo();
  assert.deepEqual(s.getState().scene.boxes, []);
  assert.deepEqual(saved().boxes, []);
  s.getState().redo();
  s.getState().redo();
  assert.deepEqual(s.getState().scene.boxes.map((x) => x.id), [a, b]);
  s.getState().deleteBox(a);
  assert.deepEqual(s.getState().future, [], 'a new edit clears redo');
  s.getState().duplicateBox(b);
  const boxes = s.getState().scene.boxes;
  assert.deepEqual(boxes.map((x) => [x.name.endsWith('copy'), x.x, x.y]), [[false, 200, 200], [true, 216, 216]]);
  assert.notEqual(boxes[0].id, boxes[1].id);
  // a reload restores the scene
  const again = createSceneStore(storage, 3);
  assert.deepEqual(again.getState().scene, s.getState().scene);
});

test('too many boxes are refused with a message; a corrupt saved scene gives a fresh one', () => {
  const s = createSceneStore(memoryStorage(), 2);
  s.getState().addBox({ x: 0, y: 0, width: 64, height: 64 });
  s.getState().addBox({ x: 64, y: 0, width: 64, height: 64 });
  assert.equal(s.getState().addBox({ x: 128, y: 0, width: 64, height: 64 }), null);
  assert.match(s.getState().refusal!, /at most 2 boxes/);
  assert.equal(s.getState().scene.boxes.length, 2);
  const broken = memoryStorage();
  broken.setItem(SCENE_KEY, '{"version":1,"boxes":[{"x":1e999');
  assert.deepEqual(createSceneStore(broken).getState().scene.boxes, []);
});
