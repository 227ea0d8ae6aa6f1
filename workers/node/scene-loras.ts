// Node only: a scene's LoRAs into its job. Each scene LoRA's file (where `pathOf` finds it) is loaded
// into the engine once, however many boxes and runs use it; `loaded` keeps them across calls.
import type { EmbeddingInfo, GenerateJob, LoraInfo } from '../api/contract.ts';
import type { Engine } from '../engine/engine.ts';
import { scenePresetScale, type Scene, type SceneEmbedding, type SceneLora } from '../layout/scene.ts';
import { NodeFileSource } from './files.ts';

export async function attachSceneLoras(
  engine: Engine,
  job: GenerateJob,
  scene: Scene,
  pathOf: (l: SceneLora) => string,
  loaded = new Map<string, LoraInfo>(),
  onLoad: (info: LoraInfo) => void = () => {},
): Promise<Map<string, LoraInfo>> {
  const use = async (l: SceneLora) => {
    const path = pathOf(l);
    if (!loaded.has(path)) {
      const info = await engine.loadLora(await NodeFileSource.open(path));
      onLoad(info);
      loaded.set(path, info);
    }
    return { lora: loaded.get(path)!.id, scale: presetScale ?? l.scale, ...(l.category ? { category: l.category } : {}), ...(l.trigger ? { trigger: l.trigger } : {}) };
  };
  const presetScale = scenePresetScale(scene);
  job.loras ??= [];
  for (const l of scene.loras) job.loras.push(await use(l));
  for (const [n, b] of scene.boxes.entries()) for (const l of b.loras) job.layout!.boxes[n].loras.push(await use(l));
  return loaded;
}

/** A scene's textual-inversion embeddings into the engine, each file once (`loaded` keeps them). */
export async function attachSceneEmbeddings(engine: Engine, scene: Scene, pathOf: (e: SceneEmbedding) => string, loaded = new Map<string, EmbeddingInfo>()): Promise<Map<string, EmbeddingInfo>> {
  for (const e of scene.embeddings ?? []) {
    const path = pathOf(e);
    if (!loaded.has(path)) loaded.set(path, await engine.loadEmbedding(await NodeFileSource.open(path)));
  }
  return loaded;
}
