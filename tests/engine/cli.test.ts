// The CLI as a user runs it: exit codes, one-line errors, files written.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { encodeSafetensors, SafetensorsFile, type TensorToWrite } from '../../workers/checkpoint/safetensors.ts';
import { deflateSync } from 'node:zlib';
import { decodePng, encodePng } from '../../workers/engine/png.ts';
import { encodeMask } from '../../workers/layout/mask-codec.ts';
import { NodeFileSource, nodeInflate } from '../../workers/node/files.ts';
import { SD15_CONFIG } from '../../workers/checkpoint/config.ts';
import { CONV_LAYOUT } from '../../workers/engine/engine.ts';
import { graphMemory } from '../../workers/graph/memory.ts';
import { buildUNet } from '../../workers/graph/unet.ts';

const cliEnv = (env: Record<string, string>, ...args: string[]) => {
  const r = spawnSync(process.execPath, ['--liftoff-only', '--import', 'tsx', '--import', './scripts/wgsl.mjs', 'workers/cli.ts', ...args], { encoding: 'utf8', timeout: 240_000, env: { ...process.env, ...env } });
  return { code: r.status, out: r.stdout, err: r.stderr.split('\n').filter((l) => l && !l.includes('XDG_RUNTIME_DIR')) };
};
const cli = (...args: string[]) => cliEnv({}, ...args);

const dir = mkdtempSync(join(tmpdir(), 'lora-studio-cli-'));

