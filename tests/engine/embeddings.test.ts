// Added tokens on both EPs against float64: the text encoder reading textual-inversion and ED-LoRA
// rows past its vocabulary equals the reference encoder on a token table extended by those rows; the
// tokenizer keeps an embedding's name whole; a UNet with layer-wise contexts equals the reference
// where each cross-attention layer reads its own; and on the engine, a prompt with an ED-LoRA's
// tokens is encoded once per layer and a layout box with an ED-LoRA reads its concept tokens.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import { sessionOptions, type Backend } from '../../workers/engine/runtime.ts';
import { makeTinyModel } from '../../workers/engine/test-model.ts';
import { timestepEmbedding } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
import { buildTextEncoder, TOKEN_EMBEDDING } from '../../workers/graph/clip.ts';
import { TokenTable } from '../../workers/text/token-table.ts';
import { crossAttentionLayers } from '../../workers/graph/cross-kv.ts';
import { buildUNet } from '../../workers/graph/unet.ts';
import type { GraphBuilder } from '../../workers/graph/builder.ts';
import * as nn from '../../workers/reference/nn.ts';
import * as ref from '../../workers/reference/sd15.ts';
import { ClipTextTokenizer } from '../../workers/text/tokenizer.ts';
import { openModelPath, NodeFileSource } from '../../workers/node/files.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import { TEST_CONCEPT_TOKENS } from '../../workers/lora/test-loras.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

const model = makeTinyModel(1234);
const cfg = model.config;
const W = (m: Map<string, Float32Array>, extra = new Map<string, Float64Array>()) => (name: string) => extra.get(name) ?? Float64Array.from(m.get(name)!);

async function run(backend: Backend, g: GraphBuilder, feeds: Record<string, { type: 'float32' | 'int64'; data: Float32Array | BigInt64Array; dims: number[] }>, weights: Map<string, Float32Array>) {
  const rt = await runtime(backend);
  const ws = new WeightSet(rt, 'float32');
  for (const spec of g.weights.values()) ws.add(spec, weights.get(spec.name)!);
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
  const all: Record<string, OrtNs.Tensor> = ws.feeds(g.weights.keys());
  for (const [k, v] of Object.entries(feeds)) all[k] = new rt.ort.Tensor(v.type, v.data, v.dims);
  const out = await session.run(all);
  await session.release();
  ws.dispose();
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
}

for (const backend of ['wasm', 'webgpu'] as Backend[]) {
  test(`the text encoder reads added rows where the ids pass the vocabulary (${backend})`, async () => {
    const V = cfg.textEncoder.vocabSize;
    const H = cfg.textEncoder.hidden;
    const rows = 3;
    const extra = new Rng(9).normal(rows * H);
    const ids = [0, 5, V, V + 1, 7, V + 2, ...new Array(71).fill(1)];
    const g = buildTextEncoder(cfg.textEncoder, { batch: 1, seqLen: 77, dtype: 'float32', clipSkip: 1 });
    // the rows as the engine looks them up: the vocabulary's, and the added ones past it
    const tokens = TokenTable.of(model.weights.textEncoder.get(TOKEN_EMBEDDING)!, H, 'fp32');
    const got = await run(backend, g, { inputs_embeds: { type: 'float32', data: tokens.embed(ids, extra), dims: [1, 77, H] } }, model.weights.textEncoder);
    // the reference on a token table with the rows appended
    const table = model.weights.textEncoder.get(TOKEN_EMBEDDING)!;
    const extended = new Float64Array(table.length + extra.length);
    extended.set(table);
    extended.set(extra, table.length);
    const want = ref.textEncode(W(model.weights.textEncoder, new Map([[TOKEN_EMBEDDING, extended]])), cfg.textEncoder, ids);
    const d = maxAbsDiff(got.last_hidden_state, want.data);
    assert.ok(d.diff <= (backend === 'wasm' ? 2e-5 : 2e-4) * Math.max(1, d.scale), `max difference ${d.diff}`);
  });

  test(`a UNet with layer-wise contexts: each cross-attention layer reads its own (${backend})`, async () => {
    const L = crossAttentionLayers(cfg.unet).length;
    const [lh, lw, D] = [8, 8, cfg.unet.crossAttentionDim];
    const rng = new Rng(12);
    const sample = rng.normal(4 * lh * lw);
    const emb = timestepEmbedding(500, cfg.unet.blockOutChannels[0]);
    const ctx = rng.normal(L * 77 * D).map((v) => 0.5 * v);
    const got = await run(
      backend,
      buildUNet(cfg.unet, { batch: 1, latentH: lh, latentW: lw, textLen: 77, dtype: 'float32', contextLayers: L }),
      {
        sample: { type: 'float32', data: sample, dims: [1, 4, lh, lw] },
        timestep_embedding: { type: 'float32', data: emb, dims: [1, cfg.unet.blockOutChannels[0]] },
        encoder_hidden_states: { type: 'float32', data: ctx, dims: [1, L, 77, D] },
      },
      model.weights.unet,
    );
    const layers = crossAttentionLayers(cfg.unet).map((l) => l.name);
    const contextOf = (l: number) => nn.tensor(ctx.subarray(l * 77 * D, (l + 1) * 77 * D), [77, D]);
    const want = ref.unetForward(W(model.weights.unet), cfg.unet, nn.tensor(sample, [1, 4, lh, lw]), nn.tensor(emb, [1, emb.length]), contextOf(0), { context: (layer) => contextOf(layers.indexOf(layer)) });
    const d = maxAbsDiff(got.noise_pred, want.data);
    assert.ok(d.diff <= (backend === 'wasm' ? 5e-5 : 5e-4) * Math.max(1, d.scale), `max difference ${d.diff}`);
  });
}

