// Runs a merge plan (workers/lora/merge-plan.ts) with shaders/lora-merge.wgsl: one command buffer
// holding the restore copies, every dispatch and the scratch-to-weight copies, so a LoRA switch is
// one submission and no weight value passes through the CPU.
import mergeWgsl from '../../shaders/lora-merge.wgsl?raw';
import weightsF16Wgsl from '../../shaders/lora-weights-f16.wgsl?raw';
import weightsF32Wgsl from '../../shaders/lora-weights-f32.wgsl?raw';
import { writePadded } from './buffers.ts';
import { compileShader, computeLayout } from './shader.ts';
import { alignUp, passUniforms, PASS_STRIDE_WORDS, type MergePlan } from '../lora/merge-plan.ts';

export type WeightStorage = 'f32' | 'f16';

export interface MergeBuffers {
  factors: GPUBuffer;
  chunk(index: number): GPUBuffer;
  target(key: string): GPUBuffer;
  /** At least plan.scratchBytes; only read for batched plans. */
  scratch?: GPUBuffer;
}

export class LoraMergeKernel {
  private readonly tables = new Map<string, GPUBuffer>();

  private constructor(
    private readonly device: GPUDevice,
    private readonly pipeline: GPUComputePipeline,
    private readonly layout: GPUBindGroupLayout,
    readonly storage: WeightStorage,
  ) {}

  static async create(device: GPUDevice, storage: WeightStorage): Promise<LoraMergeKernel> {
    const code = mergeWgsl + '\n' + (storage === 'f16' ? weightsF16Wgsl : weightsF32Wgsl);
    const module = await compileShader(device, code, `lora-merge-${storage}`);
    const layout = computeLayout(device, ['dynamic-uniform', 'read-only-storage', 'read-only-storage', 'read-only-storage', 'read-only-storage', 'storage']);
    const pipeline = await device.createComputePipelineAsync({
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: 'main' },
    });
    return new LoraMergeKernel(device, pipeline, layout, storage);
  }

  /** The plan's tables live in buffers kept between runs (grown when too small): a switch between
   * two steps writes them, it does not allocate. */
  private table(name: 'uniforms' | 'segments' | 'terms', data: ArrayBufferView, usage: number): GPUBuffer {
    let b = this.tables.get(name);
    if (!b || b.size < data.byteLength) {
      b?.destroy();
      b = this.device.createBuffer({ size: Math.max(256, alignUp(data.byteLength * 2, 256)), usage: usage | GPUBufferUsage.COPY_DST });
      this.tables.set(name, b);
    }
    if (data.byteLength) writePadded(this.device, b, data);
    return b;
  }

  /** Encode and submit the whole plan; resolves when the GPU has finished it. */
  async run(plan: MergePlan, buffers: MergeBuffers): Promise<void> {
    const { device } = this;
    const encoder = device.createCommandEncoder({ label: 'lora-merge' });
    for (const r of plan.restores) encoder.copyBufferToBuffer(buffers.chunk(r.chunk), r.copy.srcByte, buffers.target(r.target), 0, r.copy.bytes);
    if (plan.passes.length) {
      const uniforms = this.table('uniforms', passUniforms(plan), GPUBufferUsage.UNIFORM);
      const segments = this.table('segments', plan.segments, GPUBufferUsage.STORAGE);
      const terms = this.table('terms', new Uint8Array(plan.terms), GPUBufferUsage.STORAGE);
      plan.passes.forEach((p, i) => {
        const out = p.into === 'scratch' ? buffers.scratch! : buffers.target(p.into);
        const bind = device.createBindGroup({
          layout: this.layout,
          entries: [
            { binding: 0, resource: { buffer: uniforms, size: 16 } },
            { binding: 1, resource: { buffer: segments } },
            { binding: 2, resource: { buffer: terms } },
            { binding: 3, resource: { buffer: buffers.factors } },
            { binding: 4, resource: { buffer: buffers.chunk(p.chunk) } },
            { binding: 5, resource: { buffer: out } },
          ],
        });
        const pass = encoder.beginComputePass({ label: `lora-merge ${i}` });
        pass.setPipeline(this.pipeline);
        pass.setBindGroup(0, bind, [i * PASS_STRIDE_WORDS * 4]);
        pass.dispatchWorkgroups(p.tilesX, p.tilesY);
        pass.end();
        for (const c of p.copies) encoder.copyBufferToBuffer(out, c.srcByte, buffers.target(c.target), 0, c.bytes);
      });
    }
    device.queue.submit([encoder.finish()]);
    await device.queue.onSubmittedWorkDone();
  }

  dispose(): void {
    for (const b of this.tables.values()) b.destroy();
    this.tables.clear();
  }
}
