// `npm run cli -- <command>`: the engine in Node, on Dawn's WebGPU (or the wasm EP).
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { deflateSync } from 'node:zlib';
import type { CompositionOptions, GenerateJob, ImageData8, LoraInfo, Precision, SchedulerId } from './api/contract.ts';
import { attachSceneEmbeddings, attachSceneLoras } from './node/scene-loras.ts';
import { FileProfileStore } from './node/profile-store.ts';
import { applyPreset, paperSettings, PRESETS, type PresetName } from './composition/presets.ts';
import { isLoraCategory, type LoraCategory } from './lora/category.ts';
import { isMethodId, METHOD_IDS } from './composition/plan.ts';
import { GUIDANCE_MAX_SCALE } from './layout/guidance.ts';
import { GUIDANCE_SCENE_DEFAULTS, MAX_BOXES, parseSceneText, sceneJob, type Scene, type SceneLora } from './layout/scene.ts';
import { LAYOUT_DEFAULTS } from './layout/options.ts';
import { parsePicture, type ScenePicture, type StudioScene } from './layout/scene-picture.ts';
import { decodeMask } from './layout/mask-codec.ts';
import { EngineError } from './api/errors.ts';
import { SD15_CONFIG, TINY_CONFIG, type ModelConfig } from './checkpoint/config.ts';
import { planMemory } from './engine/memory-plan.ts';
import { DEFAULT_BUFFER_LIMIT } from './graph/builder.ts';
import { LDM_CLIP_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX } from './checkpoint/layout.ts';
import { ModelCheckpoint } from './checkpoint/model.ts';
import { Engine, validateJob } from './engine/engine.ts';
import { decodePng, encodePng, PngError, readPngText, REPORT_CHUNK, SCENE_CHUNK } from './engine/png.ts';
import { resizeBicubic } from './eval/preprocess.ts';
import { createRuntime, type Backend, type Runtime } from './engine/runtime.ts';
import { ClipScorer } from './eval/scorer.ts';
import { sceneScoreRequest } from './eval/scores.ts';
import { parseTestbed } from './eval/testbed.ts';
import { makeTinyClip, tinyClipFiles } from './eval/tiny-clip.ts';
import { tinyTestbedFiles } from './eval/tiny-testbed.ts';
import { evaluate } from './node/evaluate.ts';
import { fetchScorer, openScorerDir } from './node/scorer-files.ts';
import { DEFAULT_SCORER, SCORER_DTYPES, type ScorerDtype } from './eval/scorer-layout.ts';
import { makeTinyModel, tinyModelFiles } from './engine/test-model.ts';
import { openLora } from './lora/load.ts';
import { NodeFileSource, nodeInflate, openModelPath, tokenizerCacheDir, writeParts } from './node/files.ts';
import { installNodeWebGpu } from './node/webgpu.ts';
import { soak } from './node/soak.ts';
import { openTinyEngine, writeTinyModel } from './node/tiny.ts';
import type { TokenizerFiles } from './text/tokenizer.ts';

class UsageError extends Error {}

const USAGE = `usage: npm run cli -- <command> [options]
  make-test-model --out DIR
  inspect --model PATH
  generate --model PATH --prompt TEXT [--negative TEXT] [--steps N] [--cfg X] [--seed N]
           [--width W --height H] [--scheduler ddim|euler-a|euler|dpmpp-2m|dpmpp-2m-karras|lcm|tcd|heun]
           [--clip-skip N] [--backend webgpu|wasm] [--precision auto|fp32|fp16] [--memory-budget BYTES]
           [--lora FILE[:SCALE]]... [--embedding FILE]... [--method none|merge|switch|composite|cmlora]
           [--preset paper] [--deep-cache-interval N] [--switch-step N]
           [cmlora: --partition category|profile] [--cache deep|prediction|off] [--cache-interval N]
           [--profiling offline|online] [--profile-steps N] [--cutoff X] [--threshold X]
           [--high-phase X] [--cache-high N] [--cache-low N] [--dom-coeff X] [--sync] [--research]]
           [--init-image FILE.png [--strength X] [--mask MASK.png [--mask-blur PX] [--only-masked PADDING]]]
           [--hires-scale X [--hires-strength Y] [--hires-steps N] [--hires-upscaler latent|image]] [--vae FILE]
           --out FILE.png [--report FILE.json]
  generate --model PATH --scene scene.json --out FILE.png [--report FILE.json]   (a layout scene)
           [--guidance off|ce,fill,region] [--guidance-scale X] [--guidance-share X] [--guidance-last-step N]
           [--no-early-stop] [--masks covered|centre] [--isolation-scope concepts|regions]
           [--region-base model|frame] [--region-negative concept|frame] [--region-output own|shared]
  inspect-lora --lora FILE [--model PATH]
  evaluate --testbed FILE.json --out DIR [--model PATH] [--clip DIR|OWNER/NAME] [--clip-dtype fp32|fp16|q8]
           [--backend webgpu|wasm] [--precision auto|fp32|fp16] [--baseline METHOD] [--limit N]
  score --image FILE.png [--clip DIR|OWNER/NAME] [--clip-dtype fp32|fp16|q8] [--backend webgpu|wasm]
  plan [--architecture sd15|tiny] [--width W --height H] [--precision fp16|fp32] [--cfg X]
       [--attention fused|chunked] [--buffer-limit BYTES] [--budget BYTES] [--loras N --rank R]
       [--cached-features N] [--graph-capture] [--boxes N [--no-guidance]] [--from-picture]
       (the memory plan as JSON, from the graphs: no checkpoint, nothing allocated; --boxes: a
       layout as the studio makes one, its guidance and re-initialisation on unless --no-guidance;
       --from-picture: the job encodes a start picture)
  soak [--runs N] [--seed N] [--cancel-share X] [--sizes 64,128] [--max-steps N] [--out FILE.json]
       (random scenes and methods on the tiny model, a share cancelled; GPU bytes and memory watched)`;

