// The CLIP scorer: a Hugging Face ONNX CLIP repository (config.json, tokenizer and preprocessor
// files, onnx/text_model*.onnx and onnx/vision_model*.onnx) run through transformers.js's
// CLIPTextModelWithProjection and CLIPVisionModelWithProjection on the engine's onnxruntime-web.
// transformers.js is given the files it asks for from memory and never reaches the network.
import '../text/transformers-ort.ts';
import { AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, env, Tensor, type PreTrainedTokenizer } from '@huggingface/transformers';
import type { ImageData8, ScoreReport, ScoreRequest, ScorerInfo } from '../api/contract.ts';
import { EngineError } from '../api/errors.ts';
import type { Runtime } from '../engine/runtime.ts';
import { IS_NODE } from '../text/transformers-ort.ts';
import { parseClipConfig, type ClipScorerConfig } from './clip-config.ts';
import { SCORER_DTYPES, scorerModelFiles, type ScorerDtype } from './scorer-layout.ts';
import { clipPixels, parsePreprocessorConfig, type Preprocessing } from './preprocess.ts';
import { scoreImage, type Embedder } from './scores.ts';

/** A scorer's files by their path in the repository. */
export type ScorerFiles = Map<string, Blob>;

const MODEL_ID = 'lora-studio/scorer';
const HOST = 'https://scorer.lora-studio.invalid/';
type Dtype = ScorerDtype;

/** The weight type the files offer, preferring full precision, then half, then 8-bit. */
export function scorerDtype(files: ScorerFiles): Dtype {
  for (const d of SCORER_DTYPES) if (scorerModelFiles(d).every((f) => files.has(f))) return d;
  throw new EngineError('scorer', 'The CLIP scorer has no onnx/text_model.onnx and onnx/vision_model.onnx (nor their _fp16 or _quantized forms).');
}

/** Runs `load` with transformers.js reading only from `files`; its settings are restored after. */
async function fromFiles<T>(files: ScorerFiles, load: () => Promise<T>): Promise<T> {
  // A file is asked for by its hub address or its local path; both end in MODEL_ID/.../path.
  const lookup = (key: string | URL) => {
    const tail = decodeURIComponent(String(key)).split(`${MODEL_ID}/`)[1] ?? '';
    const blob = files.get(tail.replace(/^resolve\/main\//, ''));
    return blob ? new Response(blob, { status: 200, headers: { 'content-length': String(blob.size) } }) : undefined;
  };
  const saved = { ...env };
  Object.assign(env, {
    allowLocalModels: false,
    allowRemoteModels: true,
    useBrowserCache: false,
    useFSCache: false,
    useCustomCache: true,
    customCache: { match: async (key: string) => lookup(key), put: async () => {} },
    remoteHost: HOST,
    remotePathTemplate: '{model}/resolve/{revision}/',
    fetch: async (url: string | URL) => lookup(url) ?? new Response(null, { status: 404 }),
  });
  try {
    return await load();
  } finally {
    Object.assign(env, saved);
  }
}

type Model = (inputs: Record<string, unknown>) => Promise<Record<string, { data: Float32Array; dims: number[] }>>;

function unit(v: ArrayLike<number>): Float32Array {
  let n = 0;
  for (let i = 0; i < v.length; i++) n += v[i] * v[i];
  n = Math.sqrt(n);
  return Float32Array.from(v, (x) => x / n);
}

export class ClipScorer implements Embedder {
  private readonly refs = new Map<string, Float32Array>();

  private constructor(
    readonly name: string,
    readonly config: ClipScorerConfig,
    readonly preprocessing: Preprocessing,
    readonly dtype: Dtype,
    private readonly tokenizer: PreTrainedTokenizer,
    private readonly textModel: Model & { dispose(): Promise<unknown> },
    private readonly visionModel: Model & { dispose(): Promise<unknown> },
  ) {}

  static async open(name: string, files: ScorerFiles, rt: Runtime): Promise<ClipScorer> {
    const read = async (path: string) => {
      const f = files.get(path);
      if (!f) throw new EngineError('scorer', `The CLIP scorer lacks ${path}.`);
      return f.text();
    };
    const config = parseClipConfig(await read('config.json'));
    const pre = parsePreprocessorConfig(await read('preprocessor_config.json'));
    if (!files.has('tokenizer.json')) throw new EngineError('scorer', 'The CLIP scorer lacks tokenizer.json.');
    const dtype = scorerDtype(files);
    // With its onnxruntime handed over (Node), transformers.js lists no devices of its own; an empty
    // device per file leaves the execution provider to session_options.
    const where = (file: string) => ({
      dtype,
      device: (IS_NODE ? { [file]: '' } : rt.backend) as 'webgpu',
      session_options: { executionProviders: [rt.backend], graphOptimizationLevel: 'all' as const, logSeverityLevel: 3 as const },
    });
    try {
      return await fromFiles(files, async () => {
        const tokenizer = await AutoTokenizer.from_pretrained(MODEL_ID);
        const text = await CLIPTextModelWithProjection.from_pretrained(MODEL_ID, where('text_model'));
        const vision = await CLIPVisionModelWithProjection.from_pretrained(MODEL_ID, where('vision_model'));
        return new ClipScorer(name, config, pre, dtype, tokenizer, text as unknown as ClipScorer['textModel'], vision as unknown as ClipScorer['visionModel']);
      });
    } catch (e) {
      if (e instanceof EngineError) throw e;
      throw new EngineError('scorer', `The CLIP scorer ${name} could not be loaded: ${(e as Error).message}`);
    }
  }

  get info(): ScorerInfo {
    return { name: this.name, dtype: this.dtype, projectionDim: this.config.projectionDim, imageSize: this.preprocessing.crop.height, maxTokens: this.config.text.maxPositions };
  }

  /** The token ids the text tower sees: padded to its length, cut to it (end token kept). */
  tokens(text: string): number[] {
    const n = this.config.text.maxPositions;
    const enc = this.tokenizer(text, { padding: 'max_length', max_length: n, truncation: true }) as { input_ids: { data: BigInt64Array } };
    return Array.from(enc.input_ids.data, Number);
  }

  async text(text: string): Promise<Float32Array> {
    const ids = this.tokens(text);
    const out = await this.textModel({ input_ids: new Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]) });
    return unit(out.text_embeds.data);
  }

  async image(image: ImageData8): Promise<Float32Array> {
    const { height, width } = this.preprocessing.crop;
    const out = await this.visionModel({ pixel_values: new Tensor('float32', clipPixels(image, this.preprocessing), [1, 3, height, width]) });
    return unit(out.image_embeds.data);
  }

  async reference(id: string, image: ImageData8): Promise<Float32Array> {
    const hit = this.refs.get(id);
    if (hit) return hit;
    const e = await this.image(image);
    if (this.refs.size >= 512) this.refs.delete(this.refs.keys().next().value!);
    this.refs.set(id, e);
    return e;
  }

  score(req: ScoreRequest): Promise<ScoreReport> {
    return scoreImage(this, req);
  }

  async dispose(): Promise<void> {
    await this.textModel.dispose();
    await this.visionModel.dispose();
  }
}
