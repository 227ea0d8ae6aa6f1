// Every graph the engine builds stays within what a browser's WebGPU lets one shader bind: onnxruntime-
// web binds each tensor of a node (inputs and outputs) as a storage buffer of one shader, and Chromium
// grants 10 per shader stage on SwiftShader (8 is WebGPU's default). A Split of the step graph's 11
// coefficients once needed 12 and failed every browser generation while Node's Dawn, with higher
// limits, ran it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SD15_CONFIG, TINY_CONFIG } from '../../workers/checkpoint/config.ts';
import type { GraphBuilder } from '../../workers/graph/builder.ts';
import { buildTextEncoder } from '../../workers/graph/clip.ts';
import { buildCombineGraph, buildMeasureGraph } from '../../workers/graph/mix.ts';
import { buildStepGraph } from '../../workers/graph/step.ts';
import { buildUNet } from '../../workers/graph/unet.ts';
import { buildVaeDecoder, buildVaeEncoder } from '../../workers/graph/vae.ts';
import { stagedGraphs } from '../../workers/engine/vae-tiles.ts';

/** The WebGPU default limit: what every adapter grants. */
const STORAGE_BUFFERS = 8;

function widest(g: GraphBuilder): { tensors: number; type: string } {
  let worst = { tensors: 0, type: '' };
  for (const r of g.records) {
    const tensors = [...r.inputs, ...r.outputs].filter(Boolean).length;
    if (tensors > worst.tensors) worst = { tensors, type: r.type };
  }
  return worst;
}

test("no node of the engine's graphs binds more tensors than a browser shader may", () => {
  const c = { ...TINY_CONFIG, textEncoder: { ...TINY_CONFIG.textEncoder, vocabSize: 100 } };
  const graphs: [string, GraphBuilder][] = [
    ['unet', buildUNet(c.unet, { batch: 2, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32' })],
    ['unet, inpainting', buildUNet({ ...c.unet, inChannels: 9 }, { batch: 2, latentH: 8, latentW: 8, textLen: 77, dtype: 'float32' })],
    ['text encoder', buildTextEncoder(c.textEncoder, { batch: 1, seqLen: 77, dtype: 'float32', clipSkip: 1 })],
    ['vae decoder', buildVaeDecoder(c.vae, { batch: 1, latentH: 8, latentW: 8, dtype: 'float32' })],
    ['vae encoder', buildVaeEncoder(c.vae, { batch: 1, latentH: 8, latentW: 8, dtype: 'float32' })],
    // SD 1.5 at 512 with attention in query chunks under 128 MiB: the chunks' Split and Concat
    ['SD 1.5 unet, chunked', buildUNet(SD15_CONFIG.unet, { batch: 2, latentH: 64, latentW: 64, textLen: 77, dtype: 'float16', attention: 'chunked', bufferLimit: 128 * 2 ** 20 })],
  ];
  for (const which of ['decode', 'encode'] as const) stagedGraphs(SD15_CONFIG.vae, 64, 64, { dtype: 'float16', tile: 32 }, which).forEach((g, i) => graphs.push([`SD 1.5 staged vae ${which} ${i}`, g]));
  for (const blend of [false, true]) for (const extraChannels of [0, 5]) for (const batch of [1, 2] as const) graphs.push([`step ${JSON.stringify({ blend, extraChannels, batch })}`, buildStepGraph({ batch, channels: 4, height: 8, width: 8, previewFactor: 1, blend, extraChannels })]);
  for (const count of [1, 4, 9]) graphs.push([`weighted sum of ${count}`, buildCombineGraph(count, [2, 4, 8, 8])]);
  for (const predictions of [0, 3, 9]) graphs.push([`measures of ${predictions}`, buildMeasureGraph({ batch: 2, channels: 4, height: 12, width: 8, predictions, cutoff: 2 })]);
  for (const [name, g] of graphs) {
    const w = widest(g);
    assert.ok(w.tensors <= STORAGE_BUFFERS, `${name}: a ${w.type} node binds ${w.tensors} tensors`);
  }
});