/** Parse a command's flags: `strings` take a value; `others` are switches and repeatable flags. */
function parse(args: string[], strings: string[], others: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = {}) {
  const options = { ...Object.fromEntries(strings.map((name) => [name, { type: 'string' as const }])), ...others };
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values as Record<string, string | undefined> & { lora?: string | string[]; embedding?: string | string[]; sync?: boolean };
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]);
  }
}

function num(v: string | undefined, name: string, fallback: number, integer = true): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new UsageError(`--${name} must be ${integer ? 'a whole number' : 'a number'}, got "${v}"`);
  return n;
}

async function makeTestModel(args: string[]) {
  const o = parse(args, ['out', 'seed']);
  if (!o.out) throw new UsageError('make-test-model needs --out DIR');
  const model = makeTinyModel(num(o.seed, 'seed', 1234));
  for (const f of tinyModelFiles(model)) await writeParts(join(o.out, f.path), f.parts);
  for (const f of tinyClipFiles(makeTinyClip())) await writeParts(join(o.out, 'clip', f.path), f.parts);
  for (const f of await tinyTestbedFiles((d) => deflateSync(d))) await writeParts(join(o.out, f.path), f.parts);
  console.log(JSON.stringify({ out: o.out, model: join(o.out, 'tiny-sd15.safetensors'), diffusers: join(o.out, 'diffusers') }));
}

async function inspect(args: string[]) {
  const o = parse(args, ['model']);
  if (!o.model) throw new UsageError('inspect needs --model PATH');
  const { files } = await openModelPath(o.model);
  const ckpt = await ModelCheckpoint.open(files);
  const dtypes: Record<string, number> = {};
  const params = { unet: 0, textEncoder: 0, vae: 0, other: 0 };
  // buffers saved beside the weights (CLIP's position_ids) are not parameters
  const buffers: Record<string, number> = {};
  const seen = new Set<string>();
  for (const c of ['unet', 'textEncoder', 'vae'] as const) {
    const file = ckpt.fileOf(c);
    for (const key of file.keys()) {
      if (seen.has(`${file.name}:${key}`)) continue;
      seen.add(`${file.name}:${key}`);
      const info = file.info(key)!;
      dtypes[info.dtype] = (dtypes[info.dtype] ?? 0) + 1;
      const n = info.shape.reduce((a, b) => a * b, 1);
      if (/(^|\.)position_ids$/.test(key)) {
        buffers[key] = n;
        continue;
      }
      const component =
        ckpt.layout === 'diffusers' ? c : key.startsWith(LDM_UNET_PREFIX) ? 'unet' : key.startsWith(LDM_CLIP_PREFIX) ? 'textEncoder' : key.startsWith(LDM_VAE_PREFIX) ? 'vae' : 'other';
      params[component] += n;
    }
  }
  console.log(
    JSON.stringify(
      { architecture: 'sd15', layout: ckpt.layout, dtypes, parameters: params, buffers, config: ckpt.config, metadata: ckpt.fileOf('unet').metadata },
      null,
      2,
    ),
  );
}

async function resolveTokenizer(found: TokenizerFiles | undefined): Promise<TokenizerFiles> {
  if (found) return found;
  // A single-file checkpoint carries no tokenizer: fetch CLIP ViT-L/14's once, then keep it.
  const dir = tokenizerCacheDir();
  const base = 'https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/';
  try {
    const [vocabJson, mergesTxt] = await Promise.all(
      ['vocab.json', 'merges.txt'].map(async (f) => {
        const r = await fetch(base + f);
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        return r.text();
      }),
    );
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'vocab.json'), vocabJson);
    await writeFile(join(dir, 'merges.txt'), mergesTxt);
    return { vocabJson, mergesTxt };
  } catch (e) {
    throw new EngineError(
      'tokenizer',
      `No tokenizer found beside the model (tokenizer/) or in ${dir}, and fetching CLIP ViT-L/14's failed (${(e as Error).message}).`,
    );
  }
}

const warnUnmatched = (info: LoraInfo) => {
  for (const u of info.keysUnmatched) console.error(`warning: ${info.name}: layer ${u.key} not applied (${u.reason})`);
};

