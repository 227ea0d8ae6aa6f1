// Model weights as session inputs. On the WebGPU EP each weight lives in its own GPU buffer that we
// create and fill (straight from the checkpoint's byte range), wrapped with Tensor.fromGpuBuffer;
// later kernels (LoRA merges) rewrite those buffers in place. On the wasm EP they are CPU tensors.
import type * as OrtNs from 'onnxruntime-web';
import { floatsToHalf } from '../checkpoint/dtype.ts';
import type { WeightSpec } from '../graph/builder.ts';
import { ortBufferSize, writePadded } from '../gpu/buffers.ts';
import type { Runtime } from './runtime.ts';

export interface WeightProvider {
  /** Float32 values of a weight, already reshaped to `spec.dims`. */
  read(spec: WeightSpec): Promise<Float32Array>;
}

export class WeightSet {
  readonly tensors = new Map<string, OrtNs.Tensor>();
  readonly buffers = new Map<string, GPUBuffer>();
  bytes = 0;

  constructor(private readonly rt: Runtime, readonly dtype: 'float32' | 'float16') {}

  async load(specs: Iterable<WeightSpec>, provider: WeightProvider, onTensor?: (name: string) => void): Promise<void> {
    for (const spec of specs) {
      if (this.tensors.has(spec.name)) continue;
      const values = await provider.read(spec);
      this.add(spec, values);
      onTensor?.(spec.name);
    }
  }

  add(spec: WeightSpec, values: Float32Array): void {
    const { ort } = this.rt;
    const data: Float32Array | Uint16Array = this.dtype === 'float16' ? floatsToHalf(values) : values;
    if (this.rt.backend === 'wasm' || !this.rt.gpu) {
      this.tensors.set(spec.name, this.cpuTensor(data, spec.dims));
      this.bytes += data.byteLength;
      return;
    }
    const device = this.rt.gpu.device;
    const size = ortBufferSize(data.byteLength);
    const buffer = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    writePadded(device, buffer, data);
    this.buffers.set(spec.name, buffer);
    this.tensors.set(spec.name, ort.Tensor.fromGpuBuffer(buffer, { dataType: this.dtype, dims: spec.dims }));
    this.bytes += size;
  }

  /** Replace a weight's values (the CPU merge path): a write into its GPU buffer, or a new tensor. */
  setValues(name: string, values: Float32Array): void {
    const old = this.tensors.get(name);
    if (!old) throw new Error(`weight ${name} was not loaded`);
    const data: Float32Array | Uint16Array = this.dtype === 'float16' ? floatsToHalf(values) : values;
    const buffer = this.buffers.get(name);
    if (buffer) {
      writePadded(this.rt.gpu!.device, buffer, data);
      return;
    }
    this.tensors.set(name, this.cpuTensor(data, old.dims));
  }

  private cpuTensor(data: Float32Array | Uint16Array, dims: readonly number[]): OrtNs.Tensor {
    const { ort } = this.rt;
    return data instanceof Uint16Array ? new ort.Tensor('float16', data, dims) : new ort.Tensor('float32', data, dims);
  }

  feeds(names: Iterable<string>): Record<string, OrtNs.Tensor> {
    const out: Record<string, OrtNs.Tensor> = {};
    for (const n of names) {
      const t = this.tensors.get(n);
      if (!t) throw new Error(`weight ${n} was not loaded`);
      out[n] = t;
    }
    return out;
  }

  dispose(): void {
    for (const b of this.buffers.values()) b.destroy();
    this.buffers.clear();
    this.tensors.clear();
    this.bytes = 0;
  }
}
