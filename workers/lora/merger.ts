// The LoRA state of a loaded model. Loaded LoRAs keep their factors on the GPU in one arena; every
// weight any of them touches keeps a pristine copy (packed in chunks) made before it was ever
// changed. Applying a set of {LoRA, scale} is then one merge from the pristine values, so
// switching and switching off are exact, and no weight crosses to the CPU.
// On the wasm backend (and when asked to, for the benchmark) the same merge runs on the CPU.
import { BadArgumentError } from '../api/errors.ts';
import { halvesToFloat } from '../checkpoint/dtype.ts';
import type { Runtime } from '../engine/runtime.ts';
import type { WeightSet } from '../engine/weights.ts';
import { readBuffer } from '../gpu/buffers.ts';
import { LoraMergeKernel } from '../gpu/lora-merge.ts';
import type { LoraComponent, LoraTarget } from './keys.ts';
import { addModuleDelta, doraGains, kernelSize } from './dense.ts';
import type { LoadedLora, LoraModule } from './load.ts';
import { alignUp, PACK_ALIGN, planMerge, type MergeMode, type MergeSegmentSpec, type MergeTermSpec } from './merge-plan.ts';

export type MergeBackend = MergeMode | 'cpu';

export interface LoraScale {
  id: string;
  unet: number;
  textEncoder: number;
}

export interface MergeStats {
  ms: number;
  /** Weights written (merged or restored). */
  weights: number;
  dispatches: number;
}

const CHUNK_BYTES = 128 * 2 ** 20;
const SCRATCH_BYTES = 64 * 2 ** 20;

interface PristineSlot {
  chunk: number;
  offset: number;
}

interface FactorSlot {
  /** f32 offset of each module's up, down (LoHa up2, down2; LoKr w1; DoRA gains) in the arena. */
  modules: ModuleOffsets[];
  start: number;
  floats: number;
}

interface ModuleOffsets {
  up: number;
  down: number;
  up2?: number;
  down2?: number;
  w1?: number;
  gains?: number;
}

const keyOf = (t: LoraTarget) => `${t.component}:${t.weight}`;

interface TermEntry {
  term: MergeTermSpec;
  module: LoraModule;
  gains?: Float32Array;
}

export class LoraWeights {
  private readonly loras = new Map<string, LoadedLora>();
  /** Every weight a loaded LoRA touches, by "component:weight". */
  private readonly targets = new Map<string, LoraTarget>();
  private readonly slots = new Map<string, FactorSlot>();
  private readonly pristine = new Map<string, PristineSlot>();
  private readonly cpuPristine = new Map<string, Float32Array>();
  /** DoRA gains of each LoRA's modules (undefined for the others), worked out when it was added. */
  private readonly gains = new Map<string, (Float32Array | undefined)[]>();
  private chunks: { buffer: GPUBuffer; used: number }[] = [];
  private factors?: GPUBuffer;
  private factorFloats = 0;
  private scratch?: GPUBuffer;
  /** Weights that currently differ from their pristine values. */
  private dirty = new Set<string>();
  /** What each component currently holds: its LoRAs and scales, so re-applying the same is free. */
  private applied: Record<LoraComponent, string> = { unet: '', textEncoder: '' };

  private constructor(
    private readonly rt: Runtime,
    private readonly weights: Record<LoraComponent, WeightSet>,
    readonly backend: MergeBackend,
    private readonly kernel?: LoraMergeKernel,
  ) {}

  static async create(rt: Runtime, weights: Record<LoraComponent, WeightSet>, backend: MergeBackend = 'batched'): Promise<LoraWeights> {
    const mode: MergeBackend = rt.gpu ? backend : 'cpu';
    const storage = weights.unet.dtype === 'float16' ? 'f16' : 'f32';
    const kernel = mode === 'cpu' ? undefined : await LoraMergeKernel.create(rt.gpu!.device, storage);
    return new LoraWeights(rt, weights, mode, kernel);
  }

  private get elementBytes(): 2 | 4 {
    return this.weights.unet.dtype === 'float16' ? 2 : 4;
  }

  private bufferOf(key: string): GPUBuffer {
    const t = this.targets.get(key)!;
    return this.weights[t.component].buffers.get(t.weight)!;
  }

