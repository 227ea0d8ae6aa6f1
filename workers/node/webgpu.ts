// Node only: give this process a real WebGPU (Dawn through the npm `webgpu` package, on
// SwiftShader where there is no GPU) so the unchanged engine runs as it does in the browser.
import { existsSync } from 'node:fs';

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

let installed = false;

/**
 * Dawn toggles to turn on, from `LORA_STUDIO_DAWN_FEATURES` (a comma list, e.g.
 * `disable_workgroup_init`; `npm test` sets that one, see the README's "Two commands on a fresh machine").
 */
export function dawnFeatures(): string[] {
  const names = (process.env.LORA_STUDIO_DAWN_FEATURES ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const bad = names.filter((n) => !/^[a-z][a-z0-9_]*$/.test(n));
  if (bad.length) throw new Error(`LORA_STUDIO_DAWN_FEATURES holds a name that is no Dawn toggle: ${bad.join(', ')} (give toggle names such as disable_workgroup_init, comma-separated)`);
  return names;
}

/** The toggles as Dawn's flag (`enable-dawn-features=a,b`, Chromium's switch with `--` before it), or none. */
export function dawnFeaturesFlag(): string | undefined {
  const names = dawnFeatures();
  return names.length ? `enable-dawn-features=${names.join(',')}` : undefined;
}

export async function installNodeWebGpu(): Promise<void> {
  if (installed) return;
  installed = true;
  if (!process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER_ICD) && !process.env.LORA_STUDIO_SYSTEM_VULKAN) {
    process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  }
  const { create, globals } = await import('webgpu');
  Object.assign(globalThis, globals);
  const flag = dawnFeaturesFlag();
  const gpu = create(flag ? [flag] : []);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  // onnxruntime-web hands writeBuffer views of its SharedArrayBuffer-backed wasm memory; Dawn's
  // Node binding refuses shared views, so copy those into ordinary memory first.
  const proto = (globals as unknown as { GPUQueue: { prototype: GPUQueue } }).GPUQueue.prototype;
  const original = proto.writeBuffer;
  proto.writeBuffer = function (this: GPUQueue, buffer: GPUBuffer, offset: number, data: BufferSource | SharedArrayBuffer, dataOffset?: number, size?: number) {
    const isShared = (b: unknown) => typeof SharedArrayBuffer !== 'undefined' && b instanceof SharedArrayBuffer;
    if (ArrayBuffer.isView(data) && isShared(data.buffer)) {
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
      const per = (data as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
      return original.call(this, buffer, offset, bytes, (dataOffset ?? 0) * per, size === undefined ? undefined : size * per);
    }
    if (isShared(data)) return original.call(this, buffer, offset, new Uint8Array(data as SharedArrayBuffer).slice(), dataOffset, size);
    return original.call(this, buffer, offset, data as BufferSource, dataOffset, size);
  } as typeof proto.writeBuffer;
}