test('make-test-model, inspect and generate write what they promise', () => {
  assert.equal(cli('make-test-model', '--out', dir).code, 0);
  const inspect = cli('inspect', '--model', join(dir, 'tiny-sd15.safetensors'));
  assert.equal(inspect.code, 0);
  const info = JSON.parse(inspect.out);
  assert.equal(info.layout, 'single-file');
  assert.equal(info.architecture, 'sd15');
  assert.deepEqual(info.dtypes, { F32: 656 }, 'the 582 tensors and the VAE encoder 74');
  assert.equal(info.parameters.unet, 549060);
  const diff = JSON.parse(cli('inspect', '--model', join(dir, 'diffusers')).out);
  assert.equal(diff.layout, 'diffusers');
  assert.deepEqual(diff.parameters, info.parameters);

  const png = join(dir, 'out.png');
  const report = join(dir, 'report.json');
  const gen = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--prompt', 'a cat', '--steps', '2', '--width', '64', '--height', '64', '--scheduler', 'ddim', '--backend', 'wasm', '--seed', '5', '--out', png, '--report', report);
  assert.equal(gen.code, 0, gen.err.join('\n'));
  const bytes = readFileSync(png);
  assert.deepEqual([...bytes.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10]);
  assert.equal(bytes.readUInt32BE(16), 64, 'PNG width');
  const r = JSON.parse(readFileSync(report, 'utf8'));
  for (const k of ['steps', 'unetEvaluations', 'seed', 'scheduler', 'width', 'height', 'adapter', 'timingsMs', 'gpuBytesAllocated']) assert.ok(k in r, k);
  assert.equal(r.unetEvaluations, 2);
  assert.equal(r.seed, 5);
  assert.deepEqual([r.loraKeysMatched, r.mergeMs], [0, []]);

  const withLoras = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--prompt', 'a cat', '--steps', '1', '--width', '64', '--height', '64', '--backend', 'wasm', '--out', png, '--report', report,
    '--lora', join(dir, 'loras/kohya.safetensors:0.8'), '--lora', join(dir, 'loras/locon.safetensors'));
  assert.equal(withLoras.code, 0, withLoras.err.join('\n'));
  const rl = JSON.parse(readFileSync(report, 'utf8'));
  assert.deepEqual(rl.loras.map((l: { name: string; format: string; scale: number }) => [l.name, l.format, l.scale]), [['kohya.safetensors', 'kohya', 0.8], ['locon.safetensors', 'locon', 1]]);
  const layers = (f: string) => JSON.parse(cli('inspect-lora', '--lora', join(dir, 'loras', f), '--model', join(dir, 'tiny-sd15.safetensors')).out).keysMatched;
  assert.equal(rl.loraKeysMatched, layers('kohya.safetensors') + layers('locon.safetensors'));
  assert.deepEqual(rl.loraKeysUnmatched, []);
  assert.equal(rl.mergeMs.length, 2, "the text encoder's merge and the UNet's");
  assert.equal(rl.composition.method, 'merge');

  // cmlora on the wasm backend: the frequency profile comes from the CPU spectrum
  const cm = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--prompt', 'a cat', '--steps', '2', '--width', '64', '--height', '64', '--backend', 'wasm', '--out', png, '--report', report,
    '--lora', join(dir, 'loras/kohya.safetensors'), '--lora', join(dir, 'loras/loha.safetensors'), '--method', 'cmlora', '--profiling', 'online', '--cache-high', '3', '--switch-step', '5');
  assert.equal(cm.code, 0, cm.err.join('\n'));
  const line = JSON.parse(cm.out);
  const rc = JSON.parse(readFileSync(report, 'utf8'));
  assert.equal(line.method, 'cmlora');
  assert.deepEqual(line.order, rc.composition.order.map((i: number) => rc.composition.loras[i]));
  assert.equal(rc.composition.options.cacheHigh, 3);
  assert.equal(rc.composition.options.switchStep, 5);
  assert.deepEqual(rc.composition.steps.map((s: { active: number[] }) => s.active.length), [2, rc.unetEvaluations - 2]);
  assert.ok(rc.composition.steps[0].amplitudes.every((a: number) => a > 0));

  // the two-box scene make-test-model wrote, on the wasm backend
  const sc = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--scene', join(dir, 'scene.json'), '--backend', 'wasm', '--out', png, '--report', report);
  assert.equal(sc.code, 0, sc.err.join('\n'));
  const rs = JSON.parse(readFileSync(report, 'utf8'));
  assert.deepEqual(rs.boxes.map((b: { name: string }) => b.name), ['fox', 'owl']);
  for (const b of rs.boxes) assert.ok(b.attentionInBox > 0 && b.attentionInBox <= 1 && b.attentionInBoxUnmasked > 0 && b.attentionInBoxUnmasked < 1 && b.window, JSON.stringify(b));
  assert.deepEqual(rs.loras.map((l: { name: string }) => l.name), ['locon.safetensors', 'kohya.safetensors', 'loha.safetensors']);
  assert.equal(rs.unetEvaluations, 5, 'four steps and the re-initialisation probe');
  // the scene leaves guidance unset, so it runs as the code's defaults do: every term, every step
  assert.deepEqual(rs.guidance.steps.map((x: { step: number }) => x.step), [0, 1, 2, 3]);
  assert.deepEqual(rs.layout.options.guidance, { ce: true, fill: true, region: true, scale: 20, share: 1, earlyStop: true, lastStep: 25 });
  const scene = JSON.parse(readFileSync(join(dir, 'scene.json'), 'utf8'));
  const write = (name: string, value: unknown) => (writeFileSync(join(dir, name), JSON.stringify(value)), join(dir, name));
  const missing = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--scene', write('missing.json', { ...scene, loras: [{ name: 'nowhere.safetensors', scale: 1 }] }), '--backend', 'wasm', '--out', png);
  assert.equal(missing.code, 1);
  assert.match(missing.err[0], /^error: The scene uses the LoRA "nowhere\.safetensors", which is not in /);
  const outside = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--scene', write('outside.json', { ...scene, boxes: [{ ...scene.boxes[0], x: 48 }] }), '--out', png);
  assert.equal(outside.code, 1);
  assert.match(outside.err[0], /^error: This scene cannot be used: box "fox" \(48, 8, 32x48\) reaches outside the 64x64 frame\.$/);
  // gradient guidance switched on from the command line, two of its terms, half of the four steps
  const guided = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--scene', join(dir, 'scene.json'), '--backend', 'wasm', '--guidance', 'ce,region', '--guidance-scale', '30', '--guidance-share', '0.5', '--no-early-stop', '--masks', 'centre', '--region-negative', 'frame', '--out', png, '--report', report);
  assert.equal(guided.code, 0, guided.err.join('\n'));
  const full = JSON.parse(readFileSync(report, 'utf8'));
  const rg = full.guidance;
  assert.deepEqual(rg.steps.map((x: { step: number }) => x.step), [0, 1]);
  // the scene has concept isolation on; as the code isolates, a box still sees the background: L_region > 0
  assert.ok(rg.steps.every((x: { ce: number; fill: number; region: number; stepSize: number }) => x.ce > 0 && x.fill === 0 && x.region > 0 && x.stepSize > 0), JSON.stringify(rg.steps));
  assert.deepEqual([full.layout.options.masks, full.layout.options.regionNegative, full.layout.options.regionOutput, full.layout.options.guidance.scale], ['centre', 'frame', 'own', 30]);
  const badChoice = cli('generate', '--model', 'm', '--scene', join(dir, 'scene.json'), '--isolation-scope', 'all', '--out', png);
  assert.equal(badChoice.code, 2);
  assert.match(badChoice.err[0], /--isolation-scope takes concepts or regions \(got "all"\)/);
  assert.deepEqual(JSON.parse(guided.out.trim().split('\n').at(-1)!).guidanceLoss, rg.steps.map((x: { loss: number }) => Number(x.loss.toFixed(4))));
  const badTerm = cli('generate', '--model', 'm', '--scene', join(dir, 'scene.json'), '--guidance', 'ce,blur', '--out', png);
  assert.equal(badTerm.code, 2);
  assert.match(badTerm.err[0], /--guidance takes off or a list of ce, fill, region \(got "ce,blur"\)/);
  const noScene = cli('generate', '--model', 'm', '--prompt', 'x', '--guidance', 'ce', '--out', png);
  assert.equal(noScene.code, 2);
  assert.match(noScene.err[0], /--guidance needs --scene/);
});

