// The tiny test model on disk and an engine on it with some of its test LoRAs: the set-up the engine
// tests, the benchmarks and the e2e comparisons share.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GenerateJob, GuidanceOptions, LoraInfo } from '../api/contract.ts';
import { Engine } from '../engine/engine.ts';
import type { Runtime } from '../engine/runtime.ts';
import { makeTinyModel, tinyModelFiles, type TinyModel } from '../engine/test-model.ts';
import { NodeFileSource, openModelPath, writeParts } from './files.ts';

/** Write the tiny model (seed 1234, as `make-test-model` does) into a fresh temporary folder. */
export async function writeTinyModel(prefix = 'lora-studio-'): Promise<{ dir: string; model: TinyModel }> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const model = makeTinyModel(1234);
  for (const f of tinyModelFiles(model)) await writeParts(join(dir, f.path), f.parts);
  return { dir, model };
}

/** An fp32 engine on the tiny model in `dir`, with the named test LoRAs (`loras/<name>.safetensors`) loaded. */
export async function openTinyEngine(dir: string, rt: Runtime, loraNames: string[] = []): Promise<{ engine: Engine; loras: LoraInfo[] }> {
  const { files, tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const engine = new Engine(rt);
  await engine.loadModel(files, tokenizer!, 'fp32');
  const loras: LoraInfo[] = [];
  for (const name of loraNames) loras.push(await engine.loadLora(await NodeFileSource.open(join(dir, `loras/${name}.safetensors`))));
  return { engine, loras };
}

/**
 * The guidance scene on the tiny model (64x64, injection on): an owl box on the left with the test
 * LoRA `loras[1]`, a fox box on the right with `loras[0]`. Unguided, each prompt's attention spreads
 * over the frame and each box holds about its area's share of it or less.
 */
export function owlAndFoxJob(loras: LoraInfo[], guidance?: GuidanceOptions, steps = 6): GenerateJob {
  const boxes = [
    { name: 'owl', x: 0, y: 8, width: 32, height: 48, prompt: 'a grey owl', loras: [{ lora: loras[1].id, scale: 0.8 }] },
    { name: 'fox', x: 32, y: 8, width: 32, height: 48, prompt: 'a red fox', loras: [{ lora: loras[0].id, scale: 1 }] },
  ];
  return {
    prompt: 'two friends in a park',
    negative: 'blurry',
    steps,
    cfg: 5,
    seed: 7,
    width: 64,
    height: 64,
    scheduler: 'dpmpp-2m',
    layout: { boxes, injection: true, isolation: false, reinit: false, ...(guidance ? { guidance } : {}) },
  };
}
