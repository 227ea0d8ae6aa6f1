// The LoRA list: add .safetensors LoRAs (any trainer's format), set each one's strength, switch it
// on or off, see what the file says about itself (base model, rank, training tags) and which of its
// layers did not fit the model.
import type { LoraInfo } from '../../workers/api/contract.ts';
import { useStudio, type LoraEntry } from '../store/studio.ts';

export interface LoraActions {
  add(files: File[]): void;
  remove(entry: LoraEntry): void;
  addTag(tag: string): void;
}

function describe(info: LoraInfo): string {
  const parts = [info.format, `rank ${info.rank}`, `${info.unetLayers} UNet + ${info.textEncoderLayers} text layers`];
  if (info.metadata.baseModel) parts.push(`base ${info.metadata.baseModel}`);
  return parts.join(' · ');
}

export function LoraPanel({ actions, disabled }: { actions: LoraActions; disabled: boolean }) {
  const { loras, updateLora } = useStudio();
  return (
    <fieldset className="loras" data-testid="loras">
      <legend>LoRAs</legend>
      <label>
        Add LoRA (.safetensors)
        <input
          type="file"
          accept=".safetensors"
          multiple
          data-testid="lora-file"
          disabled={disabled}
          onChange={(e) => {
            actions.add([...(e.target.files ?? [])]);
            e.target.value = '';
          }}
        />
      </label>
      {loras.map((l, i) => (
        <div className="lora" key={l.key} data-testid={`lora-${i}`}>
          <div className="row">
            <label className="inline">
              <input type="checkbox" checked={l.enabled} disabled={!l.info} data-testid={`lora-enabled-${i}`} onChange={(e) => updateLora(l.key, { enabled: e.target.checked })} />
              {l.file.name}
            </label>
            <button className="small" data-testid={`lora-remove-${i}`} disabled={disabled} onClick={() => actions.remove(l)} aria-label={`remove ${l.file.name}`}>
              ✕
            </button>
          </div>
          {l.error && (
            <p className="error" role="alert" data-testid={`lora-error-${i}`}>
              {l.error}
            </p>
          )}
          {!l.info && !l.error && <p className="hint">Loading…</p>}
          {l.info && (
            <>
              <div className="row">
                <input type="range" min={-2} max={2} step={0.05} value={l.scale} aria-label="strength" onChange={(e) => updateLora(l.key, { scale: Number(e.target.value) })} />
                <input type="number" min={-10} max={10} step={0.05} value={l.scale} className="scale" data-testid={`lora-scale-${i}`} onChange={(e) => updateLora(l.key, { scale: Number(e.target.value) })} />
              </div>
              <p className="hint" data-testid={`lora-info-${i}`}>
                {describe(l.info)}
              </p>
              {l.info.metadata.tags.length > 0 && (
                <p className="tags">
                  {l.info.metadata.tags.slice(0, 8).map((t) => (
                    <button key={t.tag} className="tag" title={`${t.count} training images; click to add to the prompt`} onClick={() => actions.addTag(t.tag)}>
                      {t.tag}
                    </button>
                  ))}
                </p>
              )}
              {l.info.keysUnmatched.length > 0 && (
                <details className="hint" data-testid={`lora-unmatched-${i}`}>
                  <summary>{l.info.keysUnmatched.length} layers not applied</summary>
                  <ul>
                    {l.info.keysUnmatched.slice(0, 50).map((k) => (
                      <li key={k.key}>
                        {k.key}: {k.reason}
                      </li>
                    ))}
                  </ul>
                </details>
              )}
            </>
          )}
        </div>
      ))}
    </fieldset>
  );
}
