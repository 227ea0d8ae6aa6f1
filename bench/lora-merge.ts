// LoRA merge benchmark on this machine's WebGPU, with the real SD 1.5 weight shapes (random values):
// the layers a kohya LoRA trains (every linear of the UNet's transformer blocks, and of the text
// encoder). Reports the merge's throughput next to a plain GPU buffer copy of the same bytes (the
// bandwidth limit), the batched and direct GPU forms against a CPU merge plus upload, and the time
// to switch 1, 3 and 5 LoRAs of rank 8, 32 and 128. Medians of repeated switches after a warm-up.
// The switch grid runs on a sample (the first transformer block, real 320-wide shapes) and is
// projected to the whole LoRA by element count (the merge costs the same per element); on a real
// GPU, BENCH_LORA_FULL=1 runs the grid on every target instead.
import { SD15_CONFIG } from '../workers/checkpoint/config.ts';
import type { Runtime } from '../workers/engine/runtime.ts';
import { WeightSet } from '../workers/engine/weights.ts';
import { Rng } from '../workers/engine/random.ts';
import { loraTargetTable, type LoraComponent, type LoraTarget } from '../workers/lora/keys.ts';
import type { LoadedLora } from '../workers/lora/load.ts';
import { LoraWeights, type LoraScale, type MergeBackend } from '../workers/lora/merger.ts';

const env = (k: string, d: string) => (process.env[k] ?? d).split(',').map(Number);
const RANKS = env('BENCH_LORA_RANKS', '8,32,128');
const COUNTS = env('BENCH_LORA_COUNTS', '1,3,5');
const REPEATS = Number(process.env.BENCH_REPEATS ?? 3);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const KOHYA_UNET = /\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out)\.weight$/;
const KOHYA_TE = /\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$/;

/** A block of random values reused to fill large arrays quickly (values do not change timings). */
const BLOCK = new Rng(5).normal(1 << 20).map((x) => x * 0.02);
export function filled(n: number, reversed = false): Float32Array {
  const out = new Float32Array(n);
  for (let at = 0; at < n; at += BLOCK.length) out.set(BLOCK.subarray(0, Math.min(BLOCK.length, n - at)), at);
  if (reversed) out.reverse();
  return out;
}

function sd15Targets(): LoraTarget[] {
  const seen = new Set<string>();
  const out: LoraTarget[] = [];
  for (const t of loraTargetTable(SD15_CONFIG).values()) {
    const key = `${t.component}:${t.weight}`;
    if (seen.has(key) || !(t.component === 'unet' ? KOHYA_UNET : KOHYA_TE).test(t.weight)) continue;
    seen.add(key);
    out.push(t);
  }
  return out;
}

function randomLora(targets: LoraTarget[], rank: number, seed: number): LoadedLora {
  const modules = targets.map((target) => ({
    key: target.weight,
    target,
    alphaScale: 1,
    factors: { up: filled(target.rows * rank, seed % 2 === 1), down: filled(rank * target.cols, seed % 2 === 1), rank },
  }));
  const factorFloats = modules.reduce((a, m) => a + m.factors.up.length + m.factors.down.length, 0);
  return { name: `random-r${rank}-${seed}`, format: 'kohya', metadata: { tags: [], raw: {} }, modules, unmatched: [], rank, factorFloats, concepts: [] };
}

function weightSets(rt: Runtime, targets: LoraTarget[]): Record<LoraComponent, WeightSet> {
  const sets = { unet: new WeightSet(rt, 'float32'), textEncoder: new WeightSet(rt, 'float32') };
  for (const t of targets) sets[t.component].add({ name: t.weight, dims: t.dims }, filled(t.rows * t.cols));
  return sets;
}

async function copyMs(device: GPUDevice, bytes: number): Promise<number> {
  const chunk = 128 * 2 ** 20;
  const pairs: [GPUBuffer, GPUBuffer][] = [];
  for (let left = bytes; left > 0; left -= chunk) {
    const size = Math.min(chunk, left);
    const usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    pairs.push([device.createBuffer({ size, usage }), device.createBuffer({ size, usage })]);
  }
  const times: number[] = [];
  for (let i = 0; i <= REPEATS; i++) {
    const t0 = performance.now();
    const enc = device.createCommandEncoder();
    for (const [a, b] of pairs) enc.copyBufferToBuffer(a, 0, b, 0, a.size);
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    if (i) times.push(performance.now() - t0);
  }
  for (const [a, b] of pairs) (a.destroy(), b.destroy());
  return median(times);
}

