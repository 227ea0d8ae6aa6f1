// Attention in its three forms (fused MultiHeadAttention, query chunks, one piece) on the wasm EP and
// the WebGPU EP (Dawn), against the float64 reference; and the whole tiny model built fused.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type * as OrtNs from 'onnxruntime-web';
import { chooseAttention } from '../../workers/engine/attention-check.ts';
import { sessionOptions, type Backend } from '../../workers/engine/runtime.ts';
import { makeTinyModel } from '../../workers/engine/test-model.ts';
import { timestepEmbedding } from '../../workers/engine/pipeline.ts';
import { Rng } from '../../workers/engine/random.ts';
import { WeightSet } from '../../workers/engine/weights.ts';
import { GraphBuilder, type AttentionForm } from '../../workers/graph/builder.ts';
import { buildTextEncoder, TOKEN_EMBEDDING } from '../../workers/graph/clip.ts';
import { TokenTable } from '../../workers/text/token-table.ts';
import { attention, attentionChunks, chunkRows, ISOLATION_FACTORS } from '../../workers/graph/layers.ts';
import { gridMasks, isolationBias, isolationFactors } from '../../workers/layout/masks.ts';
import { elementCount } from '../../workers/graph/shapes.ts';
import { buildUNet, unetAttentionLayers, unetMapOutputName } from '../../workers/graph/unet.ts';
import { buildVaeDecoder } from '../../workers/graph/vae.ts';
import * as nn from '../../workers/reference/nn.ts';
import * as ref from '../../workers/reference/sd15.ts';
import { maxAbsDiff, runtime, tinyModelDir } from '../helpers.ts';
import { openTinyEngine } from '../../workers/node/tiny.ts';
import type { GenerateJob, ProgressEvent } from '../../workers/api/contract.ts';

const BACKENDS: Backend[] = ['wasm', 'webgpu'];
const TOL: Record<Backend, number> = { wasm: 2e-5, webgpu: 2e-4 };

async function run(backend: Backend, g: GraphBuilder, inputs: Record<string, { data: Float32Array | BigInt64Array; dims: number[] }>, weights = new Map<string, Float32Array>()) {
  const rt = await runtime(backend);
  const ws = new WeightSet(rt, 'float32');
  for (const spec of g.weights.values()) ws.add(spec, weights.get(spec.name)!);
  const session = await rt.ort.InferenceSession.create(g.encode(), sessionOptions(rt));
  const feeds: Record<string, OrtNs.Tensor> = ws.feeds(g.weights.keys());
  for (const [k, v] of Object.entries(inputs)) feeds[k] = v.data instanceof BigInt64Array ? new rt.ort.Tensor('int64', v.data, v.dims) : new rt.ort.Tensor('float32', v.data, v.dims);
  const out = await session.run(feeds);
  await session.release();
  ws.dispose();
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data as Float32Array]));
}

function close(backend: Backend, got: Float32Array, want: Float64Array | nn.T, what: string) {
  const { diff, scale } = maxAbsDiff(got, 'data' in want ? want.data : want);
  assert.ok(diff <= TOL[backend] * Math.max(1, scale), `${what} on ${backend}: max |diff| ${diff.toExponential(2)} (scale ${scale.toFixed(3)})`);
}

const W = (m: Map<string, Float32Array>) => (name: string) => Float64Array.from(m.get(name)!);
const count = (g: GraphBuilder, type: string) => g.records.filter((r) => r.type === type).length;

test('query chunks: nearly equal parts whose score tensors fit the limit', () => {
  assert.deepEqual(chunkRows(10, 3), [4, 3, 3]);
  assert.deepEqual(chunkRows(4, 9), [1, 1, 1, 1]);
  // SD 1.5 at 512x512, CFG batch 2: the 64x64 self-attention's scores are 2 x 8 x 4096 x 4096
  const sd = { b: 2, heads: 8, nq: 4096, nk: 4096 };
  assert.equal(attentionChunks(sd, 2, 128 * 2 ** 20), 4); // 512 MiB in fp16 -> four 128 MiB chunks
  assert.equal(attentionChunks(sd, 4, 128 * 2 ** 20), 8);
  assert.equal(attentionChunks(sd, 4, 2 ** 40), 1);
});

