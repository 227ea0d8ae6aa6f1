// Working from a picture, live in the page: the start picture (its original pixels and its fit to the
// frame), the painted mask's bytes with their own undo, the canvas mode and the brush. The settings
// that travel with the scene (strength, blur, hires, the mask as text) live in the scene store's
// `picture`; actions.ts keeps the two in step. Works without React.
import { createStore } from 'zustand/vanilla';
import type { ImageData8 } from '../../workers/api/contract.ts';
import type { FittedPicture } from '../picture/fit.ts';

export type CanvasMode = 'boxes' | 'mask';

export interface StartPicture extends FittedPicture {
  /** Where it came from, in words ("cat.png", "the last picture", "gallery picture 2"). */
  name: string;
  /** Its pixels as chosen, before fitting (fitted again when the frame changes). */
  source: ImageData8;
}

export interface PictureState {
  start?: StartPicture;
  /** One byte per pixel of the frame (255 repaints), or none painted. */
  mask?: Uint8Array;
  maskWidth: number;
  maskHeight: number;
  /** Bumped on every change of the mask's bytes (the overlay redraws). */
  maskVersion: number;
  past: Uint8Array[];
  future: Uint8Array[];
  mode: CanvasMode;
  brush: { size: number; erase: boolean };
  showMask: boolean;
  set(patch: Partial<Pick<PictureState, 'start' | 'mode' | 'brush' | 'showMask'>>): void;
  /** A new mask (a stroke ended, clear, invert, a scene opened): one undo step unless `history` is false. */
  setMask(mask: Uint8Array | undefined, width: number, height: number, history?: boolean): void;
  /** The mask's bytes were changed in place (during a stroke): redraw. */
  touched(): void;
  undo(): void;
  redo(): void;
}

/** Undo keeps at most this many masks, and at most this many bytes of them. */
const HISTORY = 40;
const HISTORY_BYTES = 64 * 2 ** 20;

const trim = (list: Uint8Array[]) => {
  let bytes = 0;
  const out: Uint8Array[] = [];
  for (let i = list.length - 1; i >= 0 && out.length < HISTORY; i--) {
    bytes += list[i].length;
    if (bytes > HISTORY_BYTES) break;
    out.unshift(list[i]);
  }
  return out;
};

/** An all-zero mask is no mask (undo back to before the first stroke). */
const painted = (m: Uint8Array | undefined) => (m && m.some((v) => v) ? m : undefined);

export function createPictureStore() {
  return createStore<PictureState>((set, get) => ({
    maskWidth: 0,
    maskHeight: 0,
    maskVersion: 0,
    past: [],
    future: [],
    mode: 'boxes',
    brush: { size: 16, erase: false },
    showMask: true,
    set: (patch) => set(patch),
    setMask: (mask, width, height, history = true) => {
      const { mask: before, maskWidth, maskHeight, past, maskVersion } = get();
      // nothing painted and nothing to undo: any frame is this one (the store starts without a size)
      const sameFrame = (maskWidth === width && maskHeight === height) || (!before && !past.length);
      const empty = new Uint8Array(width * height);
      set({
        mask,
        maskWidth: width,
        maskHeight: height,
        maskVersion: maskVersion + 1,
        // a frame of another size starts a new history: old masks would not fit it
        past: history && sameFrame ? trim([...past, before ?? empty]) : sameFrame ? past : [],
        future: sameFrame && !history ? get().future : [],
      });
    },
    touched: () => set({ maskVersion: get().maskVersion + 1 }),
    undo: () => {
      const { past, mask, maskWidth, maskHeight, future, maskVersion } = get();
      if (!past.length) return;
      set({ mask: painted(past[past.length - 1]), past: past.slice(0, -1), future: [mask ?? new Uint8Array(maskWidth * maskHeight), ...future], maskVersion: maskVersion + 1 });
    },
    redo: () => {
      const { past, mask, maskWidth, maskHeight, future, maskVersion } = get();
      if (!future.length) return;
      set({ mask: painted(future[0]), future: future.slice(1), past: [...past, mask ?? new Uint8Array(maskWidth * maskHeight)], maskVersion: maskVersion + 1 });
    },
  }));
}

export type PictureStore = ReturnType<typeof createPictureStore>;