test('bad arguments exit 2 with one line; bad model files exit 1 with the problem named', () => {
  const noArgs = cli('generate', '--prompt', 'x');
  assert.equal(noArgs.code, 2);
  assert.match(noArgs.err[0], /^error: generate needs --model PATH$/);
  const badSteps = cli('generate', '--model', 'm', '--prompt', 'x', '--out', 'o.png', '--steps', 'ten');
  assert.equal(badSteps.code, 2);
  assert.match(badSteps.err[0], /--steps must be a whole number/);
  assert.equal(cli('frobnicate').code, 2);
  assert.equal(cli('generate', '--model', 'm', '--prompt', 'x', '--out', 'o.png', '--width', '100').code, 2);

  const badLora = cli('generate', '--model', 'm', '--prompt', 'x', '--out', 'o.png', '--lora', 'style.safetensors:99');
  assert.equal(badLora.code, 2);
  assert.match(badLora.err[0], /--lora strength must be from -10 to 10, got "style.safetensors:99"/);
  const stray = cli('generate', '--model', 'm', '--prompt', 'x', '--out', 'o.png', '--method', 'composite', '--cache-low', '2');
  assert.equal(stray.code, 2);
  assert.match(stray.err[0], /--cache-low does not apply to --method composite/);
  const unknown = cli('generate', '--model', 'm', '--prompt', 'x', '--out', 'o.png', '--method', 'blend');
  assert.equal(unknown.code, 2);
  assert.match(unknown.err[0], /--method must be one of none, merge, switch, composite, cmlora, got "blend"/);
  const badCache = cli('generate', '--model', 'm', '--prompt', 'x', '--out', 'o.png', '--method', 'cmlora', '--cache-high', '0');
  assert.equal(badCache.code, 2);
  assert.match(badCache.err[0], /cacheHigh must be a whole number from 1/);
  const notLora = cli('inspect-lora', '--lora', join(dir, 'tiny-sd15.safetensors'));
  assert.equal(notLora.code, 1);
  assert.match(notLora.err[0], /^error: tiny-sd15\.safetensors is not a LoRA: it is a model checkpoint/);

  const truncated = join(dir, 'truncated.safetensors');
  writeFileSync(truncated, readFileSync(join(dir, 'tiny-sd15.safetensors')).subarray(0, 100000));
  const t = cli('inspect', '--model', truncated);
  assert.equal(t.code, 1);
  assert.equal(t.err.length, 1, 'one line, no stack trace');
  assert.match(t.err[0], /^error: truncated\.safetensors is truncated: .* Download it again\.$/);
  const missing = cli('inspect', '--model', join(dir, 'nope.safetensors'));
  assert.equal(missing.code, 1);
  assert.match(missing.err[0], /no such file/);
});

