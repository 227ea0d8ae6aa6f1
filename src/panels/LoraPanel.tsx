// The LoRA list: add .safetensors LoRAs (any trainer's format), set each one's strength, switch it
// on or off, see what the file says about itself (base model, rank, training tags) and which of its
// layers did not fit the model.
import type { LoraInfo } from '../../workers/api/contract.ts';
import { useState } from 'react';
import { addEmbeddingFiles, addLoraFiles, addLoraFromUrl, addTag, removeEmbedding, removeLora, setLoraCategory, stopLoraDownload } from '../app/actions.ts';
import { formatBytes } from './LibraryPanel.tsx';
import { LORA_CATEGORIES, type LoraCategory } from '../library/library.ts';
import { useStudio } from '../store/studio.ts';
import { addReferences, removeReference, setScoringWords } from '../app/scoring.ts';

/** A base model the file names that is not SD 1.x: flagged on import (its layers will not match). */
export function foreignBase(base: string | undefined): boolean {
  return !!base && /sdxl|xl|sd3|sd 3|flux|pony|2\.0|2\.1|v2|cascade|pixart|hunyuan|kolors|aura/i.test(base) && !/(^|[^\d])1\.[45]/.test(base);
}

function describe(info: LoraInfo): string {
  const parts = [info.format, `rank ${info.rank}`, `${info.unetLayers} UNet + ${info.textEncoderLayers} text layers`];
  if (info.metadata.baseModel) parts.push(`base ${info.metadata.baseModel}`);
  if (info.concepts?.length) parts.push(`concept ${info.concepts.join(' ')}`);
  return parts.join(' · ');
}

/** Textual-inversion embeddings: prompts use each by its name. */
function Embeddings({ disabled }: { disabled: boolean }) {
  const { embeddings } = useStudio();
  return (
    <div className="embeddings" data-testid="embeddings">
      <label>
        Add embedding (textual inversion: .safetensors, .pt)
        <input
          type="file"
          accept=".safetensors,.pt,.bin"
          multiple
          data-testid="embedding-file"
          disabled={disabled}
          onChange={(e) => {
            void addEmbeddingFiles([...(e.target.files ?? [])]);
            e.target.value = '';
          }}
        />
      </label>
      {embeddings.map((e, i) => (
        <div className="row" key={e.key} data-testid={`embedding-${i}`}>
          <span>
            {e.info ? (
              <>
                write <code>{e.info.name}</code> in a prompt ({e.info.vectors} {e.info.vectors === 1 ? 'token' : 'tokens'})
              </>
            ) : (
              e.record.name
            )}
          </span>
          {e.error && (
            <span className="error" role="alert">
              {e.error}
            </span>
          )}
          <button className="small" aria-label={`Remove embedding ${e.record.name}`} onClick={() => void removeEmbedding(e)}>
            Remove
          </button>
        </div>
      ))}
    </div>
  );
}

/** The built-in test model's own LoRAs (three formats), shipped beside it and cached for offline use. */
const TEST_LORAS = ['kohya.safetensors', 'loha.safetensors', 'locon.safetensors'];

async function addTestLoras() {
  const files = await Promise.all(
    TEST_LORAS.map(async (name) => {
      const res = await fetch(new URL(`test-model/loras/${name}`, document.baseURI));
      return new File([await res.blob()], name);
    }),
  );
  await addLoraFiles(files);
}

