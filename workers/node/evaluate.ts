// Node only: `evaluate` runs a testbed. Each run is generated, written as a PNG (scene and report
// inside), scored by the CLIP scorer and appended to results.csv at once, so an interrupted
// evaluation resumes where it stopped; rows whose run settings changed are made again. summary.json
// is rewritten at the end from every row of the testbed's current runs.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { deflateSync } from 'node:zlib';
import { nodeInflate } from './files.ts';
import type { ImageData8, LoraInfo, ScoreConcept } from '../api/contract.ts';
import { EngineError } from '../api/errors.ts';
import type { Engine } from '../engine/engine.ts';
import { decodePng, encodePng, PngError, REPORT_CHUNK, SCENE_CHUNK } from '../engine/png.ts';
import type { ClipScorer } from '../eval/scorer.ts';
import { sceneScoreRequest } from '../eval/scores.ts';
import { csvHeader, csvLine, parseResultsCsv, summariseRows, type ResultRow } from '../eval/stats.ts';
import { expandTestbed, type Testbed, type TestbedRun } from '../eval/testbed.ts';
import { sceneJob, type SceneLora } from '../layout/scene.ts';
import { attachSceneLoras } from './scene-loras.ts';
import { NodeFileSource } from './files.ts';

export interface EvaluateOptions {
  testbed: Testbed;
  /** The testbed file's folder: LoRA files and references are found relative to it. */
  base: string;
  out: string;
  engine: Engine;
  scorer: ClipScorer;
  modelName: string;
  baseline: string;
  limit?: number;
  /** A progress line (a bar on a terminal, a line per run otherwise). */
  progress: (done: number, total: number, run: TestbedRun, etaMs: number) => void;
}

export interface EvaluateOutcome {
  planned: number;
  made: number;
  reused: number;
  rows: ResultRow[];
  /** What summary.json holds. */
  summary: ReturnType<typeof summariseRows>;
}

const slug = (s: string) => s.replace(/[^\w.+-]+/g, '_');

function readImage(path: string, bytes: Uint8Array): ImageData8 {
  try {
    return decodePng(bytes, nodeInflate);
  } catch (e) {
    if (e instanceof PngError) throw new EngineError('io', `The reference image ${path} cannot be used: ${e.problem}.`);
    throw new EngineError('io', `The reference image ${path} cannot be used: ${(e as Error).message}.`);
  }
}

