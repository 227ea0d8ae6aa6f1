// Working from a picture, beside the prompt: the start picture (a file, the last picture, or a gallery
// picture's "Start" button) and how much to change it; inpainting (the mask is painted on the picture
// itself, "Paint mask"), its blur and "only the masked area"; and the hires fix with its final size.
import { useStore } from 'zustand';
import { clearStartPicture, pictureSettings, pictureStore, setPictureSettings, startFromFile, startFromResult, startPictureProblem } from '../app/picture-actions.ts';
import { sceneStore } from '../app/actions.ts';
import { hiresSize, maskCoverage } from '../picture/mask.ts';
import { MAX_MASK_BLUR, MAX_PADDING } from '../../workers/layout/scene-picture.ts';
import { useStudio } from '../store/studio.ts';
import { ImageCanvas } from './ImageCanvas.tsx';

/** A slider with its number beside it, and a line saying what the ends mean. */
function Slider({ label, value, min, max, step, onChange, testId, hint, format = (v: number) => v.toFixed(2), disabled }: { label: string; value: number; min: number; max: number; step: number; onChange: (v: number) => void; testId: string; hint?: string; format?: (v: number) => string; disabled?: boolean }) {
  return (
    <label className="slider">
      {label}
      <span className="track">
        <input type="range" min={min} max={max} step={step} value={value} data-testid={testId} disabled={disabled} onChange={(e) => onChange(Number(e.target.value))} />
        <output data-testid={`${testId}-value`}>{format(value)}</output>
      </span>
      {hint && <span className="hint">{hint}</span>}
    </label>
  );
}

export function StartPicturePanel({ disabled }: { disabled: boolean }) {
  useStore(sceneStore, (s) => s.scene.picture); // re-render on the scene's picture settings
  const frame = { width: useStore(sceneStore, (s) => s.scene.width), height: useStore(sceneStore, (s) => s.scene.height) };
  const { start, mask, mode } = useStore(pictureStore);
  const model = useStudio((s) => s.model);
  const result = useStudio((s) => s.result);
  const pic = pictureSettings();
  const problem = startPictureProblem(model);
  const off = disabled || !!problem;
  const coverage = mask ? maskCoverage(mask) : 0;
  return (
    <details className="picture-panel" data-testid="picture-section" open={!!start || undefined}>
      <summary>Start picture</summary>
      <div className="panel-body">
        <p className="hint">Start from a picture instead of noise: image to image, or repaint a part of it (inpainting).</p>
        {problem && model && (
          <p className="hint" data-testid="picture-problem">
            {problem}
          </p>
        )}
        <div className="picture-sources">
          <label className="file-button">
            Choose a picture file
            <input type="file" accept="image/png,image/jpeg,image/webp" data-testid="start-file" disabled={off} onChange={(e) => e.target.files?.[0] && void startFromFile(e.target.files[0])} />
          </label>
          <button className="small" data-testid="start-from-result" disabled={off || !result} onClick={startFromResult} title="The picture in the frame becomes the start picture">
            Use the last picture
          </button>
      </div>
      {!start && <p className="hint">Or press "Start" under a picture in the gallery.</p>}
      {start && (
        <>
          <div className="start-thumb">
            <ImageCanvas image={start.image} label="The start picture" testId="start-thumb" />
            <span className="hint" data-testid="start-note">
              {start.name}: {start.cut !== 'none' ? `cropped to fill ${frame.width}×${frame.height} (the ${start.cut} were cut)` : start.scaled ? `scaled to ${frame.width}×${frame.height}` : `${frame.width}×${frame.height}, as it is`}.
            </span>
          </div>
          <Slider
            label="How much to change"
            value={pic.strength}
            min={0}
            max={1}
            step={0.05}
            testId="strength"
            disabled={disabled}
            hint="0 keeps the picture, 1 repaints it completely."
            onChange={(strength) => setPictureSettings({ strength })}
          />
          <button className="small" data-testid="start-clear" disabled={disabled} onClick={clearStartPicture}>
            Remove the start picture
          </button>
          <h3>Inpaint</h3>
          {model?.inpainting && (
            <p className="hint" data-testid="inpainting-model">
              Inpainting model: it repaints the masked part knowing what is around it.
            </p>
          )}
          <p className="hint" data-testid="mask-line">
            {mask ? `Mask: ${Math.max(1, Math.round(coverage * 100))}% of the picture is repainted; the rest is kept.` : `No mask: the whole picture changes. ${mode === 'mask' ? 'Drag on the picture to paint one.' : 'Choose "Paint mask" above the picture to paint where it should change.'}`}
          </p>
          <Slider
            label="Mask edge softness (blur)"
            value={pic.maskBlur}
            min={0}
            max={MAX_MASK_BLUR}
            step={1}
            testId="mask-blur"
            disabled={disabled}
            format={(v) => `${v} px`}
            hint="Blends the repainted part into the rest."
            onChange={(maskBlur) => setPictureSettings({ maskBlur })}
          />
          <label className="inline" title="The masked part (with the padding around it) is cut out, repainted at the full size, and put back: finer detail in small areas">
            <input type="checkbox" checked={pic.onlyMasked} data-testid="only-masked" disabled={disabled} onChange={(e) => setPictureSettings({ onlyMasked: e.target.checked })} />
            Inpaint only the masked area at full resolution
          </label>
          {pic.onlyMasked && (
            <label>
              Padding around the masked area (px)
              <input type="number" min={0} max={MAX_PADDING} step={8} value={pic.padding} data-testid="only-masked-padding" disabled={disabled} onChange={(e) => setPictureSettings({ padding: Math.max(0, Math.min(MAX_PADDING, Math.round(Number(e.target.value)) || 0)) })} />
            </label>
          )}
        </>
      )}
      </div>
    </details>
  );
}

