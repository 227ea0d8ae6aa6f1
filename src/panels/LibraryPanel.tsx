// The model library: the stored models (and the embedded test model) to choose from, import by file
// or folder, one-click downloads from the Hugging Face hub or any .safetensors address with progress,
// pause and resume, and how much of the browser's storage the library takes.
import { useState } from 'react';
import { DEFAULT_REPO } from '../library/hub.ts';
import { deleteModel, discardDownload, importModelFiles, pauseDownload, runDownload, startDownload, TEST_MODEL_ID, useModel } from '../app/actions.ts';
import { chooseVae } from '../app/picture-actions.ts';
import { useStudio } from '../store/studio.ts';

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

const formatTime = (s: number) => (s < 90 ? `${Math.ceil(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

export function LibraryPanel({ disabled }: { disabled: boolean }) {
  const { library, downloads, usage, modelId, status, offline, applyUpdate, model } = useStudio();
  const [source, setSource] = useState(DEFAULT_REPO);
  const busy = disabled || status.kind === 'loading';
  const current = library.models.find((m) => m.id === modelId);
  return (
    <fieldset className="library" data-testid="library">
      <legend>Models</legend>
      <label>
        Model
        <select value={modelId ?? TEST_MODEL_ID} data-testid="model-select" disabled={busy} onChange={(e) => void useModel(e.target.value)}>
          <option value={TEST_MODEL_ID}>Tiny test model (built in)</option>
          {library.models.map((m) => (
            <option key={m.id} value={m.id}>
              {m.name} ({formatBytes(m.size)})
            </option>
          ))}
        </select>
      </label>
      {current && (
        <button className="small" data-testid="model-delete" disabled={busy} onClick={() => void deleteModel(current)}>
          Delete {current.name} from the library
        </button>
      )}
      <div className="vae" data-testid="vae">
        <label title="The VAE turns latents into pictures (and pictures into latents). Some checkpoints want a separate one, e.g. sd-vae-ft-mse">
          VAE
          <select value={model?.vaeFile ? 'file' : 'own'} data-testid="vae-select" disabled={busy || !model} onChange={(e) => e.target.value === 'own' && void chooseVae(null)}>
            <option value="own">The model's own</option>
            {model?.vaeFile && <option value="file">{model.vaeFile}</option>}
          </select>
        </label>
        <label>
          or choose a VAE file (.safetensors)
          <input type="file" accept=".safetensors" data-testid="vae-file" disabled={busy || !model} onChange={(e) => {
            const f = e.target.files?.[0];
            e.target.value = '';
            if (f) void chooseVae(f);
          }} />
        </label>
        {model && (
          <p className="hint" data-testid="vae-line">
            In use: {model.vaeFile ?? "the model's own VAE"}
            {model.vaeEncoder ? '' : ' (decoder only: no start pictures)'}
            {model.inpainting ? '. Inpainting model.' : ''}
          </p>
        )}
      </div>
      <label>
        Import a checkpoint (.safetensors)
        <input type="file" accept=".safetensors" data-testid="model-file" disabled={busy} onChange={(e) => void importModelFiles([...(e.target.files ?? [])])} />
      </label>
      <label>
        or a diffusers folder
        <input type="file" data-testid="model-folder" disabled={busy} {...{ webkitdirectory: '' }} onChange={(e) => void importModelFiles([...(e.target.files ?? [])])} />
      </label>
      <label>
        Download (Hugging Face repository or .safetensors address)
        <div className="row">
          <input value={source} data-testid="download-source" onChange={(e) => setSource(e.target.value)} spellCheck={false} />
          <button className="small" data-testid="download-start" disabled={!source.trim()} onClick={() => void startDownload(source)}>
            Download
          </button>
        </div>
      </label>
      {downloads.map((d, i) => {
        const total = d.total ?? d.record.plan.files.reduce((a, f) => a + (f.size ?? 0), 0);
        return (
          <div className="download" key={d.record.id} data-testid={`download-${i}`}>
            <strong>{d.record.plan.name}</strong>
            <progress max={total || 1} value={d.done} />
            <span className="hint" data-testid={`download-${i}-progress`}>
              {formatBytes(d.done)}
              {total ? ` of ${formatBytes(total)}` : ''}
              {d.running && d.bytesPerSecond ? `, ${formatBytes(d.bytesPerSecond)}/s` : ''}
              {d.running && d.secondsLeft ? `, ${formatTime(d.secondsLeft)} left` : ''}
              {d.resumedFrom ? ` (resumed at ${formatBytes(d.resumedFrom)})` : ''}
              {!d.running && !d.error ? ' — paused' : ''}
            </span>
            {d.error && (
              <p className="error" role="alert" data-testid={`download-${i}-error`}>
                {d.error}
              </p>
            )}
            <div className="row">
              {d.running ? (
                <button data-testid={`download-${i}-pause`} onClick={() => pauseDownload(d.record.id)}>
                  Pause
                </button>
              ) : (
                <button data-testid={`download-${i}-resume`} onClick={() => void runDownload(d.record)}>
                  Resume
                </button>
              )}
              <button data-testid={`download-${i}-discard`} onClick={() => void discardDownload(d.record)}>
                Discard
              </button>
            </div>
          </div>
        );
      })}
      {usage && (
        <p className="hint" data-testid="storage">
          Storage: {formatBytes(usage.usage)} used, {formatBytes(Math.max(0, usage.quota - usage.usage))} free{usage.persisted ? ' (kept by the browser)' : ' (the browser may clear it under pressure)'}
        </p>
      )}
      {offline === 'ready' && (
        <p className="hint" data-testid="offline">
          Works offline: the studio and its test model are kept by this browser.
        </p>
      )}
      {offline === 'update' && (
        <p className="hint" data-testid="offline">
          A new version of the studio is ready.{' '}
          <button data-testid="offline-update" disabled={status.kind === 'running'} onClick={applyUpdate}>
            Reload into it
          </button>
        </p>
      )}
    </fieldset>
  );
}