async function generate(args: string[]) {
  const o = parse(
    args,
    ['model', 'prompt', 'negative', 'steps', 'cfg', 'seed', 'width', 'height', 'scheduler', 'clip-skip', 'backend', 'precision', 'out', 'report', 'memory-budget'].concat(
      ['method', 'switch-step', 'profiling', 'profile-steps', 'cutoff', 'threshold', 'high-phase', 'cache-high', 'cache-low', 'dom-coeff'],
      ['cache', 'cache-interval', 'partition', 'deep-cache-interval', 'preset'],
      ['scene', 'guidance', 'guidance-scale', 'guidance-share', 'guidance-last-step'],
      ['init-image', 'strength', 'mask', 'mask-blur', 'only-masked', 'hires-scale', 'hires-strength', 'hires-steps', 'hires-upscaler', 'vae'],
      LAYOUT_FLAGS.map((f) => f.flag),
    ),
    { lora: { type: 'string', multiple: true }, embedding: { type: 'string', multiple: true }, sync: { type: 'boolean' }, research: { type: 'boolean' }, 'no-early-stop': { type: 'boolean' } },
  );
  if (!o.model) throw new UsageError('generate needs --model PATH');
  const loraArgs = ((o.lora ?? []) as string[]).map(parseLoraArg);
  if (o.scene) {
    const clash = ['prompt', 'negative', 'steps', 'cfg', 'seed', 'width', 'height', 'scheduler', 'lora', 'method'].find((k) => o[k] !== undefined);
    if (clash) throw new UsageError(`--${clash} cannot be combined with --scene: the scene file holds it`);
  } else {
    if (o.prompt === undefined) throw new UsageError('generate needs --prompt TEXT (or --scene FILE)');
    const stray = ['guidance', 'guidance-scale', 'guidance-share', 'guidance-last-step', 'no-early-stop', ...LAYOUT_FLAGS.map((f) => f.flag)].find((k) => o[k] !== undefined);
    if (stray) throw new UsageError(`--${stray} needs --scene: it acts on a layout's boxes`);
  }
  if (!o.out) throw new UsageError('generate needs --out FILE.png');
  const backend = backendArg(o.backend);
  const precision = precisionArg(o.precision);
  const preset = o.preset;
  if (preset !== undefined && !(PRESETS as string[]).includes(preset)) throw new UsageError(`--preset must be one of ${PRESETS.join(', ')}, got "${preset}"`);
  const sceneFile = o.scene ? await readScene(o.scene) : undefined;
  const read = sceneFile ? guidanceArgs(sceneFile, o) : undefined;
  const scene = read && preset ? { ...read, preset: preset as PresetName } : read;
  const initPicture = o['init-image'] ? await readPicture(o['init-image'], 'init-image') : undefined;
  // without --width/--height, a start picture sets the size (its sides down to multiples of 64)
  const side = (v: number) => Math.max(64, Math.min(2048, Math.floor(v / 64) * 64));
  let job: GenerateJob = scene ? sceneJob(scene) : {
    prompt: o.prompt!,
    negative: o.negative ?? '',
    steps: num(o.steps, 'steps', 20),
    cfg: num(o.cfg, 'cfg', 7.5, false),
    seed: num(o.seed, 'seed', 0),
    width: num(o.width, 'width', initPicture ? side(initPicture.width) : 512),
    height: num(o.height, 'height', initPicture ? side(initPicture.height) : 512),
    scheduler: (o.scheduler ?? 'dpmpp-2m') as SchedulerId,
    clipSkip: num(o['clip-skip'], 'clip-skip', 1),
    composition: compositionArgs(o, loraArgs.length),
  };
  if (scene) job.clipSkip = num(o['clip-skip'], 'clip-skip', 1);
  // nothing shows a live preview here: the latent stays on the GPU until the end
  job.previewEvery = 0;
  if (o['memory-budget'] !== undefined) job.memoryBudget = num(o['memory-budget'], 'memory-budget', 0, false);
  job = await pictureArgs(job, o, initPicture, sceneFile?.picture);
  // the authors' settings, but for those given as flags
  const presetSettings = preset && !scene ? paperSettings(job.composition?.method ?? (loraArgs.length ? 'merge' : 'none'), false) : undefined;
  if (presetSettings) job = applyPreset(job, presetSettings, new Set(['steps', 'cfg', 'seed', 'width', 'height', 'scheduler', 'scale'].filter((k) => o[k] !== undefined)));
  try {
    if (!scene) validateJob(job);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const { engine } = await openEngine(o.model, backend, precision);
  if (o.vae) {
    const info = await engine.loadVae(await NodeFileSource.open(o.vae));
    console.error(`VAE: ${info.vaeFile}`);
  }
  job.loras = [];
  for (const l of loraArgs) {
    const info = await engine.loadLora(await NodeFileSource.open(l.path));
    warnUnmatched(info);
    const scale = !l.explicitScale && presetSettings?.loraScale !== undefined ? presetSettings.loraScale : l.scale;
    job.loras.push({ lora: info.id, scale, ...(l.category ? { category: l.category } : {}) });
  }
  for (const path of (o.embedding ?? []) as string[]) {
    const info = await engine.loadEmbedding(await NodeFileSource.open(path));
    console.error(`embedding "${info.name}": ${info.vectors} vector(s) from ${path}`);
  }
  if (scene) {
    // the scene names LoRAs and embeddings; they are looked up beside the scene file, or in its
    // loras/ (embeddings/) folder
    const dir = dirname(o.scene!);
    const find = (name: string, kind: string, folder: string) => {
      const path = [join(dir, name), join(dir, folder, name)].find((p) => existsSync(p));
      if (!path) throw new EngineError('io', `The scene uses the ${kind} "${name}", which is not in ${dir} or ${join(dir, folder)}.`);
      return path;
    };
    await attachSceneLoras(engine, job, scene, (l: SceneLora) => find(l.name, 'LoRA', 'loras'), undefined, warnUnmatched);
    await attachSceneEmbeddings(engine, scene, (e) => find(e.name, 'embedding', 'embeddings'));
    validateJob(job);
  }
  let lastLine = 0;
  const result = await engine.generate(job, (e) => {
    if (!process.stderr.isTTY) return;
    const now = Date.now();
    if (now - lastLine < 200 && e.phase === 'denoise' && e.step < e.total) return;
    lastLine = now;
    process.stderr.write(`\r${e.phase} ${e.step}/${e.total} ${(e.elapsedMs / 1000).toFixed(1)}s   `);
  });
  if (process.stderr.isTTY) process.stderr.write('\n');
  for (const w of result.report.warnings) console.error(`warning: ${w}`);
  const png = await encodePng(result.image.data, result.image.width, result.image.height, { [REPORT_CHUNK]: JSON.stringify(result.report) }, (d) => deflateSync(d));
  await mkdir(dirname(o.out), { recursive: true });
  await writeFile(o.out, png);
  if (o.report) {
    await mkdir(dirname(o.report), { recursive: true });
    await writeFile(o.report, JSON.stringify(result.report, null, 2));
  }
  const c = result.report.composition;
  console.log(
    JSON.stringify({
      out: o.out,
      steps: job.steps,
      method: c.method,
      unetEvaluations: result.report.unetEvaluations,
      order: c.order.map((i) => c.loras[i]),
      ...(result.report.guidance ? { guidanceLoss: result.report.guidance.steps.map((s) => Number(s.loss.toFixed(4))), guidanceStoppedAt: result.report.guidance.stoppedAt } : {}),
      totalMs: Math.round(result.report.timingsMs.totalMs),
    }),
  );
  engine.unload();
}

/** A PNG as RGBA, with what went wrong said in the flag's name. */
async function readPicture(path: string, flag: string): Promise<ImageData8> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (e) {
    throw new UsageError(`--${flag}: cannot read ${path} (${(e as Error).message})`);
  }
  try {
    return decodePng(bytes, nodeInflate);
  } catch (e) {
    throw new UsageError(`--${flag}: ${path} is not a PNG we can read (${(e as Error).message})`);
  }
}

