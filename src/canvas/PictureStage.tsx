// The picture and its layout as one frame: the last result (or the live preview while a job runs)
// fills it, the concept boxes lie over it, and the frame takes the room the page gives it. Before the
// first picture the frame says what to do. Its tools: undo, redo, boxes shown or hidden, enlarge.
import { useEffect, useRef, useState } from 'react';
import { useStore } from 'zustand';
import type { ImageData8 } from '../../workers/api/contract.ts';
import { ImageCanvas } from '../panels/ImageCanvas.tsx';
import type { createSceneStore } from '../store/scene.ts';
import { useStudio } from '../store/studio.ts';
import { LayoutCanvas } from './LayoutCanvas.tsx';

type SceneStore = ReturnType<typeof createSceneStore>;

/** The frame's size in page pixels: as large as the room allows, keeping the picture's shape. */
export function fitFrame(room: { width: number; height: number }, picture: { width: number; height: number }): { width: number; height: number } {
  const scale = Math.min(room.width / picture.width, room.height / picture.height);
  return { width: Math.max(1, Math.floor(picture.width * scale)), height: Math.max(1, Math.floor(picture.height * scale)) };
}

export function PictureStage({ store, image, running, disabled }: { store: SceneStore; image?: ImageData8; running: boolean; disabled: boolean }) {
  const scene = useStore(store, (s) => s.scene);
  const canUndo = useStore(store, (s) => s.past.length > 0);
  const canRedo = useStore(store, (s) => s.future.length > 0);
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
  const enlarge = () => image && useStudio.getState().set({ lightbox: { src: image, caption: running ? 'Live preview' : 'The last picture' } });
  return (
    <div className="stage" ref={wrap}>
      <div className="picture" style={{ width: size.width, height: size.height }} data-testid="picture" onKeyDown={(e) => {
          if (e.key !== 'Enter' || !image) return;
          // handled here: the Enter must not go on to press the lightbox's close button, focused next
          e.preventDefault();
          enlarge();
        }}>
        <ImageCanvas image={image} label={running ? 'Live preview of the picture being made' : 'The last picture'} testId={running ? 'preview' : 'result'} />
        <LayoutCanvas store={store} disabled={disabled} width={size.width} height={size.height} overImage={!!image} showBoxes={showBoxes} />
        {!image && !scene.boxes.length && (
          <p className="empty-frame" data-testid="empty-frame">
            Write a prompt and press <b>Generate</b>.
            <br />
            To place things, drag on this frame to draw a box, then give it a prompt and a LoRA.
          </p>
        )}
      </div>
      <div className="stage-tools" role="toolbar" aria-label="Picture tools" style={{ maxWidth: Math.max(size.width, 280) }}>
        <button className="small" data-testid="undo" disabled={disabled || !canUndo} onClick={() => store.getState().undo()} title="Undo (Ctrl+Z)">
          ↶ Undo
        </button>
        <button className="small" data-testid="redo" disabled={disabled || !canRedo} onClick={() => store.getState().redo()} title="Redo (Ctrl+Shift+Z)">
          ↷ Redo
        </button>
        <label className="inline">
          <input type="checkbox" checked={showBoxes} data-testid="show-boxes" onChange={(e) => setShowBoxes(e.target.checked)} />
          Show boxes
        </label>
        <span className="spacer" />
        <button className="small" data-testid="enlarge" disabled={!image} onClick={enlarge} title="Enlarge (Enter on the picture)">
          ⤢ Enlarge
        </button>
      </div>
    </div>
  );
}