  has(id: string): boolean {
    return this.loras.has(id);
  }

  async add(id: string, lora: LoadedLora): Promise<void> {
    if (this.loras.has(id)) throw new BadArgumentError(`A LoRA with id "${id}" is already loaded.`);
    await this.keepPristine(lora.modules.map((m) => m.target));
    const gains: (Float32Array | undefined)[] = [];
    for (const m of lora.modules) gains.push(m.dora ? doraGains(m, await this.pristineValues(keyOf(m.target))) : undefined);
    if (this.backend !== 'cpu') this.uploadFactors(id, lora, gains);
    this.gains.set(id, gains);
    this.loras.set(id, lora);
  }

  remove(id: string): void {
    if (!this.loras.delete(id)) return;
    this.gains.delete(id);
    this.applied = { unet: '', textEncoder: '' };
    if (this.backend === 'cpu') return;
    // Compact the arena: copy the remaining LoRAs' factors to a new buffer, on the GPU.
    const removed = this.slots.get(id)!;
    this.slots.delete(id);
    const device = this.rt.gpu!.device;
    const old = this.factors!;
    const next = device.createBuffer({ size: Math.max(16, (this.factorFloats - removed.floats) * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
    const enc = device.createCommandEncoder();
    let at = 0;
    for (const slot of this.slots.values()) {
      if (slot.floats) enc.copyBufferToBuffer(old, slot.start * 4, next, at * 4, slot.floats * 4);
      const shift = at - slot.start;
      slot.modules = slot.modules.map((m) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, v === undefined ? undefined : v + shift])) as unknown as ModuleOffsets);
      slot.start = at;
      at += slot.floats;
    }
    device.queue.submit([enc.finish()]);
    old.destroy();
    this.factors = next;
    this.factorFloats = at;
  }

