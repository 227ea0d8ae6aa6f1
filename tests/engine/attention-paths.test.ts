// Which of onnxruntime's WebGPU attention programs a fused MultiHeadAttention node runs, read from the
// EP's own profile on this machine's adapter (SwiftShader through Dawn), and what that means for our
// graphs: the heads we fuse run the one-pass FlashAttention program; a head as wide as the VAE's takes
// the split-K path, whose partial outputs the profile shows at the size the memory model counts (and
// why the builder keeps such heads chunked); the node's copies of keys and values are counted too.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GraphBuilder } from '../../workers/graph/builder.ts';
import { attention, fusesHead, FLASH_HEAD_BYTES } from '../../workers/graph/layers.ts';
import { graphMemory } from '../../workers/graph/memory.ts';
import { runChild } from '../../workers/node/child-run.ts';
import { profiledPrograms, programShapes } from '../../workers/node/ort-profile.ts';

interface Program {
  name: string;
  /** Buffer shapes as the profile prints them (vectorised programs count vec4s in the last axis). */
  inputs: number[][];
  outputs: number[][];
}

type Case = { b: number; nq: number; nk: number; heads: number; d: number };

/** A profiled child that has not ended by then has stalled (each takes a few seconds); it runs again, three runs at most. */
const CHILD_LIMIT_MS = 120_000;

/** One profiled node in a child process (the profile goes to that process's stdout). */
function profile(k: Case): Program[] {
  const r = runChild(['--liftoff-only', '--import', 'tsx', '--import', './scripts/wgsl.mjs', 'tests/engine/attention-profile.ts', JSON.stringify(k)], CHILD_LIMIT_MS, 3);
  if (r.code !== 0) throw new Error(`profile child exited ${r.code}: ${r.stderr.slice(-2000)}`);
  const programs = profiledPrograms(r.stdout).map((p) => ({ name: p.name.split('&').at(-1)!, inputs: programShapes(p.shapes, 'inputs'), outputs: programShapes(p.shapes, 'outputs') }));
  if (!programs.length) throw new Error(`the profile printed no programs: ${r.stdout.slice(-2000)} ${r.stderr.slice(-2000)}`);
  return programs;
}

const count = (s: number[]) => s.reduce((a, x) => a * x, 1);

test("onnxruntime's attention programs at our heads, by its profile: FlashAttention where we fuse, split-K for the VAE's head and for short query sets, at the sizes the memory model counts", async () => {
  const cases = {
    // SD 1.5's first level (320 channels, 8 heads of 40) under CFG, fewer queries than at 512x512
    unet: { b: 2, nq: 256, nk: 256, heads: 8, d: 40 },
    // the widest head the builder fuses in float32 (this adapter, with 32 KiB of workgroup memory,
    // would run up to 256 wide through FlashAttention; the builder keeps to what 16 KiB allows)
    widest: { b: 2, nq: 64, nk: 77, heads: 2, d: FLASH_HEAD_BYTES / 4 },
    // the VAE's single 512-wide head (fewer pixels than a real decode)
    vae: { b: 1, nq: 256, nk: 256, heads: 1, d: 512 },
    // a short query set: a tiny model's deepest level
    short: { b: 2, nq: 16, nk: 77, heads: 2, d: 8 },
  };
  const got = Object.fromEntries(Object.entries(cases).map(([name, k]) => [name, profile(k)] as const)) as Record<keyof typeof cases, Program[]>;
  const names = (ps: Program[]) => ps.map((p) => p.name);

  for (const name of ['unet', 'widest'] as const) {
    const k = cases[name];
    assert.deepEqual(names(got[name]), ['CopyKVCache', 'FlashAttention'], name);
    // the copies of keys and values: [B, heads, Nk, d] each (in vec4s), as many elements as K and V
    const copy = got[name][0].outputs;
    assert.equal(copy.length, 2);
    for (const s of copy) assert.equal(count(s) * 4, k.b * k.nk * k.heads * k.d, `${name}: ${JSON.stringify(copy)}`);
  }

  // the VAE's head is not fused by the builder, since here it takes the split-K path
  const vae = cases.vae;
  assert.equal(fusesHead(vae.d, 4), false);
  assert.equal(fusesHead(vae.d, 2), false);
  assert.deepEqual(names(got.vae), ['CopyKVCache', 'FlashAttentionDecodeQKV', 'FlashAttentionDecodeVxReduce']);
  for (const [name, k] of [['vae', vae], ['short', cases.short]] as const) {
    const split = got[name].find((p) => p.name === 'FlashAttentionDecodeQKV')!;
    assert.ok(split, `${name}: ${names(got[name])}`);
    // partial outputs: one per 64 keys for every query and head
    const partials = k.b * k.heads * k.nq * Math.ceil(k.nk / 64) * k.d;
    assert.equal(count(split.outputs[0]) * 4, partials, `${name}: ${JSON.stringify(split.outputs)}`);
    assert.equal(count(split.outputs[1]), partials / k.d, `${name}: one max and sum per partial (float32 pairs)`);
  }
  // (at 512x512 the VAE's attention has 4096 pixels: 4096 x 64 x 512 partials, 512 MiB in float32)

  // the memory model counts exactly these buffers inside the node, for each case as the builder
  // makes it (the VAE's head, built chunked, has no such node)
  for (const [name, k] of Object.entries(cases) as [keyof typeof cases, Case][]) {
    const g = new GraphBuilder('float32', { attention: 'fused' });
    const c = k.heads * k.d;
    const y = attention(g, g.input('q', 'float32', [k.b * k.nq, c]), g.input('k', 'float32', [k.b * k.nk, c]), g.input('v', 'float32', [k.b * k.nk, c]), { b: k.b, nq: k.nq, nk: k.nk, c, heads: k.heads });
    g.output(y, 'y', 'float32', [k.b * k.nq, c]);
    const nodes = g.records.filter((r) => r.type === 'MultiHeadAttention').length;
    assert.equal(nodes, name === 'vae' ? 0 : 1, name);
    if (!nodes) continue;
    const io = 4 * (2 * k.b * k.nq * c + 2 * k.b * k.nk * c);
    // what the node's programs write besides its output, from the profile's shapes: the copies and
    // the partial outputs in vec4s of float32, the max and sum pairs in vec2s
    const copies = got[name].find((p) => p.name === 'CopyKVCache')!.outputs;
    const split = got[name].find((p) => p.name === 'FlashAttentionDecodeQKV')?.outputs ?? [];
    const inside = copies.reduce((a, s) => a + count(s) * 16, 0) + (split.length ? count(split[0]) * 16 + count(split[1]) * 8 : 0);
    assert.equal(graphMemory(g).activationPeakBytes, io + inside, name);
  }
});