/**
 * Image to image, inpainting and hires fix flags over a scene's picture settings (the flags win):
 * pictures resized to the job's size (A1111's "just resize"). A scene holds no picture, so its
 * strength and mask act with --init-image; its hires fix acts alone.
 */
async function pictureArgs(job: GenerateJob, o: Record<string, string | boolean | string[] | undefined>, picture: ImageData8 | undefined, fromScene?: ScenePicture): Promise<GenerateJob> {
  const str = (k: string) => o[k] as string | undefined;
  const fit = (img: ImageData8, what: string) => {
    if (img.width === job.width && img.height === job.height) return img;
    console.error(`${what} is ${img.width}x${img.height}: resized to ${job.width}x${job.height}`);
    return resizeBicubic(img, job.width, job.height);
  };
  for (const k of ['strength', 'mask', 'mask-blur', 'only-masked']) if (str(k) !== undefined && !picture) throw new UsageError(`--${k} needs --init-image FILE.png`);
  for (const k of ['mask-blur', 'only-masked']) if (str(k) !== undefined && !str('mask')) throw new UsageError(`--${k} needs --mask MASK.png`);
  for (const k of ['hires-strength', 'hires-steps', 'hires-upscaler']) if (str(k) !== undefined && !str('hires-scale')) throw new UsageError(`--${k} needs --hires-scale X`);
  let out = job;
  if (fromScene?.mask && !picture) console.error('warning: the scene has an inpainting mask, which needs --init-image FILE.png; it is not used');
  if (picture) {
    const image = fit(picture, 'the start picture');
    const init: NonNullable<GenerateJob['init']> = { image, strength: num(str('strength'), 'strength', fromScene?.strength ?? 0.75, false) };
    if (fromScene?.mask && !str('mask')) {
      try {
        init.mask = await decodeMask(fromScene.mask, { width: job.width, height: job.height });
      } catch (e) {
        throw new UsageError(`the scene's mask: ${(e as Error).message}`);
      }
      init.maskBlur = fromScene.maskBlur;
      if (fromScene.onlyMasked) init.onlyMaskedPadding = fromScene.padding;
    }
    if (str('mask')) {
      // white repaints, black keeps: the mask's brightness (alpha over black)
      const m = fit(await readPicture(str('mask')!, 'mask'), 'the mask');
      init.mask = Uint8Array.from({ length: m.width * m.height }, (_, p) => Math.round(((m.data[p * 4] + m.data[p * 4 + 1] + m.data[p * 4 + 2]) / 3) * (m.data[p * 4 + 3] / 255)));
      if (str('mask-blur') !== undefined) init.maskBlur = num(str('mask-blur'), 'mask-blur', 4, false);
      if (str('only-masked') !== undefined) init.onlyMaskedPadding = num(str('only-masked'), 'only-masked', 32);
    }
    out = { ...out, init };
  }
  const sceneHires = fromScene?.hires.enabled && !picture && str('hires-scale') === undefined ? fromScene.hires : undefined;
  if (sceneHires) out = { ...out, hires: { scale: sceneHires.scale, strength: sceneHires.strength, upscaler: sceneHires.upscaler, ...(sceneHires.steps ? { steps: sceneHires.steps } : {}) } };
  if (str('hires-scale') !== undefined) {
    const upscaler = str('hires-upscaler') ?? 'latent';
    if (upscaler !== 'latent' && upscaler !== 'image') throw new UsageError(`--hires-upscaler takes latent or image (got "${upscaler}")`);
    out = {
      ...out,
      hires: {
        scale: num(str('hires-scale'), 'hires-scale', 2, false),
        strength: num(str('hires-strength'), 'hires-strength', 0.7, false),
        ...(str('hires-steps') !== undefined ? { steps: num(str('hires-steps'), 'hires-steps', 20) } : {}),
        upscaler,
      },
    };
  }
  return out;
}

