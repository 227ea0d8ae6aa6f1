// 2D FFT and band amplitudes on the GPU (shaders/fft2d.wgsl, shaders/spectrum-band.wgsl): the
// frequency profile of latents that already live on the GPU, for CMLoRA's ordering of LoRAs.
import fftWgsl from '../../shaders/fft2d.wgsl?raw';
import bandWgsl from '../../shaders/spectrum-band.wgsl?raw';
import { readBuffer, uploadBuffer } from './buffers.ts';
import { compileShader, computeLayout } from './shader.ts';

export interface SpectrumShape {
  batch: number;
  height: number;
  width: number;
}

export interface BandAmplitudes {
  /** Mean |F| over the high band, per image. */
  high: Float32Array;
  /** Mean |F| over all frequencies, per image. */
  all: Float32Array;
}

const MAX_SIDE = 512;
const isPow2 = (n: number) => Number.isInteger(n) && n >= 2 && (n & (n - 1)) === 0;

export function checkSpectrumShape(s: SpectrumShape): void {
  if (!isPow2(s.width) || !isPow2(s.height) || s.width > MAX_SIDE || s.height > MAX_SIDE) {
    throw new Error(`FFT sides must be powers of two from 2 to ${MAX_SIDE} (got ${s.height}x${s.width})`);
  }
}

/** Workgroups for `count` lines, spread over two dimensions (65535 per dimension). */
const grid = (count: number): [number, number] => [Math.min(count, 65535), Math.ceil(count / 65535)];

export class SpectrumKernel {
  private constructor(
    private readonly device: GPUDevice,
    private readonly twiddles: GPUBuffer,
    private readonly rows: GPUComputePipeline,
    private readonly columns: GPUComputePipeline,
    private readonly band: GPUComputePipeline,
  ) {}

  static async create(device: GPUDevice): Promise<SpectrumKernel> {
    const fft = await compileShader(device, fftWgsl, 'fft2d');
    const band = await compileShader(device, bandWgsl, 'spectrum-band');
    const layout = computeLayout(device, ['uniform', 'read-only-storage', 'storage']);
    const fftLayout = computeLayout(device, ['uniform', 'read-only-storage', 'storage', 'read-only-storage']);
    const table = new Float32Array(MAX_SIDE);
    for (let k = 0; k < MAX_SIDE / 2; k++) {
      table[2 * k] = Math.cos((-2 * Math.PI * k) / MAX_SIDE);
      table[2 * k + 1] = Math.sin((-2 * Math.PI * k) / MAX_SIDE);
    }
    const twiddles = uploadBuffer(device, table, GPUBufferUsage.STORAGE);
    const fftPipelineLayout = device.createPipelineLayout({ bindGroupLayouts: [fftLayout] });
    const pipelineLayout = device.createPipelineLayout({ bindGroupLayouts: [layout] });
    const make = (module: GPUShaderModule, entryPoint: string, layout: GPUPipelineLayout) => device.createComputePipelineAsync({ layout, compute: { module, entryPoint } });
    return new SpectrumKernel(device, twiddles, await make(fft, 'rows', fftPipelineLayout), await make(fft, 'columns', fftPipelineLayout), await make(band, 'main', pipelineLayout));
  }

  /** The complex spectrum of real images in `input` ([batch, height, width] f32), as a new buffer of vec2 values. */
  spectrum(input: GPUBuffer, shape: SpectrumShape, encoder: GPUCommandEncoder, temp: GPUBuffer[]): GPUBuffer {
    checkSpectrumShape(shape);
    const { device } = this;
    const n = shape.batch * shape.height * shape.width;
    const out = device.createBuffer({ size: n * 8, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
    const params = uploadBuffer(device, new Uint32Array([shape.width, shape.height, shape.batch, 0]), GPUBufferUsage.UNIFORM);
    temp.push(params);
    const bind = (pipeline: GPUComputePipeline) =>
      device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: params } },
          { binding: 1, resource: { buffer: input } },
          { binding: 2, resource: { buffer: out } },
          { binding: 3, resource: { buffer: this.twiddles } },
        ],
      });
    const pass = encoder.beginComputePass({ label: 'fft2d' });
    pass.setPipeline(this.rows);
    pass.setBindGroup(0, bind(this.rows));
    pass.dispatchWorkgroups(...grid(shape.batch * shape.height));
    pass.setPipeline(this.columns);
    pass.setBindGroup(0, bind(this.columns));
    pass.dispatchWorkgroups(...grid(shape.batch * shape.width));
    pass.end();
    return out;
  }

  dispose(): void {
    this.twiddles.destroy();
  }

  /** |F| of every frequency of every image of the batch, in FFT order. */
  async magnitudes(input: GPUBuffer, shape: SpectrumShape): Promise<Float32Array> {
    const { device } = this;
    const temp: GPUBuffer[] = [];
    try {
      const encoder = device.createCommandEncoder({ label: 'spectrum-magnitudes' });
      const spectrum = this.spectrum(input, shape, encoder, temp);
      temp.push(spectrum);
      device.queue.submit([encoder.finish()]);
      const complex = new Float32Array(await readBuffer(device, spectrum));
      return Float32Array.from({ length: complex.length / 2 }, (_, i) => Math.hypot(complex[2 * i], complex[2 * i + 1]));
    } finally {
      for (const b of temp) b.destroy();
    }
  }

  /** Mean spectral amplitude above `cutoff` (cycles per sample, 0 to ~0.707) and overall, per image. */
  async bandAmplitudes(input: GPUBuffer, shape: SpectrumShape, cutoff: number): Promise<BandAmplitudes> {
    const { device } = this;
    const temp: GPUBuffer[] = [];
    try {
      const encoder = device.createCommandEncoder({ label: 'spectrum' });
      const spectrum = this.spectrum(input, shape, encoder, temp);
      temp.push(spectrum);
      const params = new ArrayBuffer(16);
      new Uint32Array(params, 0, 3).set([shape.width, shape.height, shape.batch]);
      new Float32Array(params, 12, 1)[0] = cutoff;
      const uniform = uploadBuffer(device, new Uint8Array(params), GPUBufferUsage.UNIFORM);
      const bands = device.createBuffer({ size: shape.batch * 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
      temp.push(uniform, bands);
      const pass = encoder.beginComputePass({ label: 'spectrum-band' });
      pass.setPipeline(this.band);
      pass.setBindGroup(0, device.createBindGroup({ layout: this.band.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: uniform } }, { binding: 1, resource: { buffer: spectrum } }, { binding: 2, resource: { buffer: bands } }] }));
      pass.dispatchWorkgroups(shape.batch);
      pass.end();
      device.queue.submit([encoder.finish()]);
      const sums = new Float32Array(await readBuffer(device, bands));
      const high = new Float32Array(shape.batch);
      const all = new Float32Array(shape.batch);
      for (let b = 0; b < shape.batch; b++) {
        high[b] = sums[b * 4 + 1] ? sums[b * 4] / sums[b * 4 + 1] : 0;
        all[b] = sums[b * 4 + 2] / sums[b * 4 + 3];
      }
      return { high, all };
    } finally {
      for (const b of temp) b.destroy();
    }
  }
}