// b 2, 13 queries, 7 keys, 2 heads of 4: a limit of 2 x 2 x 7 x 4 x 5 bytes gives chunks of 5, 4, 4 rows
const dims = { b: 2, nq: 13, nk: 7, c: 8, heads: 2 };
const LIMIT = 2 * 2 * 7 * 4 * 5;
const rng = new Rng(31);
const Q = rng.normal(dims.b * dims.nq * dims.c);
const K = rng.normal(dims.b * dims.nk * dims.c);
const V = rng.normal(dims.b * dims.nk * dims.c);
// a hard mask per batch item (each query keeps at least key 0) and a soft bias shared by the batch
const HARD = Float32Array.from({ length: dims.b * dims.nq * dims.nk }, (_, i) => (i % dims.nk === 0 || (i * 7919) % 5 > 1 ? 0 : -1e9));
const SOFT = rng.normal(dims.nq * dims.nk);
const BIASES = {
  none: undefined,
  'hard mask [B, 1, Nq, Nk]': { data: HARD, dims: [dims.b, 1, dims.nq, dims.nk], at: (n: number, i: number, j: number) => HARD[(n * dims.nq + i) * dims.nk + j] },
  'soft bias [1, 1, Nq, Nk]': { data: SOFT, dims: [1, 1, dims.nq, dims.nk], at: (_n: number, i: number, j: number) => SOFT[i * dims.nk + j] },
};

for (const backend of BACKENDS) {
  for (const form of ['fused', 'chunked', 'explicit'] as AttentionForm[]) {
    test(`attention ${form}: output${form === 'fused' ? '' : ' and maps'} against float64, with no bias, a hard mask and a soft bias (${backend})`, async () => {
      for (const [label, bias] of Object.entries(BIASES)) {
        const g = new GraphBuilder('float32', { attention: form, bufferLimit: LIMIT });
        const io = { bias: bias ? g.input('bias', 'float32', bias.dims) : undefined, probsOutput: form === 'fused' ? undefined : 'maps' };
        const y = attention(g, g.input('q', 'float32', [dims.b * dims.nq, dims.c]), g.input('k', 'float32', [dims.b * dims.nk, dims.c]), g.input('v', 'float32', [dims.b * dims.nk, dims.c]), dims, io);
        g.output(y, 'y', 'float32', [dims.b * dims.nq, dims.c]);
        assert.equal(count(g, 'MultiHeadAttention'), form === 'fused' ? 1 : 0);
        assert.equal(count(g, 'Softmax'), { fused: 0, chunked: 3, explicit: 1 }[form]);
        if (form === 'chunked') {
          const scores = g.records.filter((r) => r.type === 'Softmax').map((r) => elementCount(g.shape(r.outputs[0])) * 4);
          assert.deepEqual(scores, [5, 4, 4].map((rows) => 2 * 2 * rows * 7 * 4));
        }
        const inputs = {
          q: { data: Q, dims: [dims.b * dims.nq, dims.c] },
          k: { data: K, dims: [dims.b * dims.nk, dims.c] },
          v: { data: V, dims: [dims.b * dims.nk, dims.c] },
          ...(bias ? { bias: { data: bias.data, dims: bias.dims } } : {}),
        };
        const out = await run(backend, g, inputs);
        const want = nn.attention(nn.tensor(Q, [dims.b * dims.nq, dims.c]), nn.tensor(K, [dims.b * dims.nk, dims.c]), nn.tensor(V, [dims.b * dims.nk, dims.c]), dims.b, dims.heads, bias?.at);
        close(backend, out.y, want.out.data, `${form} output, ${label}`);
        if (io.probsOutput) close(backend, out.maps, want.probs, `${form} maps, ${label}`);
      }
    });
  }
}

// Concept isolation's bias made in the graph from its factors, one query chunk at a time: self-attention
// on a 3 x 4 grid (b 2, 2 heads of 4) with three overlapping boxes, alone and beside a soft bias. The
// limits make three chunks of 4 rows in each form but the explicit one: the fused form cuts its
// MultiHeadAttention where the bias [rows, Nk] would pass the limit (4 x 12 floats a chunk), the
// chunked form where the scores would (2 x 2 x 4 x 12 floats).
const iso = { b: 2, nq: 12, nk: 12, c: 8, heads: 2 };
const isoMasks = gridMasks([{ x: 0, y: 0, width: 24, height: 16 }, { x: 16, y: 8, width: 16, height: 16 }, { x: 8, y: 0, width: 8, height: 24 }], 32, 24, 3, 4);
const ISO_LIMIT: Record<AttentionForm, number> = { fused: 4 * 12 * 4, chunked: 2 * 2 * 4 * 12 * 4, explicit: 4 * 12 * 4 };