/** --guidance and its settings over the scene file's (the flags win). */
function guidanceArgs(scene: Scene, o: Record<string, string | boolean | string[] | undefined>): Scene {
  const list = o.guidance as string | undefined;
  const ablation = { ...scene.ablation };
  if (list !== undefined) {
    const terms = list === 'off' ? [] : list.split(',').map((t) => t.trim());
    const bad = terms.find((t) => !['ce', 'fill', 'region'].includes(t));
    if (bad !== undefined || (list !== 'off' && !terms.length)) throw new UsageError(`--guidance takes off or a list of ce, fill, region (got "${list}")`);
    for (const k of ['ce', 'fill', 'region'] as const) ablation[k] = terms.includes(k);
  }
  const g = { ...GUIDANCE_SCENE_DEFAULTS, ...scene.guidance };
  if (o['guidance-scale'] !== undefined) g.scale = num(o['guidance-scale'] as string, 'guidance-scale', 0, false);
  if (o['guidance-share'] !== undefined) g.share = num(o['guidance-share'] as string, 'guidance-share', 0, false);
  if (o['guidance-last-step'] !== undefined) g.lastStep = num(o['guidance-last-step'] as string, 'guidance-last-step', 25);
  if (o['no-early-stop']) g.earlyStop = false;
  if (g.scale < 0 || g.scale > GUIDANCE_MAX_SCALE) throw new UsageError(`--guidance-scale must be from 0 to ${GUIDANCE_MAX_SCALE}, got ${g.scale}`);
  if (g.share < 0 || g.share > 1) throw new UsageError(`--guidance-share must be from 0 to 1, got ${g.share}`);
  const layout = { ...scene.layout };
  for (const f of LAYOUT_FLAGS) {
    const v = o[f.flag] as string | undefined;
    if (v === undefined) continue;
    if (!f.values.includes(v)) throw new UsageError(`--${f.flag} takes ${f.values.join(' or ')} (got "${v}")`);
    (layout as Record<string, string>)[f.key] = v;
  }
  return { ...scene, ablation, guidance: g, ...(Object.keys(layout).length ? { layout } : {}) };
}

/** LoRA-Composer's choices as flags: the first value is the code's (the default). */
const LAYOUT_FLAGS = [
  { flag: 'masks', key: 'masks', values: ['covered', 'centre'] },
  { flag: 'isolation-scope', key: 'isolationScope', values: ['concepts', 'regions'] },
  { flag: 'region-base', key: 'regionBase', values: ['model', 'frame'] },
  { flag: 'region-negative', key: 'regionNegative', values: ['concept', 'frame'] },
  { flag: 'region-output', key: 'regionOutput', values: ['own', 'shared'] },
];

/** A file named on the command line; a missing one is a sentence. */
async function readInput(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch {
    throw new EngineError('io', `Cannot open ${path}: no such file.`);
  }
}

/** A scene file, with the studio's picture settings (strength, mask, hires fix) when it has them. */
async function readScene(path: string): Promise<StudioScene> {
  const text = (await readInput(path)).toString('utf8');
  const scene = parseSceneText(text);
  const raw = JSON.parse(text) as { picture?: unknown };
  return raw.picture === undefined ? scene : { ...scene, picture: parsePicture(raw.picture, scene) };
}

