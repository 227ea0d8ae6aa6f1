// The memory plan: liveness over a graph's node order against hand counts, the SD 1.5 graphs' weights
// against the published parameter counts, the plan's choices at 512x512, and a layout's graphs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SD15_CONFIG } from '../../workers/checkpoint/config.ts';
import { loraTargets, planMemory } from '../../workers/engine/memory-plan.ts';
import { GraphBuilder } from '../../workers/graph/builder.ts';
import { buildTextEncoder, TOKEN_EMBEDDING } from '../../workers/graph/clip.ts';
import { graphSpecs, textEncoderFileSpecs } from '../../workers/graph/specs.ts';
import { graphMemory } from '../../workers/graph/memory.ts';
import { buildUNet } from '../../workers/graph/unet.ts';
import { buildVaeDecoder, buildVaeEncoder } from '../../workers/graph/vae.ts';
import { attention, ISOLATION_FACTORS } from '../../workers/graph/layers.ts';

test('liveness: a value lives from its node to its last reader, outputs to the end', () => {
  const g = new GraphBuilder('float32');
  const x = g.input('x', 'float32', [1, 1000]); // 4000 bytes
  const a = g.op('Relu', [x]); // x's last reader: x + a = 8000, then 4000
  const b = g.op('Concat', [a, a], { axis: 1 }); // 4000 + 8000 = 12000, then a is freed: 8000
  g.output(b, 'y', 'float32', [1, 2000]); // 8000 + 8000 = 16000
  const m = graphMemory(g);
  assert.equal(m.activationPeakBytes, 16000);
  assert.equal(m.largestBufferBytes, 8000);
  assert.equal(m.weightBytes, 0);

  const h = new GraphBuilder('float16');
  const z = h.input('z', 'float32', [1, 4, 5, 5]); // 400 bytes
  const z16 = h.op('Cast', [z], { to: 10 }); // 200
  const w = h.weight('conv.weight', [8, 4, 3, 3]); // 288 halves: 576 bytes
  const y = h.op('Conv', [z16, w], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }); // [1, 8, 5, 5] = 400
  h.output(h.op('Cast', [y], { to: 1 }), 'y', 'float32', [1, 8, 5, 5]); // 800 (+ Identity 800)
  const plain = graphMemory(h);
  assert.equal(plain.weightBytes, 576);
  assert.equal(plain.weightTransposes, 0);
  // 400 + 200 -> 200 -> 200 + 400 -> 400 -> 400 + 800 -> 800 -> 800 + 800
  assert.equal(plain.activationPeakBytes, 1600);
  const nhwc = graphMemory(h, { transposesConvWeights: true });
  assert.equal(nhwc.weightTransposes, 1);
  assert.equal(nhwc.weightTransposeBytes, 2 * 576, 'read and written once per run');
  assert.equal(nhwc.activationPeakBytes, 1600, 'the transposed copy (576) lives only during its Conv (200 + 400 + 576 < 1600)');
});

