// The layout canvas: draws the scene the store holds (the frame and its concept boxes) over the
// picture, and turns pointer (mouse, touch, pen) and keyboard input into store edits. Drag on empty
// space draws a box; drag a box to move it; the handles resize it; Delete, Ctrl+D, Ctrl+Z /
// Ctrl+Shift+Z, arrows and [ ] edit the selection.
import type Konva from 'konva';
import { useEffect, useRef, useState } from 'react';
import { Layer, Rect, Stage, Text, Transformer } from 'react-konva';
import { useStore } from 'zustand';
import { GRID, rectFromDrag, type Rect as Box } from './geometry.ts';
import type { createSceneStore } from '../store/scene.ts';

type SceneStore = ReturnType<typeof createSceneStore>;

/**
 * `width` x `height`: the pixels it takes on the page. `overImage`: a picture lies under it, so the
 * frame is clear and only the boxes are drawn; `showBoxes` false hides them (the picture alone).
 */
export function LayoutCanvas({ store, disabled, width, height, overImage, showBoxes = true }: { store: SceneStore; disabled?: boolean; width: number; height: number; overImage?: boolean; showBoxes?: boolean }) {
  const scene = useStore(store, (s) => s.scene);
  const selected = useStore(store, (s) => s.selected);
  const scale = Math.min(width / scene.width, height / scene.height);
  const [draft, setDraft] = useState<{ from: { x: number; y: number }; to: { x: number; y: number } } | null>(null);
  const transformer = useRef<Konva.Transformer>(null);
  const shapes = useRef(new Map<string, Konva.Rect>());

  useEffect(() => {
    const node = selected ? shapes.current.get(selected) : undefined;
    transformer.current?.nodes(node ? [node] : []);
    transformer.current?.getLayer()?.batchDraw();
  }, [selected, scene]);

  const imagePoint = (stage: Konva.Stage | null) => {
    const p = stage?.getPointerPosition();
    return p ? { x: p.x / scale, y: p.y / scale } : null;
  };

  const onKey = (e: React.KeyboardEvent) => {
    const s = store.getState();
    const mod = e.ctrlKey || e.metaKey;
    if (mod && e.key.toLowerCase() === 'z') s[e.shiftKey ? 'redo' : 'undo']();
    else if (mod && e.key.toLowerCase() === 'y') s.redo();
    else if (!selected) return;
    else if (e.key === 'Delete' || e.key === 'Backspace') s.deleteBox(selected);
    else if (mod && e.key.toLowerCase() === 'd') s.duplicateBox(selected);
    else if (e.key === 'Escape') s.select(null);
    else if (e.key === ']') s.reorder(selected, 1);
    else if (e.key === '[') s.reorder(selected, -1);
    else if (e.key.startsWith('Arrow')) {
      const step = e.shiftKey ? 4 * GRID : GRID;
      const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
      if (d) s.moveBox(selected, d[0], d[1]);
    } else return;
    e.preventDefault();
  };

  const draftRect: Box | null = draft ? rectFromDrag(draft.from, draft.to, scene) : null;
  return (
    <div
      className="layout-canvas"
      tabIndex={0}
      role="application"
      aria-roledescription="layout canvas"
      onKeyDown={disabled ? undefined : onKey}
      data-testid="layout-canvas"
      aria-label={`Layout, ${scene.boxes.length} box${scene.boxes.length === 1 ? '' : 'es'}: drag to draw a concept box; arrows move the selected box, Delete removes it`}
    >
      <Stage
        width={scene.width * scale}
        height={scene.height * scale}
        listening={!disabled}
        onPointerDown={(e) => {
          if (e.target !== e.target.getStage() && e.target.name() !== 'frame') return;
          const p = imagePoint(e.target.getStage());
          store.getState().select(null);
          if (p) setDraft({ from: p, to: p });
        }}
        onPointerMove={(e) => {
          if (!draft) return;
          const p = imagePoint(e.target.getStage());
          if (p) setDraft({ ...draft, to: p });
        }}
        onPointerUp={() => {
          if (draftRect) store.getState().addBox(draftRect);
          setDraft(null);
        }}
      >
        <Layer scaleX={scale} scaleY={scale}>
          <Rect name="frame" x={0} y={0} width={scene.width} height={scene.height} fill={overImage ? 'rgba(0,0,0,0)' : '#1d1f24'} stroke="#555" strokeWidth={1 / scale} />
          {showBoxes && scene.boxes.map((b) => (
            <Rect
              key={b.id}
              ref={(node) => {
                if (node) shapes.current.set(b.id, node);
                else shapes.current.delete(b.id);
              }}
              x={b.x}
              y={b.y}
              width={b.width}
              height={b.height}
              fill={`${b.color}${overImage ? "30" : "44"}`}
              stroke={b.color}
              strokeWidth={(b.id === selected ? 3 : 2) / scale}
              draggable={!disabled}
              onPointerDown={() => store.getState().select(b.id)}
              onDragEnd={(e) => {
                const node = e.target;
                store.getState().moveBox(b.id, node.x() - b.x, node.y() - b.y);
                const moved = store.getState().scene.boxes.find((x) => x.id === b.id)!;
                node.position({ x: moved.x, y: moved.y });
              }}
              onTransformEnd={(e) => {
                const node = e.target;
                const next = { x: node.x(), y: node.y(), width: node.width() * node.scaleX(), height: node.height() * node.scaleY() };
                node.scale({ x: 1, y: 1 });
                store.getState().resizeBox(b.id, next);
                const r = store.getState().scene.boxes.find((x) => x.id === b.id)!;
                node.setAttrs({ x: r.x, y: r.y, width: r.width, height: r.height });
              }}
            />
          ))}
          {showBoxes &&
            scene.boxes.map((b) => (
              <Text key={`${b.id}-label`} x={b.x + 4 / scale} y={b.y + 4 / scale} text={b.name} fontSize={13 / scale} fill="#fff" shadowColor="#000" shadowBlur={3 / scale} shadowOpacity={0.9} listening={false} />
            ))}
          {draftRect && <Rect {...draftRect} stroke="#fff" dash={[4 / scale, 4 / scale]} strokeWidth={1 / scale} listening={false} />}
          <Transformer ref={transformer} rotateEnabled={false} keepRatio={false} ignoreStroke flipEnabled={false} />
        </Layer>
      </Stage>
    </div>
  );
}
