// Compiling WGSL with its errors turned into one thrown message (Dawn and Chrome otherwise only log them).

export async function compileShader(device: GPUDevice, code: string, label: string): Promise<GPUShaderModule> {
  const module = device.createShaderModule({ code, label });
  const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
  if (errors.length) throw new Error(`${label}: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ')}`);
  return module;
}

export type BindingKind = 'uniform' | 'dynamic-uniform' | 'read-only-storage' | 'storage';

/** A compute bind group layout whose binding i is of kind kinds[i]. */
export function computeLayout(device: GPUDevice, kinds: BindingKind[]): GPUBindGroupLayout {
  return device.createBindGroupLayout({
    entries: kinds.map((kind, binding) => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: kind === 'dynamic-uniform' ? { type: 'uniform', hasDynamicOffset: true } : { type: kind },
    })),
  });
}
