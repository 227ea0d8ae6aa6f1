// `--preset paper`: the generation settings the authors' own scripts use, so our images and tables
// can stand next to theirs. CMLoRA (compose_*.py): 220 DPM++ steps, CFG 8.5, LoRA scale 1, 512 x 512,
// seed 222. ComposLoRA's baselines (compose_lora.py): 200 steps, CFG 10, LoRA scale 0.8, seed 111.
// LoRA-Composer (region_lora_sample.py): 50 steps, CFG 7.5, DPM++. Settings given next to the preset win.
import type { CompositionMethodId, GenerateJob, SchedulerId } from '../api/contract.ts';

export type PresetName = 'paper';
export const PRESETS: PresetName[] = ['paper'];

export interface PresetSettings {
  steps: number;
  cfg: number;
  scheduler: SchedulerId;
  width?: number;
  height?: number;
  seed?: number;
  /** Every LoRA's strength. */
  loraScale?: number;
  source: string;
}

export const CMLORA_PAPER: PresetSettings = { steps: 220, cfg: 8.5, scheduler: 'dpmpp-2m', width: 512, height: 512, seed: 222, loraScale: 1, source: 'CMLoRA compose_*.py' };
export const COMPOSLORA_PAPER: PresetSettings = { steps: 200, cfg: 10, scheduler: 'dpmpp-2m', width: 512, height: 512, seed: 111, loraScale: 0.8, source: 'ComposLoRA compose_lora.py' };
export const LORA_COMPOSER_PAPER: PresetSettings = { steps: 50, cfg: 7.5, scheduler: 'dpmpp-2m', source: 'LoRA-Composer region_lora_sample.py' };

/** The paper's settings for a method: a layout follows LoRA-Composer, cmlora and prompt only CMLoRA, the baselines ComposLoRA. */
export function paperSettings(method: CompositionMethodId, layout: boolean): PresetSettings {
  if (layout) return LORA_COMPOSER_PAPER;
  return method === 'cmlora' || method === 'none' ? CMLORA_PAPER : COMPOSLORA_PAPER;
}

/** A job with the preset's settings, except those named in `keep` (given explicitly). */
export function applyPreset(job: GenerateJob, settings: PresetSettings, keep: Set<string> = new Set()): GenerateJob {
  const out: GenerateJob = { ...job };
  for (const k of ['steps', 'cfg', 'scheduler', 'width', 'height', 'seed'] as const) {
    const v = settings[k];
    if (v !== undefined && !keep.has(k)) (out as unknown as Record<string, unknown>)[k] = v;
  }
  if (settings.loraScale !== undefined && !keep.has('scale') && out.loras) out.loras = out.loras.map((l) => ({ ...l, scale: settings.loraScale!, textEncoderScale: settings.loraScale! }));
  return out;
}