  private uploadFactors(id: string, lora: LoadedLora, gains: (Float32Array | undefined)[]): void {
    const device = this.rt.gpu!.device;
    const limit = device.limits.maxStorageBufferBindingSize;
    const need = (this.factorFloats + lora.factorFloats) * 4;
    if (need > limit) {
      throw new BadArgumentError(
        `The loaded LoRAs need ${(need / 2 ** 20).toFixed(0)} MB of factors but this GPU binds at most ${(limit / 2 ** 20).toFixed(0)} MB at once; remove a LoRA first.`,
      );
    }
    if (!this.factors || this.factors.size < need) {
      const size = Math.min(limit, Math.max(need, Math.ceil((this.factors?.size ?? 0) * 1.5), 1024));
      const next = device.createBuffer({ size: alignUp(size, 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
      if (this.factors) {
        const enc = device.createCommandEncoder();
        if (this.factorFloats) enc.copyBufferToBuffer(this.factors, 0, next, 0, this.factorFloats * 4);
        device.queue.submit([enc.finish()]);
        this.factors.destroy();
      }
      this.factors = next;
    }
    const slot: FactorSlot = { modules: [], start: this.factorFloats, floats: lora.factorFloats };
    let at = this.factorFloats;
    const put = (v: Float32Array) => {
      device.queue.writeBuffer(this.factors!, at * 4, v.buffer as ArrayBuffer, v.byteOffset, v.byteLength);
      const o = at;
      at += v.length;
      return o;
    };
    // a DoRA layer's gains take its magnitude's place (same length)
    lora.modules.forEach((m, i) => {
      const up = put(m.factors.up);
      const down = put(m.factors.down);
      const had = m.hadamard && { up2: put(m.hadamard.up), down2: put(m.hadamard.down) };
      const w1 = m.kron && put(m.kron.w1);
      const g = gains[i] && put(gains[i]!);
      slot.modules.push({ up, down, ...had, w1, gains: g });
    });
    this.factorFloats = at;
    this.slots.set(id, slot);
  }

  /** Copy the weights a new LoRA touches, while they are still untouched. */
  private async keepPristine(targets: LoraTarget[]): Promise<void> {
    const fresh = new Map<string, LoraTarget>();
    for (const t of targets) if (!this.targets.has(keyOf(t))) fresh.set(keyOf(t), t);
    for (const [key, t] of fresh) this.targets.set(key, t);
    if (!fresh.size) return;
    if (this.backend === 'cpu') {
      for (const [key, t] of fresh) this.cpuPristine.set(key, await this.readWeight(t));
      return;
    }
    const device = this.rt.gpu!.device;
    const eb = this.elementBytes;
    const limit = device.limits.maxStorageBufferBindingSize;
    const enc = device.createCommandEncoder();
    const packed = (t: { rows: number; cols: number }) => alignUp(t.rows * t.cols, PACK_ALIGN) * eb;
    // a new chunk holds what is left to place, up to CHUNK_BYTES: a small model gets a small one
    let pending = [...fresh.values()].reduce((a, t) => a + packed(t), 0);
    for (const [key, t] of fresh) {
      const elements = t.rows * t.cols;
      const bytes = packed(t);
      let c = this.chunks.length - 1;
      if (c < 0 || this.chunks[c].used + bytes > this.chunks[c].buffer.size) {
        const size = Math.min(limit, Math.max(bytes, Math.min(CHUNK_BYTES, pending)));
        if (bytes > size) throw new BadArgumentError(`The weight ${t.weight} is larger than this GPU can bind (${limit} bytes).`);
        this.chunks.push({ buffer: device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC }), used: 0 });
        c++;
      }
      const chunk = this.chunks[c];
      enc.copyBufferToBuffer(this.bufferOf(key), 0, chunk.buffer, chunk.used, alignUp(elements * eb, 4));
      this.pristine.set(key, { chunk: c, offset: chunk.used / eb });
      chunk.used += bytes;
      pending -= bytes;
    }
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  }

  /** A touched weight's values before any LoRA, as float32. */
  private async pristineValues(key: string): Promise<Float32Array> {
    if (this.backend === 'cpu') return this.cpuPristine.get(key)!;
    const { rows, cols } = this.targets.get(key)!;
    const p = this.pristine.get(key)!;
    const eb = this.elementBytes;
    const raw = await readBuffer(this.rt.gpu!.device, this.chunks[p.chunk].buffer, p.offset * eb, alignUp(rows * cols * eb, 4));
    return eb === 2 ? halvesToFloat(new Uint16Array(raw, 0, rows * cols)) : new Float32Array(raw, 0, rows * cols);
  }

  private async readWeight(t: LoraTarget): Promise<Float32Array> {
    const set = this.weights[t.component];
    const elements = t.rows * t.cols;
    const buffer = set.buffers.get(t.weight);
    if (!buffer) {
      const data = set.tensors.get(t.weight)!.data;
      return data instanceof Uint16Array ? halvesToFloat(data) : Float32Array.from(data as Float32Array);
    }
    const raw = await readBuffer(this.rt.gpu!.device, buffer, 0, alignUp(elements * this.elementBytes, 4));
    return this.elementBytes === 2 ? halvesToFloat(new Uint16Array(raw, 0, elements)) : new Float32Array(raw, 0, elements);
  }

  /**
   * Make the weights equal pristine + sum of the given LoRAs at their scales (only `components`
   * are touched). Returns how long the GPU (or CPU) took; nothing is done when the set is the one
   * already applied.
   */
  async apply(scales: LoraScale[], components: LoraComponent[] = ['textEncoder', 'unet']): Promise<MergeStats | undefined> {
    for (const s of scales) if (!this.loras.has(s.id)) throw new BadArgumentError(`No LoRA with id "${s.id}" is loaded.`);
    const signatures = new Map(components.map((c) => [c, JSON.stringify(scales.map((s) => [s.id, c === 'unet' ? s.unet : s.textEncoder]))]));
    components = components.filter((c) => signatures.get(c) !== this.applied[c]);
    if (!components.length) return undefined;
    const t0 = performance.now();
    const terms = new Map<string, TermEntry[]>();
    for (const s of scales) {
      const lora = this.loras.get(s.id)!;
      const slot = this.slots.get(s.id);
      const gains = this.gains.get(s.id)!;
      lora.modules.forEach((m, i) => {
        if (!components.includes(m.target.component)) return;
        const multiplier = m.target.component === 'unet' ? s.unet : s.textEncoder;
        // DoRA: the multiplier scales the layer's whole change W' - W, as A1111 and ComfyUI apply
        // it; alpha / rank acts inside the norm
        const scale = m.dora ? multiplier : multiplier * m.alphaScale;
        if (scale === 0) return; // scale 0 must leave the base bit for bit
        const at = slot?.modules[i];
        const term: MergeTermSpec = {
          up: at?.up ?? 0,
          down: at?.down ?? 0,
          rank: m.factors.rank,
          scale,
          hadamard: m.hadamard && { up: at?.up2 ?? 0, down: at?.down2 ?? 0, rank: m.hadamard.rank },
          kron: m.kron && { w1: at?.w1 ?? 0, rows: m.kron.rows, cols: m.kron.cols },
          dora: m.dora && { gains: at?.gains ?? 0, perInput: m.dora.perInput, kernel: kernelSize(m), alpha: m.alphaScale },
        };
        const k = keyOf(m.target);
        const entry = { term, module: m, gains: gains[i] };
        const list = terms.get(k);
        if (list) list.push(entry);
        else terms.set(k, [entry]);
      });
    }
    const touched = new Set([...terms.keys(), ...[...this.dirty].filter((k) => components.includes(this.targets.get(k)!.component))]);
    let dispatches = 0;
    if (this.backend === 'cpu') await this.applyCpu(touched, terms);
    else dispatches = await this.applyGpu(touched, terms);
    for (const k of touched) {
      if (terms.has(k)) this.dirty.add(k);
      else this.dirty.delete(k);
    }
    for (const c of components) this.applied[c] = signatures.get(c)!;
    return { ms: performance.now() - t0, weights: touched.size, dispatches };
  }

  private async applyGpu(touched: Set<string>, terms: Map<string, TermEntry[]>): Promise<number> {
    const specs: MergeSegmentSpec[] = [];
    let largest = 0;
    for (const key of touched) {
      const p = this.pristine.get(key)!;
      const { rows, cols } = this.targets.get(key)!;
      largest = Math.max(largest, alignUp(rows * cols, PACK_ALIGN));
      specs.push({ target: key, rows, cols, chunk: p.chunk, baseOffset: p.offset, terms: (terms.get(key) ?? []).map((t) => t.term) });
    }
    const eb = this.elementBytes;
    const plan = planMerge(specs, { mode: this.backend as MergeMode, elementBytes: eb, scratchElements: Math.max(largest, SCRATCH_BYTES / eb) });
    const device = this.rt.gpu!.device;
    if (plan.scratchBytes && (!this.scratch || this.scratch.size < plan.scratchBytes)) {
      this.scratch?.destroy();
      this.scratch = device.createBuffer({ size: alignUp(plan.scratchBytes, 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
    }
    const factors = this.factors ?? (this.factors = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC }));
    await this.kernel!.run(plan, {
      factors,
      chunk: (i) => this.chunks[i].buffer,
      target: (key) => this.bufferOf(key),
      scratch: this.scratch,
    });
    return plan.passes.length;
  }

  /** The same merge on the CPU: float32 arithmetic, then one upload per weight. */
  private async applyCpu(touched: Set<string>, terms: Map<string, TermEntry[]>): Promise<void> {
    for (const key of touched) {
      const base = this.cpuPristine.get(key)!;
      const list = terms.get(key) ?? [];
      const out = Float32Array.from(base);
      if (list.length) {
        const { rows, cols } = this.targets.get(key)!;
        const delta = new Float32Array(rows * cols);
        for (const { term, module, gains } of list) addModuleDelta(delta, base, module, term.scale, gains);
        for (let i = 0; i < out.length; i++) out[i] = base[i] + delta[i];
      }
      const t = this.targets.get(key)!;
      this.weights[t.component].setValues(t.weight, out);
    }
  }

  dispose(): void {
    for (const c of this.chunks) c.buffer.destroy();
    this.factors?.destroy();
    this.scratch?.destroy();
    this.chunks = [];
    this.factors = this.scratch = undefined;
    this.pristine.clear();
    this.cpuPristine.clear();
    this.gains.clear();
    this.loras.clear();
    this.slots.clear();
    this.targets.clear();
    this.dirty.clear();
    this.kernel?.dispose();
  }
}
