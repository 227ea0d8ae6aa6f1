// A start picture fitted to the job's frame in the page: cover-cropped (centred, the longer sides
// cut) and scaled with the browser's smoothing; a picture already at the frame's size is copied
// byte for byte, so "keep" really keeps it.
import type { ImageData8 } from '../../workers/api/contract.ts';
import { coverCrop } from './mask.ts';

export interface FittedPicture {
  image: ImageData8;
  /** Which sides lost pixels to fit the frame's shape. */
  cut: 'none' | 'sides' | 'top and bottom';
  /** Whether it was scaled (its size differed from the frame's). */
  scaled: boolean;
}

export function fitPicture(source: ImageData8, width: number, height: number): FittedPicture {
  if (source.width === width && source.height === height) return { image: { width, height, data: new Uint8ClampedArray(source.data) }, cut: 'none', scaled: false };
  const crop = coverCrop(source, { width, height });
  const from = new OffscreenCanvas(source.width, source.height);
  from.getContext('2d')!.putImageData(new ImageData(new Uint8ClampedArray(source.data), source.width, source.height), 0, 0);
  const to = new OffscreenCanvas(width, height);
  const ctx = to.getContext('2d')!;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(from, crop.x, crop.y, crop.width, crop.height, 0, 0, width, height);
  return { image: { width, height, data: ctx.getImageData(0, 0, width, height).data }, cut: crop.cut, scaled: true };
}

/** The pixels of a picture file (PNG, JPEG, WebP ...), at its own size. */
export async function picturePixels(blob: Blob): Promise<ImageData8> {
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    throw new Error('That file is not a picture this browser can read (PNG, JPEG or WebP).');
  }
  const c = new OffscreenCanvas(bitmap.width, bitmap.height);
  c.getContext('2d')!.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { width: c.width, height: c.height, data: c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data };
}
