// What a layout asks of the UNet graph and which inputs it feeds: per-region keys and values for
// every cross-attention layer, region weights and concept isolation's factors per attention grid, and maps of
// the cross-attention layers on the latent grid (for the in-box share and latent re-initialisation).
import type { LayoutBox, ResolvedLayoutOptions } from '../api/contract.ts';
import type { UNetConfig } from '../checkpoint/config.ts';
import { crossAttentionLayers, crossKeyOutputName, crossValueOutputName } from '../graph/cross-kv.ts';
import { ISOLATION_FACTORS } from '../graph/layers.ts';
import { regionKeyInputName, regionValueInputName, regionWeightInputName, selfIsolationInputName, unetAttentionLayers } from '../graph/unet.ts';
import { attentionGrids, gridMasks, isolationFactors, regionWeights, type GridMasks, type MaskRule } from './masks.ts';

export interface LayoutGraph {
  regions: number;
  isolation: boolean;
  /** Each box region through its own output projection (inputs `region_out.*`). */
  regionOutputs: boolean;
  /** Cross-attention layers on the latent grid, whose per-region maps the graph outputs. */
  mapLayers: string[];
}

export function layoutGraphOptions(cfg: UNetConfig, latentH: number, latentW: number, boxes: number, o: Pick<ResolvedLayoutOptions, 'isolation' | 'injection' | 'regionOutput'>): LayoutGraph {
  const layers = unetAttentionLayers(cfg, latentH, latentW);
  return {
    regions: 1 + boxes,
    isolation: o.isolation,
    regionOutputs: o.injection && o.regionOutput === 'own',
    mapLayers: layers.filter((l) => l.kind === 'cross' && l.h === latentH && l.w === latentW).map((l) => l.name),
  };
}

export function layoutMasks(cfg: UNetConfig, boxes: Pick<LayoutBox, 'x' | 'y' | 'width' | 'height'>[], width: number, height: number, rule: MaskRule): Map<string, GridMasks> {
  const grids = attentionGrids(unetAttentionLayers(cfg, height / 8, width / 8));
  return new Map(grids.map((g) => [`${g.rows}x${g.cols}`, gridMasks(boxes, width, height, g.rows, g.cols, rule)]));
}

type Feed = { data: Float32Array; dims: number[] };

/**
 * The layout's UNet inputs. `kv[r]` holds region r's cross-attention keys and values (region 0: the
 * global prompt, then one per box); `kvUncond[r]` those of region r's unconditional half of a guided
 * batch. Without injection every cell keeps the global prompt and the box regions only serve as probes.
 */
export function layoutFeeds(
  cfg: UNetConfig,
  o: ResolvedLayoutOptions,
  masks: Map<string, GridMasks>,
  kv: Record<string, Float32Array>[],
  kvUncond: Record<string, Float32Array>[] | undefined,
  textLen: number,
): Record<string, Feed> {
  const R = kv.length;
  const batch = kvUncond ? 2 : 1;
  const feeds: Record<string, Feed> = {};
  for (const { name, channels } of crossAttentionLayers(cfg)) {
    for (const [input, output] of [
      [regionKeyInputName(name), crossKeyOutputName(name)],
      [regionValueInputName(name), crossValueOutputName(name)],
    ]) {
      const size = textLen * channels;
      const data = new Float32Array(batch * R * size);
      for (let r = 0; r < R; r++) {
        if (kvUncond) data.set(kvUncond[r][output], r * size);
        data.set(kv[r][output], ((batch - 1) * R + r) * size);
      }
      feeds[input] = { data, dims: [batch, R, textLen, channels] };
    }
  }
  for (const m of masks.values()) {
    const n = m.rows * m.cols;
    let w = regionWeights(m);
    if (!o.injection) {
      w = new Float32Array(R * n);
      w.fill(1, 0, n);
    }
    feeds[regionWeightInputName(m.rows, m.cols)] = { data: w, dims: [R, n] };
    if (o.isolation) feeds[selfIsolationInputName(m.rows, m.cols)] = { data: isolationFactors(m, o.isolationScope), dims: [2, n, ISOLATION_FACTORS] };
  }
  return feeds;
}

/** Token positions [first, end) of a prompt's content inside a 77-token context. */
export interface TokenRange {
  first: number;
  end: number;
}

/**
 * One token's attention per cell, from one region's maps (every map is [batch, R, cells, textLen])
 * averaged over the given layers, taking the last (conditional) batch entry. With `weights` (that
 * region's row of the region weights, one per cell) it is the attention the image actually used:
 * zero where the region is masked out. Without, where the token would draw attention if nothing
 * confined it.
 */
export function tokenMap(maps: Float32Array[], region: number, regions: number, cells: number, textLen: number, token: number, weights?: ArrayLike<number>): Float64Array {
  const out = new Float64Array(cells);
  for (const m of maps) {
    const batch = m.length / (regions * cells * textLen);
    const base = ((batch - 1) * regions + region) * cells * textLen;
    for (let q = 0; q < cells; q++) out[q] += ((weights ? weights[q] : 1) * m[base + q * textLen + token]) / maps.length;
  }
  return out;
}

/** The sum of several tokens' maps. */
export function tokensMap(maps: Float32Array[], region: number, regions: number, cells: number, textLen: number, tokens: number[], weights?: ArrayLike<number>): Float64Array {
  const out = new Float64Array(cells);
  for (const t of tokens) tokenMap(maps, region, regions, cells, textLen, t, weights).forEach((v, q) => (out[q] += v));
  return out;
}

/**
 * Without region injection the box prompts are appended to the global prompt, joined by ", ": the
 * positions of box n's tokens in that joined prompt, from the token counts (start and end included)
 * of each part encoded alone and of the joining comma. Parts that do not fit in the context are cut.
 */
export function appendedTokens(partCounts: number[], part: number, textLen: number): TokenRange {
  let first = 1;
  for (let i = 0; i < part; i++) first += partCounts[i] - 2 + 1; // the part's content, then the comma
  const end = Math.min(textLen - 1, first + partCounts[part] - 2);
  return { first: Math.min(first, end), end };
}

/** The share of a map's mass that lies in the mask. */
export function shareInside(map: ArrayLike<number>, mask: Uint8Array): number {
  let inside = 0;
  let all = 0;
  for (let i = 0; i < mask.length; i++) {
    all += map[i];
    if (mask[i]) inside += map[i];
  }
  return all > 0 ? inside / all : 0;
}
