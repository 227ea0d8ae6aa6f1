// The WGSL 2D FFT and band amplitudes against a float64 DFT, on batches of real images.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Rng } from '../../workers/engine/random.ts';
import { readBuffer, uploadBuffer } from '../../workers/gpu/buffers.ts';
import { SpectrumKernel } from '../../workers/gpu/spectrum.ts';
import { bandAmplitudes64, dft2d } from '../../workers/reference/fft.ts';
import { runtime } from '../helpers.ts';

after(() => setTimeout(() => process.exit(0), 10).unref());

test('2D FFT of real images matches the float64 DFT; band amplitudes match', async () => {
  const device = (await runtime('webgpu')).gpu!.device;
  const kernel = await SpectrumKernel.create(device);
  for (const [batch, height, width] of [[1, 2, 2], [3, 8, 16], [2, 32, 32], [1, 64, 8]]) {
    const n = height * width;
    const images = new Rng(height * 100 + width).normal(batch * n);
    // a smooth component too, so the low and high bands differ
    for (let i = 0; i < images.length; i++) images[i] += 3 * Math.cos((2 * Math.PI * (i % width)) / width);
    const input = uploadBuffer(device, images, GPUBufferUsage.STORAGE);
    const temp: GPUBuffer[] = [];
    const enc = device.createCommandEncoder();
    const spec = kernel.spectrum(input, { batch, height, width }, enc, temp);
    device.queue.submit([enc.finish()]);
    const got = new Float32Array(await readBuffer(device, spec));
    const bands = await kernel.bandAmplitudes(input, { batch, height, width }, 0.25);
    for (let b = 0; b < batch; b++) {
      const want = dft2d(images.subarray(b * n, (b + 1) * n), height, width);
      let diff = 0;
      let scale = 0;
      for (let i = 0; i < 2 * n; i++) {
        diff = Math.max(diff, Math.abs(got[b * 2 * n + i] - want[i]));
        scale = Math.max(scale, Math.abs(want[i]));
      }
      assert.ok(diff <= 2e-6 * scale * Math.log2(n + 1), `${batch}x${height}x${width} image ${b}: error ${diff} of ${scale}`);
      const ref = bandAmplitudes64(want, height, width, 0.25);
      assert.ok(Math.abs(bands.high[b] - ref.high) <= 1e-5 * ref.all + 1e-6, `high band ${bands.high[b]} vs ${ref.high}`);
      assert.ok(Math.abs(bands.all[b] - ref.all) <= 1e-5 * ref.all, `all ${bands.all[b]} vs ${ref.all}`);
    }
    for (const t of [input, spec, ...temp]) t.destroy();
  }
  assert.throws(() => kernel.spectrum(uploadBuffer(device, new Float32Array(12), GPUBufferUsage.STORAGE), { batch: 1, height: 3, width: 4 }, device.createCommandEncoder(), []), /powers of two/);
});