for (const backend of BACKENDS) {
  for (const form of ['fused', 'chunked', 'explicit'] as AttentionForm[]) {
    test(`attention ${form} with concept isolation made from its factors, in query chunks, both scopes, with and without a soft bias, against float64 (${backend})`, async () => {
      const rng = new Rng(41);
      const [q, k, v] = [iso.nq, iso.nk, iso.nk].map((n) => rng.normal(iso.b * n * iso.c));
      const soft = rng.normal(iso.nq * iso.nk);
      let blocked = 0;
      for (const scope of ['concepts', 'regions'] as const) {
        const whole = isolationBias(isoMasks, scope);
        blocked += whole.filter((x) => x !== 0).length;
        for (const withSoft of [false, true]) {
          const g = new GraphBuilder('float32', { attention: form, bufferLimit: ISO_LIMIT[form] });
          const io = { isolation: g.input('iso', 'float32', [2, iso.nq, ISOLATION_FACTORS]), bias: withSoft ? g.input('soft', 'float32', [1, 1, iso.nq, iso.nk]) : undefined, probsOutput: form === 'fused' ? undefined : 'maps' };
          const y = attention(g, g.input('q', 'float32', [iso.b * iso.nq, iso.c]), g.input('k', 'float32', [iso.b * iso.nk, iso.c]), g.input('v', 'float32', [iso.b * iso.nk, iso.c]), iso, io);
          g.output(y, 'y', 'float32', [iso.b * iso.nq, iso.c]);
          assert.equal(count(g, form === 'fused' ? 'MultiHeadAttention' : 'Softmax'), form === 'explicit' ? 1 : 3, 'three query chunks');
          const out = await run(backend, g, {
            q: { data: q, dims: [iso.b * iso.nq, iso.c] },
            k: { data: k, dims: [iso.b * iso.nk, iso.c] },
            v: { data: v, dims: [iso.b * iso.nk, iso.c] },
            iso: { data: isolationFactors(isoMasks, scope), dims: [2, iso.nq, ISOLATION_FACTORS] },
            ...(withSoft ? { soft: { data: soft, dims: [1, 1, iso.nq, iso.nk] } } : {}),
          });
          const at = (_n: number, i: number, j: number) => whole[i * iso.nk + j] + (withSoft ? soft[i * iso.nk + j] : 0);
          const want = nn.attention(nn.tensor(q, [iso.b * iso.nq, iso.c]), nn.tensor(k, [iso.b * iso.nk, iso.c]), nn.tensor(v, [iso.b * iso.nk, iso.c]), iso.b, iso.heads, at);
          const label = `${form}, ${scope}${withSoft ? ' and a soft bias' : ''}`;
          close(backend, out.y, want.out.data, `isolated attention, ${label}`);
          if (io.probsOutput) {
            close(backend, out.maps, want.probs, `isolated maps, ${label}`);
            // no probability crosses a blocked pair
            const leak = Math.max(...[...out.maps].filter((_, i) => whole[i % (iso.nq * iso.nk)] !== 0));
            assert.equal(leak, 0, `${label}: blocked pairs get nothing`);
          }
        }
      }
      assert.ok(blocked > 20, `the layout blocks pairs in both scopes (${blocked})`);
    });
  }
}

test('a fused graph keeps the explicit form where a job reads the maps', () => {
  const g = new GraphBuilder('float32', { attention: 'fused' });
  const y = attention(g, g.input('q', 'float32', [26, 8]), g.input('k', 'float32', [14, 8]), g.input('v', 'float32', [14, 8]), dims, { probsOutput: 'maps' });
  g.output(y, 'y', 'float32', [26, 8]);
  assert.equal(count(g, 'MultiHeadAttention'), 0);
  assert.equal(count(g, 'Softmax'), 1);
});

const tiny = makeTinyModel(1234);