test('plan prints the memory plan from the graphs alone; bad flags exit 2', () => {
  const r = cli('plan', '--architecture', 'sd15', '--width', '512', '--height', '512', '--precision', 'fp16');
  assert.equal(r.code, 0, r.err.join('\n'));
  const plan = JSON.parse(r.out);
  assert.equal(plan.architecture, 'sd15');
  assert.equal(plan.attention, 'fused');
  // SD 1.5's UNet has 859,520,964 parameters, its VAE 83,653,863 (the encoder loaded with the
  // decoder): two bytes each in fp16
  assert.equal(plan.parts.weightBytes.unet, 859_520_964 * 2);
  assert.equal(plan.parts.weightBytes.vae, 83_653_863 * 2);
  assert.equal(plan.peakBytes, Object.values(plan.parts.weightBytes as Record<string, number>).reduce((a, b) => a + b, 0) + Math.max(...Object.values(plan.parts.activationBytes as Record<string, number>)) + plan.parts.loraArenaBytes + plan.parts.pristineBytes + plan.parts.cacheBytes + plan.parts.latentBytes);
  assert.ok(plan.largestBufferBytes <= 256 * 2 ** 20);
  // the weight transposes onnxruntime's WebGPU EP makes per step, as the engine's sessions run (NCHW:
  // the k x k weights the UNet does not unfold), counted on the UNet graph at CFG's batch of two
  assert.equal(CONV_LAYOUT, 'NCHW');
  const unet = graphMemory(buildUNet(SD15_CONFIG.unet, { batch: 2, latentH: 64, latentW: 64, textLen: 77, dtype: 'float16', attention: 'fused', conv: 'auto' }), { transposesConvWeights: true, pointwiseAsIs: true });
  assert.ok(unet.weightTransposes > 0);
  assert.equal(plan.weightTransposesPerStep, unet.weightTransposes);
  assert.equal(plan.weightTransposeBytesPerStep, unet.weightTransposeBytes);
  const fp32 = JSON.parse(cli('plan', '--precision', 'fp32', '--attention', 'chunked').out);
  assert.equal(fp32.parts.weightBytes.unet, 859_520_964 * 4);
  assert.equal(fp32.attention, 'chunked');
  for (const bad of [['--precision', 'fp8'], ['--width', '500'], ['--architecture', 'sdxl'], ['--boxes', '9'], ['--no-guidance'], ['--boxes', '2', '--graph-capture']]) {
    const b = cli('plan', ...bad);
    assert.equal(b.code, 2, `${bad.join(' ')}: ${b.err.join(' ')}`);
    assert.match(b.err[0], /^error: --(precision|width|architecture|graph-capture|boxes|no-guidance)/);
  }
  // a start picture: the encode's activations beside the decode's (less, so the same peak)
  const fromPicture = JSON.parse(cli('plan', '--from-picture').out);
  const encode = fromPicture.parts.activationBytes;
  assert.ok(encode.vaeEncoder > 0 && encode.vaeEncoder < encode.vae, JSON.stringify(encode));
  assert.equal(plan.parts.activationBytes.vaeEncoder, undefined);
  assert.equal(fromPicture.peakBytes, plan.peakBytes);
  assert.match(fromPicture.notes.join(' '), /encodes the start picture before the loop/);
  // a layout: the same weights; its other graphs (region keys, guidance's cut UNet and backward pass)
  // in their own activation entry, and the peak their maximum with the rest
  const layout = JSON.parse(cli('plan', '--boxes', '5').out);
  const unguided = JSON.parse(cli('plan', '--boxes', '5', '--no-guidance').out);
  assert.deepEqual(layout.parts.weightBytes, plan.parts.weightBytes);
  assert.equal(plan.parts.activationBytes.layout, undefined);
  assert.ok(layout.parts.activationBytes.layout > unguided.parts.activationBytes.layout, 'guidance runs larger graphs between the UNet runs');
  for (const p of [layout, unguided]) {
    assert.equal(p.peakBytes, Object.values(p.parts.weightBytes as Record<string, number>).reduce((a, b) => a + b, 0) + Math.max(...Object.values(p.parts.activationBytes as Record<string, number>)) + p.parts.latentBytes);
    assert.match(p.notes.at(-1), /^a layout of 5 boxes: the UNet attends per region/);
  }
  // a replayed loop keeps the UNet's activations beside the text encoder's or the decode's
  const captured = JSON.parse(cli('plan', '--precision', 'fp32', '--attention', 'chunked', '--graph-capture').out);
  const a = captured.parts.activationBytes;
  assert.equal(captured.peakBytes - fp32.peakBytes, a.unet + Math.max(a.textEncoder, a.vae) - Math.max(a.unet, a.textEncoder, a.vae));
  // a replayed loop meets the fp16 target without a budget, the decode whole; under a tighter
  // budget it still fits with the decode in tiles, and the engine captures such a job
  const replayed = JSON.parse(cli('plan', '--graph-capture').out);
  assert.ok(replayed.fits && replayed.vaeTile === null && replayed.peakBytes <= 2.5e9, JSON.stringify({ peak: replayed.peakBytes, tile: replayed.vaeTile }));
  const budgeted = JSON.parse(cli('plan', '--graph-capture', '--budget', '2.4e9').out);
  assert.ok(budgeted.fits && !budgeted.cfgHalves && budgeted.vaeTile !== null && budgeted.peakBytes <= 2.4e9, JSON.stringify({ peak: budgeted.peakBytes, tile: budgeted.vaeTile }));
  assert.match(budgeted.notes.join(' '), /the UNet replays a captured graph/);
});

