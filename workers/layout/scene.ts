// A layout scene: the plain JSON the studio stores, the CLI reads (`generate --scene`) and share links
// carry. `parseScene` checks untrusted input field by field and says what is wrong with it; it never
// evaluates anything and bounds every size, so a hostile file or link gets a sentence, not a crash.
import type { CompositionOptions, GenerateJob, LayoutOptions, SchedulerId } from '../api/contract.ts';
import { BadArgumentError } from '../api/errors.ts';
import { isObj, parseJson, type Obj } from '../api/json.ts';
import { GUIDANCE_MAX_SCALE, GUIDANCE_SCHEDULE_DEFAULTS } from './guidance.ts';
import { applyPreset, paperSettings, PRESETS, type PresetName } from '../composition/presets.ts';
import { isLoraCategory, LORA_CATEGORIES } from '../lora/category.ts';

export const SCENE_VERSION = 1;
/** More regions than this slow every attention layer for little gain; the studio says so. */
export const MAX_BOXES = 8;
export const MAX_PROMPT = 2000;
export const MAX_LORAS = 16;
/** The most denoising steps a job takes: CMLoRA's code runs 220. */
export const MAX_STEPS = 250;

/** A LoRA by the name the artist knows it by, with what lets another machine find the same file. */
export interface SceneLora {
  name: string;
  scale: number;
  /** Content fingerprint (LoraInfo.fingerprint), when known. */
  fingerprint?: string;
  url?: string;
  /** Its trigger words (comma-separated): in a box, the tokens guidance and re-initialisation read. */
  trigger?: string;
  /** ComposLoRA's category (character, clothing, style, background, object), which cmlora groups by. */
  category?: string;
}

/** A textual-inversion embedding by its file name (prompts use the name without the extension). */
export interface SceneEmbedding {
  name: string;
  fingerprint?: string;
  url?: string;
}

/** The checkpoint a scene was made with: its library name and, when it was downloaded, its address. */
export interface SceneModel {
  name: string;
  url?: string;
}

/** A concept box, in image pixels (multiples of 8: one latent cell). */
export interface SceneBox {
  id: string;
  name: string;
  x: number;
  y: number;
  width: number;
  height: number;
  prompt: string;
  loras: SceneLora[];
  color: string;
}

/** LoRA-Composer's parts, each of which can be switched off (the paper's ablation). */
export interface SceneAblation {
  /** Region-aware LoRA injection in cross-attention. */
  injection: boolean;
  /** Concept isolation: the region mask in self-attention. */
  isolation: boolean;
  /** Latent re-initialisation from the first step's cross-attention maps. */
  reinit: boolean;
  /** Gradient guidance terms: concept enhancement, fill and region; on when absent, as LoRA-Composer's code. */
  ce?: boolean;
  fill?: boolean;
  region?: boolean;
}

/** How strongly and how long gradient guidance acts (used when one of its terms is on). */
export interface SceneGuidance {
  /** phi at the first step. */
  scale: number;
  /** Share of the steps that may be guided. */
  share: number;
  earlyStop: boolean;
  /** The last guided step (the code's 25). */
  lastStep?: number;
}

/** LoRA-Composer's elements where we offer a choice besides the code's (defaults: the code's). */
export type SceneLayoutChoices = Pick<LayoutOptions, 'masks' | 'isolationScope' | 'regionBase' | 'regionNegative' | 'regionOutput'>;

export interface Scene {
  version: number;
  width: number;
  height: number;
  prompt: string;
  negative: string;
  /** Global (style, background) LoRAs, for the whole frame. */
  loras: SceneLora[];
  /** Textual-inversion embeddings the prompts use by name. */
  embeddings?: SceneEmbedding[];
  boxes: SceneBox[];
  composition: CompositionOptions;
  ablation: SceneAblation;
  seed: number;
  steps: number;
  cfg: number;
  scheduler: SchedulerId;
  /** The model it was made with (absent in scenes from before the field, and from the CLI). */
  model?: SceneModel;
  guidance?: SceneGuidance;
  /** Choices other than the code's for LoRA-Composer's elements (absent: the code's). */
  layout?: SceneLayoutChoices;
  /** `paper`: the authors' generation settings (steps, CFG, scheduler, size, seed, LoRA scale) over the scene's own. */
  preset?: PresetName;
}

/** Guidance settings where a scene has none: the engine's. */
export const GUIDANCE_SCENE_DEFAULTS: SceneGuidance = GUIDANCE_SCHEDULE_DEFAULTS;

