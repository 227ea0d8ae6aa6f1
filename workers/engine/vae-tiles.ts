// The VAE decode and encode in tiles, for when the whole picture's does not fit the memory plan (at
// 512x512 the decoder's full-resolution feature maps, not the UNet, set the peak). The network runs
// stage by stage (workers/graph/vae-stages.ts): the parts at the latent's size run whole; between
// group norms the maps stay here, in CPU memory, every norm's statistics come from the whole map,
// and each stage runs in tiles that read one pixel past their edges. So the tiled result equals the
// whole one (to float rounding), which a blend of independently decoded tiles (diffusers'
// `enable_vae_tiling`, A1111's hires tiles) does not: each of those tiles normalises by itself.
import type { VaeConfig } from '../checkpoint/config.ts';
import type { GraphBuilder, GraphOptions } from '../graph/builder.ts';
import { buildVaeStage, decoderStages, encoderStages, stageChannels, stageTiling, stageWindow, VAE_NORM_EPS, type VaeStage } from '../graph/vae-stages.ts';
import { buildVaeDecoder, buildVaeEncoder } from '../graph/vae.ts';

/** A [C, H, W] map. */
export interface FeatureMap {
  data: Float32Array;
  c: number;
  h: number;
  w: number;
}

/** Run one graph (`key` names it for the engine's session cache) on float32 feeds; its one output. */
export type RunGraph = (key: string, build: () => GraphBuilder, feeds: Record<string, { data: Float32Array; dims: number[] }>) => Promise<Float32Array>;

export interface StagedOptions extends GraphOptions {
  dtype: 'float32' | 'float16';
  /** The tile's side in latent cells; stages at 2^k times the latent's size use tiles 2^k times larger. */
  tile: number;
}

/** Tile starts along one axis of `n` cells: equal tiles of `size`, the last one flush with the end. */
export function tileStarts(n: number, size: number, overlap = 0): number[] {
  if (size >= n) return [0];
  if (overlap >= size) throw new RangeError(`a tile's overlap (${overlap}) must be below its size (${size})`);
  const stride = size - overlap;
  const starts: number[] = [];
  for (let s = 0; s + size < n; s += stride) starts.push(s);
  starts.push(n - size);
  return starts;
}

/**
 * A group norm's statistics over a whole map, as per-channel mean and 1/sqrt(var + eps): the groups
 * are runs of C/groups channels; sums in float64, the variance biased (PyTorch's GroupNorm).
 */
export function groupStats(map: FeatureMap, groups: number, eps = VAE_NORM_EPS): { mean: Float32Array; invstd: Float32Array } {
  const per = map.c / groups;
  const n = per * map.h * map.w;
  const mean = new Float32Array(map.c);
  const invstd = new Float32Array(map.c);
  for (let g = 0; g < groups; g++) {
    let sum = 0;
    let sq = 0;
    for (let i = g * n; i < (g + 1) * n; i++) {
      const v = map.data[i];
      sum += v;
      sq += v * v;
    }
    const m = sum / n;
    const inv = 1 / Math.sqrt(Math.max(0, sq / n - m * m) + eps);
    mean.fill(m, g * per, (g + 1) * per);
    invstd.fill(inv, g * per, (g + 1) * per);
  }
  return { mean, invstd };
}

/** Rows [y0, y0 + h) and columns [x0, x0 + w) of a map, zero outside it. */
export function readWindow(map: FeatureMap, y0: number, h: number, x0: number, w: number): Float32Array {
  const out = new Float32Array(map.c * h * w);
  const xa = Math.max(0, x0);
  const xb = Math.min(map.w, x0 + w);
  if (xb <= xa) return out;
  for (let c = 0; c < map.c; c++) {
    for (let y = Math.max(0, y0); y < Math.min(map.h, y0 + h); y++) {
      const src = (c * map.h + y) * map.w;
      out.set(map.data.subarray(src + xa, src + xb), (c * h + y - y0) * w + xa - x0);
    }
  }
  return out;
}

/** 1 where a window's pixel lies inside an h x w map, 0 outside. */
function validMask(H: number, W: number, y0: number, h: number, x0: number, w: number): Float32Array {
  const out = new Float32Array(h * w);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (y0 + y >= 0 && y0 + y < H && x0 + x >= 0 && x0 + x < W) out[y * w + x] = 1;
  return out;
}