test("a single file as diffusers' conversion script writes it (VAE attention biases [C, 1, 1], CLIP's position_ids) gives the same picture; inspect counts no buffer as a parameter; a truncated file with no tokenizer is called truncated", async () => {
  const original = join(dir, 'tiny-sd15.safetensors');
  const src = await SafetensorsFile.open(await NodeFileSource.open(original));
  const tensors: TensorToWrite[] = [];
  let reshaped = 0;
  for (const key of src.keys()) {
    const info = src.info(key)!;
    const bias = /^first_stage_model\..*mid\.attn_1\.(q|k|v|proj_out)\.bias$/.test(key);
    if (bias) reshaped++;
    tensors.push({ name: key, dtype: info.dtype, shape: bias ? [...info.shape, 1, 1] : info.shape, data: await src.bytes(key) });
  }
  assert.equal(reshaped, 8, "the encoder's and the decoder's mid-block attention: q, k, v and proj_out");
  const positions = 'cond_stage_model.transformer.text_model.embeddings.position_ids';
  tensors.push({ name: positions, dtype: 'I64', shape: [1, 77], data: new Uint8Array(BigInt64Array.from({ length: 77 }, (_, i) => BigInt(i)).buffer) });
  const converted = join(dir, 'converted.safetensors');
  writeFileSync(converted, Buffer.concat(encodeSafetensors(tensors, src.metadata)));

  const a = JSON.parse(cli('inspect', '--model', original).out);
  const b = JSON.parse(cli('inspect', '--model', converted).out);
  assert.deepEqual(b.parameters, a.parameters, 'position_ids is a buffer, not a parameter');
  assert.deepEqual(b.buffers, { [positions]: 77 });
  const args = ['--prompt', 'a cat', '--steps', '1', '--width', '64', '--height', '64', '--scheduler', 'ddim', '--backend', 'wasm', '--seed', '5'];
  const pixels = (model: string, out: string) => {
    const g = cli('generate', '--model', model, ...args, '--out', out);
    assert.equal(g.code, 0, g.err.join('\n'));
    return decodePng(new Uint8Array(readFileSync(out)), nodeInflate).data;
  };
  assert.deepEqual(pixels(converted, join(dir, 'converted.png')), pixels(original, join(dir, 'original.png')), 'the same picture, pixel for pixel');

  // alone in a folder, with no tokenizer anywhere: the truncation is what is reported (nothing is fetched)
  const lone = mkdtempSync(join(tmpdir(), 'lora-studio-lone-'));
  const cut = join(lone, 'cut.safetensors');
  writeFileSync(cut, readFileSync(original).subarray(0, 100000));
  const t = cliEnv({ XDG_CACHE_HOME: lone }, 'generate', '--model', cut, ...args, '--out', join(lone, 'o.png'));
  assert.equal(t.code, 1);
  assert.match(t.err[0], /^error: cut\.safetensors is truncated/);
});

