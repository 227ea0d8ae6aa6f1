// A testbed: LoRAs with what scoring needs (category, trigger and class words, reference images),
// scenes (whole-frame compositions as in ComposLoRA, or boxes as in LoRA-Composer), methods and
// seeds. `expandTestbed` turns it into the list of runs `evaluate` makes, each a studio scene, so
// every run is checked by the same rules as a scene file or a share link.
import type { CompositionMethodId, CompositionOptions } from '../api/contract.ts';
import { BadArgumentError } from '../api/errors.ts';
import { isObj, parseJsonObject } from '../api/json.ts';
import { isMethodId, resolveComposition } from '../composition/plan.ts';
import { COMPOSITION_KEYS, MAX_BOXES, parseScene, SCENE_VERSION, SceneError, type Scene, type SceneAblation } from '../layout/scene.ts';

export const TESTBED_VERSION = 1;
export { LORA_CATEGORIES } from '../lora/category.ts';
import { LORA_CATEGORIES } from '../lora/category.ts';
const MAX_RUNS = 100_000;

export interface TestbedLora {
  file: string;
  category?: (typeof LORA_CATEGORIES)[number];
  trigger?: string;
  classWord?: string;
  /** Words the LoRA adds to a combination's prompt (ComposLoRA gives each LoRA one). */
  prompt?: string;
  references: string[];
  scale: number;
}

export interface TestbedMethod {
  /** The column name in results.csv. */
  name: string;
  composition: CompositionOptions;
  /** Layout switches over the scene's (boxes only). */
  layout: Partial<SceneAblation>;
}

export interface Testbed {
  name: string;
  model?: string;
  scorer?: string;
  loras: Record<string, TestbedLora>;
  /** Textual-inversion embedding files loaded for every run (prompts use them by file name). */
  embeddings: string[];
  scenes: { name: string; scene: Scene }[];
  methods: TestbedMethod[];
  seeds: number[];
}

export interface TestbedRun {
  key: string;
  scene: string;
  method: string;
  seed: number;
  loraCount: number;
  /** The scene to generate: the method's composition and switches and the seed filled in. */
  job: Scene;
}

export class TestbedError extends BadArgumentError {
  constructor(problem: string) {
    super(`This testbed cannot be used: ${problem}.`);
    this.name = 'TestbedError';
  }
}

const str = (v: unknown, where: string, max = 2000): string => {
  if (typeof v !== 'string' || v.length > max) throw new TestbedError(`${where} must be text of at most ${max} characters`);
  return v;
};
const optStr = (v: unknown, where: string) => (v === undefined ? undefined : str(v, where));
const NAME = /^[\w.+-]{1,80}$/;

function parseLora(id: string, v: unknown): TestbedLora {
  const at = `loras.${id}`;
  if (!isObj(v)) throw new TestbedError(`${at} must be {file, category, trigger, class, prompt, references}`);
  const category = v.category;
  if (category !== undefined && !(LORA_CATEGORIES as readonly unknown[]).includes(category)) throw new TestbedError(`${at}.category must be one of ${LORA_CATEGORIES.join(', ')}`);
  const refs = v.references ?? [];
  if (!Array.isArray(refs) || refs.length > 64) throw new TestbedError(`${at}.references must be a list of at most 64 image files`);
  const scale = v.scale ?? 1;
  if (typeof scale !== 'number' || !Number.isFinite(scale) || Math.abs(scale) > 10) throw new TestbedError(`${at}.scale must be a number from -10 to 10`);
  return {
    file: str(v.file, `${at}.file`, 1000),
    category: category as TestbedLora['category'],
    trigger: optStr(v.trigger, `${at}.trigger`),
    classWord: optStr(v.class, `${at}.class`),
    prompt: optStr(v.prompt, `${at}.prompt`),
    references: refs.map((r, i) => str(r, `${at}.references[${i}]`, 1000)),
    scale,
  };
}