test('SD 1.5 graphs bind exactly the published parameter counts', () => {
  const unet = buildUNet(SD15_CONFIG.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float16' });
  const text = buildTextEncoder(SD15_CONFIG.textEncoder, { batch: 1, seqLen: 77, dtype: 'float32', clipSkip: 1 });
  // diffusers' UNet2DConditionModel for SD 1.5 has 859,520,964 parameters; CLIPTextModel (ViT-L/14)
  // 123,060,480, of which the graph binds all but the token table (49408 x 768, looked up on the CPU)
  assert.equal(graphMemory(unet).weightBytes, 859_520_964 * 2);
  assert.equal(graphMemory(text).weightBytes, (123_060_480 - 49408 * 768) * 4);
  const specs = graphSpecs(SD15_CONFIG);
  assert.equal(textEncoderFileSpecs(specs).reduce((a, s) => a + s.dims.reduce((x, y) => x * y, 1), 0), 123_060_480, 'the checkpoint weights the engine reads');
  assert.deepEqual(textEncoderFileSpecs(specs)[0], { name: TOKEN_EMBEDDING, dims: [49408, 768] });
  assert.deepEqual(specs.textEncoder, [...text.weights.values()], 'the GPU list is the graph\'s');
  // AutoencoderKL: 83,653,863 parameters, the decoder's graph and the encoder's together
  const vae = [buildVaeDecoder, buildVaeEncoder].map((build) => graphMemory(build(SD15_CONFIG.vae, { batch: 1, latentH: 8, latentW: 8, dtype: 'float32' })).weightBytes / 4);
  assert.equal(vae[0] + vae[1], 83_653_863);
  assert.equal(text.weights.has(TOKEN_EMBEDDING), false);
  // kohya's usual targets: 16 transformer blocks x (two attentions' q, k, v, out; ff.net.0.proj, ff.net.2; proj_in, proj_out), 12 text layers x 6
  assert.equal(loraTargets(unet.weights.values()).length, 16 * 12);
  assert.equal(loraTargets(text.weights.values()).length, 12 * 6);
});

test('the plan at 512x512 with CFG: the targets, the buffer limit, and what it chooses', () => {
  const GB = 1e9;
  for (const precision of ['fp16', 'fp32'] as const) {
    const fused = planMemory(SD15_CONFIG, { width: 512, height: 512, precision, cfg: true, fusedAttention: true });
    const chunked = planMemory(SD15_CONFIG, { width: 512, height: 512, precision, cfg: true, fusedAttention: false, bufferLimit: 128 * 2 ** 20 });
    assert.equal(fused.attention, 'fused');
    assert.equal(chunked.attention, 'chunked');
    const bytes = precision === 'fp16' ? 2 : 4;
    assert.equal(fused.parts.weightBytes.unet, 859_520_964 * bytes);
    const { weightBytes: w, activationBytes: a, loraArenaBytes, pristineBytes, cacheBytes, latentBytes } = fused.parts;
    assert.equal(fused.peakBytes, w.unet + w.textEncoder + w.vae + Math.max(a.unet, a.textEncoder, a.vae) + loraArenaBytes + pristineBytes + cacheBytes + latentBytes);
    assert.ok(a.unet < chunked.parts.activationBytes.unet, 'fused attention keeps no score buffer alive');
    // the targets, without a budget: 2.5 GB in fp16, 5 GB in fp32, for the plain job and for
    // one whose loop replays a captured UNet (its activations kept through the decode)
    // (as the engine plans on WebGPU: NCHW sessions, the low levels unfolded, the VAE's encoder loaded)
    const asRun = { width: 512, height: 512, precision, cfg: true, fusedAttention: true, transposesConvWeights: true, pointwiseAsIs: true, conv: 'auto', vaeEncoder: true } as const;
    const plainJob = planMemory(SD15_CONFIG, asRun);
    const capturedJob = planMemory(SD15_CONFIG, { ...asRun, capturedUnet: true });
    // and where the adapter binds 256 MiB, the decode whole in fp32 too
    const wide = { bufferLimit: 256 * 2 ** 20 };
    const plainWide = planMemory(SD15_CONFIG, { ...asRun, ...wide });
    const capturedWide = planMemory(SD15_CONFIG, { ...asRun, capturedUnet: true, ...wide });
    for (const p of [fused, plainJob, capturedJob, plainWide, capturedWide]) assert.ok(p.fits && p.peakBytes <= (precision === 'fp16' ? 2.5 : 5) * GB, `${precision} peak ${p.peakBytes}`);
    for (const p of [plainWide, capturedWide]) assert.equal(p.vaeTile, null);
    // in fp16 the whole decode fits (no tiles); in fp32 its 256-channel map at 512x512 (256 MiB) is
    // above the 128 MiB buffer limit, so it is tiled
    assert.equal(plainJob.vaeTile, precision === 'fp16' ? null : 32);
    for (const p of [fused, chunked]) assert.ok(p.largestBufferBytes <= 256 * 2 ** 20, `${precision} ${p.attention}: ${p.largestBuffer} ${p.largestBufferBytes}`);
    // unfused, the 64x64 self-attention scores alone (2 x 8 x 4096 x 4096) would be 512 MiB in fp16;
    // chunked, nothing is above WebGPU's guaranteed 128 MiB binding, in fp32 too (CLIP's token table,
    // 49408 x 768 floats = 145 MiB, stays in CPU memory)
    for (const p of [fused, chunked]) {
      assert.ok(p.largestBufferBytes <= 128 * 2 ** 20, `${precision} ${p.attention}: ${p.largestBuffer} ${p.largestBufferBytes}`);
      assert.equal(p.fits, true);
      assert.equal(p.cpuBytes, 49408 * 768 * bytes);
    }
    assert.equal(fused.cfgHalves, false);
  }
  // a tight budget makes the CFG halves run one after the other
  const roomy = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: false });
  const tight = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: false, budgetBytes: roomy.peakBytes - 1 });
  assert.equal(tight.cfgHalves, roomy.parts.activationBytes.unet > roomy.parts.activationBytes.vae);
  // LoRAs: the f32 factor arena grows with count and rank, the pristine copies once
  const one = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, loras: { count: 1, rank: 32 } });
  const five = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, loras: { count: 5, rank: 32 } });
  assert.equal(five.parts.loraArenaBytes, 5 * one.parts.loraArenaBytes);
  assert.equal(five.parts.pristineBytes, one.parts.pristineBytes);
  // a loop mixing predictions on the GPU keeps each (the batch of two, 4 channels, f32) beside its own four latents
  const mixing = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, loras: { count: 5, rank: 32 }, keptPredictions: 11 });
  assert.equal(five.parts.latentBytes, 4 * 4 * 4 * 64 * 64 * 2);
  assert.equal(mixing.parts.latentBytes - five.parts.latentBytes, 11 * 2 * 4 * 64 * 64 * 4);
  assert.equal(mixing.peakBytes - five.peakBytes, 11 * 2 * 4 * 64 * 64 * 4);
  // a captured UNet keeps its activations: they add to the text encoder's or the decode's, whichever is larger
  const captured = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, capturedUnet: true });
  const a = captured.parts.activationBytes;
  const w = captured.parts.weightBytes;
  assert.equal(captured.peakBytes, w.unet + w.textEncoder + w.vae + a.unet + Math.max(a.textEncoder, a.vae) + captured.parts.latentBytes);
  const fusedPlain = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true });
  assert.equal(fusedPlain.peakBytes, w.unet + w.textEncoder + w.vae + Math.max(a.unet, a.textEncoder, a.vae) + fusedPlain.parts.latentBytes);
  assert.equal(captured.vaeTile, fusedPlain.vaeTile);
  // the VAE's encoder: its weights where it is loaded; its activations where the job encodes a picture
  const encoderWeights = 34_163_664 * 2;
  const loaded = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, vaeEncoder: true });
  assert.equal(loaded.parts.weightBytes.vae, 83_653_863 * 2);
  assert.equal(loaded.peakBytes - fusedPlain.peakBytes, encoderWeights);
  assert.equal(loaded.parts.activationBytes.vaeEncoder, undefined);
  const encoding = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, vaeEncoder: true, encodesPicture: true });
  const e = encoding.parts.activationBytes;
  assert.ok(e.vaeEncoder! > 0 && e.vaeEncoder! < e.vae, `the encode (${e.vaeEncoder}) holds less than the decode (${e.vae})`);
  assert.equal(encoding.peakBytes, loaded.peakBytes);
  // under a budget that tiles the decode the encode runs in the same tiles, holding less
  const tiledEncode = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, vaeEncoder: true, encodesPicture: true, budgetBytes: encoding.peakBytes - 1 });
  assert.equal(tiledEncode.vaeTile, 32);
  assert.ok(tiledEncode.parts.activationBytes.vaeEncoder! < e.vaeEncoder!);
  assert.ok(tiledEncode.fits && tiledEncode.peakBytes < encoding.peakBytes, `${tiledEncode.peakBytes}`);
  const nhwc = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true, transposesConvWeights: true });
  const convs = [...buildUNet(SD15_CONFIG.unet, { batch: 1, latentH: 8, latentW: 8, textLen: 77, dtype: 'float16' }).records].filter((r) => r.type === 'Conv').length;
  assert.equal(nhwc.weightTransposesPerStep, convs);
});