for (const backend of BACKENDS) {
  test(`the adapter check: fused attention where it agrees with the explicit form, else chunks, and the verdict holds for the whole tiny UNet (${backend})`, async () => {
    const rt = await runtime(backend);
    const choice = await chooseAttention(rt);
    assert.equal(await chooseAttention(rt), choice, 'checked once per runtime');
    if (backend === 'wasm') assert.equal(choice.form, 'fused', choice.reason);
    assert.match(choice.reason, choice.form === 'fused' ? /checked against the explicit form/ : /query chunks/);
    const { config, weights } = tiny;
    const sample = new Rng(13).normal(4 * 64);
    const emb = timestepEmbedding(500, config.unet.blockOutChannels[0]);
    const ctx = new Rng(14).normal(77 * config.unet.crossAttentionDim);
    const feeds = { sample: { data: sample, dims: [1, 4, 8, 8] }, timestep_embedding: { data: emb, dims: [1, 16] }, encoder_hidden_states: { data: ctx, dims: [1, 77, 32] } };
    const wantU = ref.unetForward(W(weights.unet), config.unet, nn.tensor(sample, [1, 4, 8, 8]), nn.tensor(emb, [1, 16]), nn.tensor(ctx, [77, 32]));
    const fused = await run(backend, buildUNet(config.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32', attention: 'fused' }), feeds, weights.unet);
    const { diff, scale } = maxAbsDiff(fused.noise_pred, wantU.data);
    // the check's verdict is the whole UNet's: fused agrees with float64 exactly where the check chose it
    assert.equal(diff <= TOL[backend] * Math.max(1, scale), choice.form === 'fused', `fused UNet differs by ${diff.toExponential(2)}; the check chose ${choice.form}`);
    const chosen = await run(backend, buildUNet(config.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32', attention: choice.form }), feeds, weights.unet);
    close(backend, chosen.noise_pred, wantU, `the UNet in the chosen form (${choice.form})`);
  });
}

test('whole tiny UNet (one layer\'s maps read), text encoder and VAE decoder built fused (wasm)', async () => {
  const backend: Backend = 'wasm';
  const { config, weights } = tiny;
  const crossLayer = 'down_blocks.0.attentions.0.transformer_blocks.0.attn2';
  const sample = new Rng(13).normal(4 * 64);
  const emb = timestepEmbedding(500, config.unet.blockOutChannels[0]);
  const ctx = new Rng(14).normal(77 * config.unet.crossAttentionDim);
  const ug = buildUNet(config.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32', attention: 'fused', mapLayers: [crossLayer] });
  assert.equal(count(ug, 'MultiHeadAttention'), unetAttentionLayers(config.unet, 8, 8).length - 1, 'every attention but the one whose maps are read is fused');
  const u = await run(backend, ug, { sample: { data: sample, dims: [1, 4, 8, 8] }, timestep_embedding: { data: emb, dims: [1, 16] }, encoder_hidden_states: { data: ctx, dims: [1, 77, 32] } }, weights.unet);
  let maps: Float64Array | undefined;
  const wantU = ref.unetForward(W(weights.unet), config.unet, nn.tensor(sample, [1, 4, 8, 8]), nn.tensor(emb, [1, 16]), nn.tensor(ctx, [77, 32]), { onProbs: (layer, p) => layer === crossLayer && (maps = p) });
  close(backend, u.noise_pred, wantU, 'fused unet');
  close(backend, u[unetMapOutputName(crossLayer)], maps!, 'its maps');

  const ids = Array.from({ length: 77 }, (_, i) => (i * 37) % config.textEncoder.vocabSize);
  const tg = buildTextEncoder(config.textEncoder, { batch: 1, seqLen: 77, dtype: 'float32', clipSkip: 1, attention: 'fused' });
  assert.equal(count(tg, 'MultiHeadAttention'), config.textEncoder.layers);
  const tokens = TokenTable.of(weights.textEncoder.get(TOKEN_EMBEDDING)!, config.textEncoder.hidden, 'fp32');
  const t = await run(backend, tg, { inputs_embeds: { data: tokens.embed(ids), dims: [1, 77, config.textEncoder.hidden] } }, weights.textEncoder);
  close(backend, t.last_hidden_state, ref.textEncode(W(weights.textEncoder), config.textEncoder, ids, 1), 'fused text encoder (causal mask as attention_bias)');

  const vg = buildVaeDecoder(config.vae, { batch: 1, latentH: 4, latentW: 4, dtype: 'float32', attention: 'fused' });
  assert.equal(count(vg, 'MultiHeadAttention'), 1);
  const lat = new Rng(15).normal(64);
  const v = await run(backend, vg, { latent: { data: lat, dims: [1, 4, 4, 4] } }, weights.vae);
  close(backend, v.image, ref.vaeDecode(W(weights.vae), config.vae, nn.tensor(lat, [1, 4, 4, 4])), 'fused vae decoder');
});

test('the EP refusing a fused attention node at one shape: the job runs again in query chunks, the report says why, the image is the chunked one; another engine still fuses (wasm)', async () => {
  const rt = await runtime('wasm');
  assert.equal((await chooseAttention(rt)).form, 'fused', 'the wasm EP passes the attention check, so its jobs fuse');
  const { dir } = await tinyModelDir();
  const job: GenerateJob = { prompt: 'a fox in a red coat', negative: '', steps: 2, cfg: 5, seed: 9, width: 64, height: 64, scheduler: 'euler-a' };
  const fused = (await openTinyEngine(dir, rt)).engine;
  const plain = await fused.generate(job);
  assert.equal(plain.report.memoryPlan.attention, 'fused');
  // a refusal onnxruntime itself makes: an attribute of the wrong type, given only to the nodes whose
  // queries are 64 long (the UNet's first and last blocks at this size), as an EP that lacked one shape would
  const { engine } = await openTinyEngine(dir, rt);
  const msOp = GraphBuilder.prototype.msOp;
  let refused = 0;
  GraphBuilder.prototype.msOp = function (this: GraphBuilder, type, inputs, attrs = {}) {
    const bad = type === 'MultiHeadAttention' && this.shape(inputs[0])[1] === 64;
    if (bad) refused++;
    return msOp.call(this, type, inputs, bad ? { ...attrs, mask_filter_value: 1 } : attrs);
  };
  // sessions compiled during the job: the text encoder (fused: its 77 queries are not refused) and the
  // refused UNet, then all three again in chunks; a fused text encoder kept from before would make it 4
  const sessions = rt.ort.InferenceSession as unknown as { create: (...a: unknown[]) => Promise<unknown> };
  const create = sessions.create;
  let created = 0;
  sessions.create = (...a: unknown[]) => (created++, create.apply(sessions, a));
  const events: ProgressEvent[] = [];
  let fallback;
  try {
    fallback = await engine.generate(job, (e) => events.push(e));
  } finally {
    GraphBuilder.prototype.msOp = msOp;
    sessions.create = create;
  }
  assert.ok(refused > 0, 'the UNet was built fused first');
  assert.equal(created, 5, 'text encoder and refused UNet, then text encoder, UNet and VAE in chunks');
  // the page is told the job starts over, once, before its steps
  const restarts = events.flatMap((e, i) => (e.restart ? [i] : []));
  assert.equal(restarts.length, 1);
  assert.match(events[restarts[0]].restart!, /refused fused attention.*starting again with attention in chunks/);
  assert.deepEqual(events.slice(restarts[0]).filter((e) => e.phase === 'denoise').map((e) => e.step), [1, 2]);
  assert.equal(fallback.report.memoryPlan.attention, 'chunked');
  assert.match(fallback.report.memoryPlan.attentionReason, /^the wasm backend refused fused attention at a shape of this job \(.*MultiHeadAttention.*\); attention runs in query chunks$/);
  assert.equal((await engine.attentionChoice()).form, 'chunked');
  // the next job on this engine is chunked from the start: the same image, byte for byte
  const next = await engine.generate(job);
  assert.equal(next.report.memoryPlan.attention, 'chunked');
  assert.deepEqual(next.image.data, fallback.image.data);
  // and the chunked image is the fused one's within 1/255 (the two forms agree)
  const { diff } = maxAbsDiff(fallback.image.data, plain.image.data);
  assert.ok(diff <= 1, `fused and chunked images differ by ${diff}/255`);
  assert.ok(fallback.image.data.some((v, i) => v !== next.image.data[(i + 1) % next.image.data.length]), 'a picture, not a flat field');
  // the refusal was this engine's: another on the same runtime still fuses
  assert.equal((await fused.attentionChoice()).form, 'fused');
  engine.unload();
  fused.unload();
});

after(() => setTimeout(() => process.exit(0), 10).unref());