function parseMethod(v: unknown, i: number): TestbedMethod {
  if (typeof v === 'string') {
    if (!isMethodId(v)) throw new TestbedError(`methods[${i}] "${v.slice(0, 40)}" is not a method (none, merge, switch, composite, cmlora)`);
    return { name: v, composition: { method: v }, layout: {} };
  }
  if (!isObj(v)) throw new TestbedError(`methods[${i}] must be a method name or {name, method, ...options}`);
  const name = str(v.name, `methods[${i}].name`, 80);
  if (!NAME.test(name)) throw new TestbedError(`methods[${i}].name may only hold letters, digits and . _ + -`);
  if (!isMethodId(v.method)) throw new TestbedError(`methods[${i}].method must be none, merge, switch, composite or cmlora`);
  const { name: _n, method, layout, ...options } = v;
  const switches: Partial<SceneAblation> = {};
  if (layout !== undefined) {
    if (!isObj(layout)) throw new TestbedError(`methods[${i}].layout must be {injection, isolation, reinit, ce, fill, region} switches`);
    for (const [k, s] of Object.entries(layout)) {
      if (!['injection', 'isolation', 'reinit', 'ce', 'fill', 'region'].includes(k) || typeof s !== 'boolean') throw new TestbedError(`methods[${i}].layout.${k.slice(0, 20)} is not a layout switch`);
      switches[k as keyof SceneAblation] = s;
    }
  }
  const stray = Object.keys(options).find((k) => !COMPOSITION_KEYS.includes(k));
  if (stray) throw new TestbedError(`methods[${i}].${stray.slice(0, 30)} is not a composition setting (${COMPOSITION_KEYS.slice(1).join(', ')})`);
  const composition = { ...(options as Partial<CompositionOptions>), method: method as CompositionMethodId };
  try {
    resolveComposition(composition, 30, 2);
  } catch (e) {
    throw new TestbedError(`methods[${i}] (${name}): ${(e as Error).message.replace(/\.$/, '')}`);
  }
  return { name, composition, layout: switches };
}

type LoraRef = { name: string; scale: number; trigger?: string; category?: string };

function loraRefs(v: unknown, where: string, loras: Record<string, TestbedLora>): LoraRef[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new TestbedError(`${where} must be a list of LoRA ids`);
  return v.map((x, i) => {
    const id = typeof x === 'string' ? x : isObj(x) ? x.lora : undefined;
    if (typeof id !== 'string' || !(id in loras)) throw new TestbedError(`${where}[${i}] names no LoRA of the testbed (${JSON.stringify(id)?.slice(0, 40)})`);
    const scale = isObj(x) && x.scale !== undefined ? x.scale : loras[id].scale;
    const { trigger, category } = loras[id];
    return { name: id, scale: scale as number, ...(trigger ? { trigger } : {}), ...(category ? { category } : {}) };
  });
}

const COLORS = ['#e4572e', '#17bebb', '#ffc914', '#76b041', '#2e282a', '#8f3985', '#3d5a80', '#ee6c4d'];