export async function evaluate(o: EvaluateOptions): Promise<EvaluateOutcome> {
  const { testbed: t, engine, scorer } = o;
  const runs = expandTestbed(t).slice(0, o.limit ?? Infinity);
  await mkdir(o.out, { recursive: true });
  const csvPath = join(o.out, 'results.csv');
  // The settings a row was made with: a changed scene, method, LoRA, model or scorer means a new row.
  const loraFiles = Object.fromEntries(Object.entries(t.loras).map(([id, l]) => [id, { file: l.file, scale: l.scale }]));
  const config = (r: TestbedRun) =>
    createHash('sha256')
      .update(JSON.stringify({ job: r.job, loraFiles, model: o.modelName, scorer: scorer.name, ...(t.embeddings.length ? { embeddings: t.embeddings } : {}) }))
      .digest('hex')
      .slice(0, 12);
  const wanted = new Map(runs.map((r) => [r.key, config(r)]));
  const rowKey = (r: ResultRow) => `${r.scene}|${r.method}|${r.seed}`;
  let kept: ResultRow[] = [];
  if (existsSync(csvPath)) {
    try {
      kept = parseResultsCsv(await readFile(csvPath, 'utf8')).filter((r) => wanted.get(rowKey(r)) === r.config);
    } catch (e) {
      throw new EngineError('io', `${csvPath} is not a results file of this version (${(e as Error).message}); choose another --out.`);
    }
  }
  // Rewrite the file with the rows kept (an interrupted last line and stale rows go).
  await writeFile(`${csvPath}.tmp`, csvHeader() + kept.map(csvLine).join(''));
  await rename(`${csvPath}.tmp`, csvPath);
  const done = new Set(kept.map(rowKey));
  const todo = runs.filter((r) => !done.has(r.key));

  const loaded = new Map<string, LoraInfo>();
  const embeddings = [];
  for (const file of t.embeddings) embeddings.push(await engine.loadEmbedding(await NodeFileSource.open(resolve(o.base, file))));
  const refs = new Map<string, ImageData8>();
  const concept = async (l: SceneLora): Promise<ScoreConcept> => {
    const def = t.loras[l.name];
    const references: { id: string; image: ImageData8 }[] = [];
    for (const r of def.references) {
      const path = resolve(o.base, r);
      if (!refs.has(path)) {
        let bytes: Uint8Array;
        try {
          bytes = new Uint8Array(await readFile(path));
        } catch {
          throw new EngineError('io', `The reference image ${path} of the LoRA ${l.name} does not exist.`);
        }
        refs.set(path, readImage(path, bytes));
      }
      references.push({ id: path, image: refs.get(path)! });
    }
    return { name: l.name, trigger: def.trigger, classWord: def.classWord, references };
  };

  const rows = [...kept];
  const started = Date.now();
  for (const [i, run] of todo.entries()) {
    o.progress(kept.length + i, runs.length, run, i ? ((Date.now() - started) / i) * (todo.length - i) : NaN);
    const scene = run.job;
    const job = sceneJob(scene);
    await attachSceneLoras(engine, job, scene, (l) => resolve(o.base, t.loras[l.name].file), loaded);
    const result = await engine.generate(job);
    const image = join('images', slug(run.scene), `${slug(run.method)}-${run.seed}.png`);
    const png = await encodePng(result.image.data, result.image.width, result.image.height, { [SCENE_CHUNK]: JSON.stringify(scene), [REPORT_CHUNK]: JSON.stringify(result.report) }, (d) => deflateSync(d));
    await mkdir(dirname(join(o.out, image)), { recursive: true });
    await writeFile(join(o.out, image), png);
    const s = await scorer.score(await sceneScoreRequest(result.image, scene, concept));
    const r = result.report;
    const row: ResultRow = {
      scene: run.scene,
      method: run.method,
      seed: run.seed,
      loras: run.loraCount,
      boxes: scene.boxes.length,
      clipScore: s.clipScore,
      clipScorePrompt: s.clipScorePrompt,
      global: s.global,
      textSimilarity: s.textSimilarity,
      textSimilarityRaw: s.textSimilarityRaw,
      imageSimilarity: s.imageSimilarity,
      imageSimilarityFirst: s.imageSimilarityFirst,
      unetEvaluations: r.unetEvaluations,
      unetGMacs: r.unetMultiplyAdds / 1e9,
      profileEvaluations: r.composition.unetEvaluations.profile,
      totalMs: r.timingsMs.totalMs,
      denoiseMs: r.timingsMs.denoiseMs,
      image,
      config: wanted.get(run.key)!,
    };
    await appendFile(csvPath, csvLine(row));
    rows.push(row);
  }
  for (const info of loaded.values()) engine.unloadLora(info.id);
  for (const e of embeddings) engine.unloadEmbedding(e.id);
  const order = new Map(runs.map((r, i) => [r.key, i]));
  rows.sort((a, b) => order.get(rowKey(a))! - order.get(rowKey(b))!);
  const summary = {
    testbed: t.name,
    model: o.modelName,
    scorer: scorer.info,
    adapter: engine.adapter,
    runs: { planned: runs.length, made: todo.length, reused: kept.length },
    baseline: o.baseline,
    ...summariseRows(rows, o.baseline),
  };
  await writeFile(join(o.out, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
  return { planned: runs.length, made: todo.length, reused: kept.length, rows, summary };
}

