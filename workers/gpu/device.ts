// One GPUDevice per engine, shared by onnxruntime-web and our own WGSL kernels. Every buffer made
// on it is counted, so reports can state the real peak of GPU bytes allocated.
import { EngineError } from '../api/errors.ts';

export interface AdapterSummary {
  vendor: string;
  architecture: string;
  description: string;
  shaderF16: boolean;
  /** A CPU implementation of WebGPU (SwiftShader, a fallback adapter), not a GPU. */
  cpu: boolean;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
}

export interface GpuContext {
  device: GPUDevice;
  adapter: AdapterSummary;
  memory: GpuMemoryCounter;
  /** Resolves with a reason when the device is lost. */
  lost: Promise<string>;
}

export class GpuMemoryCounter {
  live = 0;
  peak = 0;
  /** The largest single buffer alive at any time since the last resetPeak (weights included). */
  largest = 0;
  private readonly sizes = new WeakMap<GPUBuffer, number>();
  /** How many live buffers have each size (so the largest live one is known without holding them). */
  private readonly bySize = new Map<number, number>();

  track(buffer: GPUBuffer, size: number): void {
    this.sizes.set(buffer, size);
    this.bySize.set(size, (this.bySize.get(size) ?? 0) + 1);
    this.live += size;
    if (this.live > this.peak) this.peak = this.live;
    if (size > this.largest) this.largest = size;
  }
  release(buffer: GPUBuffer): void {
    const size = this.sizes.get(buffer);
    if (size === undefined) return;
    this.sizes.delete(buffer);
    const n = (this.bySize.get(size) ?? 1) - 1;
    if (n) this.bySize.set(size, n);
    else this.bySize.delete(size);
    this.live -= size;
  }
  resetPeak(): void {
    this.peak = this.live;
    this.largest = Math.max(0, ...this.bySize.keys());
  }
}

/** Wrap createBuffer/destroy so that every allocation on the device is counted. */
function instrument(device: GPUDevice, memory: GpuMemoryCounter): void {
  const create = device.createBuffer.bind(device);
  device.createBuffer = (desc: GPUBufferDescriptor) => {
    const buffer = create(desc);
    memory.track(buffer, desc.size);
    const destroy = buffer.destroy.bind(buffer);
    buffer.destroy = () => {
      memory.release(buffer);
      destroy();
    };
    return buffer;
  };
}

/**
 * Adopt the device that onnxruntime-web's WebGPU EP created. ORT 1.30 makes its own device on first
 * use (a device set beforehand is ignored), so the engine takes that one for its kernels and
 * buffers: a buffer must belong to the device of the session that reads it.
 */
export async function adoptGpu(device: GPUDevice): Promise<GpuContext> {
  const memory = new GpuMemoryCounter();
  instrument(device, memory);
  const info = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo & { isFallbackAdapter?: boolean } }).adapterInfo;
  const L = device.limits;
  const cpu = info?.isFallbackAdapter === true || /swiftshader|llvmpipe|lavapipe|warp/i.test(`${info?.architecture} ${info?.description}`);
  return {
    device,
    memory,
    adapter: {
      vendor: info?.vendor ?? 'unknown',
      architecture: info?.architecture ?? 'unknown',
      description: info?.description ?? '',
      shaderF16: device.features.has('shader-f16'),
      cpu,
      maxBufferSize: L.maxBufferSize,
      maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
    },
    lost: device.lost.then((i) => `${i.reason}: ${i.message}`),
  };
}

export function hasWebGpu(): boolean {
  return !!(globalThis.navigator as Navigator | undefined)?.gpu;
}

export function noWebGpuError(): EngineError {
  return new EngineError('gpu-unavailable', 'This browser has no WebGPU. Use a recent Chrome or Edge, or enable WebGPU.');
}
