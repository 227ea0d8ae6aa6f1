// The gallery: every picture made here, newest first, as a strip; a picture opens enlarged, and each
// keeps its scene: open the scene again, download the PNG (which carries the scene), or delete it.
import { useEffect, useMemo } from 'react';
import { applyScene, downloadPng, removeFromGallery } from '../app/actions.ts';
import { startFromGallery, startPictureProblem } from '../app/picture-actions.ts';
import { isBuiltInScorer } from '../app/scoring.ts';
import { METHOD_WORDS } from '../app/words.ts';
import type { GalleryItem } from '../gallery/gallery.ts';
import { useStudio } from '../store/studio.ts';

function Thumb({ item, index }: { item: GalleryItem; index: number }) {
  const url = useMemo(() => URL.createObjectURL(item.png), [item.png]);
  useEffect(() => () => URL.revokeObjectURL(url), [url]);
  const caption = `${item.scene.prompt || 'Untitled'} (seed ${item.report.seed})`;
  return (
    <button className="thumb-button" data-testid={`gallery-open-${index}`} aria-label={`Enlarge picture ${index + 1}: ${caption}`} onClick={() => useStudio.getState().set({ lightbox: { src: item.png, caption } })}>
      <img src={url} alt="" width={item.width} height={item.height} />
    </button>
  );
}

export function GalleryPanel() {
  const gallery = useStudio((s) => s.gallery);
  const noStart = useStudio((s) => startPictureProblem(s.model));
  if (!gallery.length) return <p className="hint">Pictures you make are kept here, with their scenes.</p>;
  return (
    <ul className="gallery" data-testid="gallery">
      {gallery.map((g, i) => {
        const name = `picture ${i + 1} (seed ${g.report.seed})`;
        return (
          <li key={g.id} data-testid={`gallery-item-${i}`}>
            <Thumb item={g} index={i} />
            <span className="hint caption" title={g.scene.prompt}>
              {METHOD_WORDS[g.report.composition.method]?.name ?? g.report.composition.method} · seed {g.report.seed}
              {g.scene.boxes.length ? ` · ${g.scene.boxes.length} box${g.scene.boxes.length > 1 ? 'es' : ''}` : ''}
            </span>
            {g.score && !isBuiltInScorer(g.score.scorer) && (
              <span className="hint" data-testid={`gallery-score-${i}`} title={`text ${g.score.textSimilarity.toFixed(3)}, image ${g.score.imageSimilarity?.toFixed(3) ?? '–'} (${g.score.scorer})`}>
                CLIPScore {g.score.clipScore.toFixed(1)}
              </span>
            )}
            <div className="gallery-actions">
              <button className="small" data-testid={`gallery-restore-${i}`} aria-label={`Open the scene of ${name}`} onClick={() => applyScene(g.scene, 'the gallery')}>
                Open
              </button>
              <button className="small" data-testid={`gallery-start-${i}`} aria-label={`Use ${name} as the start picture`} title={noStart ?? 'Use as start picture'} disabled={!!noStart} onClick={() => void startFromGallery(g, i)}>
                Start
              </button>
              <button className="small" data-testid={`gallery-download-${i}`} aria-label={`Download ${name} as PNG`} onClick={() => void downloadPng(g.scene, g.report, g.png)}>
                PNG
              </button>
              <button className="small" data-testid={`gallery-delete-${i}`} aria-label={`Delete ${name}`} onClick={() => void removeFromGallery(g)}>
                ✕
              </button>
            </div>
          </li>
        );
      })}
    </ul>
  );
}