/** One stage over a whole map, tile by tile. */
async function runStage(s: VaeStage, maps: Map<string, FeatureMap>, latentH: number, groups: number, opt: StagedOptions, run: RunGraph): Promise<void> {
  const input = maps.get(s.input)!;
  const { outH, outW, gridH, gridW, th, tw } = stageTiling(s, input.h, input.w, opt.tile, latentH);
  const { cout } = stageChannels(s);
  const stats = s.kind === 'norm-conv' ? groupStats(input, groups) : undefined;
  const skip = s.kind === 'norm-conv' && s.skip ? maps.get(s.skip.input)! : undefined;
  const graph = stageGraph(s, th, tw, opt);
  const out = new Float32Array(cout * outH * outW);
  for (const r of tileStarts(gridH, th)) {
    for (const c of tileStarts(gridW, tw)) {
      const wy = stageWindow(s, r, th);
      const wx = stageWindow(s, c, tw);
      const feeds: Record<string, { data: Float32Array; dims: number[] }> = { x: { data: readWindow(input, wy.from, wy.length, wx.from, wx.length), dims: [1, input.c, wy.length, wx.length] } };
      if (stats) {
        feeds.mean = { data: stats.mean, dims: [1, input.c, 1, 1] };
        feeds.invstd = { data: stats.invstd, dims: [1, input.c, 1, 1] };
        feeds.valid = { data: validMask(input.h, input.w, wy.from, wy.length, wx.from, wx.length), dims: [1, 1, wy.length, wx.length] };
      }
      if (skip) feeds.skip = { data: readWindow(skip, wy.at, wy.outSize, wx.at, wx.outSize), dims: [1, skip.c, wy.outSize, wx.outSize] };
      const y = await run(graph.key, graph.build, feeds);
      for (let k = 0; k < cout; k++)
        for (let row = 0; row < wy.outSize; row++) out.set(y.subarray((k * wy.outSize + row) * wx.outSize, (k * wy.outSize + row + 1) * wx.outSize), (k * outH + wy.at + row) * outW + wx.at);
    }
  }
  maps.set(s.output, { data: out, c: cout, h: outH, w: outW });
}

/** A graph the staged VAE runs: the key the engine caches its session by, and its builder. */
interface StagedGraph {
  key: string;
  build: () => GraphBuilder;
}

function stageGraph(s: VaeStage, th: number, tw: number, opt: StagedOptions): StagedGraph {
  return { key: `vae-stage:${s.conv}:${th}x${tw}:${opt.dtype}`, build: () => buildVaeStage(s, th, tw, opt) };
}

/** The part that runs whole at the latent's size: the decoder's head (to its mid block's output), the encoder's tail (from its mid block). */
function wholePart(cfg: VaeConfig, which: 'decode' | 'encode', lh: number, lw: number, opt: StagedOptions): StagedGraph {
  const o = { batch: 1, latentH: lh, latentW: lw, dtype: opt.dtype, attention: opt.attention, bufferLimit: opt.bufferLimit, norm: opt.norm };
  return which === 'decode'
    ? { key: `vae-head:${lh}x${lw}:${opt.dtype}`, build: () => buildVaeDecoder(cfg, { ...o, part: 'head' }) }
    : { key: `vae-tail:${lh}x${lw}:${opt.dtype}`, build: () => buildVaeEncoder(cfg, { ...o, part: 'tail' }) };
}

/** The latent [C, h, w] (scaled, as the UNet makes it) -> the picture [3, 8h, 8w] in [-1, 1]. */
export async function decodeStaged(cfg: VaeConfig, latent: FeatureMap, opt: StagedOptions, run: RunGraph): Promise<FeatureMap> {
  const { h, w } = latent;
  const head = wholePart(cfg, 'decode', h, w, opt);
  const features = await run(head.key, head.build, { latent: { data: latent.data, dims: [1, latent.c, h, w] } });
  const maps = new Map<string, FeatureMap>([['a', { data: features, c: cfg.blockOutChannels[cfg.blockOutChannels.length - 1], h, w }]]);
  for (const s of decoderStages(cfg)) await runStage(s, maps, h, cfg.normGroups, opt, run);
  return maps.get('image')!;
}

/** The picture [3, H, W] in [-1, 1] -> the scaled latent [C, H/8, W/8] (the mean, as the whole encoder gives). */
export async function encodeStaged(cfg: VaeConfig, picture: FeatureMap, opt: StagedOptions, run: RunGraph): Promise<FeatureMap> {
  const down = 2 ** (cfg.blockOutChannels.length - 1);
  const lh = picture.h / down;
  const lw = picture.w / down;
  const maps = new Map<string, FeatureMap>([['image', picture]]);
  for (const s of encoderStages(cfg)) await runStage(s, maps, lh, cfg.normGroups, opt, run);
  const a = maps.get('a')!;
  const tail = wholePart(cfg, 'encode', lh, lw, opt);
  const latent = await run(tail.key, tail.build, { features: { data: a.data, dims: [1, a.c, lh, lw] } });
  return { data: latent, c: cfg.latentChannels, h: lh, w: lw };
}

/** The graphs a staged decode (or encode) runs, for the memory plan: the whole part and one per stage. */
export function stagedGraphs(cfg: VaeConfig, latentH: number, latentW: number, opt: StagedOptions, which: 'decode' | 'encode'): GraphBuilder[] {
  const graphs = [wholePart(cfg, which, latentH, latentW, opt).build()];
  const down = which === 'decode' ? 1 : 2 ** (cfg.blockOutChannels.length - 1);
  let [h, w] = [latentH * down, latentW * down];
  for (const s of which === 'decode' ? decoderStages(cfg) : encoderStages(cfg)) {
    const t = stageTiling(s, h, w, opt.tile, latentH);
    graphs.push(stageGraph(s, t.th, t.tw, opt).build());
    [h, w] = [t.outH, t.outW];
  }
  return graphs;
}
