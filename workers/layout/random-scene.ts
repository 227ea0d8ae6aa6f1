// Random valid scenes from a seed: what the fuzz tests mutate and the CLI's soak run generates. Every
// scene it makes passes parseScene; the text fields can be made hostile (markup, quotes, control and
// astral characters) to check that nothing downstream treats a prompt as anything but text.
import type { CompositionOptions, SchedulerId } from '../api/contract.ts';
import type { Rng } from '../engine/random.ts';
import { MAX_BOXES, SCENE_VERSION, type Scene, type SceneLora } from './scene.ts';

/** Text that would do harm if any part of the studio treated it as markup, a URL or a format string. */
export const HOSTILE_TEXT = [
  '<img src=x onerror="globalThis.__pwned=1">',
  '<script>globalThis.__pwned=1</script>',
  '"><svg onload=globalThis.__pwned=1>',
  'javascript:globalThis.__pwned=1',
  '{{constructor.constructor("globalThis.__pwned=1")()}}',
  '%s%n%x ${globalThis.__pwned=1}',
  '\u202e\u0000\u0007 right-to-left \ud83d\ude00 \u{1F98A}',
  '__proto__',
];

export interface RandomSceneOptions {
  /** Frame sizes to pick from (multiples of 64). */
  sizes?: number[];
  /** LoRA names a scene may use. */
  loraNames?: string[];
  /** Steps to pick from. */
  steps?: [number, number];
  /** Mix hostile strings into prompts and names. */
  hostile?: boolean;
  methods?: CompositionOptions['method'][];
}

const SCHEDULERS: SchedulerId[] = ['ddim', 'euler-a', 'dpmpp-2m', 'dpmpp-2m-karras'];
const WORDS = ['fox', 'owl', 'castle', 'watercolour', 'forest', 'night', 'portrait', 'city', 'ink', 'oil painting'];

export function randomScene(rng: Rng, options: RandomSceneOptions = {}): Scene {
  const rand = () => rng.uniform();
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rand() * list.length)];
  const sizes = options.sizes ?? [64, 128];
  const names = options.loraNames ?? ['a.safetensors', 'b.safetensors', 'c.safetensors'];
  const words = (n: number) => Array.from({ length: n }, () => (options.hostile && rand() < 0.3 ? pick(HOSTILE_TEXT) : pick(WORDS))).join(' ');
  const loras = (max: number): SceneLora[] => {
    const chosen = names.filter(() => rand() < 0.5).slice(0, max);
    return chosen.map((name) => ({ name, scale: Math.round((rand() * 1.6 - 0.3) * 100) / 100 }));
  };
  const width = pick(sizes);
  const height = pick(sizes);
  const boxCount = int(0, Math.min(3, MAX_BOXES));
  const boxes = Array.from({ length: boxCount }, (_, i) => {
    const w = 8 * int(1, width / 8);
    const h = 8 * int(1, height / 8);
    return {
      id: `box-${i}`,
      name: options.hostile && rand() < 0.3 ? pick(HOSTILE_TEXT).slice(0, 100) : pick(WORDS),
      x: 8 * int(0, (width - w) / 8),
      y: 8 * int(0, (height - h) / 8),
      width: w,
      height: h,
      prompt: words(int(0, 4)),
      loras: loras(2),
      color: `#${int(0, 0xffffff).toString(16).padStart(6, '0')}`,
    };
  });
  const method = pick<CompositionOptions['method']>(options.methods ?? ['none', 'merge', 'switch', 'composite', 'cmlora']);
  const composition: CompositionOptions =
    method === 'cmlora'
      ? {
          method,
          profiling: rand() < 0.5 ? 'offline' : 'online',
          ...(rand() < 0.5 ? { async: false } : {}),
          cache: pick<NonNullable<CompositionOptions['cache']>>(['deep', 'prediction', 'off']),
          partition: rand() < 0.3 ? 'profile' : 'category',
        }
      : method === 'switch'
        ? { method, switchStep: int(1, 3), ...(rand() < 0.3 ? { deepCacheInterval: 2 } : {}) }
        : method === 'none'
          ? { method }
          : { method, ...(rand() < 0.3 ? { deepCacheInterval: 2 } : {}) };
  const [lo, hi] = options.steps ?? [1, 20];
  const guided = rand() < 0.3;
  return {
    version: SCENE_VERSION,
    width,
    height,
    prompt: words(int(0, 6)),
    negative: words(int(0, 2)),
    loras: loras(3),
    boxes,
    composition,
    ablation: { injection: rand() < 0.7, isolation: rand() < 0.7, reinit: rand() < 0.5, ...(guided ? { ce: rand() < 0.7, fill: rand() < 0.5, region: rand() < 0.5 } : { ce: false, fill: false, region: false }) },
    seed: int(0, 0xffffffff),
    steps: int(lo, hi),
    cfg: Math.round((1 + rand() * 9) * 10) / 10,
    scheduler: pick(SCHEDULERS),
    ...(rand() < 0.5 ? { model: { name: options.hostile ? words(2) : 'model.safetensors' } } : {}),
    ...(guided ? { guidance: { scale: Math.round(rand() * 100) / 10, share: Math.round(rand() * 10) / 10, earlyStop: rand() < 0.5 } } : {}),
  };
}
