// Every graph block, and the whole tiny UNet, text encoder and VAE decoder, on the wasm EP and on
// the WebGPU EP (Dawn), against the float64 reference in workers/reference/.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import type { TextEncoderConfig, UNetConfig } from '../../workers/checkpoint/config.ts';
import { sessionOptions, type Backend, type ConvLayout } from '../../workers/engine/runtime.ts';
import { makeTinyInpaintingModel, makeTinyModel, randomWeight } from '../../workers/engine/test-model.ts';
import { timestepEmbedding } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
import { GraphBuilder, type NormForm } from '../../workers/graph/builder.ts';
import { buildTextEncoder, causalMask, clipLayer, TOKEN_EMBEDDING } from '../../workers/graph/clip.ts';
import { TokenTable } from '../../workers/text/token-table.ts';
import { conv2d, ISOLATION_FACTORS, regionalAttention, silu, upsampleNearest2x, type Feat } from '../../workers/graph/layers.ts';
import { attentionGrids, gridMasks, isolationBias, isolationFactors, regionWeights } from '../../workers/layout/masks.ts';
import { buildCrossKV, crossKeyOutputName, crossValueOutputName } from '../../workers/graph/cross-kv.ts';
import { buildUNet, regionKeyInputName, regionValueInputName, regionWeightInputName, resnetBlock, selfIsolationInputName, spatialTransformer, unetAttentionLayers, unetBiasInputName, unetMapOutputName } from '../../workers/graph/unet.ts';
import { buildVaeDecoder, buildVaeEncoder, vaeAttention } from '../../workers/graph/vae.ts';
import * as nn from '../../workers/reference/nn.ts';
import * as ref from '../../workers/reference/sd15.ts';
import { maxAbsDiff, runtime } from '../helpers.ts';

const BACKENDS: Backend[] = ['wasm', 'webgpu'];
const NORM_FORMS: NormForm[] = ['instance', 'reductions'];
const TOL: Record<Backend, number> = { wasm: 2e-5, webgpu: 2e-4 };

interface Input {
  data: Float32Array | BigInt64Array;
  dims: number[];
}

async function run(backend: Backend, g: GraphBuilder, inputs: Record<string, Input>, weights: Map<string, Float32Array>, layout?: ConvLayout) {
  const rt = await runtime(backend);
  const ws = new WeightSet(rt, 'float32');
  for (const spec of g.weights.values()) ws.add(spec, weights.get(spec.name)!);
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt, layout ? { layout } : {}));
  const feeds: Record<string, OrtNs.Tensor> = ws.feeds(g.weights.keys());
  for (const [k, v] of Object.entries(inputs)) {
    feeds[k] = v.data instanceof BigInt64Array ? new rt.ort.Tensor('int64', v.data, v.dims) : new rt.ort.Tensor('float32', v.data, v.dims);
  }
  const out = await session.run(feeds);
  const result: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(out)) result[k] = v.data as Float32Array;
  await session.release();
  ws.dispose();
  return result;
}

function randomWeights(g: GraphBuilder, seed: number): Map<string, Float32Array> {
  const rng = new Rng(seed);
  return new Map([...g.weights.values()].map((s) => [s.name, randomWeight(s, rng)]));
}

const W = (m: Map<string, Float32Array>) => (name: string) => {
  const v = m.get(name);
  if (!v) throw new Error(`reference asked for unknown weight ${name}`);
  return Float64Array.from(v);
};

function randomInput(n: number, seed: number): Float32Array {
  return new Rng(seed).normal(n);
}

function check(backend: Backend, got: Float32Array, want: nn.T | Float64Array, what: string) {
  const w = 'data' in want ? want.data : want;
  const { diff, scale } = maxAbsDiff(got, w);
  assert.ok(diff <= TOL[backend] * Math.max(1, scale), `${what} on ${backend}: max |diff| ${diff.toExponential(2)} (scale ${scale.toFixed(3)})`);
}

/** Whether a value is a k x k kernel with k > 1. */
const isSpatialKernel = (g: GraphBuilder, v: string) => (g.shapes.get(v) ?? []).slice(2).some((k) => k > 1);

const feat = (g: GraphBuilder, name: string, dims: number[]): Feat => ({ v: g.input(name, 'float32', dims), b: dims[0], c: dims[1], h: dims[2], w: dims[3] });