test('the largest buffer counts weights as they are bound: the UNet of SD 1.5 at 256x256 in fp32 (as bench:gpu measured it), and the whole plan', () => {
  // each 3x3 convolution from 2560 channels to 1280 binds a weight of 1280 x 2560 x 9 floats, and
  // with the unfolded low levels nothing else in the UNet is as large
  const unet = graphMemory(buildUNet(SD15_CONFIG.unet, { batch: 2, latentH: 32, latentW: 32, textLen: 77, dtype: 'float32', attention: 'chunked', conv: 'auto' }), { transposesConvWeights: true, pointwiseAsIs: true });
  assert.equal(unet.largestWeightBytes, 1280 * 2560 * 9 * 4);
  assert.match(unet.largestWeight, /^the weight up_blocks\.\d\.resnets\.\d\.conv1\.weight$/);
  assert.ok(unet.largestBufferBytes < unet.largestWeightBytes, `${unet.largestBuffer} ${unet.largestBufferBytes}`);
  // the whole job's plan: the same weight, as CLIP's token embedding (49408 x 768 floats, larger
  // still) is not a GPU buffer
  const plan = planMemory(SD15_CONFIG, { width: 256, height: 256, precision: 'fp32', cfg: true, fusedAttention: false, transposesConvWeights: true, pointwiseAsIs: true, conv: 'auto' });
  assert.deepEqual([plan.largestBufferBytes, plan.largestBuffer], [unet.largestWeightBytes, unet.largestWeight]);
  // in fp16 at 512x512 a VAE feature map (128 MiB) is larger than any weight (72 MiB)
  const half = planMemory(SD15_CONFIG, { width: 512, height: 512, precision: 'fp16', cfg: true, fusedAttention: true });
  assert.equal(half.largestBufferBytes, 128 * 2 ** 20);
  const tiny = new GraphBuilder('float32');
  const x = tiny.input('x', 'float32', [1, 10]);
  tiny.output(tiny.op('MatMul', [x, tiny.weight('big.weight', [10, 100])]), 'y', 'float32', [1, 100]);
  const m = graphMemory(tiny);
  assert.deepEqual([m.largestBufferBytes, m.largestWeightBytes, m.largestWeight], [400, 4000, 'the weight big.weight']);
});

