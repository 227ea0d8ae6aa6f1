// The gallery: every image made here, newest first, each with its scene: open the scene again,
// download the PNG (which carries the scene), or delete it.
import { useEffect, useMemo } from 'react';
import { applyScene, downloadPng, removeFromGallery } from '../app/actions.ts';
import type { GalleryItem } from '../gallery/gallery.ts';
import { useStudio } from '../store/studio.ts';

function Thumb({ item }: { item: GalleryItem }) {
  const url = useMemo(() => URL.createObjectURL(item.png), [item.png]);
  useEffect(() => () => URL.revokeObjectURL(url), [url]);
  return <img src={url} alt={item.scene.prompt} width={item.width} height={item.height} />;
}

export function GalleryPanel() {
  const gallery = useStudio((s) => s.gallery);
  if (!gallery.length) return <p className="hint">Images you make are kept here, with their scenes.</p>;
  return (
    <ul className="gallery" data-testid="gallery">
      {gallery.map((g, i) => (
        <li key={g.id} data-testid={`gallery-item-${i}`}>
          <Thumb item={g} />
          <span className="hint" title={g.scene.prompt}>
            {g.report.composition.method} · seed {g.report.seed} · {g.scene.boxes.length} boxes
          </span>
          {g.score && (
            <span className="hint" data-testid={`gallery-score-${i}`} title={`text ${g.score.textSimilarity.toFixed(3)}, image ${g.score.imageSimilarity?.toFixed(3) ?? '–'} (${g.score.scorer})`}>
              CLIPScore {g.score.clipScore.toFixed(1)}
            </span>
          )}
          <div className="row">
            <button className="small" data-testid={`gallery-restore-${i}`} onClick={() => applyScene(g.scene, 'the gallery')}>
              Open scene
            </button>
            <button className="small" data-testid={`gallery-download-${i}`} onClick={() => void downloadPng(g.scene, g.report, g.png)}>
              PNG
            </button>
            <button className="small" data-testid={`gallery-delete-${i}`} aria-label="delete" onClick={() => void removeFromGallery(g)}>
              ✕
            </button>
          </div>
        </li>
      ))}
    </ul>
  );
}
