// One guided update of the latent per denoising step (LoRA-Composer Eq. 10): the cut UNet gives the
// attention maps at the current latent, the losses and their gradients with respect to the maps
// come from workers/layout/guidance.ts, and the cut UNet's backward graph turns those into
// dL/dlatent. z' = z - phi_t * dL/dz, for the first share of the steps, until L stops decreasing.
import type * as OrtNs from 'onnxruntime-web';
import type { GuidanceOptions, GuidanceReport, GuidanceStep, LayoutBox } from '../api/contract.ts';
import { guidanceSeedName, GUIDANCE_GRAD_OUTPUT, type GuidanceLayers } from '../graph/guidance-graph.ts';
import { unetMapOutputName } from '../graph/unet.ts';
import { GUIDANCE_DEFAULTS, GUIDANCE_SCHEDULE_DEFAULTS, guidanceLoss, guidanceStepSize, type GuidanceBox } from '../layout/guidance.ts';
import type { GridMasks } from '../layout/masks.ts';
import { conceptMap, type TokenRange } from '../layout/regional.ts';
import { cellBox } from '../layout/reinit.ts';
import type { Ort } from './runtime.ts';

type Outputs = Record<string, OrtNs.Tensor>;
type Feeds = Record<string, OrtNs.Tensor>;

export interface GuideParts {
  layers: GuidanceLayers;
  maps: (feeds: Feeds) => Promise<Outputs>;
  grad: (feeds: Feeds) => Promise<Outputs>;
}

export interface GuideSetup {
  ort: Ort;
  options: GuidanceOptions;
  boxes: LayoutBox[];
  frame: { width: number; height: number };
  masks: GridMasks;
  /** Regions in the graph (background + boxes). */
  regions: number;
  textLen: number;
  /** Where each box's prompt is: its region and its content tokens there. */
  concept: { region: number; tokens: TokenRange }[];
  steps: number;
  /** The batch-1 inputs that do not change between steps: the prompt's context and the layout's. */
  fixed: Feeds;
}

export class LatentGuide {
  private readonly guided: number;
  private readonly schedule: Required<GuidanceOptions>;
  private readonly boxes: GuidanceBox[];
  private readonly records: GuidanceStep[] = [];
  private previous?: number;
  private stoppedAt: number | null = null;
  private evaluations = 0;
  private ms = 0;

  constructor(private readonly parts: GuideParts, private readonly s: GuideSetup) {
    const { rows, cols } = parts.layers;
    const given = Object.fromEntries(Object.entries(s.options).filter(([, v]) => v !== undefined));
    this.schedule = { ...GUIDANCE_SCHEDULE_DEFAULTS, ...given } as Required<GuidanceOptions>;
    this.guided = Math.max(1, Math.round(s.steps * this.schedule.share));
    this.boxes = s.boxes.map((b, n) => ({ mask: s.masks.boxes[n], ...cellBox(b, rows, cols, s.frame.width / cols) }));
  }

  /** Whether step `i` gets an update. */
  active(i: number): boolean {
    return i < this.guided && this.stoppedAt === null;
  }

  /**
   * The guided latent for step `i`. `input(x)` is the scheduler's model-input scaling (linear in x, so
   * it also carries dL/dinput back to dL/dlatent); `timestep` the step's embedding [1, c0]. Returns
   * the latent unchanged when early stop fires.
   */
  async step(i: number, latent: Float32Array, input: (x: Float32Array) => Float32Array, timestep: OrtNs.Tensor): Promise<{ latent: Float32Array; record: GuidanceStep }> {
    const t0 = performance.now();
    const { ort, options, textLen, regions } = this.s;
    const { layers } = this.parts;
    const cells = layers.rows * layers.cols;
    const [lh, lw] = [this.s.frame.height / 8, this.s.frame.width / 8];
    const feeds: Feeds = { ...this.s.fixed, sample: new ort.Tensor('float32', input(latent), [1, latent.length / (lh * lw), lh, lw]), timestep_embedding: timestep };
    const maps = await this.parts.maps(feeds);
    this.evaluations++;
    const cross = layers.cross.map((l) => maps[unetMapOutputName(l)].data as Float32Array);
    const selfMaps = layers.self.map((l) => maps[unetMapOutputName(l)].data as Float32Array);
    const concept = this.s.concept.map((c) => conceptMap(cross, c.region, regions, cells, textLen, c.tokens));
    const self = new Float64Array(cells * cells);
    for (const m of selfMaps) for (let k = 0; k < self.length; k++) self[k] += m[k] / selfMaps.length;
    const loss = guidanceLoss(this.boxes, concept, self, layers.rows, layers.cols, { ...GUIDANCE_DEFAULTS, ce: options.ce, fill: options.fill, region: options.region });
    const stop = this.schedule.earlyStop && this.previous !== undefined && loss.total >= this.previous;
    const stepSize = stop ? 0 : guidanceStepSize(this.schedule.scale, i, this.s.steps);
    const record: GuidanceStep = { step: i, loss: loss.total, ce: loss.ce, fill: loss.fill, region: loss.region, stepSize, updated: !stop };
    this.records.push(record);
    if (stop) {
      this.stoppedAt = i;
      this.ms += performance.now() - t0;
      return { latent, record };
    }
    this.previous = loss.total;
    // seeds: dL/dmap for every map output, spread back over the layers and the content tokens
    for (const l of layers.cross) {
      const seed = new Float32Array(regions * cells * textLen);
      this.s.concept.forEach((c, n) => {
        for (let q = 0; q < cells; q++) {
          const d = loss.dConcept[n][q] / layers.cross.length;
          for (let t = c.tokens.first; t < c.tokens.end; t++) seed[(c.region * cells + q) * textLen + t] += d;
        }
      });
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
    return { layers: [...layers.cross, ...layers.self], grid: { rows: layers.rows, cols: layers.cols }, steps: this.records, stoppedAt: this.stoppedAt, evaluations: this.evaluations, ms: this.ms };
  }
}
