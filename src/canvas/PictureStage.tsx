// The picture and its layout as one frame: the last result (or the live preview while a job runs)
// fills it, the concept boxes lie over it, and the frame takes the room the page gives it. Before the
// first picture the frame says what to do. Its tools: undo, redo, boxes shown or hidden, enlarge; and
// the canvas mode: "Boxes" (draw and edit concept boxes) or "Paint mask" (paint where a start picture
// is repainted, with the brush's size, eraser, clear and invert). In mask mode the frame shows the start
// picture being painted on, and undo and redo step through the strokes.
import { useEffect, useRef, useState } from 'react';
import { useStore } from 'zustand';
import type { ImageData8 } from '../../workers/api/contract.ts';
import { ImageCanvas } from '../panels/ImageCanvas.tsx';
import type { createSceneStore } from '../store/scene.ts';
import { useStudio } from '../store/studio.ts';
import { LayoutCanvas } from './LayoutCanvas.tsx';
import { MaskCanvas } from './MaskCanvas.tsx';
import { clearMask, commitMask, invertCurrentMask, pictureStore, redoMask, startPictureProblem, undoMask } from '../app/picture-actions.ts';

type SceneStore = ReturnType<typeof createSceneStore>;

/** The frame's size in page pixels: as large as the room allows, keeping the picture's shape. */
export function fitFrame(room: { width: number; height: number }, picture: { width: number; height: number }): { width: number; height: number } {
  const scale = Math.min(room.width / picture.width, room.height / picture.height);
  return { width: Math.max(1, Math.floor(picture.width * scale)), height: Math.max(1, Math.floor(picture.height * scale)) };
}

