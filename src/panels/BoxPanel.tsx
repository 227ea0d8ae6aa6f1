// The layout's side panel: the boxes in drawing order (select, reorder, delete: the canvas's actions
// for keyboard users too), the selected box's name, local prompt, LoRAs and colour, and the
// LoRA-Composer switches.
import { useStore } from 'zustand';
import type { createSceneStore } from '../store/scene.ts';
import { useStudio } from '../store/studio.ts';
import { GUIDANCE_MAX_SCALE } from '../../workers/layout/guidance.ts';
import { GUIDANCE_SCENE_DEFAULTS } from '../../workers/layout/scene.ts';

type SceneStore = ReturnType<typeof createSceneStore>;

export function BoxPanel({ store, disabled }: { store: SceneStore; disabled: boolean }) {
  const scene = useStore(store, (s) => s.scene);
  const guidance = scene.guidance ?? GUIDANCE_SCENE_DEFAULTS;
  const selected = useStore(store, (s) => s.selected);
  const refusal = useStore(store, (s) => s.refusal);
  const loaded = useStudio((s) => s.loras).filter((l) => l.info);
  const s = store.getState();
  const box = scene.boxes.find((b) => b.id === selected);
  return (
    <fieldset className="boxes" data-testid="boxes" disabled={disabled}>
      <p className="hint">Drag on the picture to draw a box. Delete removes the selected box, Ctrl+D duplicates it, arrows move it, [ ] reorder.</p>
      {refusal && (
        <p className="error" role="alert" data-testid="layout-refusal">
          {refusal}
        </p>
      )}
      <ol className="box-list">
        {scene.boxes.map((b, i) => (
          <li key={b.id} className={b.id === selected ? 'selected' : ''}>
            <button data-testid={`box-select-${i}`} onClick={() => s.select(b.id)} style={{ borderColor: b.color }}>
              {b.name}
            </button>
            <button aria-label={`Move ${b.name} down`} onClick={() => s.reorder(b.id, -1)} disabled={i === 0}>
              ↓
            </button>
            <button aria-label={`Move ${b.name} up`} onClick={() => s.reorder(b.id, 1)} disabled={i === scene.boxes.length - 1}>
              ↑
            </button>
            <button aria-label={`Delete ${b.name}`} data-testid={`box-delete-${i}`} onClick={() => s.deleteBox(b.id)}>
              ✕
            </button>
          </li>
        ))}
      </ol>
      {box && (
        <div className="box-editor" data-testid="box-editor">
          <label>
            Name
            <input value={box.name} data-testid="box-name" maxLength={100} onChange={(e) => s.updateBox(box.id, { name: e.target.value })} />
          </label>
          <label>
            Local prompt
            <textarea value={box.prompt} data-testid="box-prompt" rows={2} onChange={(e) => s.updateBox(box.id, { prompt: e.target.value })} />
          </label>
          <label>
            Colour
            <input type="color" value={box.color} onChange={(e) => s.updateBox(box.id, { color: e.target.value })} />
          </label>
          {box.loras.map((l, i) => (
            <div className="row" key={`${l.name}-${i}`}>
              <span>{l.name}</span>
              <input
                type="number"
                step={0.05}
                min={-10}
                max={10}
                value={l.scale}
                aria-label={`Strength of ${l.name}`}
                onChange={(e) => s.updateBox(box.id, { loras: box.loras.map((x, j) => (j === i ? { ...x, scale: Number(e.target.value) } : x)) })}
              />
              <button aria-label={`Remove ${l.name} from ${box.name}`} onClick={() => s.updateBox(box.id, { loras: box.loras.filter((_, j) => j !== i) })}>
                ✕
              </button>
            </div>
          ))}
          <label>
            Add a LoRA to this box
            <select
              value=""
              data-testid="box-lora-add"
              onChange={(e) => {
                const entry = loaded.find((l) => l.info!.name === e.target.value);
                if (entry) s.updateBox(box.id, { loras: [...box.loras, { name: entry.info!.name, scale: 1, fingerprint: entry.info!.fingerprint, ...(entry.record.trigger?.trim() ? { trigger: entry.record.trigger.trim() } : {}) }] });
              }}
            >
              <option value="">choose…</option>
              {loaded.map((l) => (
                <option key={l.key} value={l.info!.name}>
                  {l.info!.name}
                </option>
              ))}
            </select>
          </label>
        </div>
      )}
      <div className="row">
        {(['injection', 'isolation', 'reinit'] as const).map((k) => (
          <label key={k} className="check">
            <input type="checkbox" data-testid={`ablation-${k}`} checked={scene.ablation[k]} onChange={(e) => s.setGlobal({ ablation: { ...scene.ablation, [k]: e.target.checked } })} />
            <span title={{ injection: 'Region injection (LoRA-Composer)', isolation: 'Concept isolation (LoRA-Composer)', reinit: 'Latent re-initialisation (LoRA-Composer)' }[k]}>
              {{ injection: "Keep each box's prompt and LoRA in it", isolation: 'Keep concepts apart', reinit: 'Start each concept in its box' }[k]}
            </span>
          </label>
        ))}
      </div>
      <div className="row" title="Gradient guidance (LoRA-Composer's concept enhancement): about 3x the time of a plain step on the steps it pushes">
        {(['ce', 'fill', 'region'] as const).map((k) => (
          <label key={k} className="check">
            <input type="checkbox" data-testid={`guidance-${k}`} checked={scene.ablation[k] ?? true} onChange={(e) => s.setGlobal({ ablation: { ...scene.ablation, [k]: e.target.checked } })} />
            <span title={{ ce: 'Concept enhancement: L_ce', fill: 'L_fill', region: 'L_region' }[k]}>{{ ce: 'Push each concept into its box', fill: 'Fill the box', region: 'Stay inside the box' }[k]}</span>
          </label>
        ))}
      </div>
      {(scene.ablation.ce !== false || scene.ablation.fill !== false || scene.ablation.region !== false) && (
        <div className="row">
          <label title="The guidance scale (LoRA-Composer's phi)">
            Push strength
            <input type="number" min={0} max={GUIDANCE_MAX_SCALE} step={1} data-testid="guidance-scale" value={guidance.scale} onChange={(e) => s.setGlobal({ guidance: { ...guidance, scale: Math.min(GUIDANCE_MAX_SCALE, Math.max(0, Number(e.target.value) || 0)) } })} />
          </label>
          <label>
            Share of steps pushed
            <input type="number" min={0} max={1} step={0.05} data-testid="guidance-share" value={guidance.share} onChange={(e) => s.setGlobal({ guidance: { ...guidance, share: Math.min(1, Math.max(0, Number(e.target.value) || 0)) } })} />
          </label>
          <label title="The code guides every step up to this one (25), unless the loss rises first">
            Push until step
            <input type="number" min={0} max={200} step={1} data-testid="guidance-last-step" value={guidance.lastStep ?? 25} onChange={(e) => s.setGlobal({ guidance: { ...guidance, lastStep: Math.min(200, Math.max(0, Math.round(Number(e.target.value) || 0))) } })} />
          </label>
          <label className="check">
            <input type="checkbox" data-testid="guidance-early-stop" checked={guidance.earlyStop} onChange={(e) => s.setGlobal({ guidance: { ...guidance, earlyStop: e.target.checked } })} />
            <span title="The code's early stop: when the loss rises, from step 5">Stop when it stops helping</span>
          </label>
        </div>
      )}
    </fieldset>
  );
}