for (const backend of BACKENDS) {
  test(`resnet block with time embedding and shortcut, group norms in both forms (${backend})`, async () => {
    for (const norm of NORM_FORMS) {
      const g = new GraphBuilder('float32', { norm });
      const x = feat(g, 'x', [2, 8, 6, 5]);
      const temb = g.input('temb', 'float32', [2, 12]);
      // the block takes the embedding after its SiLU, which the UNet makes once for all its blocks
      const y = resnetBlock(g, x, 'blk', 16, 4, 1e-5, { v: silu(g, temb), dim: 12 });
      g.output(y.v, 'y', 'float32', [2, 16, 6, 5]);
      const w = randomWeights(g, 1);
      const xs = randomInput(2 * 8 * 30, 2);
      const ts = randomInput(24, 3);
      const out = await run(backend, g, { x: { data: xs, dims: [2, 8, 6, 5] }, temb: { data: ts, dims: [2, 12] } }, w);
      const want = ref.resnet(W(w), nn.tensor(xs, [2, 8, 6, 5]), 'blk', 16, 4, 1e-5, nn.tensor(ts, [2, 12]));
      check(backend, out.y, want, `resnet, ${norm} norms`);
    }
  });

  test(`spatial transformer: self-attention, cross-attention, GEGLU (${backend})`, async () => {
    const cfg: UNetConfig = { inChannels: 4, outChannels: 4, blockOutChannels: [16], attention: [true], layersPerBlock: 1, heads: 2, transformerDepth: 1, crossAttentionDim: 12, normGroups: 4 };
    const g = new GraphBuilder();
    const x = feat(g, 'x', [2, 16, 4, 3]);
    const ctx = g.input('ctx', 'float32', [2 * 77, 12]);
    const y = spatialTransformer(g, x, 'st', cfg, ctx);
    g.output(y.v, 'y', 'float32', [2, 16, 4, 3]);
    const w = randomWeights(g, 4);
    const xs = randomInput(2 * 16 * 12, 5);
    const cs = randomInput(2 * 77 * 12, 6);
    const out = await run(backend, g, { x: { data: xs, dims: [2, 16, 4, 3] }, ctx: { data: cs, dims: [154, 12] } }, w);
    const want = ref.spatialTransformer(W(w), nn.tensor(xs, [2, 16, 4, 3]), 'st', cfg, nn.tensor(cs, [154, 12]));
    check(backend, out.y, want, 'transformer');
  });

  test(`downsampling and upsampling convolutions, as Conv nodes in both layouts and unfolded into a MatMul in NCHW (${backend})`, async () => {
    // unfolded only in NCHW, as the engine compiles: in NHWC the WebGPU EP's grouped convolution with
    // nine outputs per group gave wrong numbers on SwiftShader (max difference 1.3 at scale 2.5)
    const cases = [['direct', 'NHWC'], ['direct', 'NCHW'], ['unfold', 'NCHW']] as const;
    for (const [conv, layout] of cases) {
      const g = new GraphBuilder('float32', { conv });
      const x = feat(g, 'x', [2, 4, 7, 6]);
      const down = conv2d(g, x, 'down', 6, 3, 2);
      g.output(down.v, 'down', 'float32', [2, 6, 4, 3]);
      const up = conv2d(g, upsampleNearest2x(g, x), 'up', 5, 3);
      g.output(up.v, 'up', 'float32', [2, 5, 14, 12]);
      // unfolded: no Conv reads a weight (the only Convs are the constant one-hot kernels, one for both)
      const convs = g.records.filter((n) => n.type === 'Conv');
      assert.deepEqual(
        convs.map((n) => g.weights.has(n.inputs[1])),
        conv === 'direct' ? [true, true] : [false, false],
      );
      if (conv === 'unfold') assert.equal(new Set(convs.map((n) => n.inputs[1])).size, 1, 'the one-hot kernel is shared');
      const w = randomWeights(g, 7);
      const xs = randomInput(2 * 4 * 42, 8);
      const out = await run(backend, g, { x: { data: xs, dims: [2, 4, 7, 6] } }, w, backend === 'webgpu' ? layout : undefined);
      const X = nn.tensor(xs, [2, 4, 7, 6]);
      check(backend, out.down, nn.conv2d(X, W(w)('down.weight'), W(w)('down.bias'), 6, 3, 2), `downsample, ${conv}, ${layout}`);
      check(backend, out.up, nn.conv2d(nn.upsample2x(X), W(w)('up.weight'), W(w)('up.bias'), 5, 3), `upsample, ${conv}, ${layout}`);
    }
  });

  test(`CLIP layer with causal mask and quick-GELU (${backend})`, async () => {
    const cfg: TextEncoderConfig = { vocabSize: 10, hidden: 16, layers: 1, heads: 2, intermediate: 24, maxPositions: 77 };
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', [77, 16]);
    g.output(clipLayer(g, x, 'l', cfg, 1, 77, causalMask(g, 77)), 'y', 'float32', [77, 16]);
    const w = randomWeights(g, 9);
    const xs = randomInput(77 * 16, 10);
    const out = await run(backend, g, { x: { data: xs, dims: [77, 16] } }, w);
    check(backend, out.y, ref.clipLayer(W(w), nn.tensor(xs, [77, 16]), 'l', cfg, 1), 'clip layer');
  });

  test(`VAE mid-block attention (${backend})`, async () => {
    const g = new GraphBuilder();
    const x = feat(g, 'x', [1, 8, 5, 4]);
    g.output(vaeAttention(g, x, 'a', 4).v, 'y', 'float32', [1, 8, 5, 4]);
    const w = randomWeights(g, 11);
    const xs = randomInput(160, 12);
    const out = await run(backend, g, { x: { data: xs, dims: [1, 8, 5, 4] } }, w);
    check(backend, out.y, ref.vaeAttention(W(w), nn.tensor(xs, [1, 8, 5, 4]), 'a', 4), 'vae attention');
  });
}

