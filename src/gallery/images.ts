// Pictures in the page: a file or result drawn at a bounded size, its pixels, and a data URL of it
// (thumbnails, reference images).
import type { ImageData8 } from '../../workers/api/contract.ts';

/** The picture on a canvas, its longer side at most `maxSide` pixels (never enlarged). */
export async function drawScaled(blob: Blob, maxSide = Infinity): Promise<OffscreenCanvas> {
  const bitmap = await createImageBitmap(blob);
  const k = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const canvas = new OffscreenCanvas(Math.max(1, Math.round(bitmap.width * k)), Math.max(1, Math.round(bitmap.height * k)));
  canvas.getContext('2d')!.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return canvas;
}

export function pixelsOf(canvas: OffscreenCanvas): ImageData8 {
  return { width: canvas.width, height: canvas.height, data: canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data };
}

export async function dataUrlOf(canvas: OffscreenCanvas, type: 'image/png' | 'image/jpeg', quality?: number): Promise<string> {
  const blob = await canvas.convertToBlob({ type, quality });
  return new Promise<string>((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result as string);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}
