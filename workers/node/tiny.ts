// The tiny test model on disk and an engine on it with some of its test LoRAs: the set-up the engine
// tests, the benchmarks and the e2e comparisons share.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LoraInfo } from '../api/contract.ts';
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