/** The layout switches a scene gives the engine (LayoutOptions without the boxes). */
export function layoutSwitches(scene: Scene): Omit<LayoutOptions, 'boxes'> {
  const { injection, isolation, reinit, ce = true, fill = true, region = true } = scene.ablation;
  return {
    injection,
    isolation,
    reinit,
    ...(ce || fill || region ? { guidance: { ce, fill, region, ...GUIDANCE_SCENE_DEFAULTS, ...scene.guidance } } : {}),
    ...scene.layout,
  };
}

/** A box's trigger words: those of its LoRAs, joined. */
export function boxTrigger(box: Pick<SceneBox, 'loras'>): string | undefined {
  const words = box.loras.map((l) => l.trigger?.trim()).filter(Boolean);
  return words.length ? words.join(', ') : undefined;
}

/** The job a scene describes; its LoRAs are filled in once loaded (then `scenePreset` applies a preset's LoRA scale). */
export function sceneJob(scene: Scene): GenerateJob {
  const job = sceneJobOwn(scene);
  if (!scene.preset) return job;
  const settings = paperSettings(scene.composition.method, scene.boxes.length > 0);
  // a scene keeps its seed (a testbed gives each run its own) and a layout its frame size; the LoRA
  // scale applies when the LoRAs are attached
  return applyPreset(job, { ...settings, seed: undefined, ...(scene.boxes.length ? { width: undefined, height: undefined } : {}), loraScale: undefined });
}

/** The LoRA strength a scene's preset sets, if any. */
export function scenePresetScale(scene: Scene): number | undefined {
  return scene.preset ? paperSettings(scene.composition.method, scene.boxes.length > 0).loraScale : undefined;
}

function sceneJobOwn(scene: Scene): GenerateJob {
  return {
    prompt: scene.prompt,
    negative: scene.negative,
    steps: scene.steps,
    cfg: scene.cfg,
    seed: scene.seed,
    width: scene.width,
    height: scene.height,
    scheduler: scene.scheduler,
    composition: scene.composition,
    loras: [],
    layout: {
      boxes: scene.boxes.map((b) => {
        const trigger = boxTrigger(b);
        return { name: b.name, x: b.x, y: b.y, width: b.width, height: b.height, prompt: b.prompt, loras: [], ...(trigger ? { trigger } : {}) };
      }),
      ...layoutSwitches(scene),
    },
  };
}

export class SceneError extends BadArgumentError {
  /** What is wrong, without the opening words: for callers that say where the scene came from. */
  readonly problem: string;
  constructor(problem: string) {
    super(`This scene cannot be used: ${problem}.`);
    this.name = 'SceneError';
    this.problem = problem;
  }
}

const SCHEDULER_IDS: SchedulerId[] = ['ddim', 'euler-a', 'euler', 'dpmpp-2m', 'dpmpp-2m-karras', 'lcm', 'tcd', 'heun'];
const COLOR = /^#[0-9a-f]{6}$/i;

function text(o: Obj, key: string, where: string, max = MAX_PROMPT): string {
  const v = o[key];
  if (typeof v !== 'string') throw new SceneError(`${where}${key} must be text`);
  if (v.length > max) throw new SceneError(`${where}${key} is ${v.length} characters long; at most ${max} are allowed`);
  return v;
}

function number(o: Obj, key: string, where: string, lo: number, hi: number, integer = false): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi || (integer && !Number.isInteger(v))) {
    throw new SceneError(`${where}${key} must be ${integer ? 'a whole number' : 'a number'} from ${lo} to ${hi} (got ${JSON.stringify(v)?.slice(0, 40)})`);
  }
  return v;
}

