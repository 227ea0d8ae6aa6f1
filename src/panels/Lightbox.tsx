// A picture enlarged over the page: a result, the live preview or a gallery picture, as large as the
// window allows. Escape, the close button or a click outside the picture close it.
import { useEffect, useMemo, useRef } from 'react';
import { useStudio } from '../store/studio.ts';
import { ImageCanvas } from './ImageCanvas.tsx';

export function Lightbox() {
  const box = useStudio((s) => s.lightbox);
  const close = () => useStudio.getState().set({ lightbox: undefined });
  const closeButton = useRef<HTMLButtonElement>(null);
  const url = useMemo(() => (box?.src instanceof Blob ? URL.createObjectURL(box.src) : undefined), [box]);
  useEffect(() => () => void (url && URL.revokeObjectURL(url)), [url]);
  useEffect(() => {
    if (!box) return;
    const before = document.activeElement as HTMLElement | null;
    closeButton.current?.focus();
    const onKey = (e: KeyboardEvent) => e.key === 'Escape' && close();
    window.addEventListener('keydown', onKey);
    return () => {
      window.removeEventListener('keydown', onKey);
      before?.focus?.();
    };
  }, [box]);
  if (!box) return null;
  return (
    <div className="lightbox" role="dialog" aria-modal="true" aria-label={box.caption} data-testid="lightbox" onClick={(e) => e.target === e.currentTarget && close()}>
      <figure>
        {url ? <img src={url} alt={box.caption} /> : <ImageCanvas image={box.src as Exclude<typeof box.src, Blob>} label={box.caption} />}
        <figcaption>{box.caption}</figcaption>
      </figure>
      <button ref={closeButton} className="close" data-testid="lightbox-close" aria-label="Close the enlarged picture" onClick={close}>
        ✕
      </button>
    </div>
  );
}
