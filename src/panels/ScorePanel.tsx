// Scores in the studio: one line per result (CLIPScore, LoRA-Composer's text and image similarity,
// how each is measured and per box on demand), the scorer in use and the fetch of a real one, and the side-by-side comparison of the
// scene across methods.
import { useState } from 'react';
import type { CompositionMethodId, ScoreReport } from '../../workers/api/contract.ts';
import { ImageCanvas } from './ImageCanvas.tsx';
import { compareMethods, fetchHubScorer, isBuiltInScorer, stopScorerFetch, useBuiltInScorer } from '../app/scoring.ts';
import { HUB_SCORER } from '../library/scorer.ts';
import { compareScores } from '../../workers/eval/stats.ts';
import { useStudio } from '../store/studio.ts';
import { METHOD_WORDS } from '../app/words.ts';
import { formatBytes } from './LibraryPanel.tsx';

/** The methods by their papers' names (the Details drawer, reports). */
export const METHODS: [CompositionMethodId, string][] = [
  ['merge', 'LoRA merge'],
  ['switch', 'LoRA Switch'],
  ['composite', 'LoRA Composite'],
  ['cmlora', 'CMLoRA'],
  ['none', 'Prompt only'],
];


const f3 = (v: number | null) => (v === null ? '–' : v.toFixed(3));

/** A result's scores in plain words, with how each is measured (and our own variants) on demand. */
export function ScoreLine({ score, testId }: { score: ScoreReport; testId: string }) {
  const concepts = [...score.boxes, ...score.loras.filter((l) => l.imageImage !== null)];
  return (
    <div className="hint score" data-testid={testId} title={`scored by ${score.scorer} in ${Math.round(score.ms)} ms`}>
      <span>
        CLIPScore <b data-testid={`${testId}-clipscore`}>{score.clipScore.toFixed(1)}</b> · text <span data-testid={`${testId}-text`}>{f3(score.textSimilarity)}</span> · image{' '}
        <span data-testid={`${testId}-image`}>{f3(score.imageSimilarity)}</span>
      </span>
      <details data-testid={`${testId}-details`}>
        <summary>How these are measured</summary>
        <ul>
          <li>
            CLIPScore {score.clipScore.toFixed(1)}: the picture against “{score.clipScoreText}” (the LoRAs' trigger words, as CMLoRA scores), 100 × cosine. Against the whole prompt:{' '}
            <span data-testid={`${testId}-clipscore-prompt`}>{score.clipScorePrompt.toFixed(1)}</span>.
          </li>
          <li>
            Text {f3(score.textSimilarity)}: each box's crop against “A photo depicts …” and its prompt with class words, 2.5 × cosine (LoRA-Composer's scale, 0 to 2.5). Plain cosines with
            the whole picture: <span data-testid={`${testId}-text-raw`}>{f3(score.textSimilarityRaw)}</span>.
          </li>
          <li>
            Image {f3(score.imageSimilarity)}: cosine with every reference picture, averaged. With each concept's first reference only (LoRA-Composer's script):{' '}
            <span data-testid={`${testId}-image-first`}>{f3(score.imageSimilarityFirst)}</span>.
          </li>
          {concepts.map((c) => (
            <li key={c.name}>
              {c.name}: {c.textImage !== null ? `text ${f3(c.textImage)}` : ''}
              {c.textImage !== null && c.imageImage !== null ? ', ' : ''}
              {c.imageImage !== null ? `image ${f3(c.imageImage)} (${c.references} reference${c.references === 1 ? '' : 's'})` : ''}
            </li>
          ))}
        </ul>
      </details>
    </div>
  );
}

