// LoRA-Composer's two uses of the cut UNet (batch 1, the conditional prompt, the layout's regions and
// isolation): the probe of latent re-initialisation, and one guided update of the latent per
// denoising step (Eq. 10): the cut UNet gives the attention maps at the current latent, the losses
// and their gradients with respect to the maps come from workers/layout/guidance.ts, and the cut
// UNet's backward graph turns those into dL/dlatent; z' = z - phi_t * dL/dz while the code's
// refinement schedule runs.
import type * as OrtNs from 'onnxruntime-web';
import type { GuidanceOptions, GuidanceReport, GuidanceStep } from '../api/contract.ts';
import { guidanceSeedName, GUIDANCE_GRAD_OUTPUT, type GuidanceLayers } from '../graph/guidance-graph.ts';
import { unetMapOutputName } from '../graph/unet.ts';
import { GUIDANCE_LOSS_DEFAULTS, guidanceLoss, guidanceStepSize, RefineSchedule, type GuidanceBox } from '../layout/guidance.ts';
import type { GridMasks } from '../layout/masks.ts';
import { tokenMap, tokensMap } from '../layout/regional.ts';
import type { Ort } from './runtime.ts';

type Outputs = Record<string, OrtNs.Tensor>;
type Feeds = Record<string, OrtNs.Tensor>;

export interface GuideParts {
  layers: GuidanceLayers;
  maps: (feeds: Feeds) => Promise<Outputs>;
  /** The backward graph; absent when only the re-initialisation probe runs. */
  grad?: (feeds: Feeds) => Promise<Outputs>;
}

/** A box's concept: the region whose maps hold it and its concept tokens' positions there. */
export interface GuideConcept {
  region: number;
  tokens: number[];
}

export interface GuideSetup {
  ort: Ort;
  /** The guidance schedule and switches, all resolved; null for the probe alone. */
  options: Required<GuidanceOptions> | null;
  /** The boxes' masks on the guidance grid. */
  masks: GridMasks;
  /** Regions in the graph (background + boxes). */
  regions: number;
  textLen: number;
  concepts: GuideConcept[];
  steps: number;
  latent: { channels: number; height: number; width: number };
  /** The batch-1 inputs that do not change between steps: the prompt's context and the layout's. */
  fixed: Feeds;
}

export class LatentGuide {
  private readonly boxes: GuidanceBox[];
  private readonly schedule?: RefineSchedule;
  private readonly records: GuidanceStep[] = [];
  private evaluations = 0;
  private ms = 0;

  constructor(private readonly parts: GuideParts, private readonly s: GuideSetup) {
    this.boxes = s.masks.boxes.map((mask, n) => ({ mask, extent: s.masks.extents[n] }));
    const o = s.options;
    if (o) this.schedule = new RefineSchedule({ earlyStop: o.earlyStop, lastStep: o.lastStep, guided: Math.round(s.steps * o.share) });
  }

  get cells(): number {
    return this.parts.layers.rows * this.parts.layers.cols;
  }

  /** Whether step `i` is guided. */
  active(i: number): boolean {
    return this.schedule?.active(i) ?? false;
  }

  private async maps(x: Float32Array, timestep: OrtNs.Tensor): Promise<{ feeds: Feeds; cross: Float32Array[]; self: Float32Array[] }> {
    const { ort, latent } = this.s;
    const feeds: Feeds = { ...this.s.fixed, sample: new ort.Tensor('float32', x, [1, latent.channels, latent.height, latent.width]), timestep_embedding: timestep };
    const out = await this.parts.maps(feeds);
    this.evaluations++;
    const { layers } = this.parts;
    return { feeds, cross: layers.cross.map((l) => out[unetMapOutputName(l)].data as Float32Array), self: layers.self.map((l) => out[unetMapOutputName(l)].data as Float32Array) };
  }

  /** The probe of re-initialisation: each concept's attention on the grid (its tokens' maps summed) at model input `x`. */
  async probe(x: Float32Array, timestep: OrtNs.Tensor): Promise<Float64Array[]> {
    const t0 = performance.now();
    const { cross } = await this.maps(x, timestep);
    this.ms += performance.now() - t0;
    return this.s.concepts.map((c) => tokensMap(cross, c.region, this.s.regions, this.cells, this.s.textLen, c.tokens));
  }

  /**
   * The guided latent for step `i`. `input(x)` is the scheduler's model-input scaling (linear in x, so
   * it also carries dL/dinput back to dL/dlatent); `timestep` the step's embedding [1, c0].
   */
  async step(i: number, latent: Float32Array, input: (x: Float32Array) => Float32Array, timestep: OrtNs.Tensor): Promise<{ latent: Float32Array; record: GuidanceStep }> {
    const o = this.s.options;
    if (!o || !this.schedule || !this.parts.grad) throw new Error('this layout has no guidance');
    const t0 = performance.now();
    const { ort, textLen, regions } = this.s;
    const { layers } = this.parts;
    const cells = this.cells;
    const { feeds, cross, self: selfMaps } = await this.maps(input(latent), timestep);
    const tokens = this.s.concepts.map((c) => c.tokens.map((t) => tokenMap(cross, c.region, regions, cells, textLen, t)));
    const self = new Float64Array(cells * cells);
    for (const m of selfMaps) for (let k = 0; k < self.length; k++) self[k] += m[k] / selfMaps.length;
    const loss = guidanceLoss(this.boxes, tokens, self, layers.rows, layers.cols, { ...GUIDANCE_LOSS_DEFAULTS, ce: o.ce, fill: o.fill, region: o.region });
    const updated = this.schedule.record(i, loss.total);
    const stepSize = updated ? guidanceStepSize(o.scale, i, this.s.steps) : 0;
    const record: GuidanceStep = { step: i, loss: loss.total, ce: loss.ce, fill: loss.fill, region: loss.region, stepSize, updated };
    this.records.push(record);
    if (!updated) {
      this.ms += performance.now() - t0;
      return { latent, record };
    }
    // seeds: dL/dmap for every map output, spread back over the layers
    for (const l of layers.cross) {
      const seed = new Float32Array(regions * cells * textLen);
      this.s.concepts.forEach((c, n) =>
        c.tokens.forEach((t, j) => {
          const d = loss.dTokens[n][j];
          for (let q = 0; q < cells; q++) seed[(c.region * cells + q) * textLen + t] += d[q] / layers.cross.length;
        }),
      );
      feeds[guidanceSeedName(unetMapOutputName(l))] = new ort.Tensor('float32', seed, [1, regions, cells, textLen]);
    }
    for (const l of layers.self) {
      const seed = loss.dSelf ? Float32Array.from(loss.dSelf, (v) => v / layers.self.length) : new Float32Array(cells * cells);
      feeds[guidanceSeedName(unetMapOutputName(l))] = new ort.Tensor('float32', seed, [1, cells, cells]);
    }
    const grad = input((await this.parts.grad(feeds))[GUIDANCE_GRAD_OUTPUT].data as Float32Array);
    this.evaluations++;
    const out = Float32Array.from(latent, (v, k) => v - stepSize * grad[k]);
    this.ms += performance.now() - t0;
    return { latent: out, record };
  }

  report(): GuidanceReport {
    const { layers } = this.parts;
    return { layers: [...layers.cross, ...layers.self], grid: { rows: layers.rows, cols: layers.cols }, steps: this.records, stoppedAt: this.schedule?.stoppedAt ?? null, evaluations: this.evaluations, ms: this.ms };
  }
}
