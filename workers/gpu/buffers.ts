// Small buffer helpers: read a GPU buffer back to the CPU, and make one filled from CPU data.

export async function readBuffer(device: GPUDevice, buffer: GPUBuffer, byteOffset = 0, bytes = buffer.size - byteOffset): Promise<ArrayBuffer> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  try {
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(buffer, byteOffset, staging, 0, size);
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    return staging.getMappedRange().slice(0, bytes);
  } finally {
    staging.destroy();
  }
}

/**
 * The size of a buffer onnxruntime's kernels read: rounded up to 16 bytes, as its own buffers are.
 * Its kernels read in fours, and WebGPU clamps a read past a binding's end back inside it: in a
 * buffer of 21 floats the last four came back with numbers from elsewhere in the buffer.
 */
export const ortBufferSize = (bytes: number) => Math.max(16, Math.ceil(bytes / 16) * 16);

/** writeBuffer needs a multiple of 4 bytes; an odd count of f16 values gets a zero pad. */
export function writePadded(device: GPUDevice, buffer: GPUBuffer, data: ArrayBufferView, offset = 0): void {
  const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  if (bytes.byteLength % 4 === 0) {
    device.queue.writeBuffer(buffer, offset, bytes);
    return;
  }
  const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
  padded.set(bytes);
  device.queue.writeBuffer(buffer, offset, padded);
}

export function uploadBuffer(device: GPUDevice, data: ArrayBufferView, usage: number): GPUBuffer {
  const size = Math.max(16, Math.ceil(data.byteLength / 4) * 4);
  const b = device.createBuffer({ size, usage: usage | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  if (data.byteLength) writePadded(device, b, data);
  return b;
}
