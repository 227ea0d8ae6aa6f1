// The mask brush as a small state machine (idle -> painting -> idle), fed pointer events in image
// pixels. One pointer paints at a time (a second finger is ignored, so pinching does not scribble);
// the first press stamps a dot, each move a segment from the last point. Pure: tested in Node.
import { stampSegment, type PixelRect, type Point } from '../picture/mask.ts';

export type BrushState = { kind: 'idle' } | { kind: 'painting'; pointerId: number; last: Point };

export interface BrushSettings {
  /** Diameter in image pixels. */
  size: number;
  erase: boolean;
}

export interface MaskBuffer {
  mask: Uint8Array;
  width: number;
  height: number;
}

export interface BrushStep {
  state: BrushState;
  /** Pixels the event may have changed (redraw them), or null. */
  dirty: PixelRect | null;
  /** The stroke ended: the mask is ready to keep (saved, undoable). */
  done: boolean;
}

export const IDLE: BrushState = { kind: 'idle' };

export function brushDown(state: BrushState, pointerId: number, p: Point, target: MaskBuffer, brush: BrushSettings): BrushStep {
  if (state.kind === 'painting') return { state, dirty: null, done: false };
  const dirty = stampSegment(target.mask, target.width, target.height, p, p, brush.size / 2, brush.erase ? 0 : 255);
  return { state: { kind: 'painting', pointerId, last: p }, dirty, done: false };
}

export function brushMove(state: BrushState, pointerId: number, p: Point, target: MaskBuffer, brush: BrushSettings): BrushStep {
  if (state.kind !== 'painting' || state.pointerId !== pointerId) return { state, dirty: null, done: false };
  const dirty = stampSegment(target.mask, target.width, target.height, state.last, p, brush.size / 2, brush.erase ? 0 : 255);
  return { state: { ...state, last: p }, dirty, done: false };
}

/** Pointer up or cancelled: the stroke ends (for the pointer that painted it). */
export function brushUp(state: BrushState, pointerId: number): BrushStep {
  if (state.kind !== 'painting' || state.pointerId !== pointerId) return { state, dirty: null, done: false };
  return { state: IDLE, dirty: null, done: true };
}