/** Median time of switching between two scale sets of the same LoRAs (each switch rewrites every target). */
async function switchMs(merger: LoraWeights, ids: string[]): Promise<{ ms: number; dispatches: number }> {
  const at = (s: number): LoraScale[] => ids.map((id) => ({ id, unet: s, textEncoder: s }));
  await merger.apply(at(1)); // warm-up
  const times: number[] = [];
  let dispatches = 0;
  for (let i = 0; i < REPEATS; i++) {
    const r = await merger.apply(at(i % 2 ? 1 : 0.5));
    times.push(r!.ms);
    dispatches = r!.dispatches;
  }
  return { ms: median(times), dispatches };
}

const SAMPLE = /^down_blocks\.0\.attentions\.0\./;

export async function benchLoraMerge(rt: Runtime) {
  const device = rt.gpu!.device;
  const targets = sd15Targets();
  const full = process.env.BENCH_LORA_FULL === '1';
  const gridTargets = full ? targets : targets.filter((t) => t.component === 'unet' && SAMPLE.test(t.weight));
  const gridElements = gridTargets.reduce((a, t) => a + t.rows * t.cols, 0);
  const elements = targets.reduce((a, t) => a + t.rows * t.cols, 0);
  const weightBytes = elements * 4;
  const sets = weightSets(rt, targets);
  const copy = await copyMs(device, weightBytes);
  const gbps = (ms: number) => weightBytes / 1e9 / (ms / 1000);
  console.log(`lora-merge: ${targets.length} SD 1.5 target weights, ${(weightBytes / 2 ** 20).toFixed(0)} MiB fp32; buffer copy ${copy.toFixed(0)} ms (${gbps(copy).toFixed(2)} GB/s)`);

  // One rank-8 LoRA: the two GPU forms and the CPU merge + upload, side by side.
  const forms: Record<string, { ms: number; dispatches: number; gbps: number }> = {};
  const one = randomLora(targets, 8, 0);
  for (const backend of ['batched', 'direct', 'cpu'] as MergeBackend[]) {
    const merger = await LoraWeights.create(rt, sets, backend);
    await merger.add('a', one);
    const r = await switchMs(merger, ['a']);
    forms[backend] = { ...r, gbps: gbps(r.ms) };
    console.log(`  rank 8 x1 ${backend.padEnd(8)} ${r.ms.toFixed(0).padStart(7)} ms  ${r.dispatches} dispatches  ${gbps(r.ms).toFixed(2)} GB/s`);
    await merger.apply([{ id: 'a', unet: 0, textEncoder: 0 }]);
    merger.dispose();
  }

  const grid: { rank: number; loras: number; switchMs?: number; projectedFullSwitchMs?: number; dispatches?: number; mergeOverCopy?: number; error?: string }[] = [];
  const scaleUp = elements / gridElements;
  console.log(`  switch grid on ${gridTargets.length} weights (${(gridElements / 1e6).toFixed(2)}M elements${full ? '' : `, x${scaleUp.toFixed(0)} to the whole LoRA`})`);
  for (const rank of RANKS) {
    for (const count of COUNTS) {
      const merger = await LoraWeights.create(rt, sets, 'batched');
      try {
        const ids: string[] = [];
        for (let i = 0; i < count; i++) {
          await merger.add(`l${i}`, randomLora(gridTargets, rank, i));
          ids.push(`l${i}`);
        }
        const r = await switchMs(merger, ids);
        const projected = r.ms * scaleUp;
        // merge speed relative to copying the same bytes
        const overCopy = (copy / elements) * gridElements / r.ms;
        grid.push({ rank, loras: count, switchMs: r.ms, projectedFullSwitchMs: projected, dispatches: r.dispatches, mergeOverCopy: overCopy });
        console.log(`  rank ${String(rank).padStart(3)} x${count}: switch ${r.ms.toFixed(0).padStart(7)} ms, whole LoRA ${(projected / 1000).toFixed(1)} s  (${overCopy.toFixed(3)} of copy speed)`);
      } catch (e) {
        grid.push({ rank, loras: count, error: (e as Error).message });
        console.log(`  rank ${rank} x${count}: ${(e as Error).message}`);
      } finally {
        await merger.apply([]).catch(() => undefined);
        merger.dispose();
      }
    }
  }
  sets.unet.dispose();
  sets.textEncoder.dispose();
  return {
    shapes: 'SD 1.5, kohya targets (transformer-block linears of the UNet, text-encoder linears), fp32',
    targets: targets.length,
    weightBytes,
    repeats: REPEATS,
    gridWeights: gridTargets.length,
    gridElements,
    gridProjectedBy: scaleUp,
    copyMs: copy,
    copyGBps: gbps(copy),
    rank8Single: { ...forms, gpuBatchedOverCpu: forms.cpu.ms / forms.batched.ms, gpuDirectOverCpu: forms.cpu.ms / forms.direct.ms, batchedOverDirect: forms.direct.ms / forms.batched.ms },
    switchGrid: grid,
  };
}