export function ScorerPanel({ disabled }: { disabled: boolean }) {
  const scorer = useStudio((s) => s.scorer);
  const builtIn = isBuiltInScorer(scorer?.name);
  return (
    <details className="hint" data-testid="scorer" open={!!scorer?.error}>
      <summary>
        Scorer: {scorer ? `${scorer.name}${scorer.info ? '' : scorer.error ? ' (not loaded)' : ' (loading…)'}` : 'none'}
      </summary>
      {builtIn && <p>The built-in scorer has random weights: its numbers check the arithmetic, not the picture. Fetch CLIP to judge real images.</p>}
      {scorer?.error && (
        <p className="error" role="alert" data-testid="scorer-error">
          {scorer.error}
        </p>
      )}
      {scorer?.download ? (
        <div className="row">
          <progress max={scorer.download.total ?? 1} value={scorer.download.total ? scorer.download.done : undefined} />
          <span>
            {scorer.download.file}: {formatBytes(scorer.download.done)}
          </span>
          <button className="small" onClick={stopScorerFetch} aria-label="stop fetching the scorer">
            ✕
          </button>
        </div>
      ) : builtIn ? (
        <button className="small" data-testid="scorer-fetch" disabled={disabled} onClick={() => void fetchHubScorer()}>
          Fetch {HUB_SCORER}
        </button>
      ) : (
        <button className="small" data-testid="scorer-built-in" disabled={disabled} onClick={() => void useBuiltInScorer()}>
          Use the built-in scorer
        </button>
      )}
    </details>
  );
}

export function CompareControls({ disabled }: { disabled: boolean }) {
  const [chosen, setChosen] = useState<CompositionMethodId[]>(['merge', 'switch', 'composite', 'cmlora']);
  const toggle = (m: CompositionMethodId, on: boolean) => setChosen((c) => (on ? METHODS.map(([id]) => id).filter((id) => id === m || c.includes(id)) : c.filter((x) => x !== m)));
  return (
    <details className="compare" data-testid="compare">
      <summary>Compare ways of mixing</summary>
      <p className="hint">The same scene with each chosen method, side by side; the first run warms the GPU up so the times compare.</p>
      <div className="row wrap">
        {METHODS.map(([id, label]) => (
          <label className="inline" key={id}>
            <input type="checkbox" checked={chosen.includes(id)} data-testid={`compare-${id}`} onChange={(e) => toggle(id, e.target.checked)} />
            <span title={label}>{METHOD_WORDS[id].name}</span>
          </label>
        ))}
      </div>
      <button data-testid="compare-run" disabled={disabled || chosen.length < 2} onClick={() => void compareMethods(chosen)}>
        Compare {chosen.length}
      </button>
    </details>
  );
}

const VERSUS = { win: 'beats', tie: 'ties with', loss: 'behind' } as const;

export function ComparisonGrid() {
  const comparison = useStudio((s) => s.comparison);
  if (!comparison?.length) return null;
  // CMLoRA's papers compare each method with LoRA Composite (CLIPScore to a tenth, within 0.1 a tie)
  const baseline = comparison.find((c) => c.method === 'composite');
  return (
    <div className="comparison" data-testid="comparison">
      {comparison.map((c, i) => (
        <figure key={c.method} data-testid={`comparison-${i}`}>
          {c.image ? <ImageCanvas image={c.image} label={`${c.method} result`} /> : <div className="image pending" />}
          <figcaption>
            <b title={METHODS.find(([id]) => id === c.method)?.[1]}>{METHOD_WORDS[c.method].name}</b>
            {c.report && (
              <span className="hint" data-testid={`comparison-${i}-evals`} title={`${(c.report.unetMultiplyAdds / 1e9).toFixed(2)} billion multiply-adds in the UNet`}>
                {' '}
                · {c.report.unetEvaluations} UNet runs · {Math.round(c.report.timingsMs.totalMs)} ms
              </span>
            )}
            {c.score && baseline?.score && c !== baseline && (
              <span className="hint" data-testid={`comparison-${i}-versus`}>
                {' '}
                · {VERSUS[compareScores(c.score.clipScore, baseline.score.clipScore)]} {METHOD_WORDS[baseline.method].name}
              </span>
            )}
            {c.score && <ScoreLine score={c.score} testId={`comparison-${i}-score`} />}
            {c.error && <span className="error">{c.error}</span>}
            {!c.image && !c.error && <span className="hint"> waiting…</span>}
          </figcaption>
        </figure>
      ))}
    </div>
  );
}