/** Reads a testbed file's JSON; every problem is a sentence naming the field. */
export function parseTestbed(text: string): Testbed {
  const raw = parseJsonObject(text, (problem) => new TestbedError(problem));
  if (raw.version !== TESTBED_VERSION) throw new TestbedError(`its version is ${JSON.stringify(raw.version)?.slice(0, 20)}; this studio reads version ${TESTBED_VERSION}`);
  if (!isObj(raw.loras)) throw new TestbedError('loras must be an object of LoRAs by id');
  const loras: Record<string, TestbedLora> = {};
  for (const [id, v] of Object.entries(raw.loras)) {
    if (!NAME.test(id)) throw new TestbedError(`the LoRA id "${id.slice(0, 40)}" may only hold letters, digits and . _ + -`);
    loras[id] = parseLora(id, v);
  }
  const d = isObj(raw.defaults) ? raw.defaults : {};
  const base = {
    version: SCENE_VERSION,
    width: d.width ?? 512,
    height: d.height ?? 512,
    negative: d.negative ?? '',
    steps: d.steps ?? 30,
    cfg: d.cfg ?? 7,
    scheduler: d.scheduler ?? 'dpmpp-2m',
    seed: 0,
    composition: { method: 'merge' },
    // `paper`: every run takes its method's authors' settings (workers/composition/presets.ts)
    ...(d.preset !== undefined ? { preset: d.preset } : {}),
  };
  const scenes: Testbed['scenes'] = [];
  const named = (name: string, scene: unknown) => {
    if (scenes.some((s) => s.name === name)) throw new TestbedError(`two scenes are named "${name}"`);
    try {
      scenes.push({ name, scene: parseScene(scene) });
    } catch (e) {
      if (e instanceof SceneError) throw new TestbedError(`scene "${name}": ${e.problem}`);
      throw e;
    }
  };
  const list = raw.scenes ?? [];
  if (!Array.isArray(list)) throw new TestbedError('scenes must be a list');
  list.forEach((s, i) => {
    if (!isObj(s)) throw new TestbedError(`scenes[${i}] must be an object`);
    const name = str(s.name, `scenes[${i}].name`, 80);
    if (!NAME.test(name)) throw new TestbedError(`scenes[${i}].name may only hold letters, digits and . _ + -`);
    const boxes = s.boxes ?? [];
    if (!Array.isArray(boxes)) throw new TestbedError(`scenes[${i}].boxes must be a list`);
    const layout = isObj(s.layout) ? s.layout : {};
    named(name, {
      ...base,
      prompt: s.prompt ?? '',
      negative: s.negative ?? base.negative,
      ...(s.width !== undefined ? { width: s.width } : {}),
      ...(s.height !== undefined ? { height: s.height } : {}),
      loras: loraRefs(s.loras, `scenes[${i}].loras`, loras),
      boxes: boxes.map((b, j) => {
        if (!isObj(b)) throw new TestbedError(`scenes[${i}].boxes[${j}] must be an object`);
        return { id: `b${j}`, name: b.name ?? `box ${j + 1}`, x: b.x, y: b.y, width: b.width, height: b.height, prompt: b.prompt ?? '', loras: loraRefs(b.loras, `scenes[${i}].boxes[${j}].loras`, loras), color: COLORS[j % COLORS.length] };
      }),
      ablation: { injection: true, isolation: true, reinit: true, ...layout },
    });
  });
  if (raw.combinations !== undefined) {
    for (const c of combinations(raw.combinations, loras)) named(c.name, { ...base, prompt: c.prompt, loras: loraRefs(c.loras, 'combinations', loras), boxes: [], ablation: { injection: true, isolation: true, reinit: true } });
  }
  if (!scenes.length) throw new TestbedError('it has no scenes (give scenes, combinations or both)');
  if (!Array.isArray(raw.methods) || !raw.methods.length) throw new TestbedError('methods must be a list of at least one method');
  const methods = raw.methods.map(parseMethod);
  const dup = methods.find((m, i) => methods.findIndex((n) => n.name === m.name) !== i);
  if (dup) throw new TestbedError(`two methods are named "${dup.name}"`);
  const seeds = raw.seeds ?? [0];
  if (!Array.isArray(seeds) || !seeds.length || !seeds.every((s) => Number.isInteger(s) && s >= 0 && s <= 0xffffffff)) throw new TestbedError('seeds must be a list of whole numbers from 0 to 4294967295');
  if (new Set(seeds).size !== seeds.length) throw new TestbedError('seeds has repeats');
  if (scenes.length * methods.length * seeds.length > MAX_RUNS) throw new TestbedError(`it asks for ${scenes.length * methods.length * seeds.length} runs; at most ${MAX_RUNS} are allowed`);
  const embeddings = raw.embeddings ?? [];
  if (!Array.isArray(embeddings) || embeddings.length > 64) throw new TestbedError('embeddings must be a list of at most 64 embedding files');
  embeddings.forEach((e, i) => str(e, `embeddings[${i}]`, 1000));
  return { name: optStr(raw.name, 'name') ?? 'testbed', model: optStr(raw.model, 'model'), scorer: optStr(raw.scorer, 'scorer'), loras, embeddings: embeddings as string[], scenes, methods, seeds: seeds as number[] };
}

