// A file of tensors as artists have them: .safetensors read by ranges, or a PyTorch .pth/.pt read
// whole and converted without running it (torch-pickle.ts). LoRAs and embeddings open through here.
import { PthFormatError } from '../api/errors.ts';
import { SafetensorsFile } from './safetensors.ts';
import { MemorySource, type ByteSource } from './source.ts';
import { looksLikeTorchFile, MAX_TORCH_FILE_BYTES, torchFileToSafetensors } from './torch-pickle.ts';

export async function openTensorFile(source: ByteSource): Promise<SafetensorsFile> {
  const first = await source.read(0, Math.min(8, source.size));
  if (first.length >= 4 && looksLikeTorchFile(first)) {
    if (source.size > MAX_TORCH_FILE_BYTES) throw new PthFormatError(source.name, `it is ${source.size} bytes, more than a LoRA or an embedding; convert it to .safetensors`);
    const bytes = await source.read(0, source.size);
    return SafetensorsFile.open(new MemorySource(source.name, torchFileToSafetensors(bytes, source.name)));
  }
  return SafetensorsFile.open(source);
}