test('the tokenizer keeps an embedding\'s name whole, in any case, and only as a whole word', async () => {
  const { dir } = await tinyModelDir();
  const { tokenizer } = await openModelPath(join(dir, 'tiny-sd15.safetensors'));
  const tok = ClipTextTokenizer.fromFiles(tokenizer!);
  const V = cfg.textEncoder.vocabSize;
  const added = [{ name: 'tiny-ti', ids: [V, V + 1] }, { name: '<tiny1>', ids: [V + 2] }];
  const body = (t: string) => {
    const e = tok.encode(t);
    return e.ids.slice(1, e.tokenCount - 1);
  };
  const e = tok.encode('a red cat, Tiny-TI on a <tiny1> hat', added);
  assert.deepEqual(e.ids.slice(0, e.tokenCount), [e.ids[0], ...body('a red cat,'), V, V + 1, ...body('on a'), V + 2, ...body('hat'), e.ids[e.tokenCount - 1]]);
  // inside another word it is just text
  const inside = tok.encode('mytiny-tistyle', added);
  assert.ok(!inside.ids.some((id) => id >= V));
});

test('on the engine: an ED-LoRA prompt is encoded per layer; a box with the ED-LoRA reads its concept tokens; a textual inversion by name', async () => {
  const { dir } = await tinyModelDir();
  const { engine, loras } = await openTinyEngine(dir, await runtime('wasm'), ['edlora', 'kohya']);
  assert.deepEqual(loras[0].concepts, TEST_CONCEPT_TOKENS);
  assert.equal(loras[0].format, 'edlora');
  const ti = await engine.loadEmbedding(await NodeFileSource.open(join(dir, 'embeddings/tiny-ti.safetensors')));
  assert.deepEqual([ti.name, ti.vectors], ['tiny-ti', 2]);
  await assert.rejects(engine.loadEmbedding(await NodeFileSource.open(join(dir, 'embeddings/tiny-ti.safetensors'))), /names the token "tiny-ti", which .*tiny-ti\.safetensors already gives/);
  const job = { prompt: 'a <tiny1> <tiny2> cat in a forest', negative: 'blurry', steps: 2, cfg: 5, seed: 3, width: 64, height: 64, scheduler: 'dpmpp-2m' as const, loras: [{ lora: loras[0].id, scale: 1 }] };
  const a = await engine.generate(job);
  // the same words without the concept tokens: a different image (the tokens carry the concept)
  const b = await engine.generate({ ...job, prompt: 'a cat in a forest' });
  assert.ok(maxAbsDiff(a.image.data, b.image.data).diff > 0);
  // the textual inversion by name changes the image; with it unloaded the name is plain text again
  const withTi = await engine.generate({ ...job, prompt: 'a cat in a forest, tiny-ti' });
  engine.unloadEmbedding(ti.id);
  const withoutTi = await engine.generate({ ...job, prompt: 'a cat in a forest, tiny-ti' });
  assert.ok(maxAbsDiff(withTi.image.data, withoutTi.image.data).diff > 0);
  // a layout box with the ED-LoRA and no trigger words: its concept tokens are <tiny1> <tiny2>
  const boxed = await engine.generate({
    ...job,
    prompt: 'two friends in a park',
    loras: [],
    layout: {
      boxes: [
        { name: 'ai', x: 0, y: 0, width: 32, height: 64, prompt: 'a <tiny1> <tiny2> girl', loras: [{ lora: loras[0].id, scale: 1 }] },
        { name: 'fox', x: 32, y: 0, width: 32, height: 64, prompt: 'a red fox', loras: [{ lora: loras[1].id, scale: 1 }], trigger: 'red' },
      ],
      injection: true,
      isolation: true,
      reinit: true,
      guidance: { ce: true, fill: true, region: true },
    },
  });
  assert.deepEqual(boxed.report.boxes.map((x) => [x.conceptSource, x.conceptTokens]), [['trigger', [2, 3]], ['trigger', [2]]]);
  assert.equal(boxed.report.guidance!.steps.length, 2);
  engine.unload();
});