test('generate from a picture: --init-image, --strength, --mask, --hires-scale, --vae; their misuse exits 2', async () => {
  if (!existsSync(join(dir, 'tiny-sd15.safetensors'))) assert.equal(cli('make-test-model', '--out', dir).code, 0);
  const base = ['generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--prompt', 'a cat', '--steps', '4', '--scheduler', 'ddim', '--backend', 'wasm', '--seed', '3'];
  const start = join(dir, 'start.png');
  assert.equal(cli(...base, '--width', '64', '--height', '64', '--out', start).code, 0);
  const startPixels = decodePng(readFileSync(start), nodeInflate);
  // the mask: white (repaint) on the right half, black on the left
  const maskRgba = new Uint8ClampedArray(64 * 64 * 4);
  for (let p = 0; p < 64 * 64; p++) maskRgba.fill(p % 64 >= 32 ? 255 : 0, p * 4, p * 4 + 3), (maskRgba[p * 4 + 3] = 255);
  const mask = join(dir, 'mask.png');
  writeFileSync(mask, await encodePng(maskRgba, 64, 64, {}, (d) => deflateSync(d)));
  const out = join(dir, 'inpaint.png');
  const report = join(dir, 'inpaint.json');
  const r = cli(...base, '--init-image', start, '--strength', '0.75', '--mask', mask, '--mask-blur', '0', '--out', out, '--report', report);
  assert.equal(r.code, 0, r.err.join('\n'));
  const rep = JSON.parse(readFileSync(report, 'utf8'));
  assert.deepEqual([rep.width, rep.init.mode, rep.init.startStep, rep.init.stepsRun], [64, 'inpaint', 1, 3], 'the size comes from the picture; 0.75 of 4 steps');
  const got = decodePng(readFileSync(out), nodeInflate);
  let keptDiff = 0;
  let paintedDiff = 0;
  for (let i = 0; i < got.data.length; i++) {
    if (i % 4 === 3) continue;
    const d = Math.abs(got.data[i] - startPixels.data[i]);
    if ((i >> 2) % 64 < 32) keptDiff = Math.max(keptDiff, d);
    else paintedDiff = Math.max(paintedDiff, d);
  }
  assert.equal(keptDiff, 0, 'black keeps');
  assert.ok(paintedDiff > 10, 'white repaints');

  const hires = cli(...base, '--width', '64', '--height', '64', '--hires-scale', '2', '--hires-strength', '0.5', '--out', out, '--report', report);
  assert.equal(hires.code, 0, hires.err.join('\n'));
  assert.equal(decodePng(readFileSync(out), nodeInflate).width, 128);
  assert.deepEqual(JSON.parse(readFileSync(report, 'utf8')).hires.stepsRun, 2);

  const own = cli(...base, '--init-image', start, '--strength', '0', '--out', out);
  assert.equal(own.code, 0, own.err.join('\n'));
  const ownPixels = readFileSync(out);
  const vae = cli(...base, '--init-image', start, '--strength', '0', '--vae', join(dir, 'tiny-vae-ft.safetensors'), '--out', out);
  assert.equal(vae.code, 0, vae.err.join('\n'));
  assert.ok(vae.err.some((l) => /VAE: tiny-vae-ft\.safetensors/.test(l)));
  assert.notDeepEqual(readFileSync(out), ownPixels, 'another VAE, another round trip');

  // a studio scene's picture settings: its mask and strength act with --init-image, its hires fix alone
  const scene = JSON.parse(readFileSync(join(dir, 'scene.json'), 'utf8'));
  const maskBytes = Uint8Array.from({ length: 64 * 64 }, (_, p) => (p % 64 >= 32 ? 255 : 0));
  const picture = { strength: 0.5, maskBlur: 0, onlyMasked: false, padding: 32, mask: await encodeMask(maskBytes, 64, 64), hires: { enabled: true, scale: 2, strength: 0.5, upscaler: 'latent' } };
  const studioScene = join(dir, 'studio-scene.json');
  writeFileSync(studioScene, JSON.stringify({ ...scene, picture }));
  const fromScene = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--scene', studioScene, '--backend', 'wasm', '--init-image', start, '--out', out, '--report', report);
  assert.equal(fromScene.code, 0, fromScene.err.join('\n'));
  const sr = JSON.parse(readFileSync(report, 'utf8'));
  assert.deepEqual([sr.init.mode, sr.init.strength, sr.init.maskBlur, sr.hires], ['inpaint', 0.5, 0, undefined], "the scene's mask and strength; no hires fix with a start picture");
  const kept = decodePng(readFileSync(out), nodeInflate);
  for (let p = 0; p < 64 * 64; p++) if (p % 64 < 32) assert.equal(kept.data[p * 4], startPixels.data[p * 4], `kept pixel ${p}`);
  const hiresScene = cli('generate', '--model', join(dir, 'tiny-sd15.safetensors'), '--scene', studioScene, '--backend', 'wasm', '--out', out, '--report', report);
  assert.equal(hiresScene.code, 0, hiresScene.err.join('\n'));
  assert.ok(hiresScene.err.some((l) => /the scene has an inpainting mask, which needs --init-image/.test(l)));
  assert.equal(decodePng(readFileSync(out), nodeInflate).width, 128, "the scene's hires fix");

  const noPicture = cli(...base, '--mask', mask, '--out', out);
  assert.equal(noPicture.code, 2);
  assert.match(noPicture.err[0], /--mask needs --init-image FILE\.png/);
  const badStrength = cli(...base, '--init-image', start, '--strength', '2', '--out', out);
  assert.equal(badStrength.code, 2);
  assert.match(badStrength.err[0], /Strength must be from 0/);
  const notPng = cli(...base, '--init-image', join(dir, 'tiny-sd15.safetensors'), '--out', out);
  assert.equal(notPng.code, 2);
  assert.match(notPng.err[0], /--init-image: .*tiny-sd15\.safetensors is not a PNG/);
});