test("a layout at 1024x1024: the region-aware attention and concept isolation's bias in query chunks under the limit, and the plan counts guidance's graphs", () => {
  const LIMIT = 128 * 2 ** 20;
  const n = 128 * 128;
  const regions = 6; // the background and five boxes
  for (const attention of ['fused', 'chunked'] as const) {
    const g = buildUNet(SD15_CONFIG.unet, { batch: 2, latentH: 128, latentW: 128, textLen: 77, dtype: 'float16', attention, bufferLimit: LIMIT, regions, isolation: true, regionOutputs: true });
    // isolation's factors [2, n, 10] are the input; the n x n bias (512 MiB in fp16) is never a value
    assert.deepEqual(g.inputs.find((i) => i.name === 'self_iso.128x128')?.dims, [2, n, ISOLATION_FACTORS]);
    const values = [...g.shapes].filter(([v]) => !g.weights.has(v));
    assert.ok(values.every(([, s]) => s.reduce((a, b) => a * b, 1) < n * n), `${attention}: no value as large as the whole bias`);
    // the region-aware scores [B, heads, R, rows, 77] at the 128x128 grid: 14,784 bytes a query row,
    // so 9,078 rows a chunk, two chunks of 8,192
    const regional = g.records.filter((r) => r.type === 'Softmax' && g.shape(r.outputs[0]).length === 5).map((r) => g.shape(r.outputs[0]));
    const atTop = regional.filter((s) => s[2] === regions && s[4] === 77 && s[1] === 8 && (s[3] === n / 2));
    assert.equal(atTop.length, 2 * 5, `${attention}: two chunks in each of the five 128x128 cross-attention layers (${regional.length} regional softmaxes)`);
    for (const s of regional) assert.ok(s.reduce((a, b) => a * b, 1) * 2 <= LIMIT, `${attention}: a chunk of ${s}`);
    if (attention === 'fused') {
      // the fused self-attention at 128x128 runs on four query chunks: its bias [1, 1, 4096, n] is 128 MiB
      const chunks = g.records.filter((r) => r.type === 'MultiHeadAttention' && g.shape(r.inputs[5])[3] === n);
      assert.ok(chunks.every((r) => g.shape(r.inputs[0])[1] === n / 4 && g.shape(r.inputs[5])[2] === n / 4));
      assert.equal(chunks.length, 4 * 5, 'four chunks in each of the five 128x128 self-attention layers');
    }
    // what is left above the limit is the GEGLU projection of the batch of two (2 x n x 2560 halves),
    // which the plan avoids by running the CFG halves one after the other
    const m = graphMemory(g);
    assert.equal(m.largestBufferBytes, 2 * n * 2560 * 2, `${attention}: ${m.largestBuffer}`);
    assert.match(m.largestBuffer, /^Gemm /);
  }
  // at 1536x1024 (n = 24,576) the isolated fused self-attention's bias chunks stay within the limit
  // too: 2,730 rows of 24,576 halves a chunk at most, so ten chunks, not nine of 2,731
  const wide = new GraphBuilder('float16', { attention: 'fused', bufferLimit: LIMIT });
  const cells = 192 * 128;
  const y = attention(wide, wide.input('q', 'float16', [cells, 320]), wide.input('k', 'float16', [cells, 320]), wide.input('v', 'float16', [cells, 320]), { b: 1, nq: cells, nk: cells, c: 320, heads: 8 }, { isolation: wide.input('iso', 'float16', [2, cells, ISOLATION_FACTORS]) });
  wide.output(y, 'y', 'float16', [cells, 320]);
  const biases = wide.records.filter((r) => r.type === 'MultiHeadAttention').map((r) => wide.shape(r.inputs[5]));
  assert.equal(biases.length, 10);
  for (const b of biases) assert.ok(b.reduce((x, z) => x * z, 1) * 2 <= LIMIT, `a bias chunk of ${b}`);
  // the plan: within the limit; guidance's graphs counted, and the peak their maximum with the rest
  const layout = { boxes: 5, injection: true, isolation: true, regionOutput: 'own', reinit: true, guidance: true } as const;
  const plan = planMemory(SD15_CONFIG, { width: 1024, height: 1024, precision: 'fp16', cfg: true, fusedAttention: true, layout });
  assert.equal(plan.fits, true, plan.notes.join('; '));
  assert.equal(plan.cfgHalves, true);
  assert.ok(plan.largestBufferBytes <= LIMIT, `${plan.largestBuffer} ${plan.largestBufferBytes}`);
  const a = plan.parts.activationBytes;
  const w = plan.parts.weightBytes;
  assert.equal(plan.peakBytes, w.unet + w.textEncoder + w.vae + Math.max(a.unet, a.textEncoder, a.vae, a.layout!) + plan.parts.latentBytes);
  const plain = planMemory(SD15_CONFIG, { width: 1024, height: 1024, precision: 'fp16', cfg: true, fusedAttention: true });
  assert.equal(w.unet, plain.parts.weightBytes.unet, "every UNet weight counted, though the layout's UNet graph leaves the cross-attention keys to the region keys' graph");
  const unguided = planMemory(SD15_CONFIG, { width: 1024, height: 1024, precision: 'fp16', cfg: true, fusedAttention: true, layout: { ...layout, guidance: false, reinit: false } });
  assert.ok(a.layout! > unguided.parts.activationBytes.layout!, 'the backward pass of guidance is the largest of them');
});
