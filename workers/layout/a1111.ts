// The generation parameters AUTOMATIC1111's web UI writes into a PNG's `parameters` text chunk (and
// ComfyUI, Forge, Civitai and InvokeAI read or write alike): the prompt, "Negative prompt: ...", then
// one line of "Key: value" pairs. We read them to fill the studio from another tool's picture, and
// write them into every studio PNG so other tools read ours. LoRAs travel in the prompt as
// `<lora:name:weight>` (or `<lora:name:te:unet>`, text-encoder and UNet strengths apart).
import type { SchedulerId } from '../api/contract.ts';

export interface A1111Lora {
  name: string;
  /** UNet strength. */
  unet: number;
  /** Text-encoder strength. */
  te: number;
}

export interface A1111Parameters {
  /** The prompt without its `<lora:...>` tags. */
  prompt: string;
  negative: string;
  loras: A1111Lora[];
  steps?: number;
  /** The sampler as A1111 names it ("DPM++ 2M", "Euler a", ...), and its schedule type when written apart. */
  sampler?: string;
  scheduleType?: string;
  cfg?: number;
  seed?: number;
  width?: number;
  height?: number;
  clipSkip?: number;
  model?: string;
  /** Image to image, inpainting or the hires fix's second pass: "Denoising strength". */
  denoisingStrength?: number;
  /** The hires fix: "Hires upscale", "Hires steps", "Hires upscaler" (A1111's "Latent" family is ours `latent`, any other ours `image`). */
  hires?: { scale: number; steps?: number; upscaler: 'latent' | 'image' };
  /** Every key of the settings line, as written. */
  settings: Record<string, string>;
}

/** One `Key: value` pair of the settings line; values with commas are quoted. */
const PAIR = /\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g;

function pairs(line: string): [string, string][] {
  const out: [string, string][] = [];
  for (const m of line.matchAll(PAIR)) {
    const raw = m[2].trim();
    out.push([m[1].trim(), raw.startsWith('"') && raw.endsWith('"') && raw.length > 1 ? raw.slice(1, -1).replace(/\\(.)/g, '$1') : raw]);
  }
  return out;
}

const LORA_TAG = /<lora:([^:>]+)((?::[^:>]*)*)>/gi;

/** A LoRA as prompts and other tools name it: its file name without the extension. */
export function loraTagName(fileName: string): string {
  return fileName.replace(/\.(safetensors|pth|pt|ckpt)$/i, '');
}

/** `<lora:...>` tags out of a prompt: the prompt without them, and the LoRAs with their strengths. */
export function loraTags(prompt: string): { prompt: string; loras: A1111Lora[] } {
  const loras: A1111Lora[] = [];
  const rest = prompt.replace(LORA_TAG, (_, name: string, args: string) => {
    const parts = args.split(':').slice(1);
    const named = new Map<string, number>();
    const positional: number[] = [];
    for (const p of parts) {
      const eq = p.indexOf('=');
      if (eq > 0) named.set(p.slice(0, eq).trim(), Number(p.slice(eq + 1)));
      else if (p.trim()) positional.push(Number(p));
    }
    // A1111's rule: the first number is the text encoder's (and the UNet's unless a second follows)
    const te = named.get('te') ?? positional[0] ?? 1;
    const unet = named.get('unet') ?? positional[1] ?? te;
    if (Number.isFinite(te) && Number.isFinite(unet)) loras.push({ name: name.trim(), te, unet });
    return '';
  });
  return { prompt: rest.replace(/\s+,/g, ',').replace(/,\s*,/g, ',').replace(/\s{2,}/g, ' ').trim().replace(/,$/, '').trim(), loras };
}

/** A `parameters` text as A1111 writes it, read back; a clear error for text that is not one. */
export function parseA1111(text: string): A1111Parameters {
  const lines = text.replace(/\r\n?/g, '\n').trim().split('\n');
  let settingsLine = '';
  // the last line holds the settings when it is made of at least three Key: value pairs
  if (lines.length && pairs(lines[lines.length - 1]).length >= 3) settingsLine = lines.pop()!;
  const negAt = lines.findIndex((l) => l.startsWith('Negative prompt:'));
  const promptLines = negAt < 0 ? lines : lines.slice(0, negAt);
  const negative = negAt < 0 ? '' : [lines[negAt].slice('Negative prompt:'.length), ...lines.slice(negAt + 1)].join('\n').trim();
  const { prompt, loras } = loraTags(promptLines.join('\n').trim());
  const settings = Object.fromEntries(pairs(settingsLine));
  if (!prompt && !settingsLine) throw new Error('it holds no prompt and no settings line');
  const num = (k: string) => (settings[k] !== undefined && Number.isFinite(Number(settings[k])) ? Number(settings[k]) : undefined);
  const size = /^(\d+)x(\d+)$/.exec(settings.Size ?? '');
  return {
    prompt,
    negative,
    loras,
    steps: num('Steps'),
    sampler: settings.Sampler,
    scheduleType: settings['Schedule type'],
    cfg: num('CFG scale'),
    seed: num('Seed'),
    ...(size ? { width: Number(size[1]), height: Number(size[2]) } : {}),
    clipSkip: num('Clip skip'),
    model: settings.Model,
    ...(num('Denoising strength') !== undefined ? { denoisingStrength: num('Denoising strength') } : {}),
    ...(num('Hires upscale') !== undefined
      ? { hires: { scale: num('Hires upscale')!, ...(num('Hires steps') ? { steps: num('Hires steps') } : {}), upscaler: /^latent/i.test(settings['Hires upscaler'] ?? 'Latent') ? ('latent' as const) : ('image' as const) } }
      : {}),
    settings,
  };
}

