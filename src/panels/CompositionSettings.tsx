// How several LoRAs mix, in plain words: the smart mix's (CMLoRA's) caching and grouping, the deep
// cache as a speed option for every method, and the authors' own settings in one click.
import type { CompositionOptions } from '../../workers/api/contract.ts';
import { applyPaperSettings } from '../app/actions.ts';
import { useStudio } from '../store/studio.ts';

export function CompositionSettings() {
  const { job, setJob } = useStudio();
  const c = job.composition ?? { method: 'merge' };
  const set = (patch: Partial<CompositionOptions>) => setJob({ composition: { ...c, ...patch } });
  return (
    <details className="composition-settings" data-testid="composition-settings">
      <summary>Mixing settings</summary>
      {c.method === 'cmlora' && (
        <div className="row">
          <label title="Reuse each LoRA's deep UNet features between refreshes (the paper's code), its prediction (ours), or nothing">
            Reuse work
            <select value={c.cache ?? 'deep'} data-testid="cmlora-cache" onChange={(e) => set({ cache: e.target.value as CompositionOptions['cache'] })}>
              <option value="deep">deep features (the paper)</option>
              <option value="prediction">predictions</option>
              <option value="off">none (slowest)</option>
            </select>
          </label>
          <label title="Which LoRAs lead early: by category, backgrounds last (the paper's code), or by how much fine detail each makes">
            Lead by
            <select value={c.partition ?? 'category'} data-testid="cmlora-partition" onChange={(e) => set({ partition: e.target.value as CompositionOptions['partition'] })}>
              <option value="category">category (the paper)</option>
              <option value="profile">fine detail (measured once per LoRA)</option>
            </select>
          </label>
        </div>
      )}
      <div className="row">
        <label title="Run only the UNet's outer layers on N - 1 of every N steps, reusing the deep ones (DeepCache): faster, slightly different">
          Reuse deep features every
          <input type="number" min={1} max={10} step={1} value={c.deepCacheInterval ?? 1} data-testid="deep-cache-interval" onChange={(e) => set({ deepCacheInterval: Math.max(1, Math.min(10, Math.round(Number(e.target.value) || 1))) })} />
          steps
        </label>
        <button className="small" data-testid="paper-settings" title="The steps, guidance, scheduler, size and LoRA strength the method's authors used" onClick={() => applyPaperSettings()}>
          Paper's settings
        </button>
      </div>
    </details>
  );
}
