// Everything a layout job computes once, before the denoising loop (LoRA-Composer's
// `encode_region_prompt_pplus` and the K/V preparation of its attention processors,
// multi_lora_sample.py ~330-350, 486-568): each box's prompt and negative prompt through the text
// encoder with the box's LoRAs merged; every region's cross-attention keys and values (they do not
// depend on the latent) for both halves of the guided batch; each box region's own output projection;
// the masks and isolation factors; and the tokens that name each box's concept.
import type * as OrtNs from 'onnxruntime-web';
import type { GenerateJob, LayoutBox, ResolvedLayoutOptions } from '../api/contract.ts';
import type { ModelConfig } from '../checkpoint/config.ts';
import { conceptTokens, type ConceptTokens } from '../layout/concept-tokens.ts';
import type { GridMasks } from '../layout/masks.ts';
import { appendedTokens, layoutFeeds, layoutGraphOptions, layoutMasks, type LayoutGraph } from '../layout/regional.ts';
import type { ClipTextTokenizer } from '../text/tokenizer.ts';
import type { Vocabulary } from '../text/embeddings.ts';
import type { Ort } from './runtime.ts';

/** A prompt's encoding: one context, or one per cross-attention layer (a prompt with an ED-LoRA token). */
export interface Context {
  data: Float32Array;
  layers: number;
}

export interface Encoded extends Context {
  ids: number[];
  tokenCount: number;
}

export interface LayoutPrepParts {
  ort: Ort;
  config: ModelConfig;
  tokenizer: ClipTextTokenizer;
  vocabulary?: Vocabulary;
  encode: (text: string, label: string) => Promise<Encoded>;
  merge: (loras: number[], component: 'unet' | 'textEncoder') => Promise<number>;
  crossKV: (context: Context) => Promise<Record<string, Float32Array>>;
  /** The UNet's current cross-attention output projections, copied as region `region`'s inputs. */
  regionOutputs?: (region: number) => Promise<Record<string, OrtNs.Tensor>>;
}

export interface PreparedLayout {
  options: ResolvedLayoutOptions;
  masks: Map<string, GridMasks>;
  graph: LayoutGraph;
  /** Inputs of the guided-batch UNet. */
  feeds: Record<string, OrtNs.Tensor>;
  /** Inputs of the batch-1 cut UNet (conditional halves only, the prompt's context included). */
  condFeeds: Record<string, OrtNs.Tensor>;
  /** Per box: the region holding its prompt and its concept tokens' positions there. */
  concepts: { region: number; tokens: ConceptTokens }[];
  warnings: string[];
}

/**
 * `frame`: the frame's LoRAs (indices into the job's); `boxLoras[n]`: box n's. `cond`/`uncond`: the
 * global prompt's and the negative prompt's contexts with the frame's LoRAs in the text encoder.
 */
