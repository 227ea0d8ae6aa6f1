// Pure mask and picture geometry, in image pixels: brush strokes stamped into a mask (one byte per
// pixel, 255 repaints), invert, coverage, a mask resized with the frame, and the cover crop that fits
// a start picture to the job's size. No DOM: tested in Node.

export interface Point {
  x: number;
  y: number;
}

export interface PixelRect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/**
 * Paint a stroke segment from a to b with a round brush of `radius` pixels: every pixel whose centre
 * lies within `radius` of the segment gets `value` (255 paints, 0 erases). Returns the pixels it may
 * have changed (null when the segment lies outside the frame), for redrawing only those.
 */
export function stampSegment(mask: Uint8Array, width: number, height: number, a: Point, b: Point, radius: number, value: number): PixelRect | null {
  const r = Math.max(0.5, radius);
  const x0 = Math.max(0, Math.floor(Math.min(a.x, b.x) - r));
  const y0 = Math.max(0, Math.floor(Math.min(a.y, b.y) - r));
  const x1 = Math.min(width - 1, Math.ceil(Math.max(a.x, b.x) + r));
  const y1 = Math.min(height - 1, Math.ceil(Math.max(a.y, b.y) + r));
  if (x0 > x1 || y0 > y1) return null;
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len2 = dx * dx + dy * dy;
  const r2 = r * r;
  for (let y = y0; y <= y1; y++) {
    const py = y + 0.5;
    for (let x = x0; x <= x1; x++) {
      const px = x + 0.5;
      // the nearest point of the segment to the pixel's centre
      const t = len2 > 0 ? Math.min(1, Math.max(0, ((px - a.x) * dx + (py - a.y) * dy) / len2)) : 0;
      const ex = px - (a.x + t * dx);
      const ey = py - (a.y + t * dy);
      if (ex * ex + ey * ey <= r2) mask[y * width + x] = value;
    }
  }
  return { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 };
}

/** 255 where it kept, 0 where it repainted (any other byte v becomes 255 - v). */
export function invertMask(mask: Uint8Array): Uint8Array {
  const out = new Uint8Array(mask.length);
  for (let i = 0; i < mask.length; i++) out[i] = 255 - mask[i];
  return out;
}

/** The share of pixels that are repainted (non-zero). */
export function maskCoverage(mask: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < mask.length; i++) if (mask[i]) n++;
  return mask.length ? n / mask.length : 0;
}

/** The smallest rectangle holding every repainted pixel, or null for an empty mask. */
export function maskBounds(mask: Uint8Array, width: number, height: number): PixelRect | null {
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (!mask[y * width + x]) continue;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
  }
  return x1 < 0 ? null : { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 };
}

/** The mask at another frame size, nearest pixel (the frame was resized after painting). */
export function resizeMask(mask: Uint8Array, from: { width: number; height: number }, to: { width: number; height: number }): Uint8Array {
  if (from.width === to.width && from.height === to.height) return mask.slice();
  const out = new Uint8Array(to.width * to.height);
  for (let y = 0; y < to.height; y++) {
    const sy = Math.min(from.height - 1, Math.floor(((y + 0.5) * from.height) / to.height));
    for (let x = 0; x < to.width; x++) {
      const sx = Math.min(from.width - 1, Math.floor(((x + 0.5) * from.width) / to.width));
      out[y * to.width + x] = mask[sy * from.width + sx];
    }
  }
  return out;
}

/**
 * The part of a source picture that fills a target frame when scaled to cover it (CSS
 * `object-fit: cover`): centred, the source's longer sides cut. `cut` says which sides lost pixels.
 */
export function coverCrop(source: { width: number; height: number }, target: { width: number; height: number }): PixelRect & { cut: 'none' | 'sides' | 'top and bottom' } {
  const s = source.width / source.height;
  const t = target.width / target.height;
  if (Math.abs(s - t) < 1e-9) return { x: 0, y: 0, width: source.width, height: source.height, cut: 'none' };
  if (s > t) {
    const width = source.height * t;
    return { x: (source.width - width) / 2, y: 0, width, height: source.height, cut: 'sides' };
  }
  const height = source.width / t;
  return { x: 0, y: (source.height - height) / 2, width: source.width, height, cut: 'top and bottom' };
}

/** A1111's hires fix size: each side times the scale, rounded to a multiple of 64, at most 2048. */
export function hiresSize(width: number, height: number, scale: number): { width: number; height: number } {
  const side = (v: number) => Math.min(2048, Math.max(64, Math.round((v * scale) / 64) * 64));
  return { width: side(width), height: side(height) };
}
