// The testbed `make-test-model` writes beside the tiny model: its test LoRAs given categories, trigger
// and class words and reference images (seeded patterns), one layout scene in LoRA-Composer's form,
// ComposLoRA-style combinations of 2 and 3, the baselines and CMLoRA, two seeds.
import type { GeneratedFile } from '../engine/test-model.ts';
import { encodePng } from '../engine/png.ts';
import { Rng } from '../engine/random.ts';

/** A smooth seeded pattern (a few random sinusoids per channel), like a picture more than noise. */
export function patternImage(width: number, height: number, seed: number): Uint8ClampedArray {
  const rng = new Rng(seed);
  const waves = Array.from({ length: 9 }, () => rng.normal(5));
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let v = 0;
        for (let k = 0; k < 3; k++) {
          const [fx, fy, ph, amp] = waves[c * 3 + k];
          v += (0.5 + 0.25 * amp) * Math.sin((fx * x * 6) / width + (fy * y * 6) / height + ph);
        }
        data[(y * width + x) * 4 + c] = 128 + 60 * v;
      }
      data[(y * width + x) * 4 + 3] = 255;
    }
  }
  return data;
}

export function tinyTestbedJson(): Record<string, unknown> {
  return {
    version: 1,
    name: 'tiny',
    model: 'tiny-sd15.safetensors',
    scorer: 'clip',
    defaults: { width: 64, height: 64, steps: 3, cfg: 5, scheduler: 'dpmpp-2m', negative: 'blurry' },
    loras: {
      fox: { file: 'loras/kohya.safetensors', category: 'character', trigger: 'zxc', class: 'fox', prompt: 'a zxc fox', references: ['references/fox-1.png', 'references/fox-2.png'] },
      owl: { file: 'loras/loha.safetensors', category: 'character', trigger: 'sks', class: 'owl', prompt: 'a sks owl', scale: 0.8, references: ['references/owl-1.png'] },
      watercolor: { file: 'loras/locon.safetensors', category: 'style', prompt: 'watercolor style', scale: 0.6 },
      hat: { file: 'loras/kohya-2.safetensors', category: 'clothing', prompt: 'a red hat', references: ['references/hat-1.png'] },
      forest: { file: 'loras/kohya-3.safetensors', category: 'background', prompt: 'a green forest' },
    },
    embeddings: ['embeddings/tiny-ti.safetensors'],
    scenes: [
      {
        name: 'fox-and-owl',
        prompt: 'a fox and an owl in a forest, tiny-ti',
        loras: ['watercolor'],
        boxes: [
          { name: 'fox', x: 0, y: 8, width: 32, height: 48, prompt: 'a zxc fox', loras: ['fox'] },
          { name: 'owl', x: 32, y: 8, width: 32, height: 48, prompt: 'a sks owl', loras: ['owl'] },
        ],
      },
    ],
    combinations: { sizes: [2, 3], categories: ['character', 'clothing', 'style', 'background'], require: 'character', limit: 2, prompt: 'best quality' },
    methods: ['merge', 'switch', 'composite', { name: 'cmlora', method: 'cmlora', switchStep: 1 }],
    seeds: [1, 2],
  };
}

export async function tinyTestbedFiles(deflate: (d: Uint8Array) => Uint8Array): Promise<GeneratedFile[]> {
  const refs: [string, number][] = [['fox-1', 31], ['fox-2', 32], ['owl-1', 41], ['hat-1', 51]];
  const out: GeneratedFile[] = [];
  for (const [name, seed] of refs) out.push({ path: `references/${name}.png`, parts: [await encodePng(patternImage(48, 48, seed), 48, 48, {}, deflate)] });
  out.push({ path: 'testbed.json', parts: [new TextEncoder().encode(JSON.stringify(tinyTestbedJson(), null, 2))] });
  return out;
}