/** --method and its options; options another method does not use are refused, not ignored. */
function compositionArgs(o: Record<string, string | boolean | string[] | undefined>, loraCount: number): CompositionOptions | undefined {
  const method = (o.method as string | undefined) ?? (loraCount ? 'merge' : 'none');
  if (!isMethodId(method)) throw new UsageError(`--method must be one of ${METHOD_IDS.join(', ')}, got "${o.method}"`);
  const str = (k: string) => o[k] as string | undefined;
  const cmlora = ['switch-step', 'profiling', 'profile-steps', 'cutoff', 'threshold', 'high-phase', 'cache-high', 'cache-low', 'dom-coeff', 'sync', 'cache', 'cache-interval', 'partition', 'research'];
  const given = [...cmlora, 'deep-cache-interval'].filter((k) => o[k] !== undefined);
  const allowed: Record<string, string[]> = {
    none: ['deep-cache-interval'],
    merge: ['deep-cache-interval'],
    switch: ['switch-step', 'deep-cache-interval'],
    composite: ['deep-cache-interval'],
    cmlora: [...cmlora, 'deep-cache-interval'],
  };
  const stray = given.filter((k) => !allowed[method].includes(k));
  if (stray.length) throw new UsageError(`--${stray[0]} does not apply to --method ${method}`);
  const profiling = str('profiling');
  if (profiling !== undefined && profiling !== 'offline' && profiling !== 'online') throw new UsageError(`--profiling must be offline or online, got "${profiling}"`);
  const opt = (k: string, integer: boolean) => (str(k) === undefined ? undefined : num(str(k), k, 0, integer));
  const choice = <T extends string>(k: string, values: T[]): T | undefined => {
    const v = str(k);
    if (v !== undefined && !values.includes(v as T)) throw new UsageError(`--${k} must be ${values.join(' or ')}, got "${v}"`);
    return v as T | undefined;
  };
  const options: CompositionOptions = {
    method,
    switchStep: opt('switch-step', true),
    profiling: profiling as CompositionOptions['profiling'],
    profileSteps: opt('profile-steps', true),
    cutoff: opt('cutoff', false),
    threshold: opt('threshold', false),
    highPhase: opt('high-phase', false),
    cacheHigh: opt('cache-high', true),
    cacheLow: opt('cache-low', true),
    domCoeff: opt('dom-coeff', false),
    async: o.sync ? false : undefined,
    cache: choice('cache', ['deep', 'prediction', 'off']),
    cacheInterval: opt('cache-interval', true),
    partition: choice('partition', ['category', 'profile']),
    deepCacheInterval: opt('deep-cache-interval', true),
    research: o.research ? true : undefined,
  };
  for (const k of Object.keys(options) as (keyof CompositionOptions)[]) if (options[k] === undefined) delete options[k];
  return options;
}

/** FILE or FILE:SCALE (the scale is the multiplier, 1 when left out). */
/** FILE, FILE:SCALE or FILE:SCALE:CATEGORY (the scale is the multiplier, 1 when left out; the category one of ComposLoRA's). */
export function parseLoraArg(arg: string): { path: string; scale: number; explicitScale: boolean; category?: LoraCategory } {
  const c = arg.match(/^(.*):([a-z]+)$/);
  const category = c && isLoraCategory(c[2]) ? c[2] : undefined;
  const rest = category ? c![1] : arg;
  const m = rest.match(/^(.*):(-?\d*\.?\d+(?:e-?\d+)?)$/i);
  const path = m ? m[1] : rest;
  const scale = m ? Number(m[2]) : 1;
  if (!path) throw new UsageError(`--lora needs a file, got "${arg}"`);
  if (!Number.isFinite(scale) || Math.abs(scale) > 10) throw new UsageError(`--lora strength must be from -10 to 10, got "${arg}"`);
  return { path, scale, explicitScale: !!m, ...(category ? { category } : {}) };
}

async function inspectLora(args: string[]) {
  const o = parse(args, ['lora', 'model']);
  if (!o.lora) throw new UsageError('inspect-lora needs --lora FILE');
  const config = o.model ? (await ModelCheckpoint.open((await openModelPath(o.model)).files)).config : SD15_CONFIG;
  const lora = await openLora(await NodeFileSource.open(o.lora as string), config);
  const layers = { unet: 0, textEncoder: 0 };
  for (const m of lora.modules) layers[m.target.component]++;
  console.log(
    JSON.stringify({ name: lora.name, format: lora.format, rank: lora.rank, layers, keysMatched: lora.modules.length, keysUnmatched: lora.unmatched, metadata: lora.metadata }, null, 2),
  );
}

/** --clip: a scorer folder, or a hub repository fetched once into the cache. */
async function openScorer(clip: string | undefined, dtype: string | undefined, rt: Runtime): Promise<ClipScorer> {
  const d = (dtype ?? 'fp32') as ScorerDtype;
  if (!SCORER_DTYPES.includes(d)) throw new UsageError(`--clip-dtype must be fp32, fp16 or q8, got "${dtype}"`);
  const source = clip ?? DEFAULT_SCORER;
  const dir = existsSync(source) ? source : await fetchScorer(source, d, (l) => console.error(l));
  return ClipScorer.open(source, await openScorerDir(dir), rt);
}

function backendArg(v: string | undefined): Backend {
  const b = v ?? 'webgpu';
  if (b !== 'webgpu' && b !== 'wasm') throw new UsageError(`--backend must be webgpu or wasm, got "${v}"`);
  return b;
}

function precisionArg(v: string | undefined): Precision {
  const p = v ?? 'auto';
  if (p !== 'auto' && p !== 'fp32' && p !== 'fp16') throw new UsageError('--precision must be auto, fp32 or fp16');
  return p;
}

async function runtimeFor(backend: Backend): Promise<Runtime> {
  if (backend === 'webgpu') await installNodeWebGpu();
  return createRuntime(backend);
}

/** The engine on a model path (a .safetensors file or a diffusers folder), loaded. */
async function openEngine(modelPath: string, backend: Backend, precision: Precision) {
  const { files, tokenizer } = await openModelPath(modelPath);
  // a damaged file is reported as such before a missing tokenizer is looked for (or fetched)
  if (!tokenizer) await ModelCheckpoint.open(files);
  const tok = await resolveTokenizer(tokenizer);
  const engine = new Engine(await runtimeFor(backend));
  // cmlora's LoRA profiles outlive the process (~/.cache/lora-studio/profiles.json, LORA_STUDIO_PROFILES)
  engine.profileStore = new FileProfileStore();
  const info = await engine.loadModel(files, tok, precision);
  return { engine, info };
}