const tiny = makeTinyModel(1234);

// Region-aware attention in one piece (explicit), and in three query chunks (at 240 bytes a query
// row, four rows a chunk).
const REGION_FORMS = [{ attention: 'explicit', chunks: 1 }, { attention: 'chunked', bufferLimit: 1000, chunks: 3 }] as const;
const matMuls = (g: GraphBuilder) => g.records.filter((n) => n.type === 'MatMul').length;

for (const backend of BACKENDS) {
  test(`whole tiny UNet, text encoder and VAE decoder (${backend})`, async () => {
    const { config, weights } = tiny;
    const sample = randomInput(4 * 64, 13);
    const emb = timestepEmbedding(500, config.unet.blockOutChannels[0]);
    const ctx = randomInput(77 * config.unet.crossAttentionDim, 14);
    const wantU = ref.unetForward(W(weights.unet), config.unet, nn.tensor(sample, [1, 4, 8, 8]), nn.tensor(emb, [1, 16]), nn.tensor(ctx, [77, 32]));
    for (const norm of NORM_FORMS) {
      const ug = buildUNet(config.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32', norm });
      const u = await run(
        backend,
        ug,
        { sample: { data: sample, dims: [1, 4, 8, 8] }, timestep_embedding: { data: emb, dims: [1, 16] }, encoder_hidden_states: { data: ctx, dims: [1, 77, 32] } },
        weights.unet,
      );
      check(backend, u.noise_pred, wantU, `unet, ${norm} norms`);
    }
    // every k x k convolution unfolded into a MatMul (the engine on WebGPU unfolds the low-resolution
    // ones, in NCHW)
    const unfolded = buildUNet(config.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32', conv: 'unfold' });
    assert.ok(!unfolded.records.some((n) => n.type === 'Conv' && isSpatialKernel(unfolded, n.inputs[1]) && unfolded.weights.has(n.inputs[1])), 'no 3x3 Conv reads a weight');
    const uu = await run(
      backend,
      unfolded,
      { sample: { data: sample, dims: [1, 4, 8, 8] }, timestep_embedding: { data: emb, dims: [1, 16] }, encoder_hidden_states: { data: ctx, dims: [1, 77, 32] } },
      weights.unet,
      backend === 'webgpu' ? 'NCHW' : undefined,
    );
    check(backend, uu.noise_pred, wantU, 'unet, convolutions unfolded');

    // the token rows as the engine looks them up (text/token-table.ts); the reference reads the ids
    const ids = Array.from({ length: 77 }, (_, i) => (i * 37) % config.textEncoder.vocabSize);
    const tokens = TokenTable.of(weights.textEncoder.get(TOKEN_EMBEDDING)!, config.textEncoder.hidden, 'fp32');
    for (const clipSkip of [1, 2]) {
      const tg = buildTextEncoder(config.textEncoder, { batch: 1, seqLen: 77, dtype: 'float32', clipSkip });
      const t = await run(backend, tg, { inputs_embeds: { data: tokens.embed(ids), dims: [1, 77, config.textEncoder.hidden] } }, weights.textEncoder);
      check(backend, t.last_hidden_state, ref.textEncode(W(weights.textEncoder), config.textEncoder, ids, clipSkip), `text encoder clip-skip ${clipSkip}`);
    }

    const lat = randomInput(64, 15);
    const wantV = ref.vaeDecode(W(weights.vae), config.vae, nn.tensor(lat, [1, 4, 4, 4]));
    for (const norm of NORM_FORMS) {
      const vg = buildVaeDecoder(config.vae, { batch: 1, latentH: 4, latentW: 4, dtype: 'float32', norm });
      const v = await run(backend, vg, { latent: { data: lat, dims: [1, 4, 4, 4] } }, weights.vae);
      check(backend, v.image, wantV, `vae, ${norm} norms`);
    }
  });

  test(`region-aware cross-attention: each region's keys and values, kept by the region masks, whole and in query chunks (${backend})`, async () => {
    // 2 x 3 x 4 grid, 3 regions (background + two overlapping boxes), 5 keys, 8 channels, 2 heads
    const [b, nq, nk, c, heads, r] = [2, 12, 5, 8, 2, 3];
    const m = gridMasks([{ x: 0, y: 0, width: 24, height: 16 }, { x: 16, y: 8, width: 16, height: 16 }], 32, 24, 3, 4);
    const w = regionWeights(m);
    const q = randomInput(b * nq * c, 31);
    const k = randomInput(b * r * nk * c, 32);
    const v = randomInput(b * r * nk * c, 33);
    // the reference takes each region's keys as [B*Nk, C]
    const region = (x: Float32Array, j: number) => {
      const data = new Float64Array(b * nk * c);
      for (let n = 0; n < b; n++) for (let i = 0; i < nk * c; i++) data[n * nk * c + i] = x[((n * r + j) * nk) * c + i];
      return { data, shape: [b * nk, c] };
    };
    const regions = [0, 1, 2];
    const want = nn.regionalAttention({ data: Float64Array.from(q), shape: [b * nq, c] }, regions.map((j) => region(k, j)), regions.map((j) => region(v, j)), regions.map((j) => w.subarray(j * nq, (j + 1) * nq)), b, heads);
    const maps = new Float64Array(b * r * nq * nk);
    for (let n = 0; n < b; n++) for (const j of regions) for (let i = 0; i < nq * nk; i++) maps[(n * r + j) * nq * nk + i] = want.probs[j][n * nq * nk + i];
    for (const { chunks, ...form } of REGION_FORMS) {
      const g = new GraphBuilder('float32', form);
      const out = regionalAttention(g, g.input('q', 'float32', [b * nq, c]), g.input('k', 'float32', [b, r, nk, c]), g.input('v', 'float32', [b, r, nk, c]), g.input('w', 'float32', [r, nq]), { b, nq, nk, c, heads, regions: r }, 'maps');
      g.output(out, 'out', 'float32', [b * nq, c]);
      assert.equal(matMuls(g), 2 * chunks, `${form.attention}: two products a chunk`);
      const got = await run(backend, g, { q: { data: q, dims: [b * nq, c] }, k: { data: k, dims: [b, r, nk, c] }, v: { data: v, dims: [b, r, nk, c] }, w: { data: w, dims: [r, nq] } }, new Map());
      check(backend, got.out, want.out, `regional attention, ${chunks} chunk(s)`);
      check(backend, got.maps, maps, `per-region maps, ${chunks} chunk(s)`);
    }
  });

  test(`per-region output projections: LoRA-Composer's region_rewrite, transcribed, in float64, whole and in query chunks (${backend})`, async () => {
    // a 3 x 4 grid, covered-cell masks of two overlapping boxes: box 1 rows 0..1, columns 0..2; box 2
    // rows 1..2, columns 2..3 (pixels on a 32 x 24 frame, 8-pixel cells)
    const [b, nq, nk, c, heads, r] = [2, 12, 5, 8, 2, 3];
    const pixelBoxes = [{ x: 0, y: 0, width: 24, height: 16 }, { x: 16, y: 8, width: 16, height: 16 }];
    const m = gridMasks(pixelBoxes, 32, 24, 3, 4, 'covered');
    const q = randomInput(b * nq * c, 51);
    const k = randomInput(b * r * nk * c, 52);
    const v = randomInput(b * r * nk * c, 53);
    const outs = [0, 1, 2].map((j) => ({ w: randomInput(c * c, 60 + j), b: randomInput(c, 70 + j) }));
    const regionKv = (x: Float32Array, j: number) => {
      const data = new Float64Array(b * nk * c);
      for (let n = 0; n < b; n++) for (let i = 0; i < nk * c; i++) data[n * nk * c + i] = x[((n * r + j) * nk) * c + i];
      return { data, shape: [b * nk, c] };
    };
    // the code's rectangles: ceil/floor of the box edges in cells
    const rects: [number, number, number, number][] = [[0, 0, 2, 3], [1, 2, 3, 4]];
    const want = nn.regionRewrite(
      { data: Float64Array.from(q), shape: [b * nq, c] },
      [0, 1, 2].map((j) => regionKv(k, j)),
      [0, 1, 2].map((j) => regionKv(v, j)),
      outs.map((o) => ({ w: Float64Array.from(o.w), b: Float64Array.from(o.b) })),
      rects,
      3,
      4,
      b,
      heads,
    );
    for (const { chunks, ...form } of REGION_FORMS) {
      const g = new GraphBuilder('float32', form);
      const region = (j: number) => ({ weight: g.input(`ow${j}`, 'float32', [c, c]), bias: g.input(`ob${j}`, 'float32', [c]) });
      const out = regionalAttention(g, g.input('q', 'float32', [b * nq, c]), g.input('k', 'float32', [b, r, nk, c]), g.input('v', 'float32', [b, r, nk, c]), g.input('w', 'float32', [r, nq]), { b, nq, nk, c, heads, regions: r }, undefined, { shared: 'out0', region });
      g.output(out, 'out', 'float32', [b * nq, c]);
      assert.equal(matMuls(g), 2 * chunks, `${form.attention}: two products a chunk`);
      const feeds: Record<string, Input> = { q: { data: q, dims: [b * nq, c] }, k: { data: k, dims: [b, r, nk, c] }, v: { data: v, dims: [b, r, nk, c] }, w: { data: regionWeights(m), dims: [r, nq] } };
      for (const j of [1, 2]) Object.assign(feeds, { [`ow${j}`]: { data: outs[j].w, dims: [c, c] }, [`ob${j}`]: { data: outs[j].b, dims: [c] } });
      const got = await run(backend, g, feeds, new Map([['out0.weight', outs[0].w], ['out0.bias', outs[0].b]]));
      check(backend, got.out, want, `region rewrite, ${chunks} chunk(s)`);
    }
  });

  test(`layout UNet: regions sharing one context equal the plain UNet; concept isolation matches float64 and walls boxes off each other only (${backend})`, async () => {
    const { config, weights } = tiny;
    const [R, lh, lw] = [3, 8, 8];
    const sample = randomInput(4 * lh * lw, 41);
    const emb = timestepEmbedding(400, 16);
    const ctx = randomInput(77 * 32, 42);
    const layers = unetAttentionLayers(config.unet, lh, lw);
    const grids = attentionGrids(layers);
    const boxes = [{ x: 0, y: 0, width: 40, height: 64 }, { x: 24, y: 16, width: 40, height: 32 }];
    const masks = new Map(grids.map((gr) => [`${gr.rows}x${gr.cols}`, gridMasks(boxes, 64, 64, gr.rows, gr.cols)]));
    // every region's keys and values from the same context, through the cross-KV graph
    const kvGraph = buildCrossKV(config.unet, { batch: R, textLen: 77, dtype: 'float32' });
    const ctxR = new Float32Array(R * 77 * 32);
    for (let r = 0; r < R; r++) ctxR.set(ctx, r * 77 * 32);
    const kv = await run(backend, kvGraph, { encoder_hidden_states: { data: ctxR, dims: [R, 77, 32] } }, weights.unet);
    const selfLayer = layers.find((l) => l.kind === 'self')!;
    const inputs: Record<string, { data: Float32Array; dims: number[] }> = {
      sample: { data: sample, dims: [1, 4, lh, lw] },
      timestep_embedding: { data: emb, dims: [1, 16] },
      encoder_hidden_states: { data: ctx, dims: [1, 77, 32] },
    };
    for (const l of layers.filter((x) => x.kind === 'cross')) {
      const c = kv[crossKeyOutputName(l.name)].length / (R * 77);
      inputs[regionKeyInputName(l.name)] = { data: kv[crossKeyOutputName(l.name)], dims: [1, R, 77, c] };
      inputs[regionValueInputName(l.name)] = { data: kv[crossValueOutputName(l.name)], dims: [1, R, 77, c] };
    }
    for (const m of masks.values()) inputs[regionWeightInputName(m.rows, m.cols)] = { data: regionWeights(m), dims: [R, m.rows * m.cols] };
    const { sample: s0, timestep_embedding: t0, encoder_hidden_states: c0 } = inputs;
    const plain = await run(backend, buildUNet(config.unet, { batch: 1, latentH: lh, latentW: lw, textLen: 77, dtype: 'float32' }), { sample: s0, timestep_embedding: t0, encoder_hidden_states: c0 }, weights.unet);
    const regional = await run(backend, buildUNet(config.unet, { batch: 1, latentH: lh, latentW: lw, textLen: 77, dtype: 'float32', regions: R }), inputs, weights.unet);
    const same = maxAbsDiff(regional.noise_pred, plain.noise_pred);
    assert.ok(same.diff <= TOL[backend] * Math.max(1, same.scale), `regions with one context: ${same.diff}`);

    // concept isolation: one set of factors per grid, the same for every layer on it; the reference
    // adds the whole bias as the layout's masks give it
    for (const m of masks.values()) inputs[selfIsolationInputName(m.rows, m.cols)] = { data: isolationFactors(m), dims: [2, m.rows * m.cols, ISOLATION_FACTORS] };
    const isolated = await run(backend, buildUNet(config.unet, { batch: 1, latentH: lh, latentW: lw, textLen: 77, dtype: 'float32', regions: R, isolation: true, mapLayers: [selfLayer.name] }), inputs, weights.unet);
    const want = ref.unetForward(W(weights.unet), config.unet, nn.tensor(sample, [1, 4, lh, lw]), nn.tensor(emb, [1, 16]), nn.tensor(ctx, [77, 32]), {
      bias: (layer) => {
        const l = layers.find((x) => x.name === layer)!;
        if (l.kind !== 'self') return undefined;
        const b = isolationBias(masks.get(`${l.h}x${l.w}`)!);
        return (_n, i, j) => b[i * l.nq + j];
      },
    });
    check(backend, isolated.noise_pred, want, 'isolated unet');
    const m = masks.get(`${selfLayer.h}x${selfLayer.w}`)!;
    const bias = isolationBias(m);
    const map = isolated[unetMapOutputName(selfLayer.name)];
    const n = selfLayer.nq;
    let leak = 0;
    let blocked = 0;
    let toBackground = 0;
    for (let i = 0; i < n * n; i++) if (bias[i] !== 0) (leak = Math.max(leak, map[i])), blocked++;
    // a box's queries still see the background
    for (let q = 0; q < n; q++) if (m.boxes[0][q] && !m.boxes[1][q]) for (let key = 0; key < n; key++) if (m.background[key]) toBackground += map[q * n + key];
    assert.ok(blocked > 0, 'the layout has box pairs to block');
    assert.equal(leak, 0, 'no self-attention probability crosses from one box into another');
    assert.ok(toBackground > 0.01, `box queries attend to the background (${toBackground})`);
  });

  test(`attention bias inputs and attention-map outputs (${backend})`, async () => {
    const { config, weights } = tiny;
    const selfLayer = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1';
    const crossLayer = 'down_blocks.0.attentions.0.transformer_blocks.0.attn2';
    const g = buildUNet(config.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32', biasLayers: [selfLayer], mapLayers: [crossLayer, selfLayer] });
    // region mask: the left half of the 8x8 latent may not attend to the right half, and back
    const n = 64;
    const side = (p: number) => (p % 8 < 4 ? 0 : 1);
    const bias = new Float32Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) bias[i * n + j] = side(i) === side(j) ? 0 : -1e9;
    const sample = randomInput(256, 16);
    const emb = timestepEmbedding(250, 16);
    const ctx = randomInput(77 * 32, 17);
    const out = await run(
      backend,
      g,
      {
        sample: { data: sample, dims: [1, 4, 8, 8] },
        timestep_embedding: { data: emb, dims: [1, 16] },
        encoder_hidden_states: { data: ctx, dims: [1, 77, 32] },
        [unetBiasInputName(selfLayer)]: { data: bias, dims: [1, 1, n, n] },
      },
      weights.unet,
    );
    const probs: Record<string, Float64Array> = {};
    const want = ref.unetForward(W(weights.unet), config.unet, nn.tensor(sample, [1, 4, 8, 8]), nn.tensor(emb, [1, 16]), nn.tensor(ctx, [77, 32]), {
      bias: (layer) => (layer === selfLayer ? (_b, i, j) => bias[i * n + j] : undefined),
      onProbs: (layer, p) => (probs[layer] = p),
    });
    check(backend, out.noise_pred, want, 'masked unet');
    check(backend, out[unetMapOutputName(crossLayer)], probs[crossLayer], 'cross-attention map');
    const selfMap = out[unetMapOutputName(selfLayer)];
    let leak = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (side(i) !== side(j)) leak = Math.max(leak, selfMap[i * n + j]);
    assert.equal(leak, 0, 'no self-attention probability crosses the mask');
    let rowSum = 0;
    for (let j = 0; j < 77; j++) rowSum += out[unetMapOutputName(crossLayer)][j];
    assert.ok(Math.abs(rowSum - 1) < 1e-4, `cross-attention rows sum to 1 (${rowSum})`);
  });
}

after(() => setTimeout(() => process.exit(0), 10).unref());

for (const backend of BACKENDS) {
  test(`VAE encoder (its asymmetric downsampling pads, the mean of its latent distribution) and the 9-channel inpainting UNet (${backend})`, async () => {
    const { config, weights } = tiny;
    const eg = buildVaeEncoder(config.vae, { batch: 1, latentH: 3, latentW: 2, dtype: 'float32' });
    const img = randomInput(3 * 24 * 16, 16);
    const e = await run(backend, eg, { image: { data: img, dims: [1, 3, 24, 16] } }, weights.vae);
    assert.equal(e.latent.length, 4 * 3 * 2);
    check(backend, e.latent, ref.vaeEncode(W(weights.vae), config.vae, nn.tensor(img, [1, 3, 24, 16])), 'vae encoder');

    const inpaint = makeTinyInpaintingModel(tiny);
    const cfg9 = inpaint.config.unet;
    const sample = randomInput(9 * 64, 17);
    const emb = timestepEmbedding(700, cfg9.blockOutChannels[0]);
    const ctx = randomInput(77 * cfg9.crossAttentionDim, 18);
    const ug = buildUNet(cfg9, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32' });
    // in the engine's NCHW layout: onnxruntime-web's WebGPU EP computes a 3x3 convolution with 9 input
    // channels wrongly in NHWC (max error 28 on random data here; 4, 8 and 12 channels are right)
    const u = await run(backend, ug, { sample: { data: sample, dims: [1, 9, 8, 8] }, timestep_embedding: { data: emb, dims: [1, 16] }, encoder_hidden_states: { data: ctx, dims: [1, 77, 32] } }, inpaint.weights.unet, 'NCHW');
    assert.equal(u.noise_pred.length, 4 * 8 * 8);
    check(backend, u.noise_pred, ref.unetForward(W(inpaint.weights.unet), cfg9, nn.tensor(sample, [1, 9, 8, 8]), nn.tensor(emb, [1, 16]), nn.tensor(ctx, [77, 32])), 'inpainting unet');
  });
}