export async function prepareLayout(
  parts: LayoutPrepParts,
  job: GenerateJob,
  boxes: LayoutBox[],
  o: ResolvedLayoutOptions,
  loras: { frame: number[]; boxes: number[][]; none: boolean; concepts: string[][] },
  text: { cond: Context; uncond?: Context },
): Promise<PreparedLayout> {
  const { ort, config } = parts;
  const textLen = config.textEncoder.maxPositions;
  const lh = job.height / 8;
  const lw = job.width / 8;
  const warnings: string[] = [];
  const masks = layoutMasks(config.unet, boxes, job.width, job.height, o.masks);
  const graph = layoutGraphOptions(config.unet, lh, lw, boxes.length, o);
  // a box region's LoRAs: the box's (the code's concept pipeline: the model with that concept's LoRA),
  // or the frame's too; without injection every region is the frame, which then holds the box LoRAs
  const regionLoras = (n: number) => (!o.injection || loras.none ? loras.frame : o.regionBase === 'frame' ? [...loras.frame, ...loras.boxes[n]] : loras.boxes[n]);
  const concept = o.injection && o.regionNegative === 'concept' && !!text.uncond;

  // 1. each box's prompt (and negative prompt) through its own text encoder
  const boxText: { cond: Encoded; uncond?: Context }[] = [];
  for (const [n, box] of boxes.entries()) {
    await parts.merge(regionLoras(n), 'textEncoder');
    const cond = await parts.encode(box.prompt, `prompt of box "${box.name}"`);
    boxText.push({ cond, ...(concept ? { uncond: await parts.encode(job.negative, 'negative prompt') } : {}) });
  }

  // 2. the concept tokens: in the box's own context with injection; without, where the box prompt
  // sits inside the joined global prompt
  const textIds = (t: string) => {
    const e = parts.tokenizer.encode(t, parts.vocabulary?.added);
    return e.ids.slice(1, Math.max(1, Math.min(e.ids.length - 1, e.tokenCount - 1)));
  };
  const joined = [job.prompt, ...boxes.map((b) => b.prompt)].map((t, i) => ({ t, i })).filter((p) => p.t.trim());
  const counts = joined.map((p) => (p.i === 0 ? parts.tokenizer.encode(p.t, parts.vocabulary?.added).tokenCount : boxText[p.i - 1].cond.tokenCount));
  const concepts = boxes.map((box, n) => {
    // without trigger words of its own, an ED-LoRA box is named by its concept tokens, as in the code
    const trigger = box.trigger ?? (loras.concepts[n].length ? loras.concepts[n].join(' ') : undefined);
    const own = conceptTokens(boxText[n].cond.ids, boxText[n].cond.tokenCount, textIds, trigger);
    if (own.missing.length) warnings.push(`Box "${box.name}": the trigger words ${own.missing.map((m) => `"${m}"`).join(', ')} are not in its prompt, so they do not guide it.`);
    if (o.injection) return { region: n + 1, tokens: own };
    const at = joined.findIndex((p) => p.i === n + 1);
    const range = at < 0 ? { first: 1, end: 1 } : appendedTokens(counts, at, textLen);
    const positions = own.positions.map((p) => range.first + p - 1).filter((p) => p < range.end);
    return { region: 0, tokens: { ...own, positions } };
  });

  // 3. every region's keys and values, and each box region's output projection
  await parts.merge(loras.frame, 'unet');
  const kv = [await parts.crossKV(text.cond)];
  const frameUncond = text.uncond ? await parts.crossKV(text.uncond) : undefined;
  const kvUncond = frameUncond ? [frameUncond] : undefined;
  const outputs: Record<string, OrtNs.Tensor> = {};
  for (const n of boxes.keys()) {
    await parts.merge(regionLoras(n), 'unet');
    kv.push(await parts.crossKV(boxText[n].cond));
    if (kvUncond) kvUncond.push(boxText[n].uncond ? await parts.crossKV(boxText[n].uncond!) : frameUncond!);
    if (graph.regionOutputs) {
      if (!parts.regionOutputs) throw new Error('this engine cannot give box regions their own output projections');
      Object.assign(outputs, await parts.regionOutputs(n + 1));
    }
  }
  const tensors = (f: ReturnType<typeof layoutFeeds>) => Object.fromEntries(Object.entries(f).map(([k, v]) => [k, new ort.Tensor('float32', v.data, v.dims)]));
  const feeds = { ...tensors(layoutFeeds(config.unet, o, masks, kv, kvUncond, textLen)), ...outputs };
  const condFeeds = {
    ...tensors(layoutFeeds(config.unet, o, masks, kv, undefined, textLen)),
    ...outputs,
    encoder_hidden_states: new ort.Tensor('float32', text.cond.data.slice(0, textLen * config.unet.crossAttentionDim), [1, textLen, config.unet.crossAttentionDim]),
  };
  return { options: o, masks, graph, feeds, condFeeds, concepts, warnings };
}