async function evaluateCommand(args: string[]) {
  const o = parse(args, ['testbed', 'out', 'model', 'clip', 'clip-dtype', 'backend', 'precision', 'baseline', 'limit']);
  if (!o.testbed) throw new UsageError('evaluate needs --testbed FILE.json');
  if (!o.out) throw new UsageError('evaluate needs --out DIR');
  const testbed = parseTestbed((await readInput(o.testbed)).toString('utf8'));
  const base = dirname(o.testbed);
  const modelPath = o.model ?? (testbed.model ? resolve(base, testbed.model) : undefined);
  if (!modelPath) throw new UsageError('evaluate needs --model PATH (the testbed names none)');
  const baseline = o.baseline ?? 'composite';
  const limit = o.limit === undefined ? undefined : num(o.limit, 'limit', 0);
  const backend = backendArg(o.backend);
  const { engine, info } = await openEngine(modelPath, backend, precisionArg(o.precision));
  const scorer = await openScorer(o.clip ?? (testbed.scorer ? resolve(base, testbed.scorer) : undefined), o['clip-dtype'], engine.rt);
  const tty = process.stderr.isTTY;
  const outcome = await evaluate({
    testbed,
    base,
    out: o.out,
    engine,
    scorer,
    modelName: info.name,
    baseline,
    limit,
    progress: (done, total, run, eta) => {
      const width = 30;
      const fill = Math.round((done / total) * width);
      const left = Number.isFinite(eta) ? ` eta ${Math.ceil(eta / 1000)}s` : '';
      const line = `[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${done}/${total} ${run.scene} ${run.method} seed ${run.seed}${left}`;
      process.stderr.write(tty ? `\r${line.slice(0, process.stderr.columns ? process.stderr.columns - 1 : 120).padEnd(80)}` : `${line}\n`);
    },
  });
  if (tty) process.stderr.write('\n');
  const { summary } = outcome;
  const fmt = (i: { mean: number; lo: number; hi: number } | null, digits = 2) => (i ? `${i.mean.toFixed(digits)} [${i.lo.toFixed(digits)}, ${i.hi.toFixed(digits)}]` : '-');
  for (const [m, s] of Object.entries(summary.methods)) {
    const p = summary.pairwise[m];
    console.error(`${m.padEnd(14)} CLIPScore ${fmt(s.clipScore)}  text ${fmt(s.textSimilarity, 3)}  image ${fmt(s.imageSimilarity, 3)}  UNet evals ${fmt(s.unetEvaluations, 0)}${p ? `  vs ${p.against}: ${(100 * p.winRate).toFixed(0)}% wins` : ''}`);
  }
  console.log(JSON.stringify({ out: o.out, results: join(o.out, 'results.csv'), summary: join(o.out, 'summary.json'), planned: outcome.planned, made: outcome.made, reused: outcome.reused }));
  engine.unload();
  await scorer.dispose();
}

/** CLIP scores of a studio PNG against the prompts and trigger words its scene chunk holds (no reference images, no class words). */
async function scoreCommand(args: string[]) {
  const o = parse(args, ['image', 'clip', 'clip-dtype', 'backend']);
  if (!o.image) throw new UsageError('score needs --image FILE.png');
  const bytes = new Uint8Array(await readInput(o.image));
  let image: ImageData8;
  let text: Record<string, string>;
  try {
    image = decodePng(bytes, nodeInflate);
    text = readPngText(bytes);
  } catch (e) {
    if (e instanceof PngError) throw new EngineError('io', e.message);
    throw e;
  }
  if (!text[SCENE_CHUNK]) throw new EngineError('io', `${o.image} holds no scene (it was not made by the studio or evaluate), so there are no prompts to score against.`);
  const scene = parseSceneText(text[SCENE_CHUNK]);
  const scorer = await openScorer(o.clip, o['clip-dtype'], await runtimeFor(backendArg(o.backend)));
  const report = await scorer.score(await sceneScoreRequest(image, scene, (l) => ({ name: l.name, trigger: l.trigger })));
  console.log(JSON.stringify(report, null, 2));
  await scorer.dispose();
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  evaluate: evaluateCommand,
  score: scoreCommand,
  'make-test-model': makeTestModel,
  inspect,
  'inspect-lora': inspectLora,
  generate,
  soak: soakCommand,
  plan: planCommand,
};