function httpsUrl(o: Obj, at: string): string {
  const u = text(o, 'url', at, 2000);
  if (!/^https:\/\//.test(u)) throw new SceneError(`${at}url must be an https:// address`);
  return u;
}

function sceneModel(v: unknown): SceneModel {
  if (!isObj(v)) throw new SceneError('model must be {name, url}');
  const out: SceneModel = { name: text(v, 'name', 'model.', 260) };
  if (v.url !== undefined) out.url = httpsUrl(v, 'model.');
  return out;
}

function loras(v: unknown, where: string): SceneLora[] {
  if (!Array.isArray(v)) throw new SceneError(`${where}loras must be a list`);
  if (v.length > MAX_LORAS) throw new SceneError(`${where}loras has ${v.length} entries; at most ${MAX_LORAS} are allowed`);
  return v.map((l, i) => {
    const at = `${where}loras[${i}].`;
    if (!isObj(l)) throw new SceneError(`${at.slice(0, -1)} must be {name, scale}`);
    const out: SceneLora = { name: text(l, 'name', at, 260), scale: number(l, 'scale', at, -10, 10) };
    if (l.fingerprint !== undefined) {
      const f = text(l, 'fingerprint', at, 64);
      if (!/^[0-9a-f]+$/.test(f)) throw new SceneError(`${at}fingerprint must be hexadecimal`);
      out.fingerprint = f;
    }
    if (l.url !== undefined) out.url = httpsUrl(l, at);
    if (l.trigger !== undefined) out.trigger = text(l, 'trigger', at, 500);
    if (l.category !== undefined) {
      if (!isLoraCategory(l.category)) throw new SceneError(`${at}category must be one of ${LORA_CATEGORIES.join(', ')}`);
      out.category = l.category;
    }
    return out;
  });
}

function embeddings(v: unknown): SceneEmbedding[] {
  if (!Array.isArray(v)) throw new SceneError('embeddings must be a list');
  if (v.length > MAX_LORAS) throw new SceneError(`embeddings has ${v.length} entries; at most ${MAX_LORAS} are allowed`);
  return v.map((e, i) => {
    const at = `embeddings[${i}].`;
    if (!isObj(e)) throw new SceneError(`embeddings[${i}] must be {name}`);
    const out: SceneEmbedding = { name: text(e, 'name', at, 260) };
    if (e.fingerprint !== undefined) {
      const f = text(e, 'fingerprint', at, 64);
      if (!/^[0-9a-f]+$/.test(f)) throw new SceneError(`${at}fingerprint must be hexadecimal`);
      out.fingerprint = f;
    }
    if (e.url !== undefined) out.url = httpsUrl(e, at);
    return out;
  });
}

function presetName(v: unknown): PresetName {
  if (typeof v !== 'string' || !(PRESETS as string[]).includes(v)) throw new SceneError(`preset must be one of ${PRESETS.join(', ')}`);
  return v as PresetName;
}

const LAYOUT_CHOICES: Record<keyof SceneLayoutChoices, string[]> = {
  masks: ['covered', 'centre'],
  isolationScope: ['concepts', 'regions'],
  regionBase: ['model', 'frame'],
  regionNegative: ['concept', 'frame'],
  regionOutput: ['own', 'shared'],
};

function layoutChoices(v: unknown): SceneLayoutChoices {
  if (!isObj(v)) throw new SceneError('layout must be an object of choices');
  const out: Obj = {};
  for (const [k, allowed] of Object.entries(LAYOUT_CHOICES)) {
    if (v[k] === undefined) continue;
    if (typeof v[k] !== 'string' || !allowed.includes(v[k] as string)) throw new SceneError(`layout.${k} must be one of ${allowed.join(', ')}`);
    out[k] = v[k];
  }
  return out as SceneLayoutChoices;
}

export const COMPOSITION_KEYS = ['method', 'switchStep', 'profiling', 'profileSteps', 'cutoff', 'threshold', 'highPhase', 'cacheHigh', 'cacheLow', 'domCoeff', 'async', 'cache', 'cacheInterval', 'partition', 'deepCacheInterval', 'research'];

/** The known composition fields with plain values; the engine checks their ranges. */
function compositionFields(c: Obj): CompositionOptions {
  const out: Obj = {};
  for (const k of COMPOSITION_KEYS) {
    const v = c[k];
    if (v === undefined) continue;
    if (!['string', 'number', 'boolean'].includes(typeof v) || (typeof v === 'string' && v.length > 20)) throw new SceneError(`composition.${k} has the wrong kind of value`);
    out[k] = v;
  }
  return out as unknown as CompositionOptions;
}

/** A scene from its JSON text (a file, a link, a PNG chunk): SceneError for text that is not JSON. */
export function parseSceneText(text: string): Scene {
  return parseScene(parseJson(text, (problem) => new SceneError(problem)));
}

/** Check an untrusted scene (parsed JSON) and return a clean copy with only the known fields. */
export function parseScene(input: unknown): Scene {
  if (!isObj(input)) throw new SceneError('it is not a JSON object');
  if (input.version !== SCENE_VERSION) throw new SceneError(`its version is ${JSON.stringify(input.version)?.slice(0, 20)}; this studio reads version ${SCENE_VERSION}`);
  const width = number(input, 'width', '', 64, 2048, true);
  const height = number(input, 'height', '', 64, 2048, true);
  if (width % 64 || height % 64) throw new SceneError(`the frame is ${width}x${height}; width and height must be multiples of 64`);
  if (!Array.isArray(input.boxes)) throw new SceneError('boxes must be a list');
  if (input.boxes.length > MAX_BOXES) throw new SceneError(`it has ${input.boxes.length} boxes; at most ${MAX_BOXES} are supported`);
  const ids = new Set<string>();
  const boxes = input.boxes.map((b, i): SceneBox => {
    const at = `boxes[${i}].`;
    if (!isObj(b)) throw new SceneError(`boxes[${i}] must be an object`);
    const box: SceneBox = {
      id: text(b, 'id', at, 64),
      name: text(b, 'name', at, 100),
      x: number(b, 'x', at, -4096, 4096),
      y: number(b, 'y', at, -4096, 4096),
      width: number(b, 'width', at, 0, 4096),
      height: number(b, 'height', at, 0, 4096),
      prompt: text(b, 'prompt', at),
      loras: loras(b.loras, at),
      color: text(b, 'color', at, 40),
    };
    if (!COLOR.test(box.color)) throw new SceneError(`${at}color must be #rrggbb`);
    if (ids.has(box.id)) throw new SceneError(`two boxes have the id "${box.id}"`);
    ids.add(box.id);
    const label = `box "${box.name || box.id}"`;
    if (box.width < 8 || box.height < 8) throw new SceneError(`${label} is ${box.width}x${box.height} pixels; a box must be at least 8x8 (one latent cell)`);
    if (box.x < 0 || box.y < 0 || box.x + box.width > width || box.y + box.height > height) {
      throw new SceneError(`${label} (${box.x}, ${box.y}, ${box.width}x${box.height}) reaches outside the ${width}x${height} frame`);
    }
    return box;
  });
  const c = input.composition;
  if (!isObj(c) || typeof c.method !== 'string') throw new SceneError('composition must be {method, ...options}');
  const a = input.ablation;
  if (!isObj(a) || !['injection', 'isolation', 'reinit'].every((k) => typeof a[k] === 'boolean')) throw new SceneError('ablation must be {injection, isolation, reinit} switches');
  const optionalSwitches = ['ce', 'fill', 'region'].filter((k) => a[k] !== undefined);
  for (const k of optionalSwitches) if (typeof a[k] !== 'boolean') throw new SceneError(`ablation.${k} must be true or false`);
  const gd = input.guidance;
  if (gd !== undefined && (!isObj(gd) || typeof gd.earlyStop !== 'boolean')) throw new SceneError('guidance must be {scale, share, earlyStop, lastStep}');
  const scheduler = input.scheduler;
  if (typeof scheduler !== 'string' || !SCHEDULER_IDS.includes(scheduler as SchedulerId)) throw new SceneError(`scheduler must be one of ${SCHEDULER_IDS.join(', ')}`);
  return {
    version: SCENE_VERSION,
    width,
    height,
    prompt: text(input, 'prompt', ''),
    negative: text(input, 'negative', ''),
    loras: loras(input.loras, ''),
    ...(input.embeddings !== undefined ? { embeddings: embeddings(input.embeddings) } : {}),
    boxes,
    composition: compositionFields(c),
    ablation: { injection: a.injection as boolean, isolation: a.isolation as boolean, reinit: a.reinit as boolean, ...Object.fromEntries(optionalSwitches.map((k) => [k, a[k]])) },
    seed: number(input, 'seed', '', 0, 0xffffffff, true),
    steps: number(input, 'steps', '', 1, MAX_STEPS, true),
    cfg: number(input, 'cfg', '', 1, 30),
    scheduler: scheduler as SchedulerId,
    ...(input.model !== undefined ? { model: sceneModel(input.model) } : {}),
    ...(isObj(gd)
      ? {
          guidance: {
            scale: number(gd, 'scale', 'guidance.', 0, GUIDANCE_MAX_SCALE),
            share: number(gd, 'share', 'guidance.', 0, 1),
            earlyStop: gd.earlyStop as boolean,
            ...(gd.lastStep !== undefined ? { lastStep: number(gd, 'lastStep', 'guidance.', 0, 200, true) } : {}),
          },
        }
      : {}),
    ...(input.layout !== undefined ? { layout: layoutChoices(input.layout) } : {}),
    ...(input.preset !== undefined ? { preset: presetName(input.preset) } : {}),
  };
}

/** The two-box scene `make-test-model` writes beside the tiny model, over its test LoRAs. */
export function testScene(): Scene {
  return {
    version: SCENE_VERSION,
    width: 64,
    height: 64,
    prompt: 'two friends in a park, watercolour, tiny-ti',
    negative: 'blurry',
    loras: [{ name: 'locon.safetensors', scale: 0.6 }],
    embeddings: [{ name: 'tiny-ti.safetensors' }],
    boxes: [
      { id: 'left', name: 'fox', x: 0, y: 8, width: 32, height: 48, prompt: 'a red fox', loras: [{ name: 'kohya.safetensors', scale: 1 }], color: '#e4572e' },
      { id: 'right', name: 'owl', x: 32, y: 8, width: 32, height: 48, prompt: 'a grey owl', loras: [{ name: 'loha.safetensors', scale: 0.8 }], color: '#17bebb' },
    ],
    composition: { method: 'merge' },
    ablation: { injection: true, isolation: true, reinit: true },
    seed: 7,
    steps: 4,
    cfg: 5,
    scheduler: 'dpmpp-2m',
  };
}
