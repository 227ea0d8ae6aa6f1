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
  /** Readbacks and dispatches on the device. */
  work: GpuWorkCounter;
  /** Resolves with a reason when the device is lost. */
  lost: Promise<string>;
  /** The device's uncaptured errors, in the order they came (onnxruntime only logs them). */
  faults: GpuFaultLog;
  /** Resolves once every allocation made so far is known to have succeeded or is in `faults`. */
  allocationsChecked: () => Promise<void>;
}

/**
 * An error WebGPU reported on the device: a buffer that could not be allocated, or any error outside
 * an error scope. onnxruntime's WebGPU EP allocates without error scopes and only logs errors, so a
 * buffer it could not allocate leaves its run computing on an invalid buffer: the engine watches
 * for them itself.
 */
export interface GpuFault {
  kind: 'out-of-memory' | 'validation' | 'internal';
  message: string;
  /** Bytes of buffers alive on the device when the error came (this allocation not included). */
  liveBytes: number;
}

/**
 * The device's faults, numbered in the order they came. Only the latest `keep` of each kind are held,
 * so a device that reports an error on every run for hours holds a bounded list; a reader that
 * remembers `count` asks for what came after.
 */
export class GpuFaultLog {
  private recorded = 0;
  private readonly held = new Map<GpuFault['kind'], { seq: number; fault: GpuFault }[]>();

  constructor(readonly keep = 64) {}

  /** Faults recorded since the device was adopted, including those no longer held. */
  get count(): number {
    return this.recorded;
  }

  push(fault: GpuFault): void {
    const list = this.held.get(fault.kind) ?? [];
    list.push({ seq: this.recorded++, fault });
    if (list.length > this.keep) list.splice(0, list.length - this.keep);
    this.held.set(fault.kind, list);
  }

