// Pure layout geometry in image pixels: the 8-pixel grid (one latent cell), drawing a box from a
// drag, moving and resizing inside the frame, and hit testing. No React, no Konva: tested in Node.

export const GRID = 8;

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

export const snap = (v: number, grid = GRID) => Math.round(v / grid) * grid;

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

/** The box a drag from a to b draws: corners snapped to the grid and kept in the frame; null for a click (under half a cell) or a box under one cell. */
export function rectFromDrag(a: { x: number; y: number }, b: { x: number; y: number }, frame: { width: number; height: number }): Rect | null {
  if (Math.abs(b.x - a.x) < GRID / 2 || Math.abs(b.y - a.y) < GRID / 2) return null;
  const x0 = clamp(snap(Math.min(a.x, b.x)), 0, frame.width);
  const y0 = clamp(snap(Math.min(a.y, b.y)), 0, frame.height);
  const x1 = clamp(snap(Math.max(a.x, b.x)), 0, frame.width);
  const y1 = clamp(snap(Math.max(a.y, b.y)), 0, frame.height);
  if (x1 - x0 < GRID || y1 - y0 < GRID) return null;
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/** A box moved by (dx, dy), snapped, and kept whole inside the frame. */
export function moveRect(r: Rect, dx: number, dy: number, frame: { width: number; height: number }): Rect {
  return { ...r, x: clamp(snap(r.x + dx), 0, frame.width - r.width), y: clamp(snap(r.y + dy), 0, frame.height - r.height) };
}

/** A resized box from any new corners (a handle drag), snapped, at least one cell, inside the frame. */
export function resizeRect(next: Rect, frame: { width: number; height: number }): Rect {
  const x0 = clamp(snap(next.x), 0, frame.width - GRID);
  const y0 = clamp(snap(next.y), 0, frame.height - GRID);
  const x1 = clamp(snap(next.x + next.width), x0 + GRID, frame.width);
  const y1 = clamp(snap(next.y + next.height), y0 + GRID, frame.height);
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/** The topmost box (last drawn) under the point, or -1. */
export function hitTest(boxes: Rect[], p: { x: number; y: number }): number {
  for (let i = boxes.length - 1; i >= 0; i--) {
    const b = boxes[i];
    if (p.x >= b.x && p.x < b.x + b.width && p.y >= b.y && p.y < b.y + b.height) return i;
  }
  return -1;
}

/** Boxes of a frame that was resized: scaled to the new frame, snapped, kept inside. */
export function fitToFrame(boxes: Rect[], from: { width: number; height: number }, to: { width: number; height: number }): Rect[] {
  return boxes.map((b) =>
    resizeRect({ x: (b.x * to.width) / from.width, y: (b.y * to.height) / from.height, width: (b.width * to.width) / from.width, height: (b.height * to.height) / from.height }, to),
  );
}