/**
 * ComposLoRA's compositions: for each size, every choice of that many categories (the required one
 * always among them) and one LoRA from each; `limit` keeps that many per size, evenly spread.
 */
function combinations(v: unknown, loras: Record<string, TestbedLora>): { name: string; prompt: string; loras: string[] }[] {
  if (!isObj(v)) throw new TestbedError('combinations must be {sizes, categories, require, limit, prompt}');
  const sizes = v.sizes;
  if (!Array.isArray(sizes) || !sizes.length || !sizes.every((n) => Number.isInteger(n) && n >= 1 && n <= MAX_BOXES)) throw new TestbedError(`combinations.sizes must be a list of sizes from 1 to ${MAX_BOXES}`);
  const categories = (v.categories ?? LORA_CATEGORIES) as string[];
  if (!Array.isArray(categories) || !categories.every((c) => (LORA_CATEGORIES as readonly string[]).includes(c))) throw new TestbedError(`combinations.categories must list categories of ${LORA_CATEGORIES.join(', ')}`);
  const require = v.require;
  if (require !== undefined && !categories.includes(require as string)) throw new TestbedError('combinations.require must be one of its categories');
  const limit = v.limit;
  if (limit !== undefined && !(Number.isInteger(limit) && (limit as number) >= 1)) throw new TestbedError('combinations.limit must be a whole number of at least 1');
  const suffix = optStr(v.prompt, 'combinations.prompt') ?? '';
  const byCategory = new Map(categories.map((c) => [c, Object.keys(loras).filter((id) => loras[id].category === c)]));
  const out: { name: string; prompt: string; loras: string[] }[] = [];
  for (const size of sizes as number[]) {
    const found: string[][] = [];
    const chooseCategories = (from: number, chosen: string[]) => {
      if (chosen.length === size) {
        if (require === undefined || chosen.includes(require as string)) product(chosen.map((c) => byCategory.get(c)!), found);
        return;
      }
      for (let i = from; i < categories.length; i++) chooseCategories(i + 1, [...chosen, categories[i]]);
    };
    chooseCategories(0, []);
    if (found.length > MAX_RUNS) throw new TestbedError(`combinations of ${size} give ${found.length} scenes; set combinations.limit`);
    const keep = limit === undefined || found.length <= (limit as number) ? found : Array.from({ length: limit as number }, (_, i) => found[Math.floor((i * found.length) / (limit as number))]);
    for (const ids of keep) {
      const prompt = [...ids.map((id) => loras[id].prompt ?? loras[id].trigger ?? '').filter(Boolean), suffix].filter(Boolean).join(', ');
      out.push({ name: `n${size}-${ids.join('+')}`.slice(0, 80), prompt, loras: ids });
    }
  }
  return out;
}

function product(lists: string[][], into: string[][], prefix: string[] = []): void {
  if (prefix.length === lists.length) {
    into.push(prefix);
    return;
  }
  for (const x of lists[prefix.length]) product(lists, into, [...prefix, x]);
}

/** Every run: scenes x methods x seeds, in that order. */
export function expandTestbed(t: Testbed): TestbedRun[] {
  const runs: TestbedRun[] = [];
  for (const { name, scene } of t.scenes) {
    const loraCount = new Set([...scene.loras, ...scene.boxes.flatMap((b) => b.loras)].map((l) => l.name)).size;
    for (const m of t.methods) {
      for (const seed of t.seeds) {
        const job: Scene = { ...scene, seed, composition: m.composition, ablation: { ...scene.ablation, ...m.layout } };
        runs.push({ key: `${name}|${m.name}|${seed}`, scene: name, method: m.name, seed, loraCount, job });
      }
    }
  }
  return runs;
}