/** The memory plan of a job as JSON, from the graphs alone: no checkpoint, nothing allocated. */
async function planCommand(args: string[]) {
  const o = parse(args, ['architecture', 'width', 'height', 'precision', 'cfg', 'attention', 'buffer-limit', 'budget', 'loras', 'rank', 'cached-features', 'boxes'], { 'graph-capture': { type: 'boolean' }, 'no-guidance': { type: 'boolean' }, 'from-picture': { type: 'boolean' } });
  // a layout as the studio makes one: regions injected and isolated, re-initialisation and guidance
  // on (--no-guidance: neither of the last two)
  const boxes = num(o.boxes, 'boxes', 0);
  if (boxes < 0 || boxes > MAX_BOXES) throw new UsageError(`--boxes must be from 0 to ${MAX_BOXES}, got "${o.boxes}"`);
  if (o['no-guidance'] && !boxes) throw new UsageError('--no-guidance is for a layout: give --boxes N');
  if (boxes && o['graph-capture']) throw new UsageError('--graph-capture and --boxes: a layout\'s UNet does not replay a captured graph');
  const guided = !o['no-guidance'];
  const architecture = o.architecture ?? 'sd15';
  const configs: Record<string, ModelConfig> = { sd15: SD15_CONFIG, tiny: TINY_CONFIG };
  const config = configs[architecture];
  if (!config) throw new UsageError(`--architecture must be ${Object.keys(configs).join(' or ')}, got "${architecture}"`);
  const precision = o.precision ?? 'fp16';
  if (precision !== 'fp16' && precision !== 'fp32') throw new UsageError(`--precision must be fp16 or fp32, got "${precision}"`);
  const attention = o.attention ?? 'fused';
  if (attention !== 'fused' && attention !== 'chunked') throw new UsageError(`--attention must be fused or chunked, got "${attention}"`);
  const width = num(o.width, 'width', 512);
  const height = num(o.height, 'height', 512);
  if (width % 64 || height % 64 || width < 64 || height < 64 || width > 2048 || height > 2048) throw new UsageError('--width and --height must be multiples of 64 from 64 to 2048');
  const plan = planMemory(config, {
    width,
    height,
    precision,
    cfg: num(o.cfg, 'cfg', 7.5, false) > 1,
    fusedAttention: attention === 'fused',
    bufferLimit: num(o['buffer-limit'], 'buffer-limit', DEFAULT_BUFFER_LIMIT),
    budgetBytes: o.budget === undefined ? undefined : num(o.budget, 'budget', 0),
    loras: { count: num(o.loras, 'loras', 0), rank: num(o.rank, 'rank', 32) },
    cachedFeatures: num(o['cached-features'], 'cached-features', 0),
    // as the engine builds and runs the graphs on WebGPU: sessions in NCHW, where onnxruntime still
    // transposes the k x k convolution weights the UNet does not unfold on every run
    transposesConvWeights: true,
    pointwiseAsIs: true,
    conv: 'auto',
    capturedUnet: !!o['graph-capture'],
    layout: boxes ? { boxes, injection: true, isolation: true, regionOutput: LAYOUT_DEFAULTS.regionOutput, reinit: guided, guidance: guided } : undefined,
    // SD 1.5's files carry the VAE's encoder, and the engine loads it with the decoder
    vaeEncoder: true,
    encodesPicture: !!o['from-picture'],
  });
  console.log(JSON.stringify({ architecture, ...plan }, null, 2));
}

async function soakCommand(args: string[]) {
  const o = parse(args, ['runs', 'seed', 'cancel-share', 'sizes', 'max-steps', 'out']);
  const runs = num(o.runs, 'runs', 200);
  const cancelShare = num(o['cancel-share'], 'cancel-share', 0.2, false);
  if (runs < 1) throw new UsageError('--runs must be at least 1');
  if (!(cancelShare >= 0 && cancelShare <= 1)) throw new UsageError('--cancel-share must be from 0 to 1');
  const sizes = (o.sizes ?? '64').split(',').map((s) => num(s, 'sizes', 64));
  if (sizes.some((s) => s % 64 || s < 64 || s > 512)) throw new UsageError('--sizes takes multiples of 64 from 64 to 512, comma-separated');
  const maxSteps = num(o['max-steps'], 'max-steps', 3);
  const { dir } = await writeTinyModel('lora-studio-soak-');
  const { engine, loras } = await openTinyEngine(dir, await runtimeFor('webgpu'), ['kohya', 'locon', 'loha', 'peft']);
  const tty = process.stderr.isTTY;
  const report = await soak({
    engine, loras, runs, cancelShare, sizes, steps: [1, maxSteps],
    seed: num(o.seed, 'seed', 1),
    onRun: (n, r) => {
      const line = `soak ${n + 1}/${runs}: ${r.method} ${r.size} ${r.boxes} box(es) ${r.outcome.slice(0, 60)} · GPU ${(r.gpuBytes / 2 ** 20).toFixed(2)} MB · ${r.graphs} graphs · ${r.ms} ms`;
      if (tty) process.stderr.write(`\r${line.padEnd(110)}`);
      else if ((n + 1) % 10 === 0 || r.outcome !== 'done') console.error(line);
    },
  });
  if (tty) process.stderr.write('\n');
  const json = JSON.stringify(report, null, 2);
  if (o.out) await writeFile(resolve(o.out), json + '\n');
  console.log(json);
  if (report.failed || report.gpuLevelChanges) throw new Error(`soak: ${report.failed} run(s) failed and ${report.gpuLevelChanges} changed the GPU level.`);
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === 'help') {
    console.log(USAGE);
    return command ? 0 : 2;
  }
  const run = COMMANDS[command];
  try {
    if (!run) throw new UsageError(`unknown command "${command}"`);
    await run(rest);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n${USAGE.split('\n')[0]}`);
      return 2;
    }
    if (e instanceof EngineError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    console.error(`error: ${(e as Error).message ?? e}`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code));
