// The inpainting mask over the picture: a see-through colour where the picture will be repainted.
// In "Paint mask" mode it takes pointer input (mouse, pen, touch: one pointer paints, pinches are
// ignored) and paints with the brush tool; in "Boxes" mode it only shows the mask and lets every
// pointer through to the layout canvas above it, whose boxes and handles stay on top.
import { useEffect, useRef, useState } from 'react';
import { useStore } from 'zustand';
import { brushDown, brushMove, brushUp, IDLE, type BrushState } from './brush-tool.ts';
import type { PixelRect } from '../picture/mask.ts';
import type { PictureStore } from '../store/picture.ts';

/**
 * The mask's colour: see-through magenta in diagonal stripes of two strengths, so it never reads as
 * the picture's own colour and the picture shows through. Stripes are about frame/128 pixels wide
 * (a few screen pixels at any frame size).
 */
const TINT = [255, 0, 170] as const;
const ALPHA = [200, 100] as const;

function paint(ctx: CanvasRenderingContext2D, mask: Uint8Array | undefined, width: number, r: PixelRect) {
  const img = ctx.createImageData(r.width, r.height);
  const stripe = Math.max(1, Math.round(width / 128));
  for (let y = 0; y < r.height; y++) {
    for (let x = 0; x < r.width; x++) {
      const v = mask ? mask[(r.y + y) * width + r.x + x] : 0;
      const o = (y * r.width + x) * 4;
      img.data[o] = TINT[0];
      img.data[o + 1] = TINT[1];
      img.data[o + 2] = TINT[2];
      img.data[o + 3] = v ? Math.max(1, Math.round((ALPHA[Math.floor((r.x + x + r.y + y) / stripe) % 2] * v) / 255)) : 0;
    }
  }
  ctx.putImageData(img, r.x, r.y);
}

/** `shown` false hides the mask (no start picture to apply it to, or "Show mask" off); `active` paints. */
export function MaskCanvas({ store, frame, active, shown, onStroke }: { store: PictureStore; frame: { width: number; height: number }; active: boolean; shown: boolean; onStroke: (mask: Uint8Array) => void }) {
  const ref = useRef<HTMLCanvasElement>(null);
  const mask = useStore(store, (s) => s.mask);
  const version = useStore(store, (s) => s.maskVersion);
  const brush = useStore(store, (s) => s.brush);
  const stroke = useRef<{ state: BrushState; buffer: Uint8Array } | null>(null);
  const [cursor, setCursor] = useState<{ x: number; y: number; k: number } | null>(null);

  // the whole mask again whenever the store's changes (a stroke ended, clear, invert, undo, a scene opened)
  useEffect(() => {
    const c = ref.current;
    if (!c) return;
    c.width = frame.width;
    c.height = frame.height;
    const fits = mask && mask.length === frame.width * frame.height;
    paint(c.getContext('2d')!, fits ? mask : undefined, frame.width, { x: 0, y: 0, width: frame.width, height: frame.height });
  }, [mask, version, frame.width, frame.height]);

  const at = (e: React.PointerEvent) => {
    const r = ref.current!.getBoundingClientRect();
    const k = frame.width / r.width;
    return { x: (e.clientX - r.left) * k, y: (e.clientY - r.top) * k, k };
  };
  const redraw = (dirty: PixelRect | null, buffer: Uint8Array) => dirty && paint(ref.current!.getContext('2d')!, buffer, frame.width, dirty);
  const end = (e: React.PointerEvent) => {
    const s = stroke.current;
    if (!s) return;
    const step = brushUp(s.state, e.pointerId);
    if (!step.done) return;
    stroke.current = null;
    onStroke(s.buffer);
  };

  return (
    <>
      <canvas
        ref={ref}
        className={`mask-canvas${active ? ' painting' : ''}`}
        data-testid="mask-canvas"
        aria-label={active ? 'Mask: drag on the picture to paint where it should change' : 'The painted mask'}
        role="img"
        style={{ visibility: shown || active ? 'visible' : 'hidden' }}
        onPointerDown={(e) => {
          if (!active || stroke.current) return;
          const p = at(e);
          const { mask: current } = store.getState();
          // a stroke paints on a copy: the mask before it stays whole for undo
          const buffer = current && current.length === frame.width * frame.height ? current.slice() : new Uint8Array(frame.width * frame.height);
          const step = brushDown(IDLE, e.pointerId, p, { mask: buffer, ...frame }, brush);
          stroke.current = { state: step.state, buffer };
          e.currentTarget.setPointerCapture(e.pointerId);
          redraw(step.dirty, buffer);
          e.preventDefault();
        }}
        onPointerMove={(e) => {
          if (!active) return;
          const p = at(e);
          if (e.pointerType !== 'touch') setCursor(p);
          const s = stroke.current;
          if (!s) return;
          const step = brushMove(s.state, e.pointerId, p, { mask: s.buffer, ...frame }, brush);
          s.state = step.state;
          redraw(step.dirty, s.buffer);
        }}
        onPointerUp={end}
        onPointerCancel={end}
        onPointerLeave={() => setCursor(null)}
      />
      {active && cursor && (
        <div
          className="brush-cursor"
          aria-hidden="true"
          style={{ left: cursor.x / cursor.k, top: cursor.y / cursor.k, width: brush.size / cursor.k, height: brush.size / cursor.k, borderStyle: brush.erase ? 'dashed' : 'solid' }}
        />
      )}
    </>
  );
}