export function LoraPanel({ disabled }: { disabled: boolean }) {
  const { loras, updateLora, loraDownload, model } = useStudio();
  const [address, setAddress] = useState('');
  return (
    <fieldset className="loras" data-testid="loras">
      <legend>LoRAs</legend>
      <p className="hint">Kept in this browser's storage; drop .safetensors files anywhere on the page.</p>
      {model?.isTestModel && loras.length === 0 && (
        <p className="hint" data-testid="test-loras">
          The test model comes with LoRAs made for it: {TEST_LORAS.join(', ')}.{' '}
          <button className="small" data-testid="test-loras-add" disabled={disabled} onClick={() => void addTestLoras()}>
            Add them
          </button>
        </p>
      )}
      <label>
        Add LoRA (.safetensors, or a Mix-of-Show ED-LoRA .pth)
        <input
          type="file"
          accept=".safetensors,.pth"
          multiple
          data-testid="lora-file"
          disabled={disabled}
          onChange={(e) => {
            void addLoraFiles([...(e.target.files ?? [])]);
            e.target.value = '';
          }}
        />
      </label>
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          if (address.trim()) void addLoraFromUrl(address);
        }}
      >
        <input type="text" value={address} placeholder="hub repo, hub file, Civitai download link or .safetensors URL" aria-label="LoRA address" data-testid="lora-url" onChange={(e) => setAddress(e.target.value)} />
        <button type="submit" className="small" data-testid="lora-url-add" disabled={disabled || !!loraDownload || !address.trim()}>
          Fetch
        </button>
      </form>
      {loraDownload && (
        <div className="row" data-testid="lora-download">
          <progress max={loraDownload.total ?? 1} value={loraDownload.total ? loraDownload.done : undefined} />
          <span className="hint">
            {loraDownload.name}: {formatBytes(loraDownload.done)}
            {loraDownload.total ? ` of ${formatBytes(loraDownload.total)}` : ''}
          </span>
          <button className="small" onClick={stopLoraDownload} aria-label="stop the LoRA download">
            ✕
          </button>
        </div>
      )}
      {loras.map((l, i) => (
        <div className="lora" key={l.key} data-testid={`lora-${i}`}>
          <div className="row">
            {l.record.thumbnail && <img className="thumb" src={l.record.thumbnail} alt="" width={32} height={32} />}
            <label className="inline">
              <input type="checkbox" checked={l.enabled} disabled={!l.info} data-testid={`lora-enabled-${i}`} onChange={(e) => updateLora(l.key, { enabled: e.target.checked })} />
              {l.file.name}
            </label>
            <button className="small" data-testid={`lora-remove-${i}`} disabled={disabled} onClick={() => void removeLora(l)} aria-label={`remove ${l.file.name}`}>
              ✕
            </button>
          </div>
          {l.error && (
            <p className="error" role="alert" data-testid={`lora-error-${i}`}>
              {l.error}
            </p>
          )}
          {!l.info && !l.error && <p className="hint">{useStudio.getState().model ? 'Loading…' : 'Waiting for a model.'}</p>}
          <label className="inline hint">
            Category
            <select value={l.record.category} data-testid={`lora-category-${i}`} onChange={(e) => void setLoraCategory(l, e.target.value as LoraCategory)}>
              {LORA_CATEGORIES.map((c) => (
                <option key={c}>{c}</option>
              ))}
            </select>
          </label>
          <details className="hint" data-testid={`lora-scoring-${i}`}>
            <summary>
              Scoring: {l.record.trigger ? `"${l.record.trigger}" → ${l.record.classWord || '(removed)'}` : 'no trigger words'} · {l.record.references?.length ?? 0} references
            </summary>
            <label className="inline">
              Trigger words
              <input type="text" value={l.record.trigger ?? ''} placeholder="sks, my character" data-testid={`lora-trigger-${i}`} onChange={(e) => void setScoringWords(l, { trigger: e.target.value })} />
            </label>
            <label className="inline">
              Class word
              <input type="text" value={l.record.classWord ?? ''} placeholder="dog" data-testid={`lora-class-${i}`} onChange={(e) => void setScoringWords(l, { classWord: e.target.value })} />
            </label>
            <label className="inline">
              Reference images
              <input
                type="file"
                accept="image/*"
                multiple
                data-testid={`lora-references-${i}`}
                onChange={(e) => {
                  void addReferences(l, [...(e.target.files ?? [])]);
                  e.target.value = '';
                }}
              />
            </label>
            <div className="row wrap">
              {(l.record.references ?? []).map((r) => (
                <button key={r.id} className="ref" title="remove this reference" onClick={() => void removeReference(l, r.id)}>
                  <img src={r.dataUrl} alt="reference" width={32} height={32} />
                </button>
              ))}
            </div>
          </details>
          {l.info && foreignBase(l.info.metadata.baseModel) && (
            <p className="error" data-testid={`lora-foreign-${i}`}>
              Made for {l.info.metadata.baseModel}, not Stable Diffusion 1.5: expect few layers to fit and a poor result.
            </p>
          )}
          {l.info && (
            <>
              <div className="row">
                <input type="range" min={-2} max={2} step={0.05} value={l.scale} aria-label={`Strength of ${l.file.name}`} onChange={(e) => updateLora(l.key, { scale: Number(e.target.value) })} />
                <input type="number" min={-10} max={10} step={0.05} value={l.scale} className="scale" aria-label={`Strength of ${l.file.name} (number)`} data-testid={`lora-scale-${i}`} onChange={(e) => updateLora(l.key, { scale: Number(e.target.value) })} />
              </div>
              <p className="hint" data-testid={`lora-info-${i}`}>
                {describe(l.info)}
              </p>
              {l.info.metadata.tags.length > 0 && (
                <p className="tags">
                  {l.info.metadata.tags.slice(0, 8).map((t) => (
                    <button key={t.tag} className="tag" title={`${t.count} training images; click to add to the prompt`} onClick={() => addTag(t.tag)}>
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
      <Embeddings disabled={disabled} />
    </fieldset>
  );
}