export function PictureStage({ store, image, running, disabled }: { store: SceneStore; image?: ImageData8; running: boolean; disabled: boolean }) {
  const scene = useStore(store, (s) => s.scene);
  const picture = useStore(pictureStore);
  const model = useStudio((s) => s.model);
  const painting = picture.mode === 'mask';
  const layoutUndo = useStore(store, (s) => s.past.length > 0);
  const layoutRedo = useStore(store, (s) => s.future.length > 0);
  const canUndo = painting ? picture.past.length > 0 : layoutUndo;
  const canRedo = painting ? picture.future.length > 0 : layoutRedo;
  const paintProblem = startPictureProblem(model) ?? (picture.start ? undefined : 'Choose a start picture first (Start picture, beside the picture), then paint on it where it should change.');
  // the start picture while painting on it (or while there is no result yet); the result otherwise
  const showStart = !running && !!picture.start && (painting || !image);
  const shown = showStart ? picture.start!.image : image;
  const maxBrush = Math.max(8, Math.round(Math.min(scene.width, scene.height) / 2));
  const wrap = useRef<HTMLDivElement>(null);
  const [room, setRoom] = useState({ width: 384, height: 384 });
  const [showBoxes, setShowBoxes] = useState(true);
  useEffect(() => {
    const el = wrap.current;
    if (!el) return;
    const measure = () => {
      const top = el.getBoundingClientRect().top + window.scrollY;
      // the frame fits the column's width and the window's height below the header (room for the
      // tools); in one column it leaves room for the prompt and Generate below it
      const oneColumn = window.matchMedia('(max-width: 900px)').matches;
      setRoom({ width: el.clientWidth, height: Math.max(240, oneColumn ? window.innerHeight * 0.55 : window.innerHeight - Math.min(top, 120) - 64) });
    };
    measure();
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    window.addEventListener('resize', measure);
    return () => {
      ro.disconnect();
      window.removeEventListener('resize', measure);
    };
  }, []);
  const size = fitFrame(room, scene);
  const enlarge = () => shown && useStudio.getState().set({ lightbox: { src: shown, caption: running ? 'Live preview' : showStart ? 'The start picture' : 'The last picture' } });
  return (
    <div className="stage" ref={wrap}>
      <div className={`picture${painting ? ' mask-mode' : ''}`} style={{ width: size.width, height: size.height }} data-testid="picture" onKeyDown={(e) => {
          if (e.key !== 'Enter' || !shown) return;
          // handled here: the Enter must not go on to press the lightbox's close button, focused next
          e.preventDefault();
          enlarge();
        }}>
        <ImageCanvas image={shown} label={running ? 'Live preview of the picture being made' : showStart ? 'The start picture' : 'The last picture'} testId={running ? 'preview' : showStart ? 'start-picture' : 'result'} />
        <MaskCanvas store={pictureStore} frame={scene} active={painting && !disabled} shown={!!picture.start && picture.showMask} onStroke={(mask) => void commitMask(mask)} />
        <LayoutCanvas store={store} disabled={disabled || painting} width={size.width} height={size.height} overImage={!!shown} showBoxes={showBoxes} />
        {!shown && !scene.boxes.length && (
          <p className="empty-frame" data-testid="empty-frame">
            Write a prompt and press <b>Generate</b>.
            <br />
            To place things, drag on this frame to draw a box, then give it a prompt and a LoRA.
          </p>
        )}
      </div>
      <div className="stage-tools" role="toolbar" aria-label="Picture tools" style={{ maxWidth: Math.max(size.width, 280) }}>
        <div className="mode-switch" role="radiogroup" aria-label="What a drag on the picture does">
          <label className="inline" title="Drag to draw concept boxes; drag a box to move it">
            <input type="radio" name="canvas-mode" data-testid="mode-boxes" checked={!painting} disabled={disabled} onChange={() => pictureStore.getState().set({ mode: 'boxes' })} />
            Boxes
          </label>
          <label className="inline" title={paintProblem ?? 'Drag to paint where the start picture should change'}>
            <input type="radio" name="canvas-mode" data-testid="mode-mask" checked={painting} disabled={disabled || !!paintProblem} onChange={() => pictureStore.getState().set({ mode: 'mask' })} />
            Paint mask
          </label>
        </div>
        <button className="small" data-testid="undo" disabled={disabled || !canUndo} onClick={() => (painting ? undoMask() : store.getState().undo())} title={painting ? 'Undo the last stroke' : 'Undo (Ctrl+Z)'}>
          ↶ Undo
        </button>
        <button className="small" data-testid="redo" disabled={disabled || !canRedo} onClick={() => (painting ? redoMask() : store.getState().redo())} title={painting ? 'Redo the stroke' : 'Redo (Ctrl+Shift+Z)'}>
          ↷ Redo
        </button>
        <label className="inline">
          <input type="checkbox" checked={showBoxes} data-testid="show-boxes" onChange={(e) => setShowBoxes(e.target.checked)} />
          Show boxes
        </label>
        {picture.mask && picture.start && (
          <label className="inline">
            <input type="checkbox" checked={picture.showMask} data-testid="show-mask" onChange={(e) => pictureStore.getState().set({ showMask: e.target.checked })} />
            Show mask
          </label>
        )}
        <span className="spacer" />
        <button className="small" data-testid="enlarge" disabled={!shown} onClick={enlarge} title="Enlarge (Enter on the picture)">
          ⤢ Enlarge
        </button>
      </div>
      {painting && (
        <div className="stage-tools mask-tools" role="toolbar" aria-label="Mask brush" data-testid="mask-tools" style={{ maxWidth: Math.max(size.width, 280) }}>
          <label className="inline brush-size" title="The brush's width, in the picture's pixels">
            Brush
            <input type="range" min={1} max={maxBrush} value={Math.min(picture.brush.size, maxBrush)} data-testid="brush-size" aria-label="Brush size" onChange={(e) => pictureStore.getState().set({ brush: { ...picture.brush, size: Number(e.target.value) } })} />
            <output data-testid="brush-size-value">{Math.min(picture.brush.size, maxBrush)} px</output>
          </label>
          <label className="inline" title="Paint away the mask where you drag">
            <input type="checkbox" checked={picture.brush.erase} data-testid="brush-erase" onChange={(e) => pictureStore.getState().set({ brush: { ...picture.brush, erase: e.target.checked } })} />
            Eraser
          </label>
          <button className="small" data-testid="mask-clear" disabled={!picture.mask} onClick={clearMask} title="Remove the whole mask">
            Clear
          </button>
          <button className="small" data-testid="mask-invert" onClick={invertCurrentMask} title="Repaint what is unpainted now, and keep what is painted">
            Invert
          </button>
          <span className="hint">Painting on the start picture: the coloured part is repainted.</span>
        </div>
      )}
    </div>
  );
}