/** Our sampler for an A1111 sampler name (and schedule type), where we have it. */
export function schedulerOf(sampler: string | undefined, scheduleType?: string): SchedulerId | undefined {
  if (!sampler) return undefined;
  const karras = /karras/i.test(sampler) || /karras/i.test(scheduleType ?? '');
  const base = sampler.replace(/\s*karras\s*/i, '').trim().toLowerCase();
  if (base === 'dpm++ 2m') return karras ? 'dpmpp-2m-karras' : 'dpmpp-2m';
  if (base === 'euler a') return 'euler-a';
  if (base === 'euler') return 'euler';
  if (base === 'lcm') return 'lcm';
  if (base === 'tcd') return 'tcd';
  if (base === 'heun') return 'heun';
  if (base === 'ddim') return 'ddim';
  return undefined;
}

const SAMPLER_NAMES: Record<SchedulerId, [string, string]> = {
  'dpmpp-2m': ['DPM++ 2M', 'Automatic'],
  'dpmpp-2m-karras': ['DPM++ 2M', 'Karras'],
  'euler-a': ['Euler a', 'Automatic'],
  ddim: ['DDIM', 'Automatic'],
  euler: ['Euler', 'Automatic'],
  lcm: ['LCM', 'Automatic'],
  tcd: ['TCD', 'Automatic'],
  heun: ['Heun', 'Automatic'],
};

const quote = (v: string) => (/[,"\n]/.test(v) ? JSON.stringify(v) : v);

/** The `parameters` text of a studio picture, as A1111 writes its own. */
export function formatA1111(p: {
  prompt: string;
  negative: string;
  steps: number;
  scheduler: SchedulerId;
  cfg: number;
  seed: number;
  width: number;
  height: number;
  clipSkip?: number;
  model?: string;
  loras: { name: string; scale: number; textEncoderScale?: number }[];
  /** From a start picture: its strength, and the mask blur when it was inpainted. */
  init?: { strength: number; mode?: string; maskBlur?: number };
  /** The hires fix's second pass (its size gives the scale over `width`). */
  hires?: { width: number; strength: number; steps: number; upscaler: 'latent' | 'image' };
}): string {
  const tags = p.loras.map((l) => {
    const name = loraTagName(l.name);
    const te = l.textEncoderScale ?? l.scale;
    return te === l.scale ? `<lora:${name}:${l.scale}>` : `<lora:${name}:${te}:${l.scale}>`;
  });
  const [sampler, schedule] = SAMPLER_NAMES[p.scheduler];
  const settings: [string, string | number][] = [
    ['Steps', p.steps],
    ['Sampler', sampler],
    ['Schedule type', schedule],
    ['CFG scale', p.cfg],
    ['Seed', p.seed],
    ['Size', `${p.width}x${p.height}`],
    ...(p.model ? ([['Model', p.model]] as [string, string][]) : []),
    ...((p.clipSkip ?? 1) > 1 ? ([['Clip skip', p.clipSkip!]] as [string, number][]) : []),
    ...(p.init ? ([['Denoising strength', p.init.strength]] as [string, number][]) : []),
    ...(p.init?.maskBlur !== undefined ? ([['Mask blur', p.init.maskBlur]] as [string, number][]) : []),
    ...(p.hires
      ? ([
          ['Denoising strength', p.hires.strength],
          ['Hires upscale', Math.round((p.hires.width / p.width) * 1000) / 1000],
          ...(p.hires.steps !== p.steps ? [['Hires steps', p.hires.steps]] : []),
          ['Hires upscaler', p.hires.upscaler === 'latent' ? 'Latent' : 'None'],
        ] as [string, string | number][])
      : []),
    ['Version', 'LoRA Studio'],
  ];
  const prompt = [p.prompt.replace(/\n/g, ' '), ...tags].filter(Boolean).join(' ');
  return `${prompt}\n${p.negative ? `Negative prompt: ${p.negative.replace(/\n/g, ' ')}\n` : ''}${settings.map(([k, v]) => `${k}: ${quote(String(v))}`).join(', ')}`;
}