  /** The held faults numbered `from` on (of one kind, or all), oldest first. */
  since(from: number, kind?: GpuFault['kind']): GpuFault[] {
    const lists = kind ? [this.held.get(kind) ?? []] : [...this.held.values()];
    return lists
      .flat()
      .filter((e) => e.seq >= from)
      .sort((a, b) => a.seq - b.seq)
      .map((e) => e.fault);
  }
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

/**
 * One compute dispatch as the device saw it: its program, named by the label of the bind group it
 * used (onnxruntime's WebGPU EP labels each bind group with its program's name, e.g. `Transpose`),
 * and the buffers that bind group holds, in binding order.
 */
export interface DispatchRecord {
  program: string;
  buffers: GPUBuffer[];
}

/** What the device was asked to do since it was adopted, onnxruntime's work included (it goes through the same device). */
export class GpuWorkCounter {
  /** GPU-to-CPU reads: each mapping of a buffer for reading. */
  readbacks = 0;
  /** Compute dispatches recorded. */
  dispatches = 0;
  /**
   * While set, each dispatch of a compute pass begun meanwhile is appended here with its program and
   * buffers (bench:gpu reads a UNet run's programs so, without onnxruntime's timestamp profile).
   */
  log?: DispatchRecord[];
}

/**
 * Wrap createBuffer/destroy so that every allocation on the device is counted, and every mapping of
 * a buffer for reading (a readback) and every compute dispatch. Each allocation runs in an out-of-memory error scope: one that
 * fails holds nothing, so it leaves the count, and its fault records the bytes that were in use
 * without it. `pending`: the scopes not yet answered.
 */
function instrument(device: GPUDevice, memory: GpuMemoryCounter, work: GpuWorkCounter, faults: GpuFaultLog, pending: Set<Promise<void>>): void {
  // bind groups made while the work log is on: their label and buffers, for the dispatches that use them
  const groups = new WeakMap<GPUBindGroup, DispatchRecord>();
  const bindGroup = device.createBindGroup.bind(device);
  device.createBindGroup = (desc: GPUBindGroupDescriptor) => {
    const group = bindGroup(desc);
    if (work.log) {
      const buffers = [...desc.entries].map((e) => {
        const r = e.resource as GPUBufferBinding | GPUBuffer;
        return 'buffer' in r ? r.buffer : (r as GPUBuffer);
      });
      groups.set(group, { program: desc.label ?? '', buffers });
    }
    return group;
  };
  const encoder = device.createCommandEncoder.bind(device);
  device.createCommandEncoder = (desc?: GPUCommandEncoderDescriptor) => {
    const e = encoder(desc);
    const begin = e.beginComputePass.bind(e);
    e.beginComputePass = (passDesc?: GPUComputePassDescriptor) => {
      const pass = begin(passDesc);
      const direct = pass.dispatchWorkgroups.bind(pass);
      const indirect = pass.dispatchWorkgroupsIndirect.bind(pass);
      // with the work log on, the bind group at index 0 names the program of the next dispatch
      const log = work.log;
      let bound: DispatchRecord | undefined;
      if (log) {
        const set = pass.setBindGroup.bind(pass) as (index: number, group: GPUBindGroup | null, ...rest: unknown[]) => void;
        pass.setBindGroup = ((index: number, group: GPUBindGroup | null, ...rest: unknown[]) => {
          if (index === 0) bound = group ? groups.get(group) : undefined;
          set(index, group, ...rest);
        }) as typeof pass.setBindGroup;
      }
      const record = () => log?.push(bound ?? { program: '', buffers: [] });
      pass.dispatchWorkgroups = (x: number, y?: number, z?: number) => {
        work.dispatches += 1;
        record();
        direct(x, y, z);
      };
      pass.dispatchWorkgroupsIndirect = (buffer: GPUBuffer, offset: number) => {
        work.dispatches += 1;
        record();
        indirect(buffer, offset);
      };
      return pass;
    };
    return e;
  };
  const create = device.createBuffer.bind(device);
  device.createBuffer = (desc: GPUBufferDescriptor) => {
    const liveBytes = memory.live;
    device.pushErrorScope('out-of-memory');
    let buffer: GPUBuffer;
    try {
      buffer = create(desc);
    } catch (e) {
      // a buffer mapped at creation that cannot be allocated throws (onnxruntime catches it and
      // goes on): the scope is closed all the same, and the failure is a fault like any other
      void device.popErrorScope().catch(() => {});
      if (e instanceof RangeError) faults.push({ kind: 'out-of-memory', message: e.message, liveBytes });
      throw e;
    }
    memory.track(buffer, desc.size);
    const answered = device.popErrorScope().then(
      (error) => {
        if (!error) return;
        memory.release(buffer);
        faults.push({ kind: 'out-of-memory', message: error.message, liveBytes });
      },
      () => {}, // the device was lost: its own promise says so
    );
    pending.add(answered);
    void answered.then(() => pending.delete(answered));
    if (desc.usage & GPUBufferUsage.MAP_READ) {
      const map = buffer.mapAsync.bind(buffer);
      buffer.mapAsync = (mode: GPUMapModeFlags, offset?: number, size?: number) => {
        if (mode & GPUMapMode.READ) work.readbacks += 1;
        return map(mode, offset, size);
      };
    }
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
  const work = new GpuWorkCounter();
  const faults = new GpuFaultLog();
  const pending = new Set<Promise<void>>();
  instrument(device, memory, work, faults, pending);
  // the other errors nobody captured (a listener beside onnxruntime's own handler, which it set when
  // it made the device)
  device.addEventListener('uncapturederror', (e) => {
    const error = (e as GPUUncapturedErrorEvent).error;
    const kind = error instanceof GPUOutOfMemoryError ? 'out-of-memory' : error instanceof GPUValidationError ? 'validation' : 'internal';
    faults.push({ kind, message: error.message, liveBytes: memory.live });
  });
  const info = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo & { isFallbackAdapter?: boolean } }).adapterInfo;
  const L = device.limits;
  const cpu = info?.isFallbackAdapter === true || /swiftshader|llvmpipe|lavapipe|warp/i.test(`${info?.architecture} ${info?.description}`);
  return {
    device,
    memory,
    work,
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
    faults,
    allocationsChecked: async () => {
      while (pending.size) await Promise.all([...pending]);
    },
  };
}

export function hasWebGpu(): boolean {
  return !!(globalThis.navigator as Navigator | undefined)?.gpu;
}

export function noWebGpuError(): EngineError {
  return new EngineError('gpu-unavailable', 'This browser has no WebGPU. Use a recent Chrome or Edge, or enable WebGPU.');
}