/** Why the hires fix does not apply now (the engine runs it after text to image only). */
export const HIRES_WITH_START = 'Not with a start picture: the hires fix follows text to image. To work larger from a picture, raise Width and Height instead.';

export function HiresPanel({ disabled: busy }: { disabled: boolean }) {
  useStore(sceneStore, (s) => s.scene.picture);
  const hasStart = useStore(pictureStore, (s) => !!s.start);
  const disabled = busy || hasStart;
  const frame = { width: useStore(sceneStore, (s) => s.scene.width), height: useStore(sceneStore, (s) => s.scene.height) };
  const model = useStudio((s) => s.model);
  const steps = useStudio((s) => s.job.steps);
  const h = pictureSettings().hires;
  const set = (patch: Partial<typeof h>) => setPictureSettings({ hires: { ...h, ...patch } });
  const final = hiresSize(frame.width, frame.height, h.scale);
  return (
    <details className="hires-panel" data-testid="hires-section" open={h.enabled || undefined}>
      <summary>Hires fix</summary>
      <div className="panel-body">
        <label className="inline" title="Make the picture, enlarge it, then paint the detail again at the larger size">
          <input type="checkbox" checked={h.enabled && !hasStart} data-testid="hires" disabled={disabled} onChange={(e) => set({ enabled: e.target.checked })} />
          Make it larger, then refine the detail
        </label>
        <p className="hint" data-testid="hires-size">
          {hasStart ? HIRES_WITH_START : h.enabled ? `Final size: ${final.width}×${final.height}` : `Off: the picture stays ${frame.width}×${frame.height}`}
        </p>
        <div className="row">
          <label>
            Enlarge by
            <select value={String(h.scale)} data-testid="hires-scale" disabled={disabled} onChange={(e) => set({ scale: Number(e.target.value) })}>
              <option value="1.5">1.5×</option>
              <option value="2">2×</option>
            </select>
          </label>
          <label title="Latent: fast, softer; Picture: decoded, enlarged smoothly and read again (needs the VAE's encoder)">
            Enlarge as
            <select value={h.upscaler} data-testid="hires-upscaler" disabled={disabled} onChange={(e) => set({ upscaler: e.target.value as 'latent' | 'image' })}>
              <option value="latent">Latent</option>
              <option value="image" disabled={!!model && !model.vaeEncoder}>
                Picture
              </option>
            </select>
          </label>
      </div>
      <Slider label="How much the second pass changes" value={h.strength} min={0} max={1} step={0.05} testId="hires-strength" disabled={disabled} hint="0.7 is usual; lower keeps the first picture closer." onChange={(strength) => set({ strength })} />
      <label title="Steps of the second pass's schedule; it runs that many times the strength">
        Second pass steps (blank: same as Steps)
        <input type="number" min={1} max={250} value={h.steps ?? ''} placeholder={String(steps)} data-testid="hires-steps" disabled={disabled} onChange={(e) => {
          const v = Math.round(Number(e.target.value));
          const { steps: _, ...rest } = h;
          setPictureSettings({ hires: e.target.value === '' || !(v >= 1) ? rest : { ...rest, steps: Math.min(250, v) } });
        }} />
      </label>
      </div>
    </details>
  );
}
